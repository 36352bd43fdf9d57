"""The WebSocket frames the client writes and reads itself, around ``websockets`` (RFC 6455 §5).

``websockets``' own path costs more per message than the rest of a call: an async context manager, a
frame object and a syscall per message sent; a generator-based parser and a queue per message received.
:class:`ClientFrames` builds masked text frames (the client coalesces them per loop iteration) and
:func:`fast_connection` takes complete text frames before websockets' parser. Everything else stays
websockets' (the handshake, control frames, fragments, closing), so its rules apply unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from websockets.protocol import State

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask as _apply_mask

__all__ = ["ClientFrames", "fast_connection"]

_OPEN, _CONNECTING = State.OPEN, State.CONNECTING


@functools.cache
def fast_connection() -> Any:
    """``websockets``' client connection, handing complete text frames to ``on_text`` as they arrive.

    ``websockets`` parses each frame with a generator and queues each message for ``recv``: more than
    the rest of a call's cost. While the connection is open, complete unfragmented text frames go
    straight to ``on_text``; everything else (control frames, fragments, binary, frames ``on_text``
    refuses) is fed to ``websockets`` whole, frame by frame, so its rules (pings, close, UTF-8, sizes)
    apply unchanged. Anything unexpected (a masked or oversized frame, websockets holding part of a
    frame) hands the rest of the stream to ``websockets`` for good.
    """
    from websockets.asyncio.client import ClientConnection

    class FastClientConnection(ClientConnection):
        on_text: Callable[[bytes | bytearray], bool] | None = None
        _fast = True
        _fragments = False  # websockets is assembling a fragmented message: every frame is its

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._partial = bytearray()  # the start of a frame still arriving

        def data_received(self, data: bytes) -> None:
            if not self._fast or self.on_text is None or self.protocol.state is _CONNECTING:
                return self._pass_on(data)  # given up already, or the handshake is not over
            if self.protocol.state is not _OPEN:
                return self._give_up(data)  # closing: websockets decides
            if not self._partial and getattr(getattr(self.protocol, "reader", None), "buffer", True):
                return self._give_up(data)  # websockets holds part of a frame (or we cannot tell)
            if self._partial:  # a frame arriving in pieces: append, never copy the whole again
                self._partial += data
                buffer: bytes | bytearray = self._partial
            else:
                buffer = data
            taken = self._take_frames(buffer)
            if buffer is self._partial:
                del self._partial[:taken]
            elif taken < len(buffer):
                self._partial = bytearray(buffer[taken:])

        def _give_up(self, data: bytes) -> None:
            """From here on the stream is websockets'."""
            self._fast = False
            self._pass_on(data)

        def _pass_on(self, data: bytes) -> None:
            """Feed ``data`` to websockets, after what we held of a frame."""
            if self._partial:
                data, self._partial = bytes(self._partial) + data, bytearray()
            super().data_received(data)

        def _take_frames(self, buffer: bytes | bytearray) -> int:
            """Handle each complete frame in ``buffer``; return how many bytes they took."""
            offset, end_of_data = 0, len(buffer)
            # websockets >= 15 names it max_message_size; unknown: 0, so every frame goes to websockets
            limit = getattr(self.protocol, "max_message_size", getattr(self.protocol, "max_size", 0))
            while end_of_data - offset >= 2:
                first, second = buffer[offset], buffer[offset + 1]
                size, head = second & 0x7F, 2
                if size >= 126:
                    head = 4 if size == 126 else 10
                    if end_of_data - offset < head:
                        break
                    size = int.from_bytes(buffer[offset + 2 : offset + head], "big")
                if second & 0x80 or (limit is not None and size > limit) or self.protocol.state is not _OPEN:
                    # A server must not mask; oversized; closing: websockets decides, from here on.
                    self._fast = False
                    super().data_received(bytes(buffer[offset:]))
                    return end_of_data
                end = offset + head + size
                if end > end_of_data:
                    break
                if first != 0x81 or self._fragments or not self.on_text(buffer[offset + head : end]):  # type: ignore[misc]
                    if first & 0x0F in (0, 1, 2):  # data frames: is a fragmented message in progress?
                        self._fragments = not first & 0x80
                    super().data_received(bytes(buffer[offset:end]))  # FIN text frames only, no RSV bits
                offset = end
            return offset

    return FastClientConnection


_SHORT_HEADS = [bytes((0x81, 0x80 | size)) for size in range(126)]  # FIN, text, masked, 7-bit length


class ClientFrames:
    """Unfragmented masked text frames (RFC 6455 §5.2-5.3), as a client must send them.

    Masks come from ``os.urandom`` 4 KiB at a time rather than one call per frame.
    """

    __slots__ = ("_masks", "_offset")

    def __init__(self) -> None:
        self._masks = b""
        self._offset = 4096

    def text(self, data: bytes) -> bytes:
        offset = self._offset
        if offset >= 4096:
            self._masks, offset = os.urandom(4096), 0
        mask = self._masks[offset : offset + 4]
        self._offset = offset + 4
        size = len(data)
        if size < 126:
            head = _SHORT_HEADS[size]
        elif size < 65536:
            head = b"\x81\xfe" + size.to_bytes(2, "big")
        else:
            head = b"\x81\xff" + size.to_bytes(8, "big")
        return head + mask + _apply_mask(data, mask)
