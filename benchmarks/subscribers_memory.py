"""Memory per idle topic subscriber, and one publish fanned out to all of them, before and after.

For each server (pinned to core 0 where the OS allows; a fresh process each, one after the other):
  * synapse serve --max-connections N+100 (this checkout);
  * with --baseline DIR, the same from an older checkout (``git archive COMMIT synapse_cli | tar -x -C DIR``).

This process (pinned to core 1) opens --subscribers idle WebSocket connections (raw sockets speaking just
enough RFC 6455, as memory.py does) and reads the server's VmRSS; then each connection subscribes to the
built-in topic ``events`` (``{"id": 1, "func": "events"}``), and once /metrics counts them all, VmRSS
again. Memory per subscriber = the difference / subscribers: what a subscription costs on top of its
connection (target: ≤ 8 KiB, issue 22).

Then --publishes publishes, 0.5 s apart, each ``publish_event({"t": <perf_counter_ns>})`` from one more
connection: every subscriber must receive every one ("missed" counts the ones that never came within
10 s), and the fan-out latency of each delivery (receipt - publish, one clock: same process) goes into an
HDR histogram: p50, p99 and max, and the time until the last subscriber had it. This process reads
10,000 sockets on one core, so those latencies include its own time to get to each socket.

    python benchmarks/subscribers_memory.py [--subscribers 10000] [--publishes 5] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import struct
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from memory import raise_fd_limit, rss
from servers import free_port, pinned, start_server

from synapse_cli.core.stats import new_histogram

SYNAPSE = "synapse serve"
BASELINE = "synapse serve, --baseline code"
TARGET_KIB = 8.0
KiB, MiB = 1024, 2**20
BATCH = 200  # handshakes in flight while opening the connections
_STAMP = re.compile(rb'"t":(\d+)')


def client_frame(payload: bytes) -> bytes:
    """A masked text frame (payloads under 126 bytes, all this script sends)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


class Peer(asyncio.Protocol):
    """One raw WebSocket client: the handshake, then every receipt stamp it reads."""

    def __init__(self, port: int, stamps: list[tuple[int, int]]) -> None:
        self.port = port
        self.stamps = stamps  # (published at, received at), shared by every peer
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.replies = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if not self.opened.done():
            self.head += data
            if b"\r\n\r\n" in self.head:
                if self.head.startswith(b"HTTP/1.1 101 "):
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(SystemExit(f"handshake refused: {self.head[:200]!r}"))
            return
        for match in _STAMP.finditer(data):
            self.stamps.append((int(match.group(1)), now))
        self.replies += data.count(b'"result":')

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(payload))


async def open_peers(port: int, count: int, stamps: list[tuple[int, int]]) -> list[Peer]:
    loop = asyncio.get_running_loop()
    peers: list[Peer] = []
    while len(peers) < count:
        batch = [Peer(port, stamps) for _ in range(min(BATCH, count - len(peers)))]
        await asyncio.gather(*(loop.create_connection(lambda p=peer: p, "127.0.0.1", port) for peer in batch))
        await asyncio.gather(*(asyncio.wait_for(peer.opened, 60) for peer in batch))
        peers += batch
    return peers


def subscribed(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    for line in text.splitlines():
        if line.startswith('synapse_topic_subscribers{topic="events"}'):
            return int(float(line.split()[-1]))
    return 0


@dataclass
class Row:
    name: str
    subscribers: int
    rss_connections: int  # the server's RSS with the connections open, nobody subscribed
    rss_subscribed: int
    deliveries: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    last_ms: float  # the slowest publish: until its last delivery

    @property
    def per_subscriber_kib(self) -> float:
        return (self.rss_subscribed - self.rss_connections) / self.subscribers / KiB


async def run(name: str, pid: int, port: int, count: int, publishes: int) -> Row:
    stamps: list[tuple[int, int]] = []
    peers = await open_peers(port, count, stamps)
    publisher = (await open_peers(port, 1, []))[0]
    await asyncio.sleep(1.0)
    before = rss(pid)
    subscribe = client_frame(b'{"id":1,"func":"events"}')
    for peer in peers:
        assert peer.transport is not None
        peer.transport.write(subscribe)
    deadline = time.monotonic() + 120
    while subscribed(port) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {subscribed(port)} of {count} subscribed")
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    after = rss(pid)
    slowest = 0
    for number in range(publishes):
        start = len(stamps)
        sent = time.perf_counter_ns()
        publisher.send(b'{"id":%d,"func":"publish_event","args":[{"t":%d}]}' % (number, sent))
        deadline = time.monotonic() + 10
        while len(stamps) - start < count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if len(stamps) > start:
            slowest = max(slowest, max(received for _, received in stamps[start:]) - sent)
        await asyncio.sleep(0.5)
    histogram = new_histogram()
    for published, received in stamps:
        histogram.record_value(max(1, (received - published) // 1000))
    for peer in [*peers, publisher]:
        if peer.transport is not None:
            peer.transport.abort()
    return Row(
        name,
        count,
        before,
        after,
        len(stamps),
        count * publishes,
        histogram.get_value_at_percentile(50) / 1000,
        histogram.get_value_at_percentile(99) / 1000,
        histogram.get_max_value() / 1000,
        slowest / 1e6,
    )


def server_command(name: str, port: int, count: int, baseline: Path | None) -> list[str]:
    python = sys.executable
    head = [python, "-m", "synapse_cli"] if name == BASELINE else [str(Path(python).parent / "synapse")]
    env = ["env", f"PYTHONPATH={baseline}"] if name == BASELINE else []
    options = ["--port", str(port), "--max-connections", str(count + 100), "--log-level", "warning"]
    return [*pinned(0), *env, *head, "serve", *options]


def measure_server(name: str, count: int, publishes: int, baseline: Path | None) -> Row:
    port = free_port()
    process = start_server(server_command(name, port, count, baseline), f"ws://127.0.0.1:{port}/ws")
    try:
        return asyncio.run(run(name, process.pid, port, count, publishes))
    finally:
        process.terminate()
        process.wait(30)


def measure(subscribers: int = 10_000, publishes: int = 5, baseline: Path | None = None) -> list[Row]:
    """Memory per subscriber and the fan-out of every server, one after the other."""
    raise_fd_limit(subscribers + 500)  # each process holds one end of every connection
    if pinned(1):
        os.sched_setaffinity(0, {1})
    names = [SYNAPSE, *([BASELINE] if baseline else [])]
    return [measure_server(name, subscribers, publishes, baseline) for name in names]


def print_table(rows: list[Row]) -> None:
    print(
        f"{rows[0].subscribers} idle subscribers of one topic; server on core 0, this process on core 1; "
        "RSS from /proc/PID/status"
    )
    print(
        f"{'server':32} {'conns MiB':>9} {'subscribed':>10} {'KiB/sub':>8} {'delivered':>12} {'missed':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'last ms':>8}"
    )
    for row in rows:
        print(
            f"{row.name:32} {row.rss_connections / MiB:9.1f} {row.rss_subscribed / MiB:10.1f} "
            f"{row.per_subscriber_kib:8.2f} {row.deliveries:12,} {row.expected - row.deliveries:7} "
            f"{row.p50_ms:7.1f} {row.p99_ms:7.1f} {row.max_ms:7.1f} {row.last_ms:8.1f}"
        )
    synapse = rows[0]
    met = synapse.per_subscriber_kib <= TARGET_KIB and synapse.deliveries == synapse.expected
    verdict = "met" if met else "not met"
    print(f"target: ≤ {TARGET_KIB:g} KiB per subscriber, every publish delivered in full: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--publishes", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="an older checkout's synapse_cli, measured after this one")
    options = parser.parse_args()
    print_table(measure(options.subscribers, options.publishes, options.baseline))


if __name__ == "__main__":
    main()
