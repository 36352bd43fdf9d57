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
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from websockets.sync.client import connect

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def servers(port: int) -> dict[str, list[str]]:
    python, synapse = sys.executable, str(Path(sys.executable).parent / "synapse")
    return {
        "bare Starlette + orjson (reference)": [python, str(HERE / "reference" / "bare_starlette.py"), str(port)],
        "raw websockets + orjson": [python, str(HERE / "reference" / "raw_websockets.py"), str(port)],
        "synapse serve": [synapse, "serve", "--port", str(port), "--log-level", "warning"],
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


def generate(node: str, url: str, connections: int, window: int, seconds: float) -> float:
    script = str(HERE / "node" / "pipelined.js")
    command = [*pinned(1), node, script, url, str(connections), str(window), str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["calls_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    node = shutil.which("node")
    if node is None or not (HERE / "node" / "node_modules" / "ws").exists():
        raise SystemExit("needs Node and `npm install` in benchmarks/node")
    rows: dict[str, tuple[float, float]] = {}
    for name, command in servers(free_port()).items():
        port = int(command[-1]) if "synapse" not in name else int(command[3])
        url = f"ws://127.0.0.1:{port}/ws"
        process = subprocess.Popen([*pinned(0), *command], stderr=subprocess.DEVNULL)
        try:
            wait_ready(url, process)
            pipelined = [generate(node, url, 8, 16, options.seconds) for _ in range(options.repeat)]
            sequential = [generate(node, url, 1, 1, options.seconds) for _ in range(options.repeat)]
            rows[name] = (statistics.median(pipelined), statistics.median(sequential))
        finally:
            process.terminate()
            process.wait(10)
    reference = rows["bare Starlette + orjson (reference)"]
    print(f"Node ws generator on core 1, servers on core 0; median of {options.repeat} x {options.seconds:g} s")
    print(f"{'server':38} {'pipelined calls/s':>18} {'ratio':>6} {'sequential µs/call':>19} {'ratio':>6}")
    for name, (pipelined, sequential) in rows.items():
        micro = 1e6 / sequential
        print(
            f"{name:38} {pipelined:18,.0f} {pipelined / reference[0]:6.2f} "
            f"{micro:19,.1f} {micro / (1e6 / reference[1]):6.2f}"
        )


if __name__ == "__main__":
    main()
