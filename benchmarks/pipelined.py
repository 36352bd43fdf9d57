"""Pipelined throughput of synapse serve, seen by the synapse Client and by a bare websockets loop.

Starts ``synapse serve`` on a free loopback port (core 0; the clients run on core 1), then measures,
in the same run:
  * reference: a bare ``websockets`` + orjson client keeping WINDOW calls in flight on one connection;
  * synapse:   ``asyncio.gather`` of N calls on one ``synapse_cli.Client``.
Prints calls/s for each (median of --repeat runs) and the ratio synapse / reference.

    python benchmarks/pipelined.py [--calls 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from servers import free_port, pinned, wait_ready
from websockets.asyncio.client import connect

from synapse_cli import Client

WINDOW = 128
REFERENCE = f"bare websockets loop (window {WINDOW})"
SYNAPSE = "synapse Client gather"


@dataclass
class Row:
    """One client's median calls/s."""

    name: str
    calls_per_s: float


async def bare_loop(url: str, calls: int) -> float:
    async with connect(url, compression=None) as ws:
        start = time.perf_counter()
        sent = received = 0
        while sent < min(WINDOW, calls):
            sent += 1
            await ws.send(orjson.dumps({"id": sent, "func": "add_numbers", "args": [1, 2]}).decode())
        while received < calls:
            reply = orjson.loads(await ws.recv())
            assert reply["result"] == 3
            received += 1
            if sent < calls:
                sent += 1
                await ws.send(orjson.dumps({"id": sent, "func": "add_numbers", "args": [1, 2]}).decode())
        return calls / (time.perf_counter() - start)


async def client_gather(url: str, calls: int) -> float:
    async with Client(url, timeout=60) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(client.call("add_numbers", 1, 2) for _ in range(calls)))
        elapsed = time.perf_counter() - start
        assert results == [3] * calls
        return calls / elapsed


def measure(calls: int = 10000, repeat: int = 3) -> list[Row]:
    """The reference loop, then the Client, ``repeat`` times against one ``synapse serve``; medians."""
    port = free_port()
    synapse = Path(sys.executable).parent / "synapse"
    server = subprocess.Popen(
        [*pinned(0), str(synapse), "serve", "--port", str(port), "--log-level", "warning"], stderr=subprocess.DEVNULL
    )
    url = f"ws://127.0.0.1:{port}/ws"
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        wait_ready(url, server)
        if affinity is not None and pinned(1):
            os.sched_setaffinity(0, {1})  # the clients on core 1, the server on core 0
        bare, ours = [], []
        for _ in range(repeat):
            bare.append(asyncio.run(bare_loop(url, calls)))
            ours.append(asyncio.run(client_gather(url, calls)))
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)
        server.terminate()
        server.wait(10)
    return [Row(REFERENCE, statistics.median(bare)), Row(SYNAPSE, statistics.median(ours))]


def print_table(rows: list[Row]) -> None:
    reference, measured = rows
    print(f"{reference.name + ':':38} {reference.calls_per_s:10,.0f} calls/s")
    print(f"{measured.name + ':':38} {measured.calls_per_s:10,.0f} calls/s")
    print(f"{'ratio synapse/reference:':38} {measured.calls_per_s / reference.calls_per_s:10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    print_table(measure(options.calls, options.repeat))


if __name__ == "__main__":
    main()
