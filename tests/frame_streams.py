"""Byte streams of WebSocket frames, and what websockets' sans-I/O protocols make of them (for the differential tests).

A stream is a list of :class:`Spec` (one frame each, written out here by hand, RFC 6455 §5.2, so that no
codec under test builds its own input). :class:`Reference` reads a stream the way websockets' public
sans-I/O API does (``receive_data``, ``events_received``, ``data_to_send``, ``close_sent``), frame by frame,
with each rule by which our endpoints deliberately differ stated once, in one method, with its reason.
tests/test_codec_differential.py feeds the same bytes to our codec, our server and our client and
asserts that they do exactly what the reference says.
"""

from __future__ import annotations

import codecs
import dataclasses
import itertools
import json
from typing import Any

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from synapse_cli.server.transport import MAX_FRAGMENTS

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
RESERVED_OPCODES = (0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF)
LIMIT = 70_000  # max size on every side under test: a 65,536-byte frame (64-bit length) fits, LIMIT + 1 does not
# Close codes a peer may send (RFC 6455 §7.4, IANA registry) and ones it may not (Autobahn 7.9.x, 7.13.x).
VALID_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999)
INVALID_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
# Byte sequences that are never UTF-8 (Autobahn 6.3-6.21): lone and unexpected continuation bytes, impossible
# bytes, overlong forms, surrogates, code points past U+10FFFF, sequences cut short.
INVALID_UTF8 = (
    b"\x80",
    b"\xbf\x80",
    b"\xfe",
    b"\xff",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xf0\x80\x80\xaf",
    b"\xc1\xbf",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xce",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
)


def xor_mask(payload: bytes, key: bytes) -> bytes:
    """``payload`` masked with the 4-byte ``key`` (RFC 6455 §5.3), written out independently of frames.py."""
    stream = (key * (len(payload) // 4 + 1))[: len(payload)]
    return bytes(a ^ b for a, b in zip(payload, stream, strict=True))


@dataclasses.dataclass(frozen=True)
class Spec:
    """One frame as bytes on the wire, any field of it free to break the rules."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0  # RSV1-3 as a 3-bit number
    masked: bool = True  # a client's frame; False: as a server writes it
    width: int = 0  # bytes of extended length: 0 for the minimal encoding, else 2 or 8 (any size may use 8)
    announced: int | None = None  # a length other than the payload's: the header alone is sent (an oversized frame)
    key: bytes = b"\x37\xfa\x21\x3d"

    @property
    def size(self) -> int:
        return len(self.payload) if self.announced is None else self.announced

    @property
    def length_code(self) -> int:
        """The 7-bit length field: the size itself, 126 (16-bit size follows) or 127 (64-bit size follows)."""
        width = self.width or (0 if self.size < 126 else 2 if self.size < 65536 else 8)
        return self.size if width == 0 else 126 if width == 2 else 127

    def encode(self) -> bytes:
        first = (0x80 if self.fin else 0) | self.rsv << 4 | self.opcode
        code = self.length_code
        head = bytes((first, (0x80 if self.masked else 0) | code))
        if code >= 126:
            head += self.size.to_bytes(2 if code == 126 else 8, "big")
        if self.masked:
            head += self.key
        if self.announced is not None:
            return head
        return head + (xor_mask(self.payload, self.key) if self.masked else self.payload)


def encode(specs: list[Spec]) -> bytes:
    return b"".join(spec.encode() for spec in specs)


def takes_a_long_length(spec: Spec) -> bool:
    """A valid control frame but for its length, at most 125 bytes, written in the 16- or 64-bit field.

    RFC 6455 §5.2 requires the minimal length encoding, and a control frame's length is at most 125: our codec
    refuses a control frame with a 16/64-bit length from its first two bytes (1002), whatever the length says;
    websockets checks no length encoding for minimality and reads such a frame as any other.
    """
    return (
        spec.opcode in (CLOSE, PING, PONG)
        and spec.length_code >= 126
        and spec.size <= 125
        and spec.fin
        and not spec.rsv
    )


def fails_on_its_header(spec: Spec) -> bool:
    """Whether our codec refuses ``spec`` from its first two bytes, where websockets reads the whole frame first.

    FrameReader checks RSV1-3, FIN of a control frame and a control frame's 16/64-bit length code as soon as
    the frame's first two bytes are in (fail fast: nothing of such a frame is ever buffered); websockets checks
    the first two only after reading the payload (``Frame.check``), and before that refuses a length over
    ``max_size`` with 1009. So for these frames we answer 1002 earlier, and 1002 where websockets says 1009.
    """
    control = spec.opcode >= CLOSE
    return spec.opcode not in RESERVED_OPCODES and (
        spec.rsv != 0 or (control and not spec.fin) or (control and spec.length_code >= 126)
    )


def differs(reason: str) -> None:
    """Count, in hypothesis' statistics, an example where a documented difference decided the outcome."""
    if currently_in_test_context():
        event(f"differs on purpose: {reason}")


# -- what one side sent, as websockets reads it ---------------------------------------------------------


def frames_sent(data: bytes, *, by_client: bool) -> list[tuple[Any, ...]]:
    """The frames in one side's output, read by websockets as the other side: ("text"|"binary"|"ping"|"pong",
    payload) or ("close", payload). websockets must be able to read every byte of it."""
    reader: Protocol
    if by_client:
        reader = ServerProtocol(state=State.OPEN, max_size=None)
    else:
        reader = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=None)
    reader.receive_data(data)
    names = {Opcode.TEXT: "text", Opcode.BINARY: "binary", Opcode.PING: "ping", Opcode.PONG: "pong"}
    frames: list[tuple[Any, ...]] = []
    for frame in reader.events_received():
        assert frame.fin, f"{frame} is a fragment: our endpoints send whole messages"  # type: ignore[union-attr]
        kind = names.get(frame.opcode, "close")  # type: ignore[union-attr]
        frames.append((kind, bytes(frame.data)))  # type: ignore[union-attr]
    assert reader.close_sent is None or reader.close_sent is reader.close_rcvd, f"unreadable output: {data[:80]!r}"
    return frames


def close_code(payload: bytes) -> int | None:
    """The code of a close frame's payload (None: a close frame without one)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


def code_of(close: int | bytes | None) -> int | None:
    """A close frame's code, given as such or as the payload of an echoed close frame."""
    return close_code(close) if isinstance(close, bytes) else close


# -- the reference -----------------------------------------------------------------------------------------


class Reference:
    """websockets' sans-I/O protocol reading a stream one frame at a time, plus what our endpoints add on purpose.

    ``sent`` is what the endpoint does, in order: ("message", opcode, payload) for each message handed to the
    application, and each frame it writes back (read with :func:`frames_sent`). websockets' sans-I/O layer
    leaves UTF-8 to the connection above it; :meth:`_utf8` is what websockets' own connections do (fail 1007),
    as fragments arrive, with the same incremental decoder they use in ``recv_streaming``.
    """

    def __init__(self, *, server: bool) -> None:
        self.server = server
        self.protocol: Protocol
        if server:
            self.protocol = ServerProtocol(state=State.OPEN, max_size=LIMIT)
        else:
            self.protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=LIMIT)
        self.sent: list[tuple[Any, ...]] = []
        self.delivered_invalid: bytes | None = None  # the client: an invalid text message on_text saw (see _utf8)
        self._message: bytearray | None = None
        self._opcode = TEXT
        self._fragments = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def read(self, specs: list[Spec], *, cut: int | None = None) -> Reference:
        """Feed ``specs`` frame by frame; with ``cut``, only the first ``cut`` bytes, then the end of the stream."""
        offset = 0
        for spec in specs:
            raw = spec.encode()
            start, offset = offset, offset + len(raw)
            if cut is not None:
                raw = raw[: max(0, cut - start)]
            if not raw:
                break
            self._frame(spec, raw)
        if cut is not None:
            self.protocol.receive_eof()
            self._output()
        if currently_in_test_context():
            sent = self.protocol.close_sent
            event(f"closes with {sent.code if sent else 'nothing (EOF)'}, {len(self.messages)} message(s) before")
        return self

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    def _frame(self, spec: Spec, raw: bytes) -> None:
        if self.open and len(raw) >= 2 and fails_on_its_header(spec):
            if takes_a_long_length(spec):
                differs("1002 for a control frame's 16/64-bit length websockets accepts")
            elif len(raw) < len(spec.encode()):
                differs("1002 on a frame's header, before websockets has all of it")
            elif spec.size > self._room():
                differs("1002 on a frame's header where websockets says 1009")
            self._fail(1002)
            return
        if not self.server and self.open and self._client_handles(spec, raw):
            return
        self.protocol.receive_data(raw)
        for frame in self.protocol.events_received():
            opcode = frame.opcode  # type: ignore[union-attr]
            if opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._data(int(opcode), bytes(frame.data), frame.fin)  # type: ignore[union-attr]
        self._output()

    def _room(self) -> int:
        """What websockets lets the next frame hold: ``max_size`` less the unfinished message so far."""
        return LIMIT - (len(self._message) if self._message is not None else 0)

    def _client_handles(self, spec: Spec, raw: bytes) -> bool:
        """The client answers pings and drops pongs itself (wire.py), without websockets: a control frame is not
        part of the message in progress, so it is not held to what that message left of ``max_size`` (websockets
        would fail with 1009 there). Every other control frame goes to websockets as it does in wire.py."""
        if spec.opcode not in (PING, PONG) or len(raw) < len(spec.encode()) or spec.masked or spec.size > LIMIT:
            return False
        if spec.size > self._room():
            differs("the client answers a ping websockets would refuse with 1009")
        if spec.opcode == PING:
            self.sent.append(("pong", spec.payload))
        return True

    def _data(self, opcode: int, data: bytes, fin: bool) -> None:
        if not self.open:
            return
        if opcode != CONT:
            if self.server and opcode == BINARY:  # SPEC §1.3: text frames only; a binary frame closes with 1003
                self._fail(1003)
                return
            self._message, self._opcode, self._fragments = bytearray(), opcode, 0
            self._decoder.reset()
        assert self._message is not None
        self._message += data
        self._fragments += 1
        if self.server and self._fragments > MAX_FRAGMENTS:  # ours: bounded work per message, not only bytes
            self._fail(1009)
            return
        if self._opcode == TEXT and not self._utf8(data, fin):
            return
        if fin:
            self.sent.append(("message", self._opcode, bytes(self._message)))
            self._message = None

    def _utf8(self, data: bytes, fin: bool) -> bool:
        """Text must be UTF-8 (RFC 6455 §8.1): 1007 at the first fragment where the decoder can tell it is not.

        The client hands a whole unfragmented text frame to on_text before checking it (on_text's JSON decoder
        checks UTF-8 anyway, and it has no use for such a message): that message is recorded as seen.
        """
        try:
            self._decoder.decode(data, fin)
        except UnicodeDecodeError:
            if not self.server and fin and self._fragments == 1:
                self.delivered_invalid = bytes(data)
            self._fail(1007)
            return False
        return True

    def _fail(self, code: int) -> None:
        self.protocol.fail(code, "")
        self._output()

    def _output(self) -> None:
        for data in self.protocol.data_to_send():
            self.sent.extend(frames_sent(data, by_client=not self.server) if data else [])

    @property
    def messages(self) -> list[bytes]:
        return [entry[2] for entry in self.sent if entry[0] == "message"]

    @property
    def echoed_close(self) -> bool:
        """Whether the close frame sent (if any) is the echo of the peer's, whose payload is then sent unchanged."""
        return self.protocol.close_rcvd is not None and self.protocol.close_sent is self.protocol.close_rcvd


# -- streams -------------------------------------------------------------------------------------------------

KEYS = st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"]) | st.binary(min_size=4, max_size=4)
WIDTHS = st.sampled_from([0, 0, 0, 0, 2, 8])  # mostly the minimal length encoding; 16- and 64-bit ones for any size
# A control frame with a 16/64-bit length fails at once (takes_a_long_length): rarely, or little else is tested.
CONTROL_WIDTHS = st.sampled_from([0] * 22 + [2, 8])
SIZES = st.sampled_from([None] * 12 + [0, 125, 126, 127, 128, 65535, 65536])  # a payload's length, when it matters


def call(number: int, text: str) -> bytes:
    """A JSON-RPC call of the built-in echo (our server answers it with ``text``)."""
    message = {"jsonrpc": "2.0", "id": number, "method": "echo", "params": [text]}
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


@st.composite
def frame(draw: st.DrawFn, opcode: int, payload: bytes, *, masked: bool, fin: bool = True, rsv: int = 0) -> Spec:
    width = draw(CONTROL_WIDTHS if opcode >= CLOSE else WIDTHS)
    if width == 2 and len(payload) >= 65536:
        width = 8
    return Spec(opcode, payload, fin=fin, rsv=rsv, masked=masked, width=width, key=draw(KEYS) if masked else b"")


@st.composite
def message_payload(draw: st.DrawFn, number: int, *, calls: bool) -> bytes:
    """A text message (a call of echo for our server), sometimes of a boundary length, sometimes not UTF-8."""
    text = draw(st.text(st.characters(codec="utf-8"), max_size=24))
    build = (lambda value: call(number, value)) if calls else (lambda value: value.encode())
    target = draw(SIZES)
    if target is not None and target > len(build(text)):
        text += "x" * (target - len(build(text)))
    payload = build(text)
    bad = draw(st.sampled_from(INVALID_UTF8)) if draw(st.integers(0, 7)) == 0 else None
    if bad is not None:  # inside the echoed string for a call, anywhere for any other text
        low = len(build("")) - 2 if calls else 0
        at = draw(st.integers(low, low + len(text.encode())))
        payload = payload[:at] + bad + payload[at:]
    return payload


@st.composite
def control(draw: st.DrawFn, *, masked: bool, valid: bool = False) -> Spec:
    """A ping or a pong; unless ``valid``, sometimes over 125 bytes (Autobahn 2.5) or fragmented (5.1, 5.2)."""
    opcode = draw(st.sampled_from([PING, PING, PONG]))
    payload = draw(st.binary(max_size=125) | st.sampled_from([b"", b"p" * 125]))
    if not valid and draw(st.integers(0, 9)) == 0:
        payload = draw(st.binary(min_size=126, max_size=130))
    fin = valid or draw(st.integers(0, 9)) != 0
    return draw(frame(opcode, payload, masked=masked, fin=fin))


@st.composite
def close_frame(draw: st.DrawFn, *, masked: bool) -> Spec:
    """A close frame: no payload, one byte, or a valid or invalid code with a valid, invalid or too long reason."""
    kind = draw(st.sampled_from(["empty", "one byte", "code", "code", "code", "code"]))
    if kind == "empty":
        payload = b""
    elif kind == "one byte":
        payload = draw(st.binary(min_size=1, max_size=1))
    else:
        code = draw(st.sampled_from(VALID_CODES) | st.sampled_from(INVALID_CODES))
        reason = draw(st.text(st.characters(codec="utf-8"), max_size=12)).encode()[:123]
        reason = draw(st.sampled_from([reason, reason, b"r" * 123, b"r" * 124, reason + b"\xed\xa0\x80"]))
        payload = code.to_bytes(2, "big") + reason
    return draw(frame(CLOSE, payload, masked=masked))


@st.composite
def message(draw: st.DrawFn, number: int, *, masked: bool, calls: bool, rogue: bool) -> list[Spec]:
    """A message in 1 to 5 fragments (or 1,023-1,025) cut anywhere, even inside a character; between fragments
    pings and pongs, and with ``rogue`` now and then a data frame where a continuation is due (Autobahn 5.18)."""
    opcode = BINARY if draw(st.integers(0, 11)) == 0 else TEXT
    payload = draw(message_payload(number, calls=calls)) if opcode == TEXT else draw(st.binary(max_size=200))
    count = draw(st.sampled_from([1, 1, 1, 1, 1, 2, 2, 3, 5] + ([1023, 1024, 1025] if draw(st.booleans()) else [])))
    if count > 5:
        cuts = [len(payload) * n // count for n in range(1, count)]
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), min_size=count - 1, max_size=count - 1)))
    pieces = [payload[a:b] for a, b in itertools.pairwise([0, *cuts, len(payload)])]
    if count > 5:  # one draw for all of them: a thousand draws would make hypothesis itself the slow part
        key = draw(KEYS) if masked else b""
        return [
            Spec(opcode if n == 0 else CONT, piece, fin=n == count - 1, masked=masked, key=key)
            for n, piece in enumerate(pieces)
        ]
    specs = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        specs.append(draw(frame(opcode if index == 0 else CONT, piece, masked=masked, fin=last)))
        if not last:
            specs += draw(st.lists(control(masked=masked, valid=True), max_size=2))
            if rogue and draw(st.integers(0, 15)) == 0:
                specs.append(draw(frame(draw(st.sampled_from([TEXT, BINARY])), b"rogue", masked=masked)))
    return specs


@st.composite
def violation(draw: st.DrawFn, *, masked: bool, sequencing: bool) -> Spec:
    """A frame that breaks a rule of RFC 6455 §5: reserved bits, a reserved opcode, the wrong masking, a length
    over the limit; with ``sequencing``, a continuation that continues nothing (Autobahn 5.9-5.17)."""
    kinds = ["rsv", "opcode", "mask", "oversized"] + (["continuation"] * 2 if sequencing else [])
    kind = draw(st.sampled_from(kinds))
    opcode = draw(st.sampled_from([TEXT, BINARY, PING, PONG, CLOSE, CONT if sequencing else TEXT]))
    if kind == "rsv":
        return draw(frame(opcode, b"rsv", masked=masked, rsv=draw(st.integers(1, 7))))
    if kind == "opcode":
        return draw(frame(draw(st.sampled_from(RESERVED_OPCODES)), b"opcode", masked=masked, fin=draw(st.booleans())))
    if kind == "mask":
        return draw(frame(TEXT, b"mask", masked=not masked))
    if kind == "oversized":
        announced = draw(st.sampled_from([LIMIT + 1, 2**16 + LIMIT, 2**32, 2**63 - 1, 2**64 - 1]))
        return Spec(draw(st.sampled_from([TEXT, BINARY, PING])), announced=announced, masked=masked, width=8)
    return draw(frame(CONT, b"orphan", masked=masked, fin=draw(st.booleans())))


@st.composite
def streams(draw: st.DrawFn, *, masked: bool, calls: bool = False, semantics: bool = True) -> list[Spec]:
    """Up to 6 items (messages, pings and pongs, violations, close frames), each a frame or a few.

    ``semantics=False`` keeps to what the framing layer alone decides (no close frame, no continuation out of
    place), for comparing the bare codec with websockets.
    """
    specs: list[Spec] = []
    kinds = ["message"] * 4 + ["control", "violation"] + (["close"] if semantics else [])
    for number in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(kinds))
        if kind == "message":
            specs += draw(message(number, masked=masked, calls=calls, rogue=semantics))
        elif kind == "control":
            specs.append(draw(control(masked=masked)))
        elif kind == "violation":
            specs.append(draw(violation(masked=masked, sequencing=semantics)))
        else:
            specs.append(draw(close_frame(masked=masked)))
    return specs
