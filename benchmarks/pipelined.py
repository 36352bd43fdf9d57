"""Pipelined throughput of synapse serve, seen by the synapse Client and by a bare websockets loop.

Starts ``synapse serve`` on a free loopback port, then measures, in the same run:
  * reference: a bare ``websockets`` + orjson client keeping WINDOW calls in flight on one connection;
  * synapse:   ``asyncio.gather`` of N calls on one ``synapse_cli.Client``.
Prints calls/s for each (median of --repeat runs) and the ratio synapse / reference.

    python benchmarks/pipelined.py [--calls 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
from websockets.asyncio.client import connect

from synapse_cli import Client

WINDOW = 128


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    port = free_port()
    synapse = Path(sys.executable).parent / "synapse"
    server = subprocess.Popen(
        [str(synapse), "serve", "--port", str(port), "--log-level", "warning"], stderr=subprocess.DEVNULL
    )
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        time.sleep(1.5)
        bare, ours = [], []
        for _ in range(options.repeat):
            bare.append(asyncio.run(bare_loop(url, options.calls)))
            ours.append(asyncio.run(client_gather(url, options.calls)))
        reference, measured = statistics.median(bare), statistics.median(ours)
        print(f"bare websockets loop (window {WINDOW}): {reference:10,.0f} calls/s")
        print(f"synapse Client gather:                 {measured:10,.0f} calls/s")
        print(f"ratio synapse/reference:               {measured / reference:10.2f}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
