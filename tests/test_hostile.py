"""Hostile peers: no message, frame or handshake may cost the server unbounded memory, time or descriptors.

Each test is one attack (raw sockets speaking RFC 6455 by hand, bounded in time) against a real server,
with what the attack cost measured: the server's RSS, its open descriptors, another connection's latency.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import running_server, wait_for
from test_hardening import (
    CLOSE,
    PING,
    TEXT,
    RawWebSocket,
    encode_frame,
    open_ws,
    stop,
    synapse_serve,
    text_frame,
)
from websockets.sync.client import ClientConnection

from synapse_cli.server.transport import CLOSE_TIMEOUT

MiB = 2**20
CONTINUATION = 0x0


def close_code_of(raw: RawWebSocket, seconds: float = 5.0) -> int:
    """Read frames until the server's close frame; its code."""
    raw.sock.settimeout(seconds)
    while True:
        _, opcode, payload = raw.recv_frame()
        if opcode == CLOSE:
            return int.from_bytes(payload[:2], "big")


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def round_trip(ws: ClientConnection) -> float:
    started = time.perf_counter()
    ws.send('{"id": 1, "func": "add_numbers", "args": [1, 2]}')
    assert json.loads(ws.recv(timeout=10))["result"] == 3
    return time.perf_counter() - started


def test_endless_empty_continuation_frames_are_cut_off() -> None:
    """A message of empty fragments that never ends: closed with 1009 after a bounded number of frames. The
    peer reads the close frame although it was still sending; if it goes on sending, the server cuts the TCP
    connection CLOSE_TIMEOUT later (it drops what arrives until then)."""
    burst = b"".join(encode_frame(CONTINUATION, b"", fin=False) for _ in range(500))
    with running_server() as server:
        raw = RawWebSocket(server.port)
        raw.send(encode_frame(TEXT, b"[", fin=False))
        for _ in range(20):
            raw.send(burst)
            time.sleep(0.01)
        assert close_code_of(raw) == 1009
        started = time.monotonic()
        with pytest.raises(OSError):  # reset once the server closed: still sending
            while time.monotonic() - started < 10:
                raw.send(burst)
                time.sleep(0.01)
        assert time.monotonic() - started < CLOSE_TIMEOUT + 2
        raw.close()
        with open_ws(server.url) as ws:
            assert round_trip(ws) < 1


def test_a_fragmented_message_must_complete_in_time() -> None:
    """An unfinished fragmented message is closed with 1008 after the deadline (its bytes are freed)."""
    with running_server(handshake_timeout=0.5) as server:
        raw = RawWebSocket(server.port)
        raw.send(encode_frame(TEXT, b"[1,", fin=False))
        started = time.monotonic()
        assert close_code_of(raw) == 1008
        assert time.monotonic() - started < 3
        raw.close()


def test_tiny_fragments_are_counted_not_just_their_bytes() -> None:
    """Two thousand 1-byte fragments (under the size limit) are refused with 1009."""
    with running_server() as server:
        raw = RawWebSocket(server.port)
        try:
            frames = [encode_frame(TEXT, b" ", fin=False)] + [encode_frame(CONTINUATION, b" ", fin=False)] * 2000
            with contextlib.suppress(OSError):  # the server may close before the rest is sent
                raw.send(b"".join(frames))
            assert close_code_of(raw) == 1009
        finally:
            raw.close()


def test_ping_flood_from_a_peer_that_never_reads_keeps_memory_bounded() -> None:
    """Pings from a peer that never reads its pongs: the server stops reading instead of queueing pongs."""
    with synapse_serve(app=None) as server:
        raw = RawWebSocket(server.port)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        before = server.rss()
        ping = encode_frame(PING, b"p" * 125)
        burst = ping * 4096  # ~0.5 MiB of pings
        raw.sock.settimeout(3)
        sent = 0
        with pytest.raises(TimeoutError):
            for _ in range(400):  # at most ~200 MiB; TCP pushes back long before
                raw.sock.sendall(burst)
                sent += len(burst)
        growth = server.rss() - before
        with open_ws(server.url) as ws:
            latency = round_trip(ws)
        raw.close()
    print(f"\n[hostile] ping flood: {sent / MiB:.1f} MiB accepted before TCP pushed back; RSS +{growth / MiB:.1f} MiB")
    assert growth < 16 * MiB
    assert latency < 1


_FLOOD = """
import socket, sys, time
sys.path.insert(0, sys.argv[2])
from test_hardening import RawWebSocket, text_frame
raw = RawWebSocket(int(sys.argv[1]))
frames = b"".join(text_frame({"id": "x%d" % n, "op": "cancel"}) for n in range(2000))
raw.sock.settimeout(1)
deadline = time.monotonic() + float(sys.argv[3])
print("flooding", flush=True)
while time.monotonic() < deadline:
    raw.sock.sendall(frames)
"""


def test_a_flood_of_unanswered_cancels_does_not_starve_other_connections() -> None:
    """Cancels of unknown ids (no reply, so no backpressure) as fast as another process can send them:
    this connection's round trips stay fast."""
    with synapse_serve(app=None) as server, open_ws(server.url) as probe:
        quiet = [round_trip(probe) for _ in range(30)]
        flooder = subprocess.Popen(
            [sys.executable, "-c", _FLOOD, str(server.port), str(Path(__file__).parent), "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert flooder.stdout is not None and flooder.stdout.readline() == "flooding\n"
            time.sleep(0.3)
            loud = [round_trip(probe) for _ in range(100)]
        finally:
            flooder.kill()
            flooder.wait(10)
            assert flooder.stdout is not None
            flooder.stdout.close()
    p50, worst = statistics.median(loud), max(loud)
    print(f"\n[hostile] cancel flood: probe p50 {p50 * 1e3:.2f} ms, max {worst * 1e3:.1f} ms (quiet p50 "
          f"{statistics.median(quiet) * 1e3:.2f} ms)")  # fmt: skip
    assert worst < 0.5


def test_a_large_burst_of_pipelined_calls_is_answered_whole_and_in_order() -> None:
    """5,000 calls in one write (over 300 KiB: many reads of up to 256 KiB, each split and served in
    turns): every reply comes back, in order, and the connection keeps serving."""
    with running_server() as server:
        raw = RawWebSocket(server.port)
        try:
            calls = [{"id": str(n), "op": "call", "func": "add_numbers", "args": [n, 1]} for n in range(5000)]
            burst = b"".join(text_frame(call) for call in calls)
            sender = threading.Thread(target=raw.sock.sendall, args=(burst,))  # replies are read meanwhile
            sender.start()
            replies = [raw.recv_json() for _ in calls]
            sender.join()
            assert [(reply["id"], reply["result"]) for reply in replies] == [(str(n), n + 1) for n in range(5000)]
            raw.send(text_frame({"id": "last", "op": "call", "func": "add_numbers", "args": [2, 2]}))
            assert raw.recv_json() == {"id": "last", "result": 4, "error": None}
        finally:
            raw.close()


def test_calls_before_a_framing_violation_are_answered_before_the_close() -> None:
    """Forty calls, then a frame with a reserved opcode, in one write: forty replies, then close 1002."""
    with running_server() as server:
        raw = RawWebSocket(server.port)
        try:
            calls = [{"id": str(n), "op": "call", "func": "add_numbers", "args": [n, 1]} for n in range(40)]
            bad = encode_frame(0x3, b"{}")  # opcode 3 is reserved (RFC 6455 §5.2)
            raw.send(b"".join(text_frame(call) for call in calls) + bad)
            replies = [raw.recv_json() for _ in calls]
            assert [reply["result"] for reply in replies] == [n + 1 for n in range(40)]
            assert close_code_of(raw) == 1002
        finally:
            raw.close()


def test_oversized_handshake_heads_get_a_4xx_and_are_closed() -> None:
    """A header line over 8 KiB, or a head over 64 KiB, gets its 4xx and the connection is closed."""
    with running_server() as server:
        for size, status in ((10_000, b"400"), (100_000, b"431"), (2 * MiB, b"431")):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            head = (
                f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"X-Big: {'a' * size}\r\n\r\n"
            )
            with contextlib.suppress(OSError):  # the server may close before the rest is sent
                sock.sendall(head.encode())
            reply = b""
            deadline = time.monotonic() + 5
            while (chunk := _recv(sock, 1)) != b"" and time.monotonic() < deadline:
                reply += chunk or b""
            assert reply.startswith(b"HTTP/1.1 " + status), reply[:80]
            sock.close()


def test_every_request_on_a_keep_alive_connection_has_the_deadline() -> None:
    """After one GET /health, a second request trickled a byte at a time is dropped at the deadline."""
    with running_server(handshake_timeout=0.5) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        closed = False
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n" * 10:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            if _recv(sock, 0.001) == b"":
                closed = True
                break
        assert closed and time.monotonic() - started < 2.5
        sock.close()


def test_calls_sent_with_the_close_frame_are_answered_before_the_close() -> None:
    """Calls pipelined in the same write as the client's close frame all get their replies, then the close."""
    with running_server() as server:
        raw = RawWebSocket(server.port)
        calls = b"".join(text_frame({"id": n, "func": "sleep", "args": [0.05]}) for n in range(50))
        raw.send(calls + encode_frame(CLOSE, (1000).to_bytes(2, "big")))
        raw.sock.settimeout(5)
        replies = []
        while True:
            _, opcode, payload = raw.recv_frame()
            if opcode == CLOSE:
                break
            replies.append(json.loads(payload))
        raw.close()
    assert sorted(reply["id"] for reply in replies) == list(range(50))
    assert all(reply["result"] == 0.05 for reply in replies)


def test_exception_text_cannot_flood_or_forge_the_log() -> None:
    """200 failing calls with a 1 MiB message add a bounded amount to the log; a newline in the message
    cannot start a line of its own."""
    with synapse_serve(app=None) as server, open_ws(server.url, max_size=None) as ws:
        before = len(server.lines)
        huge = "x" * 1_000_000  # just under --max-message-size
        for n in range(200):
            ws.send(json.dumps({"id": n, "func": "fail", "args": [huge]}))
            assert json.loads(ws.recv(timeout=10))["error"]["code"] == -32603
        forged = "ok\nINFO:     127.0.0.1:1 - forged line"
        ws.send(json.dumps({"id": "f", "func": "fail", "args": [forged]}))
        ws.recv(timeout=10)
        time.sleep(1.1)  # the next line is not rate-limited away
        ws.send(json.dumps({"id": "g", "func": "fail", "args": [forged]}))
        ws.recv(timeout=10)
        assert wait_for(lambda: "forged" in server.output(before), 5)
        log = server.output(before)
    assert len(log) < 64 * 1024
    assert not any(line.startswith("INFO:     127.0.0.1:1 - forged") for line in log.splitlines())
    assert "similar suppressed" in log


def test_shutdown_with_half_open_handshakes_exits_cleanly() -> None:
    """SIGTERM while peers hold unfinished handshakes and unfinished messages: exit 0, no traceback."""
    with synapse_serve(app=None) as server:
        partial = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        for sock in partial:
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        raw = RawWebSocket(server.port)
        raw.send(encode_frame(TEXT, b"[", fin=False))
        fds_before = descriptors(server.process.pid)
        time.sleep(0.2)
        status = stop(server)
        output = server.output()
        for sock in partial:
            sock.close()
        raw.close()
    assert fds_before > 5
    assert status == 0, output[-2000:]
    assert "Traceback" not in output and "AssertionError" not in output


def _recv(sock: socket.socket, timeout: float) -> bytes | None:
    """What the socket holds: b"" once the server closed it, None when nothing came in ``timeout``."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None
    except OSError:
        return b""


def test_shutdown_says_what_it_waits_for_and_a_forced_stop_is_not_a_clean_exit() -> None:
    """Ctrl-C with a call in flight logs what the drain waits for; a second Ctrl-C exits 130, not 0."""
    with synapse_serve(app=None) as server, open_ws(server.url) as ws:
        ws.send('{"id": 1, "func": "sleep", "args": [30]}')
        time.sleep(0.3)
        server.process.send_signal(signal.SIGINT)
        assert wait_for(lambda: "draining: waiting up to 5 s for 1 call in flight" in server.output(), 5)
        server.process.send_signal(signal.SIGINT)
        status = server.process.wait(15)
    assert status == 130, server.output()[-2000:]
