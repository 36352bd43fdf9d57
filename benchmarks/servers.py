"""synapse serve against the bare references, measured by an independent generator in one run.

Servers (each pinned to core 0 where the OS allows; one at a time):
  * bare Starlette + orjson (benchmarks/reference/bare_starlette.py) — the reference, ratio 1.00;
  * raw websockets + orjson (benchmarks/reference/raw_websockets.py);
  * synapse serve (full validation, per-call concurrency, metrics).
Generator: Node `ws` (benchmarks/node, pinned to core 1): pipelined (8 connections x 16 in flight) and
sequential (1 connection, 1 in flight), add_numbers(1, 2). Each measurement is repeated --repeat
times; the table shows medians.

    (cd benchmarks/node && npm install) && python benchmarks/servers.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from websockets.sync.client import connect

HERE = Path(__file__).parent
REFERENCE = "bare Starlette + orjson (reference)"
SYNAPSE = "synapse serve"


@dataclass
class Row:
    """One server's medians: pipelined (8 x 16) and sequential (1 x 1) calls/s."""

    name: str
    pipelined: float
    sequential: float

    @property
    def sequential_us(self) -> float:
        return 1e6 / self.sequential


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int) -> list[str]:
    """A taskset prefix when pinning is possible (2+ cores and taskset installed)."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def servers(port: int) -> dict[str, list[str]]:
    python, synapse = sys.executable, str(Path(sys.executable).parent / "synapse")
    return {
        REFERENCE: [python, str(HERE / "reference" / "bare_starlette.py"), str(port)],
        "raw websockets + orjson": [python, str(HERE / "reference" / "raw_websockets.py"), str(port)],
        SYNAPSE: [synapse, "serve", "--port", str(port), "--log-level", "warning"],
    }


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with connect(url, open_timeout=1) as ws:
                ws.send('{"id":1,"func":"add_numbers","args":[1,2]}')
                ws.recv(timeout=5)
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {process.args}") from None
            time.sleep(0.1)


def start_server(command: list[str], url: str) -> subprocess.Popen[bytes]:
    """Start ``command`` and wait until it answers on ``url``; if it does not, exit with its stderr's tail."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty server never blocks on it
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_ready(url, process)
        except SystemExit:
            process.kill()
            process.wait(10)
            log.seek(0)
            tail = log.read()[-3000:].decode(errors="replace")
            raise SystemExit(f"server did not start: {command}\n{tail}") from None
    return process


def find_node() -> str:
    """The node executable, once `npm install` has run in benchmarks/node."""
    node = shutil.which("node")
    if node is None or not (HERE / "node" / "node_modules" / "ws").exists():
        raise SystemExit("needs Node and `npm install` in benchmarks/node")
    return node


def generate(
    node: str, url: str, connections: int, window: int, seconds: float, core: int | None = 1, body: str | None = None
) -> float:
    """Calls/s the Node generator measured (pinned to ``core``; None: not pinned); ``body``: the call's JSON."""
    script = str(HERE / "node" / "pipelined.js")
    prefix = pinned(core) if core is not None else []
    command = [*prefix, node, script, url, str(connections), str(window), str(seconds), *([body] if body else [])]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["calls_per_s"])


def measure(seconds: float = 5.0, repeat: int = 3) -> list[Row]:
    """All servers up at once (core 0), loaded in turn by the Node generator (core 1), round after round.

    Interleaving the rounds spreads the machine's drifts over every server instead of favouring the one
    measured in a quiet minute; medians of ``repeat`` rounds.
    """
    node = find_node()
    ports: dict[str, int] = {}
    for name in servers(0):
        while (port := free_port()) in ports.values():
            pass
        ports[name] = port
    commands = {name: servers(port)[name] for name, port in ports.items()}
    urls = {name: f"ws://127.0.0.1:{port}/ws" for name, port in ports.items()}
    processes = []
    try:
        for name, command in commands.items():
            processes.append(start_server([*pinned(0), *command], urls[name]))
        pipelined: dict[str, list[float]] = {name: [] for name in commands}
        sequential: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeat):
            for name, url in urls.items():
                pipelined[name].append(generate(node, url, 8, 16, seconds))
                sequential[name].append(generate(node, url, 1, 1, seconds))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
    return [Row(name, statistics.median(pipelined[name]), statistics.median(sequential[name])) for name in commands]


def print_table(rows: list[Row], seconds: float, repeat: int) -> None:
    reference = next(row for row in rows if row.name == REFERENCE)
    print(f"Node ws generator on core 1, servers on core 0; median of {repeat} x {seconds:g} s")
    print(f"{'server':38} {'pipelined calls/s':>18} {'ratio':>6} {'sequential µs/call':>19} {'ratio':>6}")
    for row in rows:
        print(
            f"{row.name:38} {row.pipelined:18,.0f} {row.pipelined / reference.pipelined:6.2f} "
            f"{row.sequential_us:19,.1f} {row.sequential_us / reference.sequential_us:6.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    print_table(measure(options.seconds, options.repeat), options.seconds, options.repeat)


if __name__ == "__main__":
    main()
