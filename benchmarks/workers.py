"""`synapse serve --workers N` scaling: calls/s for each N against N = 1, measured in one run.

Two workloads, each with one `synapse serve --workers N` per N (default 1 and 2), driven by the Node `ws`
generator (benchmarks/node, `npm install` there first) for --seconds, --repeat times:
  * cpu: burn(1) from benchmarks/apps/cpu_app.py, 1 ms of Python CPU per call, 16 connections x 2 in
    flight. One process runs Python on one core at a time (the GIL), whatever its threads: this is
    what --workers is for, and the generator needs little CPU here;
  * transport: add_numbers(1, 2), 16 connections x 16 in flight: the server's own cost per message.
    The generator needs as much CPU as the server, so on a 2-core machine a second worker competes
    with its own load: read that ratio as "what a second worker buys on this machine".
The table shows median calls/s, the ratio to N = 1, and the busiest worker's share of the workers'
CPU time during the load (from /proc: 1/N when the kernel spreads the connections evenly, 1.00 when one
worker gets them all). Nothing is pinned: the workers need every core.

    (cd benchmarks/node && npm install) && python benchmarks/workers.py [--seconds 5] [--repeat 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers import find_node, free_port, generate, start_server

HERE = Path(__file__).parent
# workload -> (app, call body, connections, calls in flight per connection)
WORKLOADS = {
    "cpu": (str(HERE / "apps" / "cpu_app.py"), '{"func":"burn","args":[1]}', 16, 2),
    "transport": (None, None, 16, 16),
}


@dataclass
class Row:
    """Median calls/s with N workers, and the busiest worker's median share of the workers' CPU time."""

    workers: int
    calls_per_s: float
    busiest_share: float
    workload: str = "transport"


def cpu_seconds(master: int) -> dict[int, float]:
    """User + system CPU seconds of each child of ``master`` (the master itself when it has none)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the fields after "pid (comm)"
        except OSError:  # the process exited meanwhile
            continue
        pid, parent = int(stat.parent.name), int(fields[1])
        if master in (pid, parent):
            seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks
    if len(seconds) > 1:
        del seconds[master]
    return seconds


def loaded(
    node: str, url: str, master: int, connections: int, window: int, seconds: float, body: str | None = None
) -> tuple[float, float]:
    """One unpinned generator run: calls/s, and the busiest worker's share of the CPU time it took."""
    before = cpu_seconds(master)
    rate = generate(node, url, connections, window, seconds, core=None, body=body)
    used = [spent - before.get(pid, 0.0) for pid, spent in cpu_seconds(master).items()]
    return rate, max(used) / sum(used) if sum(used) > 0 else 1.0


def measure(
    workers: tuple[int, ...] = (1, 2),
    seconds: float = 5.0,
    repeat: int = 3,
    workloads: tuple[str, ...] = ("cpu", "transport"),
) -> list[Row]:
    """For each workload and N in ``workers``: one `synapse serve --workers N`, loaded ``repeat`` times."""
    node = find_node()
    synapse = str(Path(sys.executable).parent / "synapse")
    rows = []
    for workload in workloads:
        app, body, connections, window = WORKLOADS[workload]
        for count in workers:
            port = free_port()
            url = f"ws://127.0.0.1:{port}/ws"
            command = [synapse, "serve", *([app] if app else []), "--port", str(port), "--workers", str(count)]
            process = start_server([*command, "--log-level", "warning"], url)
            try:
                time.sleep(1.0 if count > 1 else 0)  # one worker answered; let the others finish starting
                runs = [loaded(node, url, process.pid, connections, window, seconds, body) for _ in range(repeat)]
                rates, shares = zip(*runs, strict=True)
                rows.append(Row(count, statistics.median(rates), statistics.median(shares), workload))
            finally:
                process.terminate()
                process.wait(30)
    return rows


def print_table(rows: list[Row], seconds: float, repeat: int) -> None:
    print(
        f"not pinned (workers need every core; the Node generator shares the {os.cpu_count()} cores with them); "
        f"median of {repeat} x {seconds:g} s"
    )
    print(f"{'workload':32} {'server':28} {'calls/s':>10} {'ratio':>6} {'busiest worker CPU share':>25}")
    for row in rows:
        _, _, connections, window = WORKLOADS[row.workload]
        reference = next(r for r in rows if r.workload == row.workload and r.workers == min(
            r.workers for r in rows if r.workload == row.workload))  # fmt: skip
        ratio = row.calls_per_s / reference.calls_per_s
        workload = f"{row.workload} ({connections} x {window})"
        server = f"synapse serve --workers {row.workers}"
        print(f"{workload:32} {server:28} {row.calls_per_s:10,.0f} {ratio:6.2f} {row.busiest_share:25.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), nargs="+", default=["cpu", "transport"])
    options = parser.parse_args()
    rows = measure(tuple(options.workers), options.seconds, options.repeat, tuple(options.workload))
    print_table(rows, options.seconds, options.repeat)


if __name__ == "__main__":
    main()
