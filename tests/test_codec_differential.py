"""The frame codec, our server and our client against an implementation we did not write: websockets' sans-I/O.

The same byte streams (tests/frame_streams.py: random valid frames, fragmented messages cut anywhere, every
opcode, every length encoding, masked and not, invalid UTF-8 split across fragments, oversized lengths,
reserved bits, control frames between fragments, close frames of every kind, streams cut short) go to
websockets' ``ServerProtocol``/``ClientProtocol`` and to ours: ``FrameReader`` and ``encode_frame`` (no
socket), a real ``synapse`` server on 127.0.0.1 written to by a raw socket, and our client's connection
(``open_websocket``) talking to a raw server. What each delivers, what it writes back (pongs, its close
frame and code) and when it stops (after which frame, or byte) must be what websockets does, except for
the differences our endpoints make on purpose; each is stated once, with its reason, in
``frame_streams.Reference``, and hypothesis ``event``s count how often each one decided an example
(``pytest --hypothesis-show-statistics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RunningServer, running_server
from frame_streams import (
    BINARY,
    CLOSE,
    CONT,
    LIMIT,
    PING,
    PONG,
    TEXT,
    Reference,
    Spec,
    call,
    close_code,
    code_of,
    encode,
    fails_on_its_header,
    frames_sent,
    streams,
    takes_a_long_length,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening import handshake_request
from test_wire import handshake_response
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from synapse_cli.client.wire import open_websocket
from synapse_cli.core.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    encode_frame,
)

TIMEOUT = 5.0  # seconds any exchange may take before the test fails


def bounded(examples: int) -> settings:
    """At most ``examples`` examples, no per-example deadline (sockets on a loaded machine): seconds in all."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


END = Spec(CLOSE, (1000).to_bytes(2, "big") + b"end")  # closes a stream that was not cut short


# -- the codec alone ----------------------------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def codec_outcome(reads: list[bytes], *, masked: bool) -> tuple[list[tuple[int, bool, bytes]], int | None, int | None]:
    """Our FrameReader on ``reads``: the frames, the close code it fails with and the read it fails in."""
    reader = FrameReader(masked=masked, max_size=LIMIT)
    frames: list[tuple[int, bool, bytes]] = []
    for number, data in enumerate(reads):
        try:
            frames += [(frame.opcode, frame.fin, frame.payload) for frame in reader.feed(data)]
        except FrameError as exc:
            frames += [(frame.opcode, frame.fin, frame.payload) for frame in exc.frames]
            return frames, exc.code, number
    return frames, None, None


def websockets_outcome(
    reads: list[bytes], *, masked: bool
) -> tuple[list[tuple[int, bool, bytes]], int | None, int | None]:
    """websockets' protocol of the receiving side on the same reads: the same three things."""
    protocol = ServerProtocol(state=State.OPEN, max_size=LIMIT) if masked else client_protocol(LIMIT)
    frames: list[tuple[int, bool, bytes]] = []
    for number, data in enumerate(reads):
        protocol.receive_data(data)
        frames += [(int(f.opcode), f.fin, bytes(f.data)) for f in protocol.events_received()]  # type: ignore[union-attr]
        if protocol.state is not State.OPEN:
            assert protocol.close_sent is not None
            return frames, protocol.close_sent.code, number
    return frames, None, None


def client_protocol(max_size: int | None) -> ClientProtocol:
    return ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=max_size)


def assert_codec_agrees(specs: list[Spec], cuts: list[int], *, masked: bool) -> None:
    """FrameReader reads what websockets reads, frame for frame, and fails on the same frame with the same code;
    at the same read, except where it fails on a frame's header (``fails_on_its_header``): 1002 as soon as the
    frame's first two bytes are in, where websockets reads on (to 1009 for a length over the limit, or to 1002)."""
    data = encode(specs)
    reads = split(data, cuts)
    ours, our_code, our_read = codec_outcome(reads, masked=masked)
    theirs, their_code, their_read = websockets_outcome(reads, masked=masked)
    if our_code is not None and len(ours) < len(specs) and fails_on_its_header(specs[len(ours)]):
        bad = sum(len(spec.encode()) for spec in specs[: len(ours)])  # where the frame begins
        assert our_code == 1002
        assert our_read == next(n for n, end in enumerate(itertools.accumulate(map(len, reads))) if end >= bad + 2)
        if takes_a_long_length(specs[len(ours)]):  # websockets reads such a control frame as any other
            assert theirs[: len(ours)] == ours
        else:
            assert theirs == ours and their_code in (None, 1002, 1009)
            assert their_read is None or their_read >= our_read
    else:
        assert (ours, our_code, our_read) == (theirs, their_code, their_read)


@bounded(200)
@given(data=st.data(), masked=st.booleans(), cuts=st.lists(st.integers(0, 70_000) | st.integers(0, 300), max_size=6))
def test_the_codec_reads_any_stream_in_any_reads_as_websockets_does(
    data: st.DataObject, masked: bool, cuts: list[int]
) -> None:
    """Random streams (every opcode and length encoding, masks right and wrong, reserved bits, oversized lengths,
    long and fragmented control frames) cut into random reads: FrameReader agrees with websockets."""
    specs = data.draw(streams(masked=masked, semantics=False), label="specs")
    assert_codec_agrees(specs, cuts, masked=masked)


EVERY_ENCODING = [  # one frame of each kind a peer sends, each length encoding among them
    Spec(TEXT, b"", width=0),
    Spec(TEXT, "é✓".encode(), fin=False, width=2),
    Spec(PING, b"p" * 125),
    Spec(CONT, b"x" * 126, fin=False),
    Spec(PONG, b""),
    Spec(CONT, b"y" * 3, width=8),
    Spec(BINARY, b"\x00" * 300, key=b"\x00\x00\x00\x00"),
]
BAD_ENDINGS = {
    "rsv1": Spec(TEXT, b"bad", rsv=4),
    "reserved-opcode": Spec(0xB, b"bad"),
    "unmasked": Spec(TEXT, b"bad", masked=False),
    "long-ping": Spec(PING, b"p" * 126),
    "fragmented-ping": Spec(PING, b"p", fin=False),
    "oversized": Spec(TEXT, announced=LIMIT + 1),
    "oversized-ping": Spec(PING, announced=2**63 - 1, width=8),
    "none": None,
}


@pytest.mark.parametrize("ending", BAD_ENDINGS, ids=list(BAD_ENDINGS))
def test_the_codec_agrees_with_websockets_cut_at_every_offset(ending: str) -> None:
    """A stream of every frame kind and length encoding, ending in each violation, split at every offset
    (and in three reads, at every third offset and 97 bytes on): FrameReader agrees with websockets at each."""
    bad = BAD_ENDINGS[ending]
    specs = EVERY_ENCODING + ([bad] if bad is not None else [])
    size = len(encode(specs))
    for offset in range(size + 1):
        assert_codec_agrees(specs, [offset], masked=True)
        if offset % 3 == 0:
            assert_codec_agrees(specs, [offset, offset + 97], masked=True)


@bounded(100)
@given(
    opcode=st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE]),
    payload=st.binary(max_size=130) | st.sampled_from([b"t" * 65535, b"t" * 65536, b"t" * 70_000]),
    fin=st.booleans(),
    key=st.binary(min_size=4, max_size=4),
)
def test_encode_frame_writes_what_websockets_writes(opcode: int, payload: bytes, fin: bool, key: bytes) -> None:
    """A server's frame from encode_frame is byte for byte websockets' own; a client's (masked) frame reads back
    in websockets exactly, whatever the masking key and length encoding."""
    if opcode >= OP_CLOSE:
        payload, fin = payload[:125], True
    if opcode == OP_CLOSE:
        payload = (1000).to_bytes(2, "big") + bytes(32 + byte % 95 for byte in payload[:123]) if payload else b""
    server = ServerProtocol(state=State.OPEN)
    {
        OP_TEXT: lambda: server.send_text(payload, fin=fin),
        OP_BINARY: lambda: server.send_binary(payload, fin=fin),
        OP_PING: lambda: server.send_ping(payload),
        OP_PONG: lambda: server.send_pong(payload),
        OP_CLOSE: lambda: (
            server.send_close(close_code(payload), payload[2:].decode()) if payload else server.send_close()
        ),
    }[opcode]()
    assert server.data_to_send()[0] == encode_frame(opcode, payload, fin=fin)
    reader = ServerProtocol(state=State.OPEN, max_size=None)
    reader.receive_data(encode_frame(opcode, payload, fin=fin, mask=True, key=key))
    [frame] = reader.events_received()
    assert (int(frame.opcode), frame.fin, bytes(frame.data)) == (opcode, fin, payload)  # type: ignore[union-attr]


# -- the server: a real synapse server on 127.0.0.1, a raw socket writing the stream -------------------------


@pytest.fixture(scope="module")
def limited_server() -> Iterator[RunningServer]:
    """A server with the built-ins and --max-message-size LIMIT (a 64-bit length fits under it)."""
    with running_server(max_message_size=LIMIT) as server:
        yield server


def server_exchange(
    port: int, pieces: list[bytes], *, eof: bool, pause: float = 0.0, receive_buffer: int | None = None
) -> bytes:
    """Write ``pieces`` after the opening handshake (``pause`` seconds apart, so that each is a read of its own),
    half-close when ``eof``, and return every byte the server wrote after its 101 response until it hung up.
    ``receive_buffer``: this socket's SO_RCVBUF (a small one keeps the server's replies in its send queue)."""
    with socket.socket() as sock:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(TIMEOUT)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(handshake_request(port))
        received = bytearray()
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, "the server closed during the handshake"
            received += chunk
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        received = bytearray(rest)
        with contextlib.suppress(OSError):  # the server may close before the end (EPIPE, ECONNRESET, ENOTCONN)
            for piece in pieces:
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)
            if eof:
                sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return bytes(received)


def chopped(data: bytes, size: int | None) -> list[bytes]:
    return [data] if size is None else [data[n : n + size] for n in range(0, len(data), size)]


def reply_to(payload: bytes) -> tuple[Any, ...]:
    """What our server answers a text message with: echo's result for a call of it, else a JSON-RPC error."""
    try:
        message = json.loads(payload)
    except ValueError:
        return ("error", None, -32700)
    if isinstance(message, dict) and message.get("method") == "echo":
        return ("result", message["id"], message["params"][0])
    return ("error", None, -32600)


def server_expectation(reference: Reference) -> list[tuple[Any, ...]]:
    """What the server should write, in order: a reply per message delivered, pongs, its close frame's code
    (its whole payload when it echoes the peer's close)."""
    expected: list[tuple[Any, ...]] = []
    for entry in reference.sent:
        if entry[0] == "message":
            expected.append(reply_to(entry[2]))
        elif entry[0] == "close":
            expected.append(("close", entry[1] if reference.echoed_close else close_code(entry[1])))
        else:
            expected.append(entry)
    return expected


def server_output(data: bytes, reference: Reference) -> list[tuple[Any, ...]]:
    """What the server wrote, in the terms of :func:`server_expectation`."""
    output: list[tuple[Any, ...]] = []
    for kind, payload in frames_sent(data, by_client=False):
        if kind == "text":
            reply = json.loads(payload)
            if "result" in reply:
                output.append(("result", reply["id"], reply["result"]))
            else:
                output.append(("error", reply["id"], reply["error"]["code"]))
        elif kind == "close":
            output.append(("close", payload if reference.echoed_close else close_code(payload)))
        else:
            output.append((kind, payload))
    return output


def assert_server_agrees(
    server: RunningServer,
    specs: list[Spec],
    *,
    cut: int | None = None,
    pause_at: int | None = None,
    chop: int | None = None,
) -> list[tuple[Any, ...]]:
    """The server's output for ``specs`` (whole, then a close; or the first ``cut`` bytes, then EOF) is what the
    reference says; returned, for the named cases to assert their outcome on."""
    stream = specs if cut is not None else [*specs, END]
    reference = Reference(server=True).read(stream, cut=cut)
    data = encode(stream)[:cut] if cut is not None else encode(stream)
    if chop is not None:
        pieces, pause = chopped(data, chop), 0.0002
    else:
        pieces, pause = split(data, [] if pause_at is None else [pause_at]), 0.002 if pause_at is not None else 0.0
    written = server_exchange(server.port, pieces, eof=cut is not None, pause=pause)
    output = server_output(written, reference)
    assert output == server_expectation(reference)
    return output


@bounded(100)
@given(data=st.data(), specs=streams(masked=True, calls=True))
def test_the_server_answers_any_stream_as_websockets_reads_it(
    limited_server: RunningServer, data: st.DataObject, specs: list[Spec]
) -> None:
    """Random client streams to a real server, whole (then a close) or cut at any byte (then EOF), sometimes in
    two reads: a reply for each message websockets delivers, websockets' pongs, its close code, at its moment."""
    size = len(encode(specs))
    cut = data.draw(st.none() | st.none() | st.integers(0, size), label="cut")
    pause_at = data.draw(st.none() | st.none() | st.integers(0, size), label="pause_at")
    assert_server_agrees(limited_server, specs, cut=cut, pause_at=pause_at)


# -- the client: our client's connection to a raw server writing the stream ------------------------------------


class RawServer(asyncio.Protocol):
    """The server's end: answers the handshake, writes the stream, closes once the client's close frame is in."""

    def __init__(self, pieces: list[bytes], *, with_handshake: bool, eof: bool) -> None:
        self.pieces, self.with_handshake, self.eof = pieces, with_handshake, eof
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.received = bytearray()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = ServerProtocol(state=State.OPEN, max_size=None)  # only to tell when the close frame is in

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.head.endswith(b"\r\n\r\n"):
            self.head += data
            if self.head.endswith(b"\r\n\r\n"):
                response = handshake_response(bytes(self.head[:-4]))
                if self.with_handshake and len(self.pieces) == 1:  # the stream in the 101 response's segment
                    response += self.pieces.pop()
                self.transport.write(response)
            return
        self.received += data
        self._reader.receive_data(data)
        if self._reader.state is not State.OPEN:
            self.transport.close()

    async def send(self) -> None:
        assert self.transport is not None
        for piece in self.pieces:
            self.transport.write(piece)
            if len(self.pieces) > 1:
                await asyncio.sleep(0.0002)  # a read of its own
        if self.eof and not self.transport.is_closing():
            self.transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


async def client_exchange(pieces: list[bytes], *, eof: bool, with_handshake: bool) -> tuple[list[bytes], bytes]:
    """Our client's connection reading ``pieces`` from a raw server: the messages on_text saw, the bytes it wrote."""
    loop = asyncio.get_running_loop()
    peer = RawServer(pieces, with_handshake=with_handshake, eof=eof)
    server = await loop.create_server(lambda: peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen: list[bytes] = []

    def on_text(payload: bytes) -> bool:  # as Client's: False for what is no JSON it can use (never invalid UTF-8)
        seen.append(payload)
        try:
            payload.decode()
        except UnicodeDecodeError:
            return False
        return True

    try:
        ws = await open_websocket(
            f"ws://127.0.0.1:{port}/ws",
            headers={},
            ssl_context=None,
            max_size=LIMIT,
            timeout=TIMEOUT,
            on_text=on_text,
            on_lost=lambda reason: None,
        )
        await peer.send()
        await asyncio.wait_for(asyncio.shield(peer.lost), TIMEOUT)
        await asyncio.wait_for(asyncio.shield(ws.closed), TIMEOUT)
    finally:
        server.close()
        await server.wait_closed()
    return seen, bytes(peer.received)


def assert_client_agrees(
    specs: list[Spec], *, cut: int | None = None, with_handshake: bool = False, chop: int | None = None
) -> tuple[list[bytes], list[tuple[Any, ...]]]:
    """What our client hands to on_text and writes back for ``specs`` is what the reference says; returned."""
    stream = specs if cut is not None else [*specs, dataclasses.replace(END, masked=False)]
    reference = Reference(server=False).read(stream, cut=cut)
    data = encode(stream)[:cut] if cut is not None else encode(stream)
    seen, written = asyncio.run(
        client_exchange(chopped(data, chop), eof=cut is not None, with_handshake=with_handshake)
    )
    expected = reference.messages + ([reference.delivered_invalid] if reference.delivered_invalid is not None else [])
    assert seen == expected

    def normal(kind: str, payload: bytes) -> tuple[Any, ...]:
        return (kind, payload if kind != "close" or reference.echoed_close else close_code(payload))

    sent = [normal(kind, payload) for kind, payload in frames_sent(written, by_client=True)]
    assert sent == [normal(*entry) for entry in reference.sent if entry[0] != "message"]
    return seen, sent


@pytest.mark.parametrize(("failing", "code"), [(Spec(BINARY, b"x"), 1003), (Spec(TEXT, b"\xff"), 1007)])
def test_a_peer_still_writing_after_the_failing_frame_reads_the_close_frame(
    limited_server: RunningServer, failing: Spec, code: int
) -> None:
    """A call with a 60 KB reply, the frame that fails the connection, then 20 KB more, to a peer with a small
    receive buffer: it reads the whole reply, then the close frame. The server half-closes after the close
    frame and drops what still arrives until the peer closes: a socket closed with data unread sends a reset,
    and the reset discards what the kernel had not sent yet (the end of the reply, the close frame)."""
    big = call(1, "x" * 60_000)
    flood = [Spec(TEXT, call(number, "y" * 1000)) for number in range(20)]
    for _ in range(3):
        data = encode([Spec(TEXT, big), failing, *flood])
        written = server_exchange(limited_server.port, [data], eof=True, receive_buffer=4096)
        sent = frames_sent(written, by_client=False)
        assert [kind for kind, _ in sent] == ["text", "close"]
        assert json.loads(sent[0][1])["result"] == "x" * 60_000
        assert close_code(sent[1][1]) == code


@bounded(100)
@given(data=st.data(), specs=streams(masked=False))
def test_the_client_reads_any_stream_as_websockets_does(data: st.DataObject, specs: list[Spec]) -> None:
    """Random server streams to our client, whole (then a close) or cut at any byte (then EOF), in the handshake's
    segment or after it: the messages websockets delivers reach on_text, and the client writes websockets'
    pongs and close code."""
    cut = data.draw(st.none() | st.none() | st.integers(0, len(encode(specs))), label="cut")
    assert_client_agrees(specs, cut=cut, with_handshake=data.draw(st.booleans(), label="with_handshake"))


# -- every difference on purpose, asserted exactly against plain websockets ---------------------------------


def websockets_alone(specs: list[Spec], *, server: bool, cut: int | None = None) -> tuple[int, list[tuple[Any, ...]]]:
    """Plain websockets (none of our rules) reading ``specs`` (all at once, then a close unless ``cut``):
    the messages it completes and the frames it writes, as (kind, close code or payload)."""
    protocol = ServerProtocol(state=State.OPEN, max_size=LIMIT) if server else client_protocol(LIMIT)
    stream = [dataclasses.replace(spec, masked=server) for spec in (specs if cut is not None else [*specs, END])]
    protocol.receive_data(encode(stream)[:cut])
    if cut is not None:
        protocol.receive_eof()
    messages = sum(f.fin and f.opcode in (TEXT, BINARY, CONT) for f in protocol.events_received())  # type: ignore[union-attr]
    sent = [frame for data in protocol.data_to_send() if data for frame in frames_sent(data, by_client=not server)]
    return messages, [(kind, close_code(payload) if kind == "close" else payload) for kind, payload in sent]


def our_outcome(
    server: RunningServer | None, specs: list[Spec], *, cut: int | None = None
) -> tuple[int, list[tuple[Any, ...]]]:
    """Our server (``server``) or our client (None) reading the same: the messages it hands on, the frames it
    writes (each checked against the reference first)."""
    if server is not None:
        output = assert_server_agrees(server, specs, cut=cut)
    else:
        seen, output = assert_client_agrees([dataclasses.replace(spec, masked=False) for spec in specs], cut=cut)
    messages = sum(entry[0] in ("result", "error") for entry in output) if server is not None else len(seen)
    frames = [entry for entry in output if entry[0] not in ("result", "error")]
    return messages, [("close", code_of(entry[1])) if entry[0] == "close" else entry for entry in frames]


def outcome(output: list[tuple[Any, ...]]) -> tuple[int, int, int | None]:
    """(messages answered, pongs, close code) from what an endpoint wrote (exactly one close frame)."""
    closes = [entry[1] for entry in output if entry[0] == "close"]
    assert len(closes) == 1, output
    answered = sum(entry[0] in ("result", "error") for entry in output)
    return answered, sum(entry[0] == "pong" for entry in output), code_of(closes[0])


ROOM = LIMIT - 100  # a fragmented message this long leaves websockets 100 bytes of max_size for any next frame
DIFFERENCES = [
    # (name, side, frames, cut, ours, websockets alone): (messages, frames written)
    # SPEC §1.3: the server takes text frames only; websockets would deliver the binary message.
    ("binary message", "server", [Spec(BINARY, b"\x00\x01")], None, (0, [("close", 1003)]), (1, [("close", 1000)])),
    # transport.MAX_FRAGMENTS: the server bounds the work per message, not only its bytes (1,025 empty frames
    # cost as much as 1,025 messages); websockets counts bytes only.
    (
        "1,025 fragments",
        "server",
        [Spec(TEXT, b"[", fin=False)] + [Spec(CONT, b"", fin=False)] * 1023 + [Spec(CONT, b"]")],
        None,
        (0, [("close", 1009)]),
        (1, [("close", 1000)]),
    ),
    # FrameReader refuses reserved bits, and a control frame's 16/64-bit length, from the first two bytes
    # (nothing of such a frame is buffered); websockets first reads the length, and says 1009 when it is over
    # max_size, or reads the whole frame before refusing it with 1002.
    *[
        (name, side, [spec], None, (0, [("close", 1002)]), (0, [("close", 1009)]))
        for name, spec in (
            ("reserved bit on an oversized frame", Spec(TEXT, rsv=4, announced=LIMIT + 1)),
            ("ping announcing 2^63 - 1 bytes", Spec(PING, announced=2**63 - 1, width=8)),
        )
        for side in ("server", "client")
    ],
    # ...and refuses a control frame whose length (at most 125) is written in the 16- or 64-bit field: RFC 6455
    # §5.2 requires the minimal encoding; websockets checks no encoding for minimality, answers the ping.
    *[
        (
            "ping with its length in the 16-bit field",
            side,
            [Spec(PING, b"p", width=2)],
            None,
            (0, [("close", 1002)]),
            (0, [("pong", b"p"), ("close", 1000)]),
        )
        for side in ("server", "client")
    ],
    # ...and so fails at once where websockets waits for the rest of the frame (here: EOF, nothing sent).
    *[
        ("the stream ends in a reserved-bit frame", side, [Spec(TEXT, b"a", rsv=1)], 2, (0, [("close", 1002)]), (0, []))
        for side in ("server", "client")
    ],
    # The client answers pings itself (wire.py): a control frame is not part of the fragmented message around
    # it, so it is not held to what that message left of max_size; websockets fails such a ping with 1009.
    # The server hands every control frame to websockets, and so fails it with 1009 too (inherited, the same).
    (
        "ping past the room a fragmented message left",
        "client",
        [Spec(TEXT, b"x" * ROOM, fin=False), Spec(PING, b"p" * 120), Spec(CONT, b"")],
        None,
        (1, [("pong", b"p" * 120), ("close", 1000)]),
        (0, [("close", 1009)]),
    ),
    (
        "ping past the room a fragmented message left",
        "server",
        [Spec(TEXT, b"x" * ROOM, fin=False), Spec(PING, b"p" * 120), Spec(CONT, b"")],
        None,
        (0, [("close", 1009)]),
        (0, [("close", 1009)]),
    ),
]


@pytest.mark.parametrize(
    ("name", "side", "specs", "cut", "ours", "theirs"),
    DIFFERENCES,
    ids=[f"{side}: {name}" for name, side, *_ in DIFFERENCES],
)
def test_each_difference_from_websockets_is_the_documented_one(
    limited_server: RunningServer,
    name: str,
    side: str,
    specs: list[Spec],
    cut: int | None,
    ours: tuple[int, list[tuple[Any, ...]]],
    theirs: tuple[int, list[tuple[Any, ...]]],
) -> None:
    """Where our server or client deliberately differs from websockets, both do exactly what the comment says."""
    server = limited_server if side == "server" else None
    assert our_outcome(server, specs, cut=cut) == ours
    assert websockets_alone(specs, server=side == "server", cut=cut) == theirs
