"""WebSocket frames as bytes (RFC 6455 §5): split what arrives into frames, build what leaves.

Pure: no socket, no event loop, no dependency. The server's protocol (``transport.py``) and the client
both use it: a :class:`FrameReader` per connection is fed the bytes as they arrive and hands back
complete :class:`Frame` objects; :func:`encode_frame` builds one frame. Everything a peer can make a
reader hold is bounded where the bytes arrive: a frame that announces more than ``max_size`` bytes
fails before its payload is read, so the buffer never grows past one allowed frame.

Only the framing lives here. What frames *mean* (the closing handshake, pings, fragments, UTF-8) is
decided by the connection that reads them.
"""

from __future__ import annotations

import os

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameError",
    "FrameReader",
    "encode_frame",
    "frame_header",
    "mask_payload",
    "text_header",
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

_SHORT_TEXT_HEADERS = tuple(bytes((0x80 | OP_TEXT, size)) for size in range(126))

PROTOCOL_ERROR = 1002  # RFC 6455 §7.4.1
MESSAGE_TOO_BIG = 1009


class FrameError(Exception):
    """The peer broke the framing rules; ``code`` is the close code to answer with (1002 or 1009).

    ``frames`` holds the complete frames that came before the violation in the same :meth:`FrameReader.feed`:
    they were sent before it, so they are handled before the connection fails.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.frames: list[Frame] = []


class Frame:
    """One complete frame: ``fin``, ``opcode``, ``payload`` (unmasked) and ``raw`` (the bytes as received)."""

    __slots__ = ("fin", "opcode", "payload", "_buffer", "_start", "_end")

    def __init__(self, fin: bool, opcode: int, payload: bytes, buffer: bytes, start: int, end: int) -> None:
        self.fin = fin
        self.opcode = opcode
        self.payload = payload
        self._buffer = buffer  # what the frame was read from; ``raw`` is cut from it only when asked for
        self._start = start
        self._end = end

    @property
    def raw(self) -> bytes:
        """The whole frame as received, header and masking key included (to hand it on unchanged)."""
        return self._buffer[self._start : self._end]

    @property
    def size(self) -> int:
        """The payload's length in bytes."""
        return len(self.payload)

    def __repr__(self) -> str:
        return f"Frame(fin={self.fin}, opcode={self.opcode:#x}, size={self.size})"


def mask_payload(data: bytes | bytearray, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 §5.3); masking and unmasking are the same."""
    size = len(data)
    if not size:
        return b""
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def text_header(size: int) -> bytes:
    """The header of a server's unfragmented text frame of ``size`` bytes (the one nearly every reply has)."""
    return _SHORT_TEXT_HEADERS[size] if size < 126 else frame_header(OP_TEXT, size)


def frame_header(opcode: int, size: int, *, fin: bool = True, mask: bool = False) -> bytes:
    """The header of a frame of ``size`` payload bytes (without the masking key)."""
    first = (0x80 if fin else 0) | opcode
    flag = 0x80 if mask else 0
    if size < 126:
        return bytes((first, flag | size))
    if size < 65536:
        return bytes((first, flag | 126)) + size.to_bytes(2, "big")
    return bytes((first, flag | 127)) + size.to_bytes(8, "big")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False, key: bytes = b"") -> bytes:
    """One frame: a server's frames are sent as they are, a client's are masked (``mask=True``).

    ``key`` is the 4-byte masking key (default: fresh from ``os.urandom``); a client writing many
    frames can draw its keys from a larger block of random bytes instead of one system call each.
    """
    header = frame_header(opcode, len(payload), fin=fin, mask=mask)
    if not mask:
        return header + payload
    key = key or os.urandom(4)
    return header + key + mask_payload(payload, key)


def _first_byte_problem(first: int) -> str | None:
    """What is wrong with a frame's first byte (FIN, RSV1-3, opcode), or None."""
    opcode = first & 0x0F
    if first & 0x70:
        return "reserved bits set (no extension was negotiated)"
    if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
        return f"unknown opcode {opcode:#x}"
    if opcode in _CONTROL_OPCODES and not first & 0x80:
        return "control frames are unfragmented and at most 125 bytes"
    return None


_FIRST_BYTE_PROBLEMS = tuple(_first_byte_problem(first) for first in range(256))
_ZEROS = bytes(14)  # the longest header: 2 bytes, an 8-byte length, a 4-byte masking key


class FrameReader:
    """Splits a byte stream into frames; keeps at most one incomplete frame (bounded by ``max_size``).

    Args:
        masked: True on a server (every client frame must be masked), False on a client (none may be).
        max_size: the largest payload one frame may announce; larger fails with 1009 before it arrives.
    """

    __slots__ = ("masked", "max_size", "missing", "_pending")

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self.masked = masked
        self.max_size = max_size
        self.missing = 0  # bytes the incomplete frame held still needs, when its header is complete (else 0)
        self._pending = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held until the rest arrives."""
        return len(self._pending)

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """The frames completed by ``data`` (possibly none); raises :class:`FrameError` on a bad frame."""
        pending = self._pending
        if pending:
            pending += data  # append, never copy the whole again: a big frame arrives in many reads
            buffer: bytes | bytearray | memoryview = pending
        else:
            buffer = data
        spans: list[tuple[int, int, int, int]] = []  # (first byte, frame start, payload start, end)
        try:
            offset = self._split(buffer, spans)
        except FrameError as exc:  # the frames before it still count; nothing after it is read
            end = spans[-1][3] if spans else 0
            exc.frames = self._frames(bytes(buffer[:end]), spans) if spans else []
            pending.clear()
            raise
        if buffer is pending:
            consumed = bytes(pending[:offset]) if spans else b""
            del pending[:offset]
        else:
            if offset < len(buffer):
                pending += buffer[offset:]
            consumed = buffer if type(buffer) is bytes else bytes(buffer[:offset])
        return self._frames(consumed, spans) if spans else []

    def _frames(self, consumed: bytes, spans: list[tuple[int, int, int, int]]) -> list[Frame]:
        if self.masked and len(spans) == 1:  # a client waiting for each reply: one frame, its payload alone
            first, head, start, end = spans[0]
            payload = mask_payload(consumed[start:end], consumed[start - 4 : start])
            return [Frame(first >= 0x80, first & 0x0F, payload, consumed, head, end)]
        plain = _unmask(consumed, spans) if self.masked else consumed
        return [
            Frame(first >= 0x80, first & 0x0F, plain[start:end], consumed, head, end)
            for first, head, start, end in spans
        ]

    def _split(self, buffer: bytes | bytearray | memoryview, spans: list[tuple[int, int, int, int]]) -> int:
        """Find the complete frames in ``buffer`` (appended to ``spans``); where the incomplete rest begins.

        One loop, no call per frame: a read of pipelined requests holds many small frames.
        """
        masked, max_size = self.masked, self.max_size
        mask_bit = 0x80 if masked else 0
        key_size = 4 if masked else 0
        offset, total = 0, len(buffer)
        self.missing = 0
        while total - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            problem = _FIRST_BYTE_PROBLEMS[first]
            if problem is not None:
                raise FrameError(PROTOCOL_ERROR, problem)
            if second & 0x80 != mask_bit:
                raise FrameError(PROTOCOL_ERROR, "client frames must be masked" if masked else "masked frame")
            length = second & 0x7F
            position = offset + 2
            if length >= 126:
                if first & 0x08:
                    raise FrameError(PROTOCOL_ERROR, "control frames are unfragmented and at most 125 bytes")
                width = 2 if length == 126 else 8
                if total - position < width:
                    break
                length = int.from_bytes(buffer[position : position + width], "big")
                position += width
            if length > max_size:
                raise FrameError(MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds the limit of {max_size}")
            position += key_size
            end = position + length
            if end > total:
                self.missing = end - total
                break
            spans.append((first, offset, position, end))
            offset = end
        return offset


def _unmask(data: bytes, spans: list[tuple[int, int, int, int]]) -> bytes:
    """``data`` with every frame's payload unmasked by its own key (headers left as they are).

    One XOR over the whole read instead of one per frame: the keys, each repeated over its payload,
    and zeros over the headers make one key stream as long as ``data``.
    """
    stream: list[bytes] = []
    previous = 0
    for _first, _head, start, end in spans:
        stream.append(_ZEROS[: start - previous])
        size = end - start
        if size:
            stream.append((data[start - 4 : start] * ((size + 3) >> 2))[:size])
        previous = end
    size = previous
    key = int.from_bytes(b"".join(stream), "little")
    return (int.from_bytes(data[:size], "little") ^ key).to_bytes(size, "little")
