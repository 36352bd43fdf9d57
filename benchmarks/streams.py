"""Streams (SPEC §5): items/s of one stream against a bare websockets server pushing the same items,
topic fan-out latency (publish to receipt) to many subscribers, and the server's memory with idle
subscribers and with one subscriber that never reads.

    python benchmarks/streams.py [--items 100000] [--subscribers 1000] [--rate 100] [--seconds 5] [--redis]

The fan-out's subscribers and publisher share one Python process here: with 1,000 subscribers it is the
generator, not the server, that sets the publish rate and most of the latency (the script prints how
many publishes it managed). Every figure is measured in this run; the ratio compares synapse with
the reference measured just before it. `--redis` repeats the fan-out with `--workers 2 --broker
redis://...` (needs redis-server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from hdrh.histogram import HdrHistogram
from websockets.asyncio.client import connect

HERE = Path(__file__).parent
SYNAPSE = str(Path(sys.executable).with_name("synapse"))

BARE_PUSHER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def handler(ws):
    await ws.recv()
    for i in range(int(sys.argv[2])):
        await ws.send('{"id":1,"item":%d}' % i)
    await ws.send('{"id":1,"result":null,"error":null}')

async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), compression=None):
        await asyncio.Future()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


@contextlib.contextmanager
def process(command: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError(f"{command[0]} did not start")
            time.sleep(0.1)
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        child.wait(20)


def rss(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


async def read_stream(url: str, request: str) -> tuple[int, float]:
    """Send one stream call, read every item until the end; (items, seconds)."""
    async with connect(url, compression=None, max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(request)
        items = 0
        async for message in ws:
            if '"item"' in message:
                items += 1
            else:
                break
        return items, time.perf_counter() - started


def items_per_second(items: int) -> tuple[float, float]:
    """(synapse, bare websockets) items/s of one stream over one connection."""
    port = free_port()
    with process(pinned([sys.executable, "-c", BARE_PUSHER, str(port), str(items)], 0), port):
        count, seconds = asyncio.run(read_stream(f"ws://127.0.0.1:{port}/", '{"id":1}'))
    bare = count / seconds
    port = free_port()
    with process(
        pinned([SYNAPSE, "serve", "--port", str(port), "--log-level", "warning", "--max-connections", "5000"], 0), port
    ):
        request = json.dumps({"id": 1, "func": "ticks", "args": [items, 0]})
        count, seconds = asyncio.run(read_stream(f"ws://127.0.0.1:{port}/ws", request))
    return count / seconds, bare


async def fan_out(
    url: str, subscribers: int, rate: float, seconds: float, pid: int | None = None
) -> tuple[HdrHistogram, list[int], int]:
    """``subscribers`` connections subscribe to `events`; publish {"t": ns} at ``rate``/s; latencies."""
    histogram = HdrHistogram(1, 60_000_000, 3)
    received = [0] * subscribers
    ready = asyncio.Event()
    subscribed = 0

    async def subscriber(index: int) -> None:
        nonlocal subscribed
        async with connect(url, compression=None) as ws:
            await ws.send('{"id":"s","func":"events"}')
            subscribed += 1
            if subscribed == subscribers:
                ready.set()
            async for message in ws:
                now = time.time_ns()
                item = json.loads(message).get("item")
                if isinstance(item, dict) and "t" in item:
                    histogram.record_value(max(1, (now - item["t"]) // 1000))
                    received[index] += 1

    tasks = [asyncio.create_task(subscriber(i)) for i in range(subscribers)]
    await asyncio.wait_for(ready.wait(), 60)
    await asyncio.sleep(1.0)  # every subscription registered on the server
    if pid is not None:
        print(f"server RSS with {subscribers} idle subscribers: {rss(pid) / 2**20:.1f} MiB")
    published = 0
    async with connect(url, compression=None) as publisher:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            published += 1
            await publisher.send(
                json.dumps({"id": published, "func": "publish_event", "args": [{"t": time.time_ns()}]})
            )
            await publisher.recv()
            await asyncio.sleep(max(0.0, start + published / rate - time.perf_counter()))
    await asyncio.sleep(1.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return histogram, received, published


def report_fan_out(name: str, histogram: HdrHistogram, received: list[int], published: int) -> None:
    missed = [published - count for count in received]
    p = histogram.get_value_at_percentile
    print(
        f"{name:<34} p50 {p(50) / 1000:8.2f} ms  p99 {p(99) / 1000:8.2f} ms"
        f"  max {histogram.get_max_value() / 1000:8.2f} ms"
        f"  published {published}, missed per subscriber: max {max(missed)}, total {sum(missed)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--redis", action="store_true", help="also with --workers 2 --broker (needs redis-server)")
    options = parser.parse_args()

    synapse_rate, bare_rate = items_per_second(options.items)
    print(f"one stream, {options.items} items: synapse {synapse_rate:,.0f} items/s, bare websockets "
          f"{bare_rate:,.0f} items/s, ratio {synapse_rate / bare_rate:.2f} (goal >= 0.8)")  # fmt: skip

    port = free_port()
    with process(
        pinned([SYNAPSE, "serve", "--port", str(port), "--log-level", "warning", "--max-connections", "5000"], 0), port
    ) as server:
        before = rss(server.pid)
        url = f"ws://127.0.0.1:{port}/ws"
        print(f"server RSS with no connection: {before / 2**20:.1f} MiB")
        result = asyncio.run(fan_out(url, options.subscribers, options.rate, options.seconds, server.pid))
        report_fan_out(f"{options.subscribers} subscribers, 1 process", *result)

    port = free_port()
    with process(
        pinned([SYNAPSE, "serve", "--port", str(port), "--log-level", "warning", "--max-connections", "5000"], 0), port
    ) as server:
        base = rss(server.pid)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.recv(4096)
        body = b'{"id":1,"func":"ticks","args":[1000000000,0]}'
        sock.sendall(bytes((0x81, 0x80 | len(body))) + b"\0\0\0\0" + body)
        time.sleep(3)
        first = rss(server.pid) - base
        time.sleep(3)
        print(
            "one subscriber that never reads a 10^9-item stream: server RSS "
            f"+{first / 2**20:.2f} MiB after 3 s, +{(rss(server.pid) - base) / 2**20:.2f} MiB after 6 s"
        )
        sock.close()

    if options.redis:
        redis_port = free_port()
        broker = f"redis://127.0.0.1:{redis_port}/0"
        redis_command = ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"]
        with process(redis_command, redis_port):
            port = free_port()
            command = [
                SYNAPSE,
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
                "--broker",
                broker,
                "--log-level",
                "warning",
            ]
            with process(command, port):
                time.sleep(2)
                result = asyncio.run(
                    fan_out(f"ws://127.0.0.1:{port}/ws", options.subscribers, options.rate, options.seconds)
                )
                report_fan_out(f"{options.subscribers} subscribers, 2 workers + Redis", *result)


if __name__ == "__main__":
    main()
