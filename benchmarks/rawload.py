"""A cheap pipelined WebSocket load generator: raw sockets, epoll, pre-built frames, replies counted, not parsed.

Made so that the generator costs far less CPU per call than the server (benchmarks/workers.py needs the
cores for the server's workers). Each connection does its own handshake by hand, then keeps --window
calls in flight: it starts with a full window and sends a block of --block pre-built masked frames
whenever that many replies came back. The frames are the real messages, every one with its own id
within a connection (a cycle of 4 x window ids from 1, so no id is reused while in flight: SPEC's
"duplicate id"; and none is 0, which npm rpc-websockets never answers, taking it for a notification):
  * seed:    {"id": "17", "op": "call", "func": "add_numbers", "args": [1, 2]} with string ids "1", "2", ...
  * jsonrpc: {"jsonrpc": "2.0", "id": 17, "method": "add_numbers", "params": [1, 2]} with number ids.
  * burn:    {"id": "17", "func": "burn", "args": [1]} (benchmarks/apps/cpu_app.py) with string ids.
Replies are counted with ``bytes.count`` of a marker that appears once per successful reply
(``"result":3,"error":null}``, ``"result":3,"id":``, ``"error":null}``) and once per error
(``"error":{``), a marker split across two reads included (the last bytes of a read are kept and
counted with the next). At the end the generator stops sending,
waits for every call in flight and checks that replies == calls sent and that every reply was a result.

The measured interval starts at --start-at (a time.time() value shared by several generator processes,
so the caller can read the server's CPU over the same seconds) after the connections are open and warm,
and lasts --seconds. Prints one JSON line: calls answered in the interval, the interval, this process's
CPU seconds in it, calls sent, replies, results, errors.

    python benchmarks/rawload.py ws://127.0.0.1:8000/ws [--connections 32] [--window 64] [--block 16]
        [--seconds 5] [--start-at T] [--shape seed|jsonrpc|burn]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import select
import socket
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SHAPES = {
    "seed": ('{{"id": "{}", "op": "call", "func": "add_numbers", "args": [1, 2]}}', b'"result":3,"error":null}'),
    "jsonrpc": ('{{"jsonrpc": "2.0", "id": {}, "method": "add_numbers", "params": [1, 2]}}', b'"result":3,"id":'),
    "burn": ('{{"id": "{}", "func": "burn", "args": [1]}}', b'"error":null}'),  # benchmarks/apps/cpu_app.py
}
ERROR = b'"error":{'
MASK = b"\x37\xfa\x21\x3d"


def frame(text: str) -> bytes:
    """One masked text frame (FIN set) carrying ``text``."""
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = bytes([0x81, 0x80 | length])
    elif length < 65536:
        header = bytes([0x81, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big")
    mask = (MASK * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(length, "big")
    return header + MASK + masked


def blocks(shape: str, window: int, block: int) -> list[bytes]:
    """The cycle of frames a connection sends, ``block`` frames to a bytes: 4 x window distinct ids."""
    template = SHAPES[shape][0]
    count = 4 * window
    # ids from 1: npm rpc-websockets takes a call with id 0 for a notification (a falsy id) and never answers it
    frames = [frame(template.format(index)) for index in range(1, count + 1)]
    return [b"".join(frames[start : start + block]) for start in range(0, count, block)]


def handshake(host: str, port: int, path: str) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"the server closed the connection during the handshake: {response!r}")
        response += chunk
    head, _, rest = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"handshake refused: {head.decode(errors='replace')}")
    if rest:
        raise SystemExit("the server sent frames before any call")
    return sock


@dataclass
class Connection:
    sock: socket.socket
    marker: bytes
    sent: int = 0
    results: int = 0
    errors: int = 0
    next_block: int = 0
    tail: bytes = field(default=b"")

    @property
    def replies(self) -> int:
        return self.results + self.errors

    def read(self) -> bool:
        """Count the replies in what arrived; False when the server closed the connection."""
        data = self.sock.recv(1 << 18)
        if not data:
            return False
        chunk = self.tail + data
        self.results += chunk.count(self.marker)
        self.errors += chunk.count(ERROR)
        keep = max(len(self.marker), len(ERROR)) - 1  # a marker split across reads is counted next time
        self.tail = chunk[-keep:]
        return True


def run(
    url: str, connections: int, window: int, block: int, seconds: float, start_at: float, shape: str
) -> dict[str, float | int]:
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    cycle = blocks(shape, window, block)
    per_block = block
    marker = SHAPES[shape][1]
    conns = [Connection(handshake(host, port, path), marker) for _ in range(connections)]
    by_fd = {conn.sock.fileno(): conn for conn in conns}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)

    def send_block(conn: Connection) -> None:
        conn.sock.sendall(cycle[conn.next_block])
        conn.next_block = (conn.next_block + 1) % len(cycle)
        conn.sent += per_block

    for conn in conns:  # a full window each
        for _ in range(window // block):
            send_block(conn)
    sending = True
    end_at = start_at + seconds
    mark: tuple[float, int, float] | None = None  # (time, replies, CPU seconds) when the interval began
    finish: tuple[float, int, float] | None = None
    low = window - block  # send a block once this few calls are in flight

    def snapshot() -> tuple[float, int, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return time.time(), sum(conn.replies for conn in conns), usage.ru_utime + usage.ru_stime

    drain_deadline = None
    while True:
        now = time.time()
        if mark is None and now >= start_at:
            mark = snapshot()
        if mark is not None and finish is None and now >= end_at:
            finish = snapshot()
            sending = False
            drain_deadline = now + 10
        if not sending:
            if all(conn.replies >= conn.sent for conn in conns):
                break
            if drain_deadline is not None and now > drain_deadline:
                break
        for fd, _ in poller.poll(0.05):
            conn = by_fd[fd]
            if not conn.read():
                raise SystemExit(f"the server closed a connection after {conn.replies} replies")
            while sending and conn.sent - conn.replies <= low:
                send_block(conn)
    for conn in conns:
        conn.sock.close()
    assert mark is not None and finish is not None
    sent = sum(conn.sent for conn in conns)
    results = sum(conn.results for conn in conns)
    errors = sum(conn.errors for conn in conns)
    return {
        "calls": finish[1] - mark[1],
        "interval": finish[0] - mark[0],
        "cpu": finish[2] - mark[2],
        "sent": sent,
        "replies": results + errors,
        "results": results,
        "errors": errors,
        "connections": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--window", type=int, default=64, help="calls in flight per connection")
    parser.add_argument("--block", type=int, default=16, help="frames sent at once (divides --window)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--start-at", type=float, default=None, help="time.time() the interval starts (default +1 s)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="seed")
    options = parser.parse_args()
    if options.window % options.block:
        parser.error("--block must divide --window")
    start_at = options.start_at if options.start_at is not None else time.time() + 1.0
    result = run(
        options.url, options.connections, options.window, options.block, options.seconds, start_at, options.shape
    )
    print(json.dumps(result), flush=True)
    if result["errors"] or result["results"] != result["sent"]:
        sys.exit(f"replies did not match: {result}")


if __name__ == "__main__":
    main()
