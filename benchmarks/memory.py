"""Server memory: RSS per idle connection and RSS drift under connection churn, against bare Starlette.

For each server (pinned to core 0 where the OS allows; one at a time, each test on a fresh process):
  * bare Starlette + orjson (benchmarks/reference/bare_starlette.py) — the reference;
  * synapse serve --max-connections 5000.

Idle: after a warm-up (20 connections, one call each, closed), VmRSS is read from /proc/PID/status;
then --connections idle WebSockets (handshake only) are opened from this process and held, and VmRSS
is read again after 0.5 s. Per connection = delta / connections. Target for synapse: ≤ 15 KiB (issue 10).

Churn: --warmup-rounds rounds of --size concurrent connect / call / close (half close cleanly, half drop
the TCP connection) let the allocator reach its working size (synapse serve's RSS grows for its first
~5,000 connections, then stays flat: 67.0 -> 67.4 MiB over the next 25,000 in one long run); VmRSS is
read; then --rounds more rounds, and VmRSS again 0.5 s after. Drift = end - start. Target for synapse:
flat (drift < 2 MiB).

Clients are raw sockets speaking just enough RFC 6455 (as tests/test_hardening.py does), so this process
stays light and the server is measured without the client library.

    python benchmarks/memory.py [--connections 2000] [--rounds 20] [--size 500] [--warmup-rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers import HERE, free_port, pinned, start_server

REFERENCE = "bare Starlette + orjson (reference)"
SYNAPSE = "synapse serve"
IDLE_TARGET_KIB = 15.0  # issue 10 (issue 5 asked for 20)
DRIFT_TARGET_MIB = 2.0
KiB, MiB = 1024, 2**20
TEXT, CLOSE = 0x1, 0x8
BATCH = 100  # handshakes in flight while opening the idle connections


@dataclass
class Row:
    """One server's memory: RSS around the idle connections and around the churn rounds (bytes)."""

    name: str
    connections: int
    rss_before_idle: int
    rss_idle: int
    churn_calls: int
    rss_churn_start: int
    rss_churn_end: int

    @property
    def per_connection_kib(self) -> float:
        return (self.rss_idle - self.rss_before_idle) / self.connections / KiB

    @property
    def drift_mib(self) -> float:
        return (self.rss_churn_end - self.rss_churn_start) / MiB


def server_command(name: str, port: int, connections: int) -> list[str]:
    if name == REFERENCE:
        return [sys.executable, str(HERE / "reference" / "bare_starlette.py"), str(port)]
    synapse = str(Path(sys.executable).parent / "synapse")
    limit = str(max(5000, connections + 100))
    return [synapse, "serve", "--port", str(port), "--max-connections", limit, "--log-level", "warning"]


def rss(pid: int) -> int:
    """VmRSS of process ``pid`` in bytes."""
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no VmRSS for process {pid}")
    return int(match.group(1)) * KiB


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (server subprocesses inherit it) when too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} file descriptors needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- RFC 6455, just enough ------------------------------------------------------------------------


def handshake_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payloads under 126 bytes, all this script sends)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame: (opcode, payload)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(length)


async def open_websocket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(handshake_request(port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101 "):
        raise SystemExit(f"handshake refused: {head[:200]!r}")
    return reader, writer


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def call_once(port: int, number: int) -> None:
    """Connect, call add_numbers(number, 1), check the reply, then close cleanly (even) or drop (odd)."""
    reader, writer = await open_websocket(port)
    try:
        request = {"id": number, "func": "add_numbers", "args": [number, 1]}
        writer.write(client_frame(TEXT, json.dumps(request, separators=(",", ":")).encode()))
        opcode, payload = await asyncio.wait_for(read_frame(reader), 30)
        if opcode != TEXT or json.loads(payload)["result"] != number + 1:
            raise SystemExit(f"unexpected reply {opcode} {payload[:200]!r}")
        if number % 2 == 0:
            writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))
            await asyncio.wait_for(read_frame(reader), 30)
    finally:
        await close_all([writer])


async def churn(port: int, rounds: int, size: int) -> None:
    """``rounds`` rounds of ``size`` concurrent connect / call / close."""
    for round_number in range(rounds):
        await asyncio.gather(*(call_once(port, round_number * size + i) for i in range(size)))


async def hold_idle(port: int, pid: int, connections: int) -> int:
    """Open ``connections`` idle WebSockets, wait 0.5 s, read the server's RSS, close them; the RSS."""
    writers: list[asyncio.StreamWriter] = []
    try:
        while len(writers) < connections:
            batch = min(BATCH, connections - len(writers))
            opened = await asyncio.gather(*(open_websocket(port) for _ in range(batch)))
            writers += [writer for _, writer in opened]
        await asyncio.sleep(0.5)
        return rss(pid)
    finally:
        await close_all(writers)


def idle_rss(command: list[str], port: int, connections: int) -> tuple[int, int]:
    """A fresh server's RSS after a warm-up, then with ``connections`` idle WebSockets open."""
    process = start_server([*pinned(0), *command], f"ws://127.0.0.1:{port}/ws")
    try:
        asyncio.run(churn(port, 1, 20))  # the code paths run once before the baseline
        time.sleep(0.5)
        return rss(process.pid), asyncio.run(hold_idle(port, process.pid, connections))
    finally:
        process.terminate()
        process.wait(10)


def churn_rss(command: list[str], port: int, rounds: int, size: int, warmup_rounds: int) -> tuple[int, int]:
    """A fresh server's RSS after ``warmup_rounds`` of churn, then after ``rounds`` more.

    A fresh process, so that the peak of the idle connections cannot hide growth under churn.
    """
    process = start_server([*pinned(0), *command], f"ws://127.0.0.1:{port}/ws")
    try:
        asyncio.run(churn(port, warmup_rounds, size))  # allocator arenas grow to their working size
        time.sleep(0.5)
        start = rss(process.pid)
        asyncio.run(churn(port, rounds, size))
        time.sleep(0.5)
        return start, rss(process.pid)
    finally:
        process.terminate()
        process.wait(10)


def measure_server(name: str, connections: int, rounds: int, size: int, warmup_rounds: int) -> Row:
    port = free_port()
    command = server_command(name, port, connections)
    before, idle = idle_rss(command, port, connections)
    churn_start, churn_end = churn_rss(command, port, rounds, size, warmup_rounds)
    return Row(name, connections, before, idle, rounds * size, churn_start, churn_end)


def measure(connections: int = 2000, rounds: int = 20, size: int = 500, warmup_rounds: int = 10) -> list[Row]:
    """Idle-connection RSS and churn drift of the reference, then synapse serve."""
    raise_fd_limit(2 * max(connections, size) + 500)
    return [measure_server(name, connections, rounds, size, warmup_rounds) for name in (REFERENCE, SYNAPSE)]


def print_table(rows: list[Row]) -> None:
    reference = next(row for row in rows if row.name == REFERENCE)
    connections, calls = rows[0].connections, rows[0].churn_calls
    print(f"servers on core 0; RSS from /proc/PID/status; {connections} idle connections; churn {calls} calls")
    print(
        f"{'server':38} {'RSS MiB':>8} {'idle MiB':>9} {'KiB/conn':>9} {'ratio':>6} "
        f"{'churn start':>12} {'end MiB':>8} {'drift MiB':>10}"
    )
    for row in rows:
        print(
            f"{row.name:38} {row.rss_before_idle / MiB:8.1f} {row.rss_idle / MiB:9.1f} "
            f"{row.per_connection_kib:9.1f} {row.per_connection_kib / reference.per_connection_kib:6.2f} "
            f"{row.rss_churn_start / MiB:12.1f} {row.rss_churn_end / MiB:8.1f} {row.drift_mib:+10.2f}"
        )
    synapse = next(row for row in rows if row.name == SYNAPSE)
    idle_met = synapse.per_connection_kib <= IDLE_TARGET_KIB
    drift_met = synapse.drift_mib < DRIFT_TARGET_MIB
    print(
        f"targets: ≤ {IDLE_TARGET_KIB:g} KiB per idle connection: {'met' if idle_met else 'not met'}; "
        f"churn drift < {DRIFT_TARGET_MIB:g} MiB: {'met' if drift_met else 'not met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--warmup-rounds", type=int, default=10)
    options = parser.parse_args()
    print_table(measure(options.connections, options.rounds, options.size, options.warmup_rounds))


if __name__ == "__main__":
    main()
