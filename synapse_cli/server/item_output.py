"""What topic subscriptions and streams write through: the item side of the server's WebSocket protocol.

:class:`ItemOutput` is a base of the protocol class in :mod:`synapse_cli.server.transport`: a topic's
shared payload goes out between one call's framing (:meth:`ItemOutput.write_item`) and every connection
a publish wrote to is flushed by one callback at the end of the loop iteration, not one each; a
subscriber whose peer does not read waits on :meth:`ItemOutput.when_writable`, a stream on
:meth:`ItemOutput.drained`. The state these use is the protocol's own, declared here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mypy_extensions import mypyc_attr
from websockets.protocol import State
from websockets.server import ServerProtocol

from synapse_cli.core.frames import text_header

__all__ = ["FLUSH_AT", "ItemOutput"]

FLUSH_AT = 16 * 1024  # bytes of replies or stream items held for one write before they leave anyway
_OPEN = State.OPEN


@mypyc_attr(allow_interpreted_subclasses=True)
class ItemOutput:
    """The item-writing half of the WebSocket protocol class (its attributes are set by that class)."""

    ws: ServerProtocol
    loop: asyncio.AbstractEventLoop
    _closing: bool
    _writable: bool
    _flush_soon: bool
    _out: list[bytes]
    _out_size: int
    _dirty: list[ItemOutput]  # on the protocol class: connections with topic items to flush this iteration
    _drain_waiters: list[asyncio.Future[None]] | None
    _writable_callbacks: list[Callable[[], None]] | None

    def _flush(self) -> None:
        raise NotImplementedError  # the protocol class writes

    def _end_turn(self) -> None:
        raise NotImplementedError  # the protocol class ends its turn

    @property
    def writable(self) -> bool:
        """True while the peer reads what we write, or the connection is closing (writes are dropped)."""
        return self._writable or self._closing

    def write_item(self, prefix: bytes, payload: bytes, suffix: bytes) -> None:
        """One text message in three parts (a topic's shared payload between this call's framing)."""
        if self.ws.state is not _OPEN or self._closing:
            return
        out = self._out
        size = len(prefix) + len(payload) + len(suffix)
        out.append(text_header(size))
        out.append(prefix)
        out.append(payload)
        out.append(suffix)
        self._out_size += size
        if self._out_size >= FLUSH_AT:
            self._flush()  # the transport may pause writing now: the next item waits for it
        elif not self._flush_soon:
            self._flush_soon = True
            dirty = self._dirty  # one callback for every connection a publish wrote to, not one each
            if not dirty:
                self.loop.call_soon(_end_turns, dirty)
            dirty.append(self)

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the peer reads again (never once closing: the subscription ends with it)."""
        if self._closing:
            return
        if self._writable_callbacks is None:
            self._writable_callbacks = []
        self._writable_callbacks.append(callback)

    async def drained(self) -> None:
        """Return once the transport takes more: a stream sends its next item only then (backpressure)."""
        if self._out_size >= FLUSH_AT:
            self._flush()
        if self._writable or self._closing:
            return
        waiter = self.loop.create_future()
        if self._drain_waiters is None:
            self._drain_waiters = []
        self._drain_waiters.append(waiter)
        await waiter


def _end_turns(connections: list[ItemOutput]) -> None:
    """The end of the loop iteration for every connection a topic's items were written to."""
    batch = connections[:]
    connections.clear()
    for connection in batch:
        connection._end_turn()
