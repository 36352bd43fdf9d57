"""Cold start: `synapse call` and `synapse --help` wall time against a minimal websockets script, in one run.

One `synapse serve` (pinned to core 0 where the OS allows) answers the calls. Each command below runs as
a fresh process (pinned to core 1), timed with time.perf_counter around subprocess.run:

  * reference: a minimal Python script — import websockets, websockets.sync.client.connect, send
    {"id":1,"func":"add_numbers","args":[1,2]} and print the reply;
  * synapse call add_numbers 1 2 --url ws://127.0.0.1:PORT/ws — target: ≤ 1.5x the reference;
  * synapse --help — target: < 0.3 s;
  * python -c pass — the interpreter's floor, for scale.

One untimed warm-up round first (page cache, .pyc files: PYTHONDONTWRITEBYTECODE is dropped from the
commands' environment so that round writes them, as an installed package has them); then --repeat rounds,
the commands interleaved and their order rotated each round so the machine's noise hits all of them. The
table shows medians and the ratio to the reference.

    python benchmarks/coldstart.py [--repeat 10] [--against DIR]

``--against DIR`` adds the same ``synapse call`` and ``synapse --help`` run with another checkout's package
first on the path (``DIR`` holds its ``synapse_cli``, e.g. ``git worktree add DIR COMMIT``), interleaved with
the rest: a change's cost at start-up, before/after in one run. Its ratio column is to the same command
run with this checkout's code.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers import free_port, pinned, start_server

REFERENCE = "minimal websockets script (reference)"
CALL = "synapse call add_numbers 1 2"
HELP = "synapse --help"
FLOOR = "python -c pass (floor)"
AGAINST = " [--against]"
CALL_RATIO_TARGET = 1.5
HELP_SECONDS_TARGET = 0.3
MINIMAL_SCRIPT = """\
import sys
from websockets.sync.client import connect
with connect(sys.argv[1]) as ws:
    ws.send('{"id":1,"func":"add_numbers","args":[1,2]}')
    print(ws.recv())
"""


@dataclass
class Row:
    """One command's median wall time, its ratio to the reference and whether its target is met."""

    name: str
    seconds: float
    ratio: float
    target: str
    met: bool | None


def commands(url: str, against: Path | None = None) -> dict[str, list[str]]:
    """The commands timed, by name; with ``against``, ``synapse call`` and ``--help`` on that code too."""
    python, synapse = sys.executable, str(Path(sys.executable).parent / "synapse")
    named = {
        REFERENCE: [python, "-c", MINIMAL_SCRIPT, url],
        CALL: [synapse, "call", "add_numbers", "1", "2", "--url", url],
        HELP: [synapse, "--help"],
        FLOOR: [python, "-c", "pass"],
    }
    if against is not None:
        named[CALL + AGAINST] = named[CALL]
        named[HELP + AGAINST] = named[HELP]
    return named


def environment(name: str, env: dict[str, str], against: Path | None) -> dict[str, str]:
    """The command's environment: ``--against`` commands find that checkout's package first."""
    if against is None or not name.endswith(AGAINST):
        return env
    return {**env, "PYTHONPATH": str(against)}


def wall_time(command: list[str], env: dict[str, str]) -> float:
    """Seconds from spawning ``command`` (pinned to core 1) to its exit; fails unless it exits 0."""
    start = time.perf_counter()
    out = subprocess.run([*pinned(1), *command], capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{command} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return elapsed


def measure(repeat: int = 10, against: Path | None = None) -> list[Row]:
    """Median wall time of each command over ``repeat`` interleaved rounds, against one ``synapse serve``."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    synapse = str(Path(sys.executable).parent / "synapse")
    unwanted = ("SYNAPSE_", "PYTHONDONTWRITEBYTECODE")
    env = {name: value for name, value in os.environ.items() if not name.startswith(unwanted)}
    env["NO_COLOR"] = "1"
    server = start_server([*pinned(0), synapse, "serve", "--port", str(port), "--log-level", "warning"], url)
    named = commands(url, against)
    times: dict[str, list[float]] = {name: [] for name in named}
    try:
        replies = subprocess.run(named[CALL], capture_output=True, text=True, env=env, timeout=60).stdout
        if replies.strip() != "3":
            raise SystemExit(f"`synapse call` printed {replies!r}, not 3")
        order = list(named)
        for _ in range(repeat + 1):  # round 0 is the warm-up
            for name in order:
                times[name].append(wall_time(named[name], environment(name, env, against)))
            order = order[1:] + order[:1]
    finally:
        server.terminate()
        server.wait(10)
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    reference = medians[REFERENCE]
    call, help_ = medians[CALL], medians[HELP]
    rows = [
        Row(REFERENCE, reference, 1.0, "", None),
        Row(CALL, call, call / reference, f"≤ {CALL_RATIO_TARGET:g}x", call / reference <= CALL_RATIO_TARGET),
        Row(HELP, help_, help_ / reference, f"< {HELP_SECONDS_TARGET:g} s", help_ < HELP_SECONDS_TARGET),
        Row(FLOOR, medians[FLOOR], medians[FLOOR] / reference, "", None),
    ]
    if against is not None:  # the other code's time, and this code's against it
        for name in (CALL, HELP):
            other = medians[name + AGAINST]
            rows.append(Row(name + AGAINST, other, medians[name] / other, "this/that", None))
    return rows


def print_table(rows: list[Row], repeat: int) -> None:
    print(f"synapse serve on core 0, commands on core 1; median wall time of {repeat} interleaved runs")
    print(f"{'command':48} {'ms':>8} {'ratio':>6} {'target':>9} {'met':>8}")
    for row in rows:
        met = "" if row.met is None else ("met" if row.met else "not met")
        print(f"{row.name:48} {row.seconds * 1000:8.1f} {row.ratio:6.2f} {row.target:>9} {met:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--against", type=Path, help="another checkout: the directory holding its synapse_cli")
    options = parser.parse_args()
    against = options.against.resolve() if options.against is not None else None
    print_table(measure(options.repeat, against), options.repeat)
    if against is not None:
        print(f"[--against]: the same command on the code in {against}; its ratio is this checkout's time / that")


if __name__ == "__main__":
    main()
