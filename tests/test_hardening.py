"""Hardening (issue 4): bad input, load, faults and security against a real ``synapse serve`` process.

What ``test_server.py``, ``test_client.py`` and ``test_protocol.py`` already prove is not repeated here.
Memory is read from ``/proc/<pid>/status`` (VmRSS) of a ``synapse serve`` subprocess; heavy clients are
raw sockets speaking just enough RFC 6455 by hand, so the test process stays light. Every socket is on
127.0.0.1, every wait has a bound, and every subprocess is killed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import APPS, ServeProcess, clean_env, close_code, load_app, serve_process, synapse_executable, wait_for
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import ClientConnection, connect

from synapse_cli import Client, ConnectError

APP = str(APPS / "hardening_app.py")
TIMEOUT = 5.0
MiB = 2**20

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_MASK = b"\0\0\0\0"


# -- a `synapse serve` process ---------------------------------------------------------------------


def synapse_serve(*options: str, app: str | None = APP) -> contextlib.AbstractContextManager[ServeProcess]:
    """``synapse serve`` of the hardening app (or ``app``) as a subprocess: see conftest.serve_process."""
    return serve_process(*options, app=app)


def stop(server: ServeProcess) -> int:
    """SIGTERM the server and return its exit status."""
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(15)


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (children inherit it); skip when too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed} file descriptors needed")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def get_json(url: str) -> Any:
    """GET ``url`` (no proxy) and parse its JSON body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=TIMEOUT) as response:
        return json.loads(response.read())


def open_connections(http: str) -> int:
    """The server's open WebSocket connections, as GET /health reports them."""
    return int(get_json(f"{http}/health")["connections"])


def open_ws(url: str, **options: Any) -> ClientConnection:
    """A websockets sync client (no proxy, no compression)."""
    return connect(url, proxy=None, compression=None, open_timeout=TIMEOUT, **options)


def exchange(ws: ClientConnection, message: Any) -> Any:
    """Send one message (text as is, else JSON) and return the parsed next frame."""
    ws.send(message if isinstance(message, str) else json.dumps(message))
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str)
    return json.loads(frame)


def assert_usable(ws: ClientConnection) -> None:
    """The connection still answers a good call."""
    assert exchange(ws, {"id": "ok", "func": "add_numbers", "args": [1, 2]}) == {"id": "ok", "result": 3, "error": None}


# -- RFC 6455 by hand ------------------------------------------------------------------------------


def handshake_request(port: int, headers: dict[str, str] | None = None) -> bytes:
    """An HTTP upgrade request for /ws with a fresh key and ``headers`` added."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of an HTTP response head."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, mask: bytes | None = None
) -> bytes:
    """A client frame (masked, as RFC 6455 requires; ``mask`` ZERO_MASK leaves the payload as is)."""
    key = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 2**16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    if key != ZERO_MASK and payload:
        stream = (key * (length // 4 + 1))[:length]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(length, "big")
    return header + key + payload


def text_frame(message: Any, *, mask: bytes | None = None) -> bytes:
    """A text frame holding ``message`` encoded as compact JSON."""
    return encode_frame(TEXT, json.dumps(message, separators=(",", ":")).encode(), mask=mask)


def split_frame(buffer: bytearray) -> tuple[int, int, bytes] | None:
    """Take one server frame (first byte, opcode, payload) off ``buffer``, or None when incomplete."""
    if len(buffer) < 2:
        return None
    length, offset = buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, offset = struct.unpack_from("!H", buffer, 2)[0], 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, offset = struct.unpack_from("!Q", buffer, 2)[0], 10
    if len(buffer) < offset + length:
        return None
    first, payload = buffer[0], bytes(buffer[offset : offset + length])
    del buffer[: offset + length]
    return first, first & 0x0F, payload


class RawWebSocket:
    """A blocking WebSocket client on a bare socket: handshake, frames in and out, nothing automatic."""

    def __init__(self, port: int, headers: dict[str, str] | None = None, timeout: float | None = TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = bytearray()
        self.sock.sendall(handshake_request(port, headers))
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        self.status, self.headers = parse_head(bytes(self.buffer[:end]))
        del self.buffer[: end + 4]

    def _fill(self) -> None:
        chunk = self.sock.recv(2**16)
        if not chunk:
            raise EOFError("the server closed the TCP connection")
        self.buffer += chunk

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self) -> tuple[int, int, bytes]:
        """The next frame as (first byte, opcode, payload)."""
        while (frame := split_frame(self.buffer)) is None:
            self._fill()
        return frame

    def recv_json(self) -> Any:
        """The next text frame, parsed (pings are skipped: this peer never answers them)."""
        while True:
            _, opcode, payload = self.recv_frame()
            if opcode == TEXT:
                return json.loads(payload)
            assert opcode == PING, (opcode, payload)

    def close(self) -> None:
        self.sock.close()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame from an asyncio stream: (opcode, payload)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(length)


# -- bad input leftovers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Iterator[ServeProcess]:
    """One ``synapse serve tests/apps/hardening_app.py`` process at the default (info) log level."""
    with synapse_serve() as server:
        yield server


@pytest.mark.parametrize(
    "text",
    [
        '{"id": 1, "func": "echo", "args": [1]} x',
        '{"id": 1, "func": "echo", "args": [1]}{"id": 2, "func": "echo", "args": [2]}',
        '{"id": 1, "func": "echo", "args": [1]}]',
        '\ufeff{"id": 1, "func": "echo", "args": [1]}',
        "\ufeff",
    ],
    ids=["trailing-word", "two-objects", "trailing-bracket", "bom-object", "bom-alone"],
)
def test_trailing_garbage_and_bom_are_parse_errors(shared: ServeProcess, text: str) -> None:
    """Trailing garbage or a leading BOM answers -32700 with id null over the wire; the connection stays usable."""
    with open_ws(shared.url) as ws:
        reply = exchange(ws, text)
        assert reply == {"jsonrpc": "2.0", "error": {"code": -32700, "message": reply["error"]["message"]}, "id": None}
        assert_usable(ws)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"id": 1, "func": "echo", "args": [' + "[" * 100_000 + "]" * 100_000 + "]}",
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"id": 1, "func": "echo", "args": [' + "9" * 5000 + "]}",
        '{"id": 1, "func": "echo", "args": [-' + "1" * 5000 + "]}",
    ],
    ids=["100000-deep-array", "100000-deep-args", "100000-deep-objects", "5000-digit-int", "5000-digit-negative"],
)
def test_pathological_json_is_refused_quickly_without_a_traceback(shared: ServeProcess, text: str) -> None:
    """100,000-deep nesting and 5,000-digit integers answer -32700 id null in under 1 s; nothing in the server log."""
    mark = len(shared.lines)
    with open_ws(shared.url) as ws:
        start = time.perf_counter()
        reply = exchange(ws, text)
        elapsed = time.perf_counter() - start
        assert reply["id"] is None
        assert reply["error"]["code"] == -32700
        assert elapsed < 1.0, f"took {elapsed:.3f} s"
        assert_usable(ws)
    assert wait_for(lambda: open_connections(shared.http) == 0)  # its log lines are all written by now
    log = shared.output(mark)
    assert "Traceback" not in log
    assert "RecursionError" not in log
    assert "ValueError" not in log


def test_fragmented_messages_are_reassembled(shared: ServeProcess) -> None:
    """A message sent in fragments (str pieces, or bytes split inside a UTF-8 character) is answered whole."""
    with open_ws(shared.url) as ws:
        ws.send(iter(['{"id": "frag", ', '"func": "echo", ', '"args": [', '"héllo wörld"', "]}"]))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"id": "frag", "result": "héllo wörld", "error": None}
        encoded = '{"id": "split", "func": "echo", "args": ["é€😀"]}'.encode()
        cut = encoded.index("€".encode()) + 1  # inside the three bytes of €
        ws.send(iter([encoded[:cut], encoded[cut:-3], encoded[-3:]]), text=True)
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"id": "split", "result": "é€😀", "error": None}
        assert_usable(ws)


def test_fragments_of_many_tiny_frames_are_reassembled(shared: ServeProcess) -> None:
    """A call split into one frame per byte (raw continuation frames) is answered whole."""
    message = json.dumps({"id": 7, "func": "add_numbers", "args": [40, 2]}).encode()
    raw = RawWebSocket(shared.port)
    try:
        assert raw.status == 101
        frames = [
            encode_frame(TEXT if i == 0 else 0x0, message[i : i + 1], fin=i == len(message) - 1)
            for i in range(len(message))
        ]
        raw.send(b"".join(frames))
        assert raw.recv_json() == {"id": 7, "result": 42, "error": None}
    finally:
        raw.close()


def test_close_codes_print_no_traceback_per_occurrence(shared: ServeProcess) -> None:
    """Ten binary (1003), oversized (1009) and invalid UTF-8 (1007) frames each close as named; no traceback logged."""
    mark = len(shared.lines)
    oversized = '{"id": 1, "func": "echo", "args": ["' + "x" * MiB + '"]}'
    cases = [
        (lambda ws: ws.send(b'{"id": 1, "func": "echo", "args": [1]}'), 1003),
        (lambda ws: ws.send(oversized), 1009),
        (lambda ws: ws.send(b'{"id": 1, "func": "echo", "args": ["\xff\xfe"]}', text=True), 1007),
    ]
    with open_ws(shared.url) as bystander:
        for offend, code in cases:
            for _ in range(10):
                with open_ws(shared.url) as ws:
                    offend(ws)
                    assert close_code(ws) == code
            assert_usable(bystander)
    assert wait_for(lambda: open_connections(shared.http) == 0)
    log = shared.output(mark)
    assert "Traceback" not in log, log


# -- load and resource limits ----------------------------------------------------------------------


@pytest.mark.slow
def test_two_thousand_idle_connections(capsys: pytest.CaptureFixture[str]) -> None:
    """2,000 idle WebSocket connections are held at once at a bounded RSS per connection, then all freed."""
    count = 2000
    raise_fd_limit(count + 500)
    with synapse_serve("--max-connections", str(count + 100), "--log-level", "warning") as server:
        for _ in range(20):  # warm up the code paths before the baseline
            RawWebSocket(server.port).close()
        assert wait_for(lambda: open_connections(server.http) == 0)
        before = server.rss()
        held: list[RawWebSocket] = []
        try:
            start = time.perf_counter()
            for _ in range(count):
                held.append(RawWebSocket(server.port))
                assert held[-1].status == 101
            opened = time.perf_counter() - start
            assert open_connections(server.http) == count
            time.sleep(0.5)
            during = server.rss()
            with open_ws(server.url) as ws:  # a newcomer is served normally meanwhile
                assert_usable(ws)
        finally:
            for raw in held:
                raw.close()
        per_connection = (during - before) / count
        with capsys.disabled():
            print(
                f"\n[hardening] {count} idle connections opened in {opened:.1f} s: RSS {before / MiB:.1f} MiB -> "
                f"{during / MiB:.1f} MiB, {per_connection / 1024:.1f} KiB per connection"
            )
        assert per_connection < 100 * 1024
        assert wait_for(lambda: open_connections(server.http) == 0, 15)


@pytest.mark.slow
def test_unread_flood_keeps_memory_bounded_and_others_fast(capsys: pytest.CaptureFixture[str]) -> None:
    """100,000 calls fired without reading replies: server RSS grows < 50 MiB and another connection stays < 200 ms."""
    with synapse_serve("--log-level", "warning") as server:
        with open_ws(server.url) as ws:  # warm up
            for _ in range(50):
                assert_usable(ws)
        before = server.rss()
        flood = RawWebSocket(server.port, timeout=None)
        padding = "x" * 1000
        written = [0]

        def fire() -> None:
            try:
                for start in range(0, 100_000, 1000):
                    frames = [
                        text_frame({"id": i, "func": "echo", "args": [padding]}, mask=ZERO_MASK)
                        if i % 2 == 0
                        else text_frame({"id": i, "func": "sleep", "args": [0]}, mask=ZERO_MASK)
                        for i in range(start, start + 1000)
                    ]
                    flood.send(b"".join(frames))
                    written[0] = start + 1000
            except OSError:
                pass  # shut down by the test once it has measured

        writer = threading.Thread(target=fire, daemon=True)
        peak, latencies = before, []
        try:
            writer.start()
            with open_ws(server.url) as probe:
                deadline = time.monotonic() + 4.0
                number = 0
                while time.monotonic() < deadline:
                    number += 1
                    start = time.perf_counter()
                    assert (
                        exchange(probe, {"id": number, "func": "add_numbers", "args": [number, 1]})["result"]
                        == number + 1
                    )
                    latencies.append(time.perf_counter() - start)
                    peak = max(peak, server.rss())
                    time.sleep(0.05)
                assert open_connections(server.http) == 2  # the flooding peer is stalled, not dropped
            stalled_at = written[0]
        finally:
            flood.sock.shutdown(socket.SHUT_RDWR)
            flood.close()
            writer.join(10)
        growth = peak - before
        with capsys.disabled():
            print(
                f"\n[hardening] unread flood: {stalled_at} of 100000 calls written before backpressure stalled the "
                f"writer; server RSS growth {growth / MiB:.1f} MiB; probe latency max {max(latencies) * 1000:.1f} ms "
                f"over {len(latencies)} calls"
            )
        assert growth < 50 * MiB
        assert max(latencies) < 0.2
        assert wait_for(lambda: open_connections(server.http) == 0, 10)


def test_slow_reader_stalls_only_its_own_connection(shared: ServeProcess) -> None:
    """A peer not reading 25 MiB of replies stalls alone: others answer in < 200 ms; it later gets every reply."""
    big = "y" * (256 * 1024)
    slow = RawWebSocket(shared.port, timeout=None)
    requests = b"".join(text_frame({"id": i, "func": "echo", "args": [big]}) for i in range(100))
    writer = threading.Thread(target=slow.send, args=(requests,), daemon=True)
    try:
        writer.start()
        time.sleep(0.5)  # let the server fill every buffer towards the slow reader
        with open_ws(shared.url) as other:
            for number in range(20):
                start = time.perf_counter()
                assert exchange(other, {"id": number, "func": "echo", "args": [number]})["result"] == number
                assert time.perf_counter() - start < 0.2
        slow.sock.settimeout(TIMEOUT)
        ids = []
        for _ in range(100):
            reply = slow.recv_json()
            assert reply["result"] == big
            ids.append(reply["id"])
        assert sorted(ids) == list(range(100))
        writer.join(TIMEOUT)
        assert not writer.is_alive()
    finally:
        slow.close()


def test_keepalive_closes_a_peer_that_never_answers_pings(make_server: Any) -> None:
    """With ping 0.5 s / timeout 0.5 s a silent peer is closed (1011) and freed; a live client stays connected."""
    with make_server(ping_interval=0.5, ping_timeout=0.5) as running, open_ws(running.url) as live:
        dead = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
        try:
            dead.sendall(handshake_request(running.port))
            assert wait_for(lambda: open_connections(running.http) == 2)
            start = time.monotonic()
            assert wait_for(lambda: open_connections(running.http) == 1, 5)
            freed_after = time.monotonic() - start
            assert freed_after < 3.0
            received = bytearray()
            while chunk := dead.recv(2**16):  # ends with EOF: the server closed the TCP connection
                received += chunk
            head, _, frames = bytes(received).partition(b"\r\n\r\n")
            assert parse_head(head)[0] == 101
            buffer, opcodes, code = bytearray(frames), [], None
            while (frame := split_frame(buffer)) is not None:
                opcodes.append(frame[1])
                if frame[1] == CLOSE:
                    code = struct.unpack("!H", frame[2][:2])[0]
            assert opcodes[0] == PING and opcodes[-1] == CLOSE
            assert code == 1011
        finally:
            dead.close()
        time.sleep(1.0)  # several ping intervals: the live client answers and is kept
        assert_usable(live)
        assert open_connections(running.http) == 1


async def churn_once(port: int, number: int) -> None:
    """Connect, call, disconnect (even numbers close cleanly, odd ones just drop the TCP connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(handshake_request(port))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        writer.write(text_frame({"id": number, "func": "add_numbers", "args": [number, 1]}))
        opcode, payload = await read_frame(reader)
        assert (opcode, json.loads(payload)) == (TEXT, {"id": number, "result": number + 1, "error": None})
        if number % 2 == 0:
            writer.write(encode_frame(CLOSE, struct.pack("!H", 1000)))
            opcode, payload = await read_frame(reader)
            assert (opcode, payload[:2]) == (CLOSE, struct.pack("!H", 1000))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def churn(port: int, rounds: int, size: int) -> None:
    """``rounds`` rounds of ``size`` concurrent connect/call/disconnect cycles."""
    for round_number in range(rounds):
        await asyncio.gather(*(churn_once(port, round_number * size + i) for i in range(size)))


@dataclass
class Churned:
    """Measurements around 20 rounds of 500 connect/call/disconnect against one server process."""

    seconds: float
    rss_before: int
    rss_after: int
    tasks_before: int
    tasks_after: int
    connections_after: int


@pytest.fixture(scope="module")
def churned() -> Churned:
    """Run the churn once (after warm-up rounds) and measure the server before and after."""
    raise_fd_limit(1500)
    with synapse_serve("--max-connections", "1000", "--log-level", "warning") as server:

        def tasks() -> int:
            with open_ws(server.url) as ws:
                return int(exchange(ws, {"id": 1, "func": "task_count"})["result"])

        # warm-up rounds (allocator arenas grow to their working size): on Python 3.13 that takes 15 rounds
        # (+14 MiB after 5, then flat: the same drift after 20 more rounds as after 60), on 3.11 fewer than 5
        asyncio.run(churn(server.port, 15, 500))
        assert wait_for(lambda: open_connections(server.http) == 0)
        tasks_before, rss_before = tasks(), server.rss()
        start = time.perf_counter()
        asyncio.run(churn(server.port, 20, 500))
        seconds = time.perf_counter() - start
        wait_for(lambda: open_connections(server.http) == 0, 10)
        connections_after = open_connections(server.http)
        time.sleep(0.5)
        tasks_after, rss_after = tasks(), server.rss()
    return Churned(seconds, rss_before, rss_after, tasks_before, tasks_after, connections_after)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_connection_churn_frees_tasks_and_connections(churned: Churned) -> None:
    """After 20 rounds of 500 connect/call/disconnect, /health shows 0 connections and the loop's task count is back."""
    assert churned.connections_after == 0
    assert churned.tasks_after == churned.tasks_before


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_connection_churn_rss_returns_to_baseline(churned: Churned, capsys: pytest.CaptureFixture[str]) -> None:
    """After 20 rounds of 500 connect/call/disconnect the server's RSS is within 10 MiB of its warmed-up baseline."""
    drift = churned.rss_after - churned.rss_before
    with capsys.disabled():
        print(
            f"\n[hardening] churn: 10000 connect/call/disconnect in {churned.seconds:.1f} s; RSS "
            f"{churned.rss_before / MiB:.1f} -> {churned.rss_after / MiB:.1f} MiB (drift {drift / MiB:+.2f} MiB); "
            f"asyncio tasks {churned.tasks_before} -> {churned.tasks_after}"
        )
    assert drift < 10 * MiB


# -- faults ----------------------------------------------------------------------------------------


def inflight_calls(http: str) -> float:
    """The server's in-flight calls gauge from GET /metrics."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{http}/metrics", timeout=TIMEOUT) as response:
        body = response.read().decode()
    match = re.search(r"^synapse_inflight_calls (\S+)$", body, re.MULTILINE)
    assert match, body
    return float(match.group(1))


@pytest.mark.slow
def test_sigterm_with_fifty_calls_in_flight(capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM with 50 one-second calls in flight: no new connections, all 50 answered, close 1001, exit 0, bounded."""
    grace = 5.0
    with synapse_serve("--grace", str(grace)) as server:
        exited: list[float] = []
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(open_ws(server.url)) for _ in range(5)]
            for n, ws in enumerate(sockets):
                for i in range(10):
                    ws.send(json.dumps({"id": f"c{n}-{i}", "func": "sleep", "args": [1]}))
            assert wait_for(lambda: inflight_calls(server.http) == 50, 2)
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            waiter = threading.Thread(target=lambda: (server.process.wait(), exited.append(time.monotonic())))
            waiter.start()
            time.sleep(0.3)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()
            for n, ws in enumerate(sockets):
                replies = {}
                for _ in range(10):
                    reply = json.loads(ws.recv(timeout=grace + 2))
                    replies[reply["id"]] = reply
                assert replies == {f"c{n}-{i}": {"id": f"c{n}-{i}", "result": 1, "error": None} for i in range(10)}
                assert close_code(ws) == 1001
            waiter.join(grace + 5)
            assert server.process.returncode == 0
        shutdown = exited[0] - signalled
        with capsys.disabled():
            print(
                f"\n[hardening] SIGTERM with 50 calls in flight (1 s each, grace {grace:g} s): "
                f"exit after {shutdown:.2f} s"
            )
        assert shutdown < grace + 2
    log = server.output()
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_ten_thousand_concurrent_calls_with_random_delays() -> None:
    """10,000 concurrent calls sleeping a random 0-50 ms on 4 connections: each answered once, with its own result."""
    with synapse_serve("--max-inflight", "2500", "--log-level", "warning") as server:
        asyncio.run(_ten_thousand_calls(server.url))


async def _raw_calls(url: str, values: dict[int, int]) -> list[int]:
    """Send every call on one raw connection while reading; check each reply; return the ids in arrival order."""
    async with async_connect(url, proxy=None, compression=None, max_queue=None) as ws:

        async def sender() -> None:
            for request_id, value in values.items():
                await ws.send(json.dumps({"id": request_id, "func": "jittered", "args": [value]}))

        async def reader() -> list[int]:
            seen: list[int] = []
            for _ in range(len(values)):
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert reply == {"id": reply["id"], "result": values[reply["id"]], "error": None}
                seen.append(reply["id"])
            with pytest.raises(asyncio.TimeoutError):  # nothing duplicated arrives after the last one
                await asyncio.wait_for(ws.recv(), 0.5)
            return seen

        _, seen = await asyncio.gather(sender(), reader())
    return seen


async def _ten_thousand_calls(url: str) -> None:
    rng = random.Random(4)
    raw_values = [{i: rng.randrange(2**40) for i in range(start, start + 2500)} for start in (0, 2500)]
    client_values = [[rng.randrange(2**40) for _ in range(2500)] for _ in range(2)]
    async with Client(url, timeout=30) as first, Client(url, timeout=30) as second:
        results = await asyncio.gather(
            _raw_calls(url, raw_values[0]),
            _raw_calls(url, raw_values[1]),
            asyncio.gather(*(first.call("jittered", v) for v in client_values[0])),
            asyncio.gather(*(second.call("jittered", v) for v in client_values[1])),
        )
    for seen, values in zip(results[:2], raw_values, strict=True):
        assert Counter(seen) == Counter(list(values))  # each id exactly once
        assert seen != sorted(seen)  # random delays really reordered the replies
    assert results[2] == client_values[0]
    assert results[3] == client_values[1]


# -- security leftovers ----------------------------------------------------------------------------


def test_token_never_appears_in_the_log() -> None:
    """With --token and --log-level debug, good and bad handshakes never print the token (or a wrong one)."""
    token, wrong = "SECRET123", "WRONGTOKEN987"
    with synapse_serve("--token", token, "--log-level", "debug", app=None) as server:
        with open_ws(server.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert_usable(ws)
        for headers in ({"Authorization": f"Bearer {wrong}"}, {"Authorization": token}, {}):
            raw = RawWebSocket(server.port, headers=headers)
            assert raw.status == 401
            raw.close()
        health = json.dumps(get_json(f"{server.http}/health"))
        assert stop(server) == 0
    log = server.output()
    assert "SECRET123" not in log
    assert "WRONGTOKEN987" not in log
    assert "SECRET123" not in health
    assert "401" in log  # the refusals were logged, just not the credentials


def test_permessage_deflate_is_refused_by_the_server(shared: ServeProcess) -> None:
    """A handshake offering permessage-deflate gets 101 without it; a compressed (RSV1) frame then closes with 1002."""
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    raw = RawWebSocket(shared.port, headers=offer)
    try:
        assert raw.status == 101
        assert "sec-websocket-extensions" not in raw.headers
        raw.send(text_frame({"id": 1, "func": "echo", "args": ["plain"]}))
        first, opcode, payload = raw.recv_frame()
        assert first & 0x70 == 0  # no RSV bit: the reply is not compressed
        assert json.loads(payload) == {"id": 1, "result": "plain", "error": None}
        raw.send(encode_frame(TEXT, b"\xf2H\xcd\xc9\xc9\x07\x00", rsv1=True))  # "Hello", deflated
        _, opcode, payload = raw.recv_frame()
        assert opcode == CLOSE
        assert struct.unpack("!H", payload[:2])[0] == 1002
    finally:
        raw.close()


@contextlib.asynccontextmanager
async def handshake_recorder() -> Any:
    """A loopback TCP server that records each HTTP request head it gets, then hangs up; yields (url, heads)."""
    requests: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            requests.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT))
        writer.close()

    listener = await asyncio.start_server(record, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{listener.sockets[0].getsockname()[1]}/ws", requests
    finally:
        listener.close()
        await listener.wait_closed()


async def run_bench(url: str) -> tuple[int, str]:
    """`synapse bench run --url URL -n 1 --warmup 0`: exit status and stderr (killed past 30 s)."""
    bench = await asyncio.create_subprocess_exec(
        synapse_executable(), "bench", "run", "--url", url, "-n", "1", "--warmup", "0",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(bench.communicate(), 30)
    finally:
        if bench.returncode is None:
            bench.kill()
            await bench.wait()
    assert bench.returncode is not None
    return bench.returncode, stderr.decode()


async def test_client_and_bench_do_not_offer_permessage_deflate() -> None:
    """synapse_cli.Client and `synapse bench` send handshakes without Sec-WebSocket-Extensions."""
    async with handshake_recorder() as (url, requests):
        with pytest.raises(ConnectError):
            async with Client(url, reconnect_attempts=1):
                pass
        client_requests = len(requests)
        await run_bench(url)
    assert client_requests >= 1
    assert len(requests) > client_requests  # bench's handshakes were recorded too
    for request in requests:
        status_line, headers = request.split(b"\r\n", 1)
        assert status_line == b"GET /ws HTTP/1.1"
        assert b"upgrade: websocket" in headers.lower()
        assert b"sec-websocket-extensions" not in headers.lower()


async def test_bench_against_a_peer_that_hangs_up_exits_3() -> None:
    """`synapse bench` against a peer that hangs up mid-handshake: exit 3, one error line, no traceback."""
    async with handshake_recorder() as (url, _):
        status, stderr = await run_bench(url)
    assert "Traceback" not in stderr
    assert "AssertionError" not in stderr
    assert status == 3, stderr[-2000:]
    assert "synapse: error:" in stderr


async def test_serve_with_certfile_speaks_wss(certificate: tuple[str, str]) -> None:
    """`synapse serve --certfile --keyfile` serves wss://: trusted with cafile, ConnectError without it or over ws://."""
    cert, key = certificate
    with synapse_serve("--certfile", cert, "--keyfile", key, app=None) as server:
        assert server.url.startswith("wss://")
        async with Client(server.url, cafile=cert) as client:
            assert await client.call("add_numbers", 1, 2) == 3
        with pytest.raises(ConnectError) as untrusted:
            async with Client(server.url, reconnect_attempts=1):
                pass
        assert "certificate" in str(untrusted.value).lower()
        with pytest.raises(ConnectError):
            async with Client(server.url.replace("wss://", "ws://"), reconnect_attempts=1, open_timeout=3):
                pass
        assert stop(server) == 0
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
@pytest.mark.parametrize(
    ("func", "kind"),
    [("read_config", "FileNotFoundError"), ("parse_module", "ValueError"), ("chained_failure", "RuntimeError")],
)
def test_no_path_or_exception_text_reaches_a_client(shared: ServeProcess, func: str, kind: str, dialect: str) -> None:
    """Without --debug, a function failing with a file path in its exception answers only its type: no path, no text."""
    message: dict[str, Any] = (
        {"id": 9, "func": func} if dialect == "native" else {"jsonrpc": "2.0", "id": 9, "method": func}
    )
    error = {"code": -32603, "message": "internal error", "data": {"type": kind}}
    with open_ws(shared.url) as ws:
        ws.send(json.dumps(message))
        frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str)
    expected = (
        {"id": 9, "result": None, "error": error}
        if dialect == "native"
        else {"jsonrpc": "2.0", "id": 9, "error": error}
    )
    assert json.loads(frame) == expected
    for secret in ("/", "secret-config", "hardening_app", "Traceback", "Permission denied", "No such file"):
        assert secret not in frame


def test_debug_does_send_the_path(make_server: Any) -> None:
    """With debug=True the same failure carries its text (so the test above would see a leak)."""
    with make_server(load_app("hardening_app"), debug=True) as running, open_ws(running.url) as ws:
        reply = exchange(ws, {"id": 1, "func": "read_config"})
    assert "secret-config" in reply["error"]["data"]["message"]
