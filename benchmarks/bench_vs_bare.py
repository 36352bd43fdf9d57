"""Is `synapse bench` as fast as the fastest bare Python WebSocket client? Measured in one run.

Against one `synapse serve` (pinned to core 0 where the OS allows), each generator (pinned to core 1)
drives add_numbers(1, 2) with 8 connections x 16 calls in flight for --seconds:

  * reference: a bare pipelined picows + orjson loop (the fastest Python client measured here);
  * synapse bench -c 128 --connections 8 (the product, with its HDR recording and id matching);
  * node ws: an independent generator (benchmarks/node, `npm install` there first) — what the
    server carries when the generator is not Python at all.

Each is repeated --repeat times; the table shows medians and the ratio bench / reference.

    python benchmarks/bench_vs_bare.py [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from servers import free_port, pinned

HERE = Path(__file__).parent
CONNECTIONS, WINDOW = 8, 16
REFERENCE = "bare picows loop (reference)"
SYNAPSE = "synapse bench"


@dataclass
class Row:
    """One generator's median calls/s (None: skipped, Node missing)."""

    name: str
    calls_per_s: float | None
    littles_law: float | None = None  # synapse bench: calls/s x mean latency / calls in flight (1.0: consistent)


def bare_picows(url: str, seconds: float) -> float:
    """The reference: CONNECTIONS picows sockets, WINDOW calls in flight on each, orjson replies."""
    import orjson
    import uvloop
    from picows import WSListener, WSMsgType, ws_connect

    state = {"measuring": False, "done": 0}

    class Loop(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: object) -> None:
            self.transport = transport
            self.next_id = 0
            for _ in range(WINDOW):
                self.send()

        def send(self) -> None:
            self.next_id += 1
            self.transport.send(WSMsgType.TEXT, b'{"func":"add_numbers","args":[1,2],"id":%d}' % self.next_id)

        def on_ws_frame(self, transport: object, frame: object) -> None:
            orjson.loads(frame.get_payload_as_bytes())  # type: ignore[attr-defined]
            if state["measuring"]:
                state["done"] += 1
            self.send()

    async def main() -> float:
        pairs = [await ws_connect(Loop, url) for _ in range(CONNECTIONS)]
        await asyncio.sleep(1.0)  # warm-up, as bench does
        state["measuring"] = True
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        rate = state["done"] / (time.perf_counter() - start)
        for transport, _ in pairs:
            transport.disconnect()
        return rate

    return uvloop.run(main())


def run_json(command: list[str]) -> dict[str, float]:
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(seconds: float = 5.0, repeat: int = 3) -> list[Row]:
    """Each generator (core 1) in turn, ``repeat`` times, against one ``synapse serve`` (core 0); medians."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    synapse = str(Path(sys.executable).parent / "synapse")
    server = subprocess.Popen(
        [*pinned(0), synapse, "serve", "--port", str(port), "--log-level", "warning"], stderr=subprocess.DEVNULL
    )
    node = shutil.which("node") if (HERE / "node" / "node_modules" / "ws").exists() else None
    results: dict[str, list[float]] = {REFERENCE: [], SYNAPSE: [], "node ws": []}
    littles_law: list[float] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start") from None
                time.sleep(0.1)
        for _ in range(repeat):
            bare = run_json([*pinned(1), sys.executable, __file__, "--bare", url, "--seconds", str(seconds)])
            results[REFERENCE].append(bare["calls_per_s"])
            bench = run_json([*pinned(1), synapse, "bench", "-c", str(CONNECTIONS * WINDOW), "--connections",
                              str(CONNECTIONS), "-z", f"{seconds}s", "--url", url, "--json"])  # fmt: skip
            results[SYNAPSE].append(bench["calls_per_s"])
            # Little's law, L = λW: the calls in flight are the rate times the mean latency, when both are honest.
            littles_law.append(bench["calls_per_s"] * bench["latency_ms"]["mean"] / 1000 / (CONNECTIONS * WINDOW))
            if node:
                script = str(HERE / "node" / "pipelined.js")
                result = run_json([*pinned(1), node, script, url, str(CONNECTIONS), str(WINDOW), str(seconds)])
                results["node ws"].append(result["calls_per_s"])
    finally:
        server.terminate()
        server.wait(10)
    rows = [Row(name, statistics.median(values) if values else None) for name, values in results.items()]
    rows[1].littles_law = statistics.median(littles_law)
    return rows


def print_table(rows: list[Row], seconds: float, repeat: int) -> None:
    reference = next(row.calls_per_s for row in rows if row.name == REFERENCE)
    assert reference is not None
    print(f"synapse serve on core 0, generators on core 1; {CONNECTIONS} connections x {WINDOW} in flight; "
          f"median of {repeat} x {seconds:g} s")  # fmt: skip
    print(f"{'generator':32} {'calls/s':>12} {'ratio':>8}")
    for row in rows:
        if row.calls_per_s is not None:
            print(f"{row.name:32} {row.calls_per_s:12,.0f} {row.calls_per_s / reference:8.2f}")
        else:
            print(f"{row.name:32} {'(skipped: run npm install in benchmarks/node)':>12}")
    ours = next(row for row in rows if row.name == SYNAPSE)
    if ours.littles_law is not None:
        print(f"Little's law for synapse bench: calls/s x mean latency = {ours.littles_law:.3f} x the "
              f"{CONNECTIONS * WINDOW} calls in flight (1.000: rate and latency agree)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bare", metavar="URL", help=argparse.SUPPRESS)  # internal: one reference run
    options = parser.parse_args()
    if options.bare:
        print(json.dumps({"calls_per_s": bare_picows(options.bare, options.seconds)}))
        return
    print_table(measure(options.seconds, options.repeat), options.seconds, options.repeat)


if __name__ == "__main__":
    main()
