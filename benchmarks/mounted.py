"""How fast is synapse mounted in a FastAPI app (plain ASGI) against `synapse serve`? Measured in one run.

The same functions (tests/apps/fastapi_app.py's registry, a token set) served three ways, each on core 0:

  * synapse serve tests/apps/fastapi_app.py: uvicorn with synapse's own WebSocket protocol (the reference);
  * uvicorn fastapi_app:app: the FastAPI app mounting synapse_cli.asgi at /rpc, uvicorn's own WebSocket
    implementation (websockets' sans-I/O, what `uvicorn` picks), through ASGI;
  * hypercorn fastapi_app:app --workers 0: the same app under hypercorn (wsproto), through ASGI.

Each round runs `synapse bench add_numbers 1 2 -c 128 --connections 8 -z SECONDS` (core 1) against each,
in a rotating order; every round is printed (calls/s, p50, p99, the server's CPU, calls per server
CPU-second, whether the generator or the server bound the run), then the medians and the ratios
against `synapse serve`. On a shared or small machine the generator is often the bound: then calls per
server CPU-second, not calls/s, is the comparison that holds.

    python benchmarks/mounted.py [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from servers import free_port, pinned

HERE = Path(__file__).parent
APPS = HERE.parent / "tests" / "apps"
TOKEN = "bench-token"
CONCURRENCY, CONNECTIONS = 128, 8
SERVE = "synapse serve (reference)"
TARGETS = [SERVE, "FastAPI mount, uvicorn", "FastAPI mount, hypercorn"]


@dataclass
class Round:
    """One bench run against one target."""

    target: str
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_pct: float
    calls_per_cpu_s: float
    bound: str


def command(target: str, port: int) -> tuple[list[str], str]:
    """The server's command line and its WebSocket URL."""
    synapse = str(Path(sys.executable).parent / "synapse")
    if target == SERVE:
        app = str(APPS / "fastapi_app.py")
        line = [synapse, "serve", app, "--port", str(port), "--token", TOKEN, "--log-level", "warning"]
        return line, f"ws://127.0.0.1:{port}/ws"
    if "uvicorn" in target:
        line = [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--port", str(port), "--log-level", "warning"]
    else:
        line = [sys.executable, "-m", "hypercorn", "fastapi_app:app", "--bind", f"127.0.0.1:{port}", "--workers", "0",
                "--log-level", "warning"]  # fmt: skip
    return line, f"ws://127.0.0.1:{port}/rpc/ws"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    health = url.replace("ws://", "http://").removesuffix("/ws") + "/health"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(health, timeout=2)
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{url}: the server did not start") from None
            time.sleep(0.1)


def run_round(target: str, seconds: float) -> Round:
    """Start the target on core 0, bench it from core 1, stop it."""
    port = free_port()
    line, url = command(target, port)
    env = {**os.environ, "MOUNTED_TOKEN": json.dumps(TOKEN)}
    server = subprocess.Popen([*pinned(0), *line], cwd=APPS, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, server)
        synapse = str(Path(sys.executable).parent / "synapse")
        bench = [*pinned(1), synapse, "bench", "add_numbers", "1", "2", "-c", str(CONCURRENCY),
                 "--connections", str(CONNECTIONS), "-z", f"{seconds}s", "--warmup", "1s", "--url", url,
                 "--token", TOKEN, "--json"]  # fmt: skip
        before = cpu_seconds(server.pid)
        done = subprocess.run(bench, capture_output=True, text=True, timeout=seconds * 4 + 60)
        used = cpu_seconds(server.pid) - before
        if done.returncode not in (0, 1):
            raise SystemExit(f"{target}: synapse bench failed: {done.stderr.strip()}")
        report = json.loads(done.stdout)
    finally:
        server.terminate()
        server.wait(30)
    calls = report["calls"]["ok"] + report["calls"]["warmup"]  # the CPU counted covers the warm-up too
    elapsed = report["duration_s"] + 1.0
    return Round(
        target,
        report["calls_per_s"],
        report["latency_ms"]["p50"],
        report["latency_ms"]["p99"],
        100 * used / elapsed,
        calls / used if used else float("nan"),
        "generator-bound" if report["generator"]["bound"] else "server-bound",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every target once (default 3)")
    options = parser.parse_args()
    print("load before:", os.getloadavg())
    rounds: list[Round] = []
    print(f"{'round':>5}  {'target':26} {'calls/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'srv CPU':>7} "
          f"{'calls/CPU-s':>11}  bound")  # fmt: skip
    for number in range(options.rounds):
        order = TARGETS[number % len(TARGETS) :] + TARGETS[: number % len(TARGETS)]
        for target in order:
            result = run_round(target, options.seconds)
            rounds.append(result)
            print(f"{number + 1:>5}  {target:26} {result.calls_per_s:9,.0f} {result.p50_ms:7.2f} "
                  f"{result.p99_ms:7.2f} {result.server_cpu_pct:6.0f}% {result.calls_per_cpu_s:11,.0f}  "
                  f"{result.bound}", flush=True)  # fmt: skip
    print("load after:", os.getloadavg())
    print(f"\nmedians of {options.rounds} rounds x {options.seconds:g} s; ratio = target / synapse serve")
    print(f"{'target':26} {'calls/s':>9} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'calls/CPU-s':>11} {'ratio':>6}")
    reference = [r for r in rounds if r.target == SERVE]
    base_rate = statistics.median(r.calls_per_s for r in reference)
    base_cpu = statistics.median(r.calls_per_cpu_s for r in reference)
    for target in TARGETS:
        mine = [r for r in rounds if r.target == target]
        rate = statistics.median(r.calls_per_s for r in mine)
        per_cpu = statistics.median(r.calls_per_cpu_s for r in mine)
        p50, p99 = statistics.median(r.p50_ms for r in mine), statistics.median(r.p99_ms for r in mine)
        print(f"{target:26} {rate:9,.0f} {rate / base_rate:6.2f} {p50:7.2f} {p99:7.2f} {per_cpu:11,.0f} "
              f"{per_cpu / base_cpu:6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
