"""Server-to-client calls (``ctx.call``): what a round trip that includes one costs, against the same call without.

    python benchmarks/server_calls.py [--rounds 3] [--seconds 5] [--concurrency 50] [--jsonrpc]

One ``synapse serve benchmarks/apps/round_trips.py`` process; ``synapse bench`` (picows, its own process)
alternates ``reply 7`` (an async function answering at once: the reference) and ``ask_client 7`` (the
same after ``await ctx.call("echo", 7)`` on the bench's connection, which answers it at once), each
round at full load (closed model, ``--concurrency`` in flight) and one at a time (``-c 1``: the latency
of one round trip). Every round is printed, not the best; the ratio compares the two in the same round.
The load average is shown before and after: on a shared machine, read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).parent
SYNAPSE = str(Path(sys.executable).with_name("synapse"))


@contextlib.contextmanager
def server() -> Iterator[str]:
    """``synapse serve`` on a free port; its URL once the banner shows it."""
    command = [SYNAPSE, "serve", str(HERE / "apps" / "round_trips.py"), "--port", "0", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.search(r"ws://127\.0\.0\.1:\d+/ws", line)
            if match:
                break
        else:
            raise SystemExit("the server did not start")
        yield match.group()
    finally:
        process.terminate()
        process.wait(10)


def bench(url: str, func: str, seconds: float, concurrency: int, jsonrpc: bool) -> dict[str, float]:
    """One ``synapse bench`` run: calls/s and latency percentiles (ms)."""
    command = [SYNAPSE, "bench", func, "7", "--url", url, "-z", f"{seconds}s", "-c", str(concurrency), "--json"]
    done = subprocess.run(command + (["--jsonrpc"] if jsonrpc else []), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit(f"synapse bench {func} failed ({done.returncode}): {done.stderr.strip()}")
    report = json.loads(done.stdout)
    if report["calls"]["errors"]:
        raise SystemExit(f"synapse bench {func}: {report['calls']['errors']} errors: {report['errors']}")
    latency = report["latency_ms"]
    return {"calls_per_s": report["calls_per_s"], "p50": latency["p50"], "p99": latency["p99"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--jsonrpc", action="store_true")
    options = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    with server() as url:
        for concurrency in (options.concurrency, 1):
            print(f"\n-c {concurrency}, {options.seconds:g} s per run, {'JSON-RPC' if options.jsonrpc else 'native'}")
            print(f"{'round':>5} {'function':>10} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}   ask_client / reply")
            for number in range(1, options.rounds + 1):
                runs = {
                    func: bench(url, func, options.seconds, concurrency, options.jsonrpc)
                    for func in ("reply", "ask_client")
                }
                for func, run in runs.items():
                    print(
                        f"{number:>5} {func:>10} {run['calls_per_s']:>10,.0f} {run['p50']:>8.3f} {run['p99']:>8.3f}",
                        end="",
                    )
                    if func == "ask_client":
                        reference = runs["reply"]
                        print(f"   calls/s x{run['calls_per_s'] / reference['calls_per_s']:.2f}, "
                              f"p50 x{run['p50'] / reference['p50']:.2f}", end="")  # fmt: skip
                    print()
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
