"""Fairness: one connection's sequential round trips while another floods the server, against no flood.

`synapse serve` runs pinned to core 0. This process (pinned to core 1) makes sequential calls on one
connection, the seed's message {"id": "<n>", "op": "call", "func": "add_numbers", "args": [1, 2]}, one in
flight, and records each round trip in an HDR histogram. Rounds alternate, --repeat times:

  * quiet: nobody else connected, for --seconds;
  * flood: a second process (core 1 too, niced so that the measuring connection's wake-ups come first)
    opens one raw-socket WebSocket and writes native cancels of unknown ids, {"id": "x<n>", "op":
    "cancel"} (no reply is due), pipelined as fast as the server takes them, for --seconds plus its
    start; the round trips are measured while it floods.

The histograms of each condition are merged over the rounds; the table shows p50, p99 and max round-trip
µs, the server's CPU share (near 1.00 under the flood: the server, not the flooder, sets the flood's pace),
the flood's rate (cancels/s written, as the server read them), and flood / quiet ratios. A fair
server keeps the flood's cost to about one read's worth of messages per round trip. The clients speak
just enough RFC 6455 (as memory.py does), so the measurement costs the same in both conditions. Only
synapse is measured: the bare references do not know cancel.

    python benchmarks/fairness.py [--seconds 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from hdrh.histogram import HdrHistogram
from servers import cpu_seconds, free_port, pinned, start_server

SYNAPSE = "synapse serve"
TEXT = 0x1
FLOOD_BATCH = 2000  # cancels per write


@dataclass
class Condition:
    """One condition's merged round trips (ns) and, for the flood, cancels written per second."""

    name: str
    histogram: HdrHistogram
    flood_rate: float | None = None
    server_cpu: list[float] = field(default_factory=list)  # share of a core, per round

    def us(self, percentile: float) -> float:
        return float(self.histogram.get_value_at_percentile(percentile)) / 1000

    @property
    def max_us(self) -> float:
        return float(self.histogram.get_max_value()) / 1000

    @property
    def count(self) -> int:
        return int(self.histogram.get_total_count())


def client_frame(payload: bytes) -> bytes:
    """A masked client text frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    head = struct.pack("!BB", 0x80 | TEXT, 0x80 | len(payload)) if len(payload) < 126 else (
        struct.pack("!BBH", 0x80 | TEXT, 0x80 | 126, len(payload)))  # fmt: skip
    return head + mask + masked


def open_websocket(port: int) -> socket.socket:
    """A blocking socket past the WebSocket handshake of ws://127.0.0.1:PORT/ws."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("handshake: connection closed")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101 ") or not head.endswith(b"\r\n\r\n"):
        raise SystemExit(f"handshake refused (or a frame came with it): {head[:200]!r}")
    return sock


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise SystemExit("the server closed the measuring connection")
        data += chunk
    return data


def read_text(sock: socket.socket) -> bytes:
    """One unmasked server frame's payload (a text reply is all this connection expects)."""
    first, second = recv_exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", recv_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", recv_exact(sock, 8))[0]
    payload = recv_exact(sock, length)
    if first & 0x0F != TEXT:
        raise SystemExit(f"unexpected frame {first:#x}: {payload[:200]!r}")
    return payload


def round_trips(port: int, seconds: float, histogram: HdrHistogram) -> None:
    """Sequential add_numbers calls, seed shape, for ``seconds``, each round trip recorded in ns."""
    sock = open_websocket(port)
    try:
        number = 0
        deadline = time.perf_counter_ns() + int(seconds * 1e9)
        while True:
            number += 1
            frame = client_frame(b'{"id":"%d","op":"call","func":"add_numbers","args":[1,2]}' % number)
            start = time.perf_counter_ns()
            sock.sendall(frame)
            reply = orjson.loads(read_text(sock))
            end = time.perf_counter_ns()
            if reply.get("id") != str(number) or reply.get("result") != 3:
                raise SystemExit(f"unexpected reply {reply!r}")
            if number > 100:  # warm-up excluded
                histogram.record_value(max(1, end - start))
            if end > deadline:
                return
    finally:
        sock.close()


def flood(port: int, seconds: float) -> None:
    """Write cancels of unknown ids as fast as the server reads them for ``seconds``; print cancels/s."""
    os.nice(10)  # the measuring connection, on the same core, comes first
    sock = open_websocket(port)
    batch = b"".join(client_frame(b'{"id":"x%d","op":"cancel"}' % n) for n in range(FLOOD_BATCH))
    print("flooding", flush=True)
    start = time.perf_counter()
    deadline, writes = start + seconds, 0
    while time.perf_counter() < deadline:
        sock.sendall(batch)
        writes += 1
    print(writes * FLOOD_BATCH / (time.perf_counter() - start), flush=True)
    sock.close()


def flooded_round_trips(port: int, seconds: float, histogram: HdrHistogram) -> float:
    """Round trips for ``seconds`` while a flooder process floods; the flood's cancels per second."""
    command = [*pinned(1), sys.executable, __file__, "--flood", str(port), "--seconds", str(seconds + 1)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as flooder:
        assert flooder.stdout is not None
        if flooder.stdout.readline().strip() != "flooding":
            raise SystemExit("the flooder did not start")
        time.sleep(0.3)  # the flood fills the server's socket buffer first
        round_trips(port, seconds, histogram)
        rate = float(flooder.stdout.readline())
        if flooder.wait(30) != 0:
            raise SystemExit(f"the flooder failed ({flooder.returncode})")
    return rate


@contextlib.contextmanager
def server_share(pid: int, condition: Condition) -> Iterator[None]:
    """Append the server's CPU share (of one core) over the block to ``condition.server_cpu``."""
    start, cpu = time.perf_counter(), cpu_seconds(pid)
    yield
    condition.server_cpu.append((cpu_seconds(pid) - cpu) / (time.perf_counter() - start))


def measure(seconds: float = 3.0, repeat: int = 3) -> list[Condition]:
    """Quiet and flooded rounds, alternating, against one `synapse serve` on core 0."""
    port = free_port()
    synapse = str(Path(sys.executable).parent / "synapse")
    command = [*pinned(0), synapse, "serve", "--port", str(port), "--log-level", "warning"]
    quiet = Condition("quiet", HdrHistogram(1, 60_000_000_000, 3))
    flooded = Condition("flood", HdrHistogram(1, 60_000_000_000, 3))
    rates = []
    if pinned(1):
        os.sched_setaffinity(0, {1})
    server = start_server(command, f"ws://127.0.0.1:{port}/ws")
    try:
        for _ in range(repeat):
            with server_share(server.pid, quiet):
                round_trips(port, seconds, quiet.histogram)
            with server_share(server.pid, flooded):
                rates.append(flooded_round_trips(port, seconds, flooded.histogram))
            time.sleep(0.5)  # what the flood left in the socket buffers is read and dropped
    finally:
        server.terminate()
        server.wait(10)
    flooded.flood_rate = statistics.median(rates)
    return [quiet, flooded]


def print_table(conditions: list[Condition], seconds: float, repeat: int) -> None:
    quiet, flooded = conditions
    print(f"{SYNAPSE} on core 0, clients on core 1; sequential seed-shape calls, {repeat} rounds x {seconds:g} s each")
    print("server cpu: its share of core 0 (median of the rounds); flood: cancels/s written, as the server read them")
    print(
        f"{'condition':10} {'calls':>8} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>10} {'server cpu':>11} "
        f"{'flood cancels/s':>16}"
    )
    for condition in conditions:
        rate = "" if condition.flood_rate is None else f"{condition.flood_rate:,.0f}"
        print(
            f"{condition.name:10} {condition.count:8,} {condition.us(50):9.1f} {condition.us(99):9.1f} "
            f"{condition.max_us:10.1f} {statistics.median(condition.server_cpu):11.2f} {rate:>16}"
        )
    print(
        f"{'flood/quiet':10} {'':8} {flooded.us(50) / quiet.us(50):9.2f} {flooded.us(99) / quiet.us(99):9.2f} "
        f"{flooded.max_us / quiet.max_us:10.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--flood", type=int, metavar="PORT", help=argparse.SUPPRESS)  # internal: the flooder
    options = parser.parse_args()
    if options.flood:
        flood(options.flood, options.seconds)
        return
    print_table(measure(options.seconds, options.repeat), options.seconds, options.repeat)


if __name__ == "__main__":
    main()
