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
]

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

PROTOCOL_ERROR = 1002  # RFC 6455 §7.4.1
MESSAGE_TOO_BIG = 1009


class FrameError(Exception):
    """The peer broke the framing rules; ``code`` is the close code to answer with (1002 or 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Frame:
    """One complete frame: ``fin``, ``opcode``, and its bytes (``payload`` unmasked, ``raw`` as received)."""

    __slots__ = ("fin", "opcode", "raw", "_start", "_mask")

    def __init__(self, fin: bool, opcode: int, raw: bytes, start: int, mask: bytes | None) -> None:
        self.fin = fin
        self.opcode = opcode
        self.raw = raw  # the whole frame, header included (to hand it on unchanged)
        self._start = start  # where the payload begins in ``raw``
        self._mask = mask

    @property
    def payload(self) -> bytes:
        """The application data, unmasked."""
        data = self.raw[self._start :]
        return mask_payload(data, self._mask) if self._mask else data

    @property
    def size(self) -> int:
        """The payload's length in bytes."""
        return len(self.raw) - self._start

    def __repr__(self) -> str:
        return f"Frame(fin={self.fin}, opcode={self.opcode:#x}, size={self.size})"


def mask_payload(data: bytes | bytearray, mask: bytes) -> bytes:
    """``data`` XOR the 4-byte ``mask`` repeated (RFC 6455 §5.3); masking and unmasking are the same."""
    size = len(data)
    if not size:
        return b""
    key = (mask * ((size + 3) >> 2))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


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


class FrameReader:
    """Splits a byte stream into frames; keeps at most one incomplete frame (bounded by ``max_size``).

    Args:
        masked: True on a server (every client frame must be masked), False on a client (none may be).
        max_size: the largest payload one frame may announce; larger fails with 1009 before it arrives.
    """

    __slots__ = ("masked", "max_size", "_pending")

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self.masked = masked
        self.max_size = max_size
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
        frames: list[Frame] = []
        offset = 0
        total = len(buffer)
        while total - offset >= 2:
            end = self._next(buffer, offset, total, frames)
            if end < 0:
                break
            offset = end
        if buffer is pending:
            del pending[:offset]
        elif offset < total:
            pending += buffer[offset:]
        return frames

    def _next(self, buffer: bytes | bytearray | memoryview, offset: int, total: int, frames: list[Frame]) -> int:
        """Parse the frame at ``offset`` into ``frames``; its end, or -1 when it is not complete yet."""
        first, second = buffer[offset], buffer[offset + 1]
        opcode = first & 0x0F
        if first & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if bool(second & 0x80) is not self.masked:
            raise FrameError(PROTOCOL_ERROR, "client frames must be masked" if self.masked else "masked frame")
        fin = bool(first & 0x80)
        length = second & 0x7F
        position = offset + 2
        if opcode in _CONTROL_OPCODES and (length > 125 or not fin):
            raise FrameError(PROTOCOL_ERROR, "control frames are unfragmented and at most 125 bytes")
        if length >= 126:
            width = 2 if length == 126 else 8
            if total - position < width:
                return -1
            length = int.from_bytes(buffer[position : position + width], "big")
            position += width
        if length > self.max_size:
            raise FrameError(MESSAGE_TOO_BIG, f"frame of {length} bytes exceeds the limit of {self.max_size}")
        mask = None
        if self.masked:
            if total - position < 4:
                return -1
            mask = bytes(buffer[position : position + 4])
            position += 4
        end = position + length
        if end > total:
            return -1
        raw = bytes(buffer[offset:end]) if offset or end != total or type(buffer) is not bytes else buffer
        frames.append(Frame(fin, opcode, raw, position - offset, mask))
        return end
