"""The client's connection (wire.py on websockets' sans-I/O ClientProtocol + frames.py) and its deadlines.

The server here is a hand-written one on 127.0.0.1: it does the opening handshake itself, unmasks and checks
every frame the client sends, and writes server frames byte for byte as each test needs (split, coalesced,
fragmented, masked, oversized...). Every read has a timeout; every loop a bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from synapse_cli import CallTimeout, Client, ConnectionLost

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
TIMEOUT = 5.0  # seconds any single wait may take before the test fails


# -- frames, as RFC 6455 §5.2 lays them out --------------------------------------------------------------------


def xor_mask(payload: bytes, mask: bytes) -> bytes:
    """``payload`` masked (or unmasked) with the 4-byte ``mask`` (RFC 6455 §5.3), written out independently."""
    size = len(payload)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def server_frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One frame as a server writes it: unmasked unless ``mask`` is given (which a server must never do)."""
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask is not None else 0
    if size < 126:
        head = bytes((first, masked | size))
    elif size < 2**16:
        head = bytes((first, masked | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, masked | 127)) + size.to_bytes(8, "big")
    return head + payload if mask is None else head + mask + xor_mask(payload, mask)


def reply(request_id: int, result: Any) -> bytes:
    """A native reply's JSON, compact."""
    message = {"id": request_id, "result": result, "error": None}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def reply_of_size(request_id: int, size: int) -> tuple[bytes, str]:
    """A reply whose JSON is exactly ``size`` bytes, and the string result it carries."""
    padding = size - len(reply(request_id, ""))
    assert padding >= 0, f"no reply to {request_id} is as short as {size} bytes"
    result = "r" * padding
    payload = reply(request_id, result)
    assert len(payload) == size
    return payload, result


def request(request_id: int, func: str, args: list[Any]) -> bytes:
    """The exact bytes of a native call, as the client encodes it."""
    return json.dumps({"id": request_id, "func": func, "args": args}, separators=(",", ":")).encode()


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


@dataclasses.dataclass(frozen=True)
class Frame:
    """A frame the client sent, with its payload unmasked."""

    fin: bool
    rsv: int
    opcode: int
    length_code: int  # the 7-bit length field: the size itself (0-125), 126 (16-bit size) or 127 (64-bit size)
    mask: bytes | None
    payload: bytes

    def json(self) -> Any:
        assert self.opcode == OP_TEXT, f"expected a text frame, got opcode {self.opcode:#x}"
        return json.loads(self.payload)


def minimal_length_code(size: int) -> int:
    """The 7-bit length field RFC 6455 §5.2 requires for a payload of ``size`` bytes (minimal encoding)."""
    return size if size < 126 else 126 if size < 2**16 else 127


# -- a WebSocket server written by hand ------------------------------------------------------------------------


def accept_value(key: str) -> bytes:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest())


def handshake_response(request_head: bytes) -> bytes:
    """The 101 answer to an opening handshake (RFC 6455 §4.2.2), Sec-WebSocket-Accept computed here."""
    headers = {}
    for line in request_head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert headers.get("upgrade", "").lower() == "websocket", headers
    accept = accept_value(headers["sec-websocket-key"])
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


class Peer(asyncio.Protocol):
    """The server's end of one connection: answers the handshake, then reads and writes raw bytes."""

    def __init__(self, accepted: asyncio.Queue[Peer], after_handshake: bytes) -> None:
        self._accepted = accepted
        self._after_handshake = after_handshake
        self._arrived = asyncio.Event()
        self.transport: Any = None
        self.buffer = bytearray()
        self.chunks: list[bytes] = []  # each read from the socket after the handshake, as it came
        self.upgraded = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.upgraded:
            self.chunks.append(data)
        elif (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            self.transport.write(handshake_response(head) + self._after_handshake)
            self.upgraded = True
            self._accepted.put_nowait(self)
        self._arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._arrived.set()

    async def read_exactly(self, size: int) -> bytes:
        """The next ``size`` bytes from the client."""

        async def arrival() -> None:
            while len(self.buffer) < size:
                if self.lost:
                    raise EOFError(f"the client hung up with {len(self.buffer)} of {size} bytes sent")
                self._arrived.clear()
                await self._arrived.wait()

        await asyncio.wait_for(arrival(), TIMEOUT)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_frame(self) -> Frame:
        """The client's next frame, unmasked."""
        first, second = await self.read_exactly(2)
        length_code = second & 0x7F
        size = length_code
        if length_code == 126:
            size = int.from_bytes(await self.read_exactly(2), "big")
        elif length_code == 127:
            size = int.from_bytes(await self.read_exactly(8), "big")
        mask = await self.read_exactly(4) if second & 0x80 else None
        payload = await self.read_exactly(size)
        if mask is not None:
            payload = xor_mask(payload, mask)
        return Frame(bool(first & 0x80), (first >> 4) & 0x7, first & 0x0F, length_code, mask, payload)

    async def read_call(self) -> dict[str, Any]:
        """The client's next message, a call (or cancel) as JSON."""
        message = (await self.read_frame()).json()
        assert isinstance(message, dict), message
        return message

    async def read_close_code(self) -> int:
        """Read up to the client's close frame; answer it, hang up and return its code."""
        for _ in range(100):
            frame = await self.read_frame()
            if frame.opcode == OP_CLOSE:
                self.write(server_frame(frame.payload[:2], OP_CLOSE))
                self.close()
                return int.from_bytes(frame.payload[:2], "big")
        raise AssertionError("no close frame among the client's next 100 frames")

    def write(self, *data: bytes) -> None:
        """Write ``data`` in one write (usually one TCP segment on loopback)."""
        self.transport.write(b"".join(data))

    async def trickle(self, data: bytes, sizes: Iterator[int], pause: float = 0.001) -> None:
        """Write ``data`` in pieces of the given sizes, pausing between them so each arrives on its own."""
        offset = 0
        while offset < len(data):
            step = next(sizes)
            self.transport.write(data[offset : offset + step])
            offset += step
            await asyncio.sleep(pause)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


@contextlib.asynccontextmanager
async def raw_server(*, after_handshake: bytes = b"", receive_buffer: int | None = None) -> AsyncIterator[Any]:
    """A hand-written WebSocket server on a port of 127.0.0.1 bound here; yields (url, queue of Peers)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[Peer] = asyncio.Queue()
    peers: list[Peer] = []

    def new_peer() -> Peer:
        peers.append(Peer(accepted, after_handshake))
        return peers[-1]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:  # set before listen(): accepted sockets inherit it, window scaling included
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind(("127.0.0.1", 0))
    server = await loop.create_server(new_peer, sock=sock)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws", accepted
    finally:
        for peer in peers:
            peer.close()
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def connected(
    *, after_handshake: bytes = b"", receive_buffer: int | None = None, **options: Any
) -> AsyncIterator[tuple[Client, Peer]]:
    """A Client (``timeout`` 5 s unless given) connected to a raw server, and the server's end of it."""
    async with raw_server(after_handshake=after_handshake, receive_buffer=receive_buffer) as (url, accepted):
        client = Client(url, **{"timeout": TIMEOUT, **options})
        await asyncio.wait_for(client.connect(), TIMEOUT)
        peer: Peer | None = None
        try:
            peer = await asyncio.wait_for(accepted.get(), TIMEOUT)
            yield client, peer
        finally:
            if peer is not None:
                peer.close()  # hang up first: nobody would answer the client's closing handshake
            await asyncio.wait_for(client.close(), TIMEOUT)


async def settled(awaitable: Any) -> Any:
    """``awaitable``'s result, failing the test if it takes longer than the read timeout."""
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def failure(awaitable: Any) -> BaseException:
    """The exception ``awaitable`` raises (within the read timeout); fails the test when it returns."""
    try:
        value = await asyncio.wait_for(awaitable, TIMEOUT)
    except asyncio.TimeoutError:
        raise AssertionError(f"still waiting after {TIMEOUT} s") from None
    except Exception as exc:  # which exception is what the caller asserts
        return exc
    raise AssertionError(f"expected a failure, got {value!r}")


async def eventually(predicate: Any, timeout: float = TIMEOUT) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class Records(logging.Handler):
    """Every record logged on one logger, whatever the logging configuration of the session did to it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno >= level]


@pytest.fixture
def client_log() -> Iterator[Records]:
    """What the client logs on ``synapse.client`` during the test."""
    logger = logging.getLogger("synapse.client")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_accept_value_matches_the_rfc_example() -> None:
    """The hand-written handshake computes RFC 6455 §1.3's example Sec-WebSocket-Accept."""
    assert accept_value("dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# -- receiving: complete, split and coalesced frames -----------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "piece"),
    [(60, 1), (300, 1), (70_000, 997)],
    ids=["7-bit-length-byte-by-byte", "16-bit-length-byte-by-byte", "64-bit-length-in-997-byte-pieces"],
)
async def test_reply_split_across_many_writes_resolves(size: int, piece: int) -> None:
    """A reply written a byte (or a few hundred) at a time resolves exactly, only once its last byte is in."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f", "split"))
        assert await peer.read_call() == {"id": 1, "func": "f", "args": ["split"]}
        payload, result = reply_of_size(1, size)
        data = server_frame(payload)
        await peer.trickle(data[:-1], iter(lambda: piece, 0))
        await asyncio.sleep(0.02)
        assert not call.done(), "the call resolved before its reply's last byte arrived"
        peer.write(data[-1:])
        assert await settled(call) == result
        follow_up = asyncio.ensure_future(client.call("f", "next"))
        assert (await peer.read_call())["id"] == 2
        peer.write(server_frame(reply(2, "after")))
        assert await settled(follow_up) == "after"


async def test_frame_boundaries_anywhere_in_the_stream() -> None:
    """Three replies cut at every header offset and at random points (seeded) all resolve exactly."""
    async with connected() as (client, peer):
        calls = [asyncio.ensure_future(client.call("f", n)) for n in (1, 2, 3)]
        assert [(await peer.read_call())["id"] for _ in calls] == [1, 2, 3]
        replies = [reply_of_size(1, 40), reply_of_size(2, 300), reply_of_size(3, 70_000)]
        frames = [server_frame(payload) for payload, _ in replies]
        starts = [0, len(frames[0]), len(frames[0]) + len(frames[1])]
        stream = b"".join(frames)
        rng = random.Random(20240501)
        cuts = {start + offset for start in starts for offset in range(1, 11)}  # every header byte
        cuts |= {rng.randrange(1, len(stream)) for _ in range(60)}
        points = [0, *sorted(cuts), len(stream)]
        for begin, end in zip(points, points[1:], strict=False):
            peer.write(stream[begin:end])
            await asyncio.sleep(0.001)
        assert await settled(asyncio.gather(*calls)) == [result for _, result in replies]


async def test_several_replies_in_one_write_all_resolve() -> None:
    """Ten replies of mixed sizes (40 B to 70 kB) written in one write each resolve their own call."""
    async with connected() as (client, peer):
        calls = [asyncio.ensure_future(client.call("f", n)) for n in range(10)]
        requests = [await peer.read_call() for _ in calls]
        assert [r["id"] for r in requests] == list(range(1, 11))
        sizes = [40, 125, 126, 300, 40, 65_535, 50, 65_536, 60, 70_000]
        replies = [reply_of_size(r["id"], size) for r, size in zip(requests, sizes, strict=True)]
        peer.write(*(server_frame(payload) for payload, _ in replies))
        assert await settled(asyncio.gather(*calls)) == [result for _, result in replies]


@pytest.mark.parametrize(
    ("size", "length_code"), [(125, 125), (126, 126), (300, 126), (65_535, 126), (65_536, 127), (70_000, 127)]
)
async def test_each_payload_length_encoding_resolves_exactly(size: int, length_code: int) -> None:
    """Replies with 7-bit, 16-bit and 64-bit payload lengths, at the boundaries, resolve to the exact result."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert await peer.read_call() == {"id": 1, "func": "f", "args": []}
        payload, result = reply_of_size(1, size)
        data = server_frame(payload)
        assert data[1] == length_code  # the frame written really uses that encoding
        peer.write(data)
        assert await settled(call) == result


# -- receiving: what is left to websockets ---------------------------------------------------------------------


async def test_fragmented_reply_is_assembled() -> None:
    """A reply sent as a text frame with FIN=0 then a continuation frame with FIN=1 resolves."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f", "fragments"))
        assert (await peer.read_call())["id"] == 1
        payload = reply(1, {"parts": ["one", "two"], "n": 2})
        peer.write(server_frame(payload[:10], OP_TEXT, fin=False), server_frame(payload[10:], OP_CONTINUATION))
        assert await settled(call) == {"parts": ["one", "two"], "n": 2}
        after = asyncio.ensure_future(client.call("f", "after"))
        assert (await peer.read_call())["id"] == 2
        peer.write(server_frame(reply(2, "plain")))
        assert await settled(after) == "plain"


async def test_fragments_cut_inside_a_character_with_a_ping_between_them() -> None:
    """Three fragments cut inside a UTF-8 character, a ping between them, written a byte at a time: one reply."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        payload = reply(1, "naïve café ✓")
        cut = payload.index("é".encode()) + 1  # between the two bytes of é
        stream = b"".join(
            [
                server_frame(payload[:5], OP_TEXT, fin=False),
                server_frame(payload[5:cut], OP_CONTINUATION, fin=False),
                server_frame(b"mid-message", OP_PING),
                server_frame(payload[cut:], OP_CONTINUATION),
            ]
        )
        await peer.trickle(stream, iter(lambda: 1, 0))
        assert await settled(call) == "naïve café ✓"
        pong = await peer.read_frame()
        assert (pong.opcode, pong.fin, pong.payload) == (OP_PONG, True, b"mid-message")
        assert pong.mask is not None


async def test_ping_between_replies_is_answered_with_its_payload() -> None:
    """A ping from the server gets a masked pong with the same payload; the replies around it resolve."""
    async with connected() as (client, peer):
        first = asyncio.ensure_future(client.call("f", 1))
        assert (await peer.read_call())["id"] == 1
        peer.write(server_frame(reply(1, "one")))
        assert await settled(first) == "one"
        peer.write(server_frame(b"are you there?", OP_PING))
        pong = await peer.read_frame()
        assert (pong.fin, pong.rsv, pong.opcode, pong.payload) == (True, 0, OP_PONG, b"are you there?")
        assert pong.mask is not None
        second = asyncio.ensure_future(client.call("f", 2))
        assert (await peer.read_call())["id"] == 2
        peer.write(server_frame(b"\x00\xffbinary ping", OP_PING), server_frame(reply(2, "two")))  # one segment
        assert await settled(second) == "two"
        pong = await peer.read_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"\x00\xffbinary ping")


async def test_binary_frame_reply_resolves() -> None:
    """A reply carried in a binary frame is delivered by websockets to the reader loop and resolves."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(server_frame(reply(1, {"binary": True}), OP_BINARY))
        assert await settled(call) == {"binary": True}


async def test_server_close_frame_after_a_reply_in_the_same_segment() -> None:
    """A reply then a close (1001) in one segment: the reply resolves, the other call fails, the close is echoed."""
    async with connected() as (client, peer):
        answered = asyncio.ensure_future(client.call("f", 1))
        orphan = asyncio.ensure_future(client.call("f", 2))
        assert [(await peer.read_call())["id"] for _ in range(2)] == [1, 2]
        peer.write(server_frame(reply(1, "made it")), server_frame(close_payload(1001, "bye"), OP_CLOSE))
        assert await settled(answered) == "made it"
        assert await peer.read_close_code() == 1001
        error = await failure(orphan)
        assert type(error) is ConnectionLost
        assert "1001" in str(error)


async def test_malformed_json_is_logged_once_then_counted(client_log: Records) -> None:
    """Frames that are not replies are ignored: one warning, then a count at close; the next good reply resolves."""
    bad = [b'{"id":1,', b"not json", b'{"hello":1}', b"[1,2]", b'"a string"', b'{"id":1,"error":"boom"}']
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        for payload in bad:
            peer.write(server_frame(payload))
        await asyncio.sleep(0.05)
        assert not call.done()
        peer.write(server_frame(b"\x80 also not json", OP_BINARY), server_frame(reply(1, "good")))
        assert await settled(call) == "good"
        assert len(client_log.messages()) == 1
        assert "not a reply" in client_log.messages()[0]
        await client.close()
    assert client_log.messages()[1:] == ["ignored 7 messages in all that were not replies"]


# -- receiving: protocol violations close the connection -------------------------------------------------------


async def test_invalid_utf8_text_frame_closes_with_1007() -> None:
    """A text frame that is not UTF-8 closes the connection with 1007; every pending call gets ConnectionLost."""
    async with connected() as (client, peer):
        calls = [asyncio.ensure_future(client.call("f", n)) for n in (1, 2)]
        assert [(await peer.read_call())["id"] for _ in calls] == [1, 2]
        peer.write(server_frame(b'{"id":1,"result":"\xff\xfe","error":null}'))
        assert await peer.read_close_code() == 1007
        for call in calls:
            error = await failure(call)
            assert type(error) is ConnectionLost
            assert "1007" in str(error)
        assert not client.connected


@pytest.mark.parametrize(
    "frame",
    [
        server_frame(reply(1, "masked"), mask=b"\x01\x02\x03\x04"),
        server_frame(b"x" * 300, mask=b"\x00\x00\x00\x00"),
        server_frame(b"ping", OP_PING, mask=b"\x09\x08\x07\x06"),
    ],
    ids=["masked-reply", "masked-16-bit-length", "masked-ping"],
)
async def test_masked_server_frame_closes_with_1002(frame: bytes) -> None:
    """A masked frame from the server is a protocol error: close 1002, the call fails (its masked reply is unused)."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(frame)
        assert await peer.read_close_code() == 1002
        error = await failure(call)
        assert type(error) is ConnectionLost
        assert "1002" in str(error)


@pytest.mark.parametrize(
    "frame",
    [
        bytes((0x80 | 0x40 | OP_TEXT,)) + server_frame(reply(1, "rsv1"))[1:],
        server_frame(reply(1, "reserved opcode"), 0x3),
        server_frame(b"half a ping", OP_PING, fin=False),
        server_frame(b"p" * 126, OP_PING),
        server_frame(reply(1, "orphan"), OP_CONTINUATION),
    ],
    ids=["rsv1-text", "reserved-opcode", "fragmented-ping", "126-byte-ping", "continuation-first"],
)
async def test_frames_left_to_websockets_keep_its_rules(frame: bytes) -> None:
    """Frames the client does not take itself still meet websockets' checks: each of these closes with 1002."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(frame)
        assert await peer.read_close_code() == 1002
        assert type(await failure(call)) is ConnectionLost


async def test_reply_of_exactly_max_message_size_resolves_one_byte_more_closes_with_1009() -> None:
    """max_message_size=1000: a 1000-byte reply resolves; a 1001-byte one closes with 1009 and ConnectionLost."""
    async with connected(max_message_size=1000) as (client, peer):
        fits = asyncio.ensure_future(client.call("f", "fits"))
        assert (await peer.read_call())["id"] == 1
        payload, result = reply_of_size(1, 1000)
        peer.write(server_frame(payload))
        assert await settled(fits) == result
        too_big = asyncio.ensure_future(client.call("f", "too big"))
        assert (await peer.read_call())["id"] == 2
        peer.write(server_frame(reply_of_size(2, 1001)[0]))
        assert await peer.read_close_code() == 1009
        error = await failure(too_big)
        assert type(error) is ConnectionLost
        assert "1009" in str(error)


@pytest.mark.parametrize("how", ["header-first", "fragmented", "64-bit-length"])
async def test_reply_over_max_message_size_closes_with_1009(how: str) -> None:
    """An oversized reply (header alone first, in two fragments each under the limit, or 70 kB) closes with 1009."""
    async with connected(max_message_size=1000) as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        if how == "header-first":
            data = server_frame(reply_of_size(1, 5000)[0])
            peer.write(data[:4])  # the size is known from the header: no need to wait for the payload
        elif how == "fragmented":
            payload = reply_of_size(1, 1200)[0]
            peer.write(server_frame(payload[:600], OP_TEXT, fin=False), server_frame(payload[600:], OP_CONTINUATION))
        else:
            peer.write(server_frame(reply_of_size(1, 70_000)[0]))
        assert await peer.read_close_code() == 1009
        error = await failure(call)
        assert type(error) is ConnectionLost


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY], ids=["text", "binary"])
async def test_reply_with_an_id_that_is_not_a_valid_key_is_ignored(opcode: int) -> None:
    """A reply whose id is an array or an object matches no call: the connection and other calls carry on."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(server_frame(b'{"id":[1],"result":"list id","error":null}', opcode))
        peer.write(server_frame(b'{"id":{"n":1},"result":"object id","error":null}', opcode))
        await asyncio.sleep(0.05)
        assert not call.done(), f"the pending call ended: {call.exception()!r}"
        assert client.connected
        assert not peer.lost, "the client dropped the connection"
        peer.write(server_frame(reply(1, "good")))
        assert await settled(call) == "good"


async def test_a_boolean_id_answers_no_call() -> None:
    """{"id": true} is not id 1 (True == 1 in Python): the call stays pending until its own reply."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(server_frame(b'{"id":true,"result":"bool id","error":null}'))
        await asyncio.sleep(0.05)
        assert not call.done()
        peer.write(server_frame(reply(1, "good")))
        assert await settled(call) == "good"


async def test_a_whole_text_frame_inside_a_fragmented_message_closes_with_1002() -> None:
    """A complete text frame where a continuation is due breaks RFC 6455 §5.4: close 1002, as websockets rules."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(server_frame(b'{"id":1,"res', fin=False))
        peer.write(server_frame(reply(1, "interleaved")))
        assert await peer.read_close_code() == 1002
        assert type(await failure(call)) is ConnectionLost


async def test_bytes_websockets_holds_after_the_handshake_leave_the_stream_to_it() -> None:
    """Half a ping in the handshake's segment: websockets parses everything after, pings and replies included."""
    ping = server_frame(b"early", OP_PING)
    async with connected(after_handshake=ping[:3]) as (client, peer):
        peer.write(ping[3:])
        pong = await peer.read_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"early")
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        payload, result = reply_of_size(1, 300)
        await peer.trickle(server_frame(payload), iter(lambda: 7, 0))
        assert await settled(call) == result


# -- sending -----------------------------------------------------------------------------------------------------


async def test_outgoing_frames_are_masked_final_text_frames_with_minimal_lengths() -> None:
    """Calls leave as FIN text frames, masked with a fresh key each, the length in its minimal encoding."""
    async with connected() as (client, peer):
        sizes = [125, 126, 200, 65_535, 65_536, 70_000]  # sizes of the whole request, not just the argument
        masks = []
        for request_id, size in enumerate(sizes, start=1):
            argument = "a" * (size - len(request(request_id, "f", [""])))
            call = asyncio.ensure_future(client.call("f", argument))
            frame = await peer.read_frame()
            assert frame.payload == request(request_id, "f", [argument])
            assert len(frame.payload) == size
            assert (frame.fin, frame.rsv, frame.opcode) == (True, 0, OP_TEXT)
            assert frame.length_code == minimal_length_code(size)
            assert frame.mask is not None
            masks.append(frame.mask)
            peer.write(server_frame(reply(request_id, size)))
            assert await settled(call) == size
        calls = [asyncio.ensure_future(client.call("f", n)) for n in range(40)]
        for n in range(40):
            frame = await peer.read_frame()
            assert frame.json() == {"id": len(sizes) + 1 + n, "func": "f", "args": [n]}
            assert frame.mask is not None
            masks.append(frame.mask)
            peer.write(server_frame(reply(len(sizes) + 1 + n, n)))
        assert await settled(asyncio.gather(*calls)) == list(range(40))
    assert len(set(masks)) == len(masks) == 46  # 32-bit random keys: a repeat is a 1-in-10^7 event, not luck


async def test_fifty_calls_in_one_iteration_leave_in_one_write_and_are_routed_by_id() -> None:
    """gather() of 50 calls: one segment reaches the server; replies in reverse order each find their call."""
    async with connected() as (client, peer):
        calls = asyncio.gather(*(client.call("f", n, {"n": n}) for n in range(50)))
        requests = [await peer.read_call() for _ in range(50)]
        assert requests == [{"id": n + 1, "func": "f", "args": [n, {"n": n}]} for n in range(50)]
        assert len(peer.chunks) == 1, f"the 50 calls came in {len(peer.chunks)} reads, not one"
        for message in reversed(requests):
            peer.write(server_frame(reply(message["id"], {"square": message["args"][0] ** 2})))
        assert await settled(calls) == [{"square": n * n} for n in range(50)]


async def test_calls_past_the_write_high_water_mark_go_through_websockets_intact() -> None:
    """While the socket's buffer holds over 64 KiB, calls wait in websockets' send; every frame arrives whole."""
    async with connected(receive_buffer=4096) as (client, peer):
        client._ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        peer.transport.pause_reading()
        first = [asyncio.ensure_future(client.call("f", n, "x" * 20_000)) for n in range(10)]
        await asyncio.sleep(0.05)
        assert client._ws.transport.get_write_buffer_size() > 2**16  # the condition under test holds
        later = [asyncio.ensure_future(client.call("f", n, "y" * 30_000)) for n in range(10, 15)]
        await asyncio.sleep(0.05)
        assert not any(call.done() for call in first + later)
        peer.transport.resume_reading()
        seen = []
        for _ in range(15):
            frame = await peer.read_frame()
            assert (frame.fin, frame.opcode, frame.mask is not None) == (True, OP_TEXT, True)
            message = frame.json()
            n = message["args"][0]
            assert message == {"id": n + 1, "func": "f", "args": [n, ("x" * 20_000) if n < 10 else ("y" * 30_000)]}
            seen.append(n)
            peer.write(server_frame(reply(message["id"], n)))
        assert sorted(seen) == list(range(15))
        assert await settled(asyncio.gather(*first, *later)) == list(range(15))


async def test_fresh_masks_past_the_first_batch_of_random_bytes() -> None:
    """1,100 calls (past the 1,024 masks of one 4 KiB os.urandom batch) all arrive intact, with fresh masks."""
    async with connected() as (client, peer):
        calls = asyncio.gather(*(client.call("f", n) for n in range(1100)))
        masks = []
        for n in range(1100):
            frame = await peer.read_frame()
            assert frame.payload == request(n + 1, "f", [n])
            assert frame.mask is not None and len(frame.mask) == 4
            masks.append(frame.mask)
        peer.write(*(server_frame(reply(n + 1, -n)) for n in range(1100)))
        assert await settled(calls) == [-n for n in range(1100)]
    # 1,100 random 32-bit keys: a repeat or two is possible; a batch reused or a key stuck is not.
    assert len(set(masks)) >= 1095
    assert all(a != b for a, b in zip(masks, masks[1:], strict=False))


# -- timeouts ----------------------------------------------------------------------------------------------------


async def test_unanswered_call_times_out_sends_cancel_and_ignores_the_late_reply(client_log: Records) -> None:
    """No reply in 0.05 s: CallTimeout, worded, not early nor 0.5 s late; cancel is sent; a late reply is dropped."""
    async with connected(timeout=0.05) as (client, peer):
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = asyncio.ensure_future(client.call("f", "slow"))
        assert await peer.read_call() == {"id": 1, "func": "f", "args": ["slow"]}
        error = await failure(call)
        elapsed = loop.time() - started
        assert type(error) is CallTimeout
        assert str(error) == "no reply to f within 0.05 s"
        assert 0.05 <= elapsed < 0.5, elapsed
        assert await peer.read_call() == {"op": "cancel", "id": 1}
        peer.write(server_frame(reply(1, "late")))
        mine = asyncio.ensure_future(client.call("f", "mine"))
        assert (await peer.read_call())["id"] == 2
        peer.write(server_frame(reply(2, "mine")))
        assert await settled(mine) == "mine"
        assert client.connected
    assert client_log.messages() == []  # a late reply is not a malformed one


async def test_cancelled_call_sends_cancel_and_its_reply_is_dropped() -> None:
    """Cancelling a call (asyncio.wait_for past its bound) sends one cancel for its id; its late reply is dropped."""
    async with connected() as (client, peer):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.call("f", "wait"), 0.05)
        assert await peer.read_call() == {"id": 1, "func": "f", "args": ["wait"]}
        assert await peer.read_call() == {"op": "cancel", "id": 1}
        peer.write(server_frame(reply(1, "late")))
        mine = asyncio.ensure_future(client.call("f", "mine"))
        assert await peer.read_call() == {"id": 2, "func": "f", "args": ["mine"]}
        peer.write(server_frame(reply(2, "mine")))
        assert await settled(mine) == "mine"


async def test_calls_timing_out_together_each_get_their_error_and_cancel() -> None:
    """Five calls sharing a deadline slot all time out, each with its own cancel; an answered one is unaffected."""
    async with connected(timeout=0.1) as (client, peer):
        calls = [asyncio.ensure_future(client.call("g", n)) for n in range(6)]
        requests = [await peer.read_call() for _ in calls]
        assert [r["id"] for r in requests] == [1, 2, 3, 4, 5, 6]
        peer.write(server_frame(reply(6, "answered")))
        outcomes = await settled(asyncio.gather(*calls, return_exceptions=True))
        assert outcomes[5] == "answered"
        assert [type(outcome) for outcome in outcomes[:5]] == [CallTimeout] * 5
        assert {str(outcome) for outcome in outcomes[:5]} == {"no reply to g within 0.1 s"}
        cancels = [await peer.read_call() for _ in range(5)]
        assert sorted(c["id"] for c in cancels) == [1, 2, 3, 4, 5]
        assert all(c == {"op": "cancel", "id": c["id"]} for c in cancels)


# -- a hostile server: every failure is at once, every wait bounded (issues 11 and 17) -------------------------


def elapsed_since(start: float) -> float:
    """Seconds of the running loop's clock since ``start``."""
    return asyncio.get_running_loop().time() - start


async def test_a_frame_announcing_2_63_bytes_fails_the_calls_at_once_with_1009() -> None:
    """A header announcing 2^63 bytes: ConnectionLost naming the client's limit at once, close 1009 sent."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        start = asyncio.get_running_loop().time()
        peer.write(bytes((0x81, 127)) + (2**63).to_bytes(8, "big"))
        error = await failure(call)
        assert elapsed_since(start) < 0.5
        assert type(error) is ConnectionLost
        assert str(error) == "connection lost: the reply is over the client's limit of 16777216 bytes (close code 1009)"
        assert await peer.read_close_code() == 1009


async def test_a_50_mib_reply_fails_at_once_and_close_does_not_wait_for_the_server() -> None:
    """A 50 MiB reply (over the 16 MiB default): fails on its header; close() then takes ≤ CLOSE_TIMEOUT."""
    from synapse_cli.client.wire import CLOSE_TIMEOUT

    assert CLOSE_TIMEOUT <= 1.0
    async with raw_server() as (url, accepted):
        client = Client(url, timeout=5)
        await client.connect()
        peer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        start = asyncio.get_running_loop().time()
        peer.write(bytes((0x81, 127)) + (50 * 2**20).to_bytes(8, "big") + b"x" * 65536)
        assert "1009" in str(await failure(call))
        await client.close()  # the peer never answers the close frame, nor closes TCP
        assert elapsed_since(start) < CLOSE_TIMEOUT + 0.5


async def test_a_text_frame_that_is_not_utf8_fails_at_once_with_1007() -> None:
    """Invalid UTF-8 in a text frame: ConnectionLost at once, close 1007."""
    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        start = asyncio.get_running_loop().time()
        peer.write(server_frame(b'{"id":1,"result":"\xff\xfe","error":null}'))
        error = await failure(call)
        assert elapsed_since(start) < 0.5
        assert str(error) == "connection lost: invalid UTF-8 in a text message (close code 1007)"
        assert await peer.read_close_code() == 1007


async def test_a_close_frame_with_tcp_kept_open_fails_every_pending_call_at_once() -> None:
    """A close frame, then TCP left open: each pending call fails at once, code and reason in the message."""
    async with raw_server() as (url, accepted):
        client = Client(url, timeout=5)
        await client.connect()
        peer = await asyncio.wait_for(accepted.get(), TIMEOUT)
        calls = [asyncio.ensure_future(client.call("f", i)) for i in range(3)]
        for _ in calls:
            await peer.read_call()
        start = asyncio.get_running_loop().time()
        peer.write(server_frame(close_payload(1012, "restarting"), OP_CLOSE))
        errors = [await failure(call) for call in calls]
        assert elapsed_since(start) < 0.5
        assert {str(e) for e in errors} == {
            "connection closed by the server with close code 1012 (service restart): restarting"
        }
        assert all(type(e) is ConnectionLost for e in errors)
        await client.close()  # the peer keeps TCP open: the client drops it after CLOSE_TIMEOUT
        assert elapsed_since(start) < 1.5
        assert await eventually(lambda: peer.lost)


async def test_a_silent_peer_is_bounded_by_the_client_timeout() -> None:
    """TCP accepted, no handshake answer: connect() fails after the client's own timeout, not 10 s."""
    from synapse_cli import ConnectError

    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        start = loop.time()
        with pytest.raises(ConnectError, match="no answer to the opening handshake in time"):
            await Client(f"ws://127.0.0.1:{port}/ws", timeout=0.3).connect()
        assert 0.25 < elapsed_since(start) < 1.0
    finally:
        server.close()
        await server.wait_closed()


async def test_an_error_naming_no_call_fails_the_only_call_in_flight() -> None:
    """{"id": null, "error": ...} with one call in flight: that call fails with the error at once."""
    from synapse_cli import RPCError

    async with connected() as (client, peer):
        call = asyncio.ensure_future(client.call("f"))
        assert (await peer.read_call())["id"] == 1
        peer.write(server_frame(b'{"id":null,"result":null,"error":{"code":-32700,"message":"parse error"}}'))
        error = await failure(call)
        assert type(error) is RPCError and (error.code, error.message) == (-32700, "parse error")


async def test_an_error_naming_no_call_among_several_is_logged(client_log: Records) -> None:
    """{"id": null, "error": ...} with two calls in flight: a warning says so; the calls carry on to their replies."""
    async with connected() as (client, peer):
        calls = [asyncio.ensure_future(client.call("f", i)) for i in range(2)]
        for _ in calls:
            await peer.read_call()
        peer.write(server_frame(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}'))
        assert await eventually(lambda: bool(client_log.messages()))
        assert client_log.messages() == [
            "the server answered an error naming no call (parse error, code -32700); 2 calls in flight wait "
            "for their own replies or their timeout"
        ]
        peer.write(server_frame(reply(1, "a")), server_frame(reply(2, "b")))
        assert [await settled(call) for call in calls] == ["a", "b"]


async def test_a_ping_flood_while_the_server_does_not_read_is_bounded() -> None:
    """Unasked pings from a server that reads nothing: pongs are dropped, the write buffer stays bounded."""
    from synapse_cli.client.wire import HIGH_WATER

    async with connected(receive_buffer=4096) as (client, peer):
        peer.transport.pause_reading()  # the server stops reading what the client writes
        assert client._ws is not None and client._ws.transport is not None
        client._ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ping = server_frame(b"p" * 125, OP_PING)
        for _ in range(40):
            peer.write(ping * 500)  # 20,000 pings, 2.5 MiB of pongs if each were answered
            await asyncio.sleep(0.002)
        ws = client._ws
        assert ws is not None
        assert await eventually(lambda: ws.dropped_pongs > 0)
        assert ws.transport is not None and ws.transport.get_write_buffer_size() <= 2 * HIGH_WATER + 256
        assert ws.open  # still usable once the server reads again
