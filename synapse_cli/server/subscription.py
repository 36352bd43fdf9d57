"""A topic subscription over one connection: each publish's shared bytes, framed for this call, written now.

A publish is encoded once by its :class:`~synapse_cli.core.topics.Topic`; :class:`LinkSink` puts this call's
own prefix and suffix around those bytes (what the session words: ``{"id": X, "item": ...}`` or the
``rpc.item`` notification of its subscription) and writes them straight to the connection while it
takes more, with no queue, no task and no encoding per subscriber. When the connection does not take
more, the topic keeps the subscriber's place and the link calls it back once it does. A subscription to
a topic with a history first gets its *opening*, the message saying the position it starts after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from synapse_cli.server.metrics import Metrics

__all__ = ["DRAIN_EVERY", "DrainSink", "ItemLink", "LinkSink", "PlainLink"]

DRAIN_EVERY = 16  # items a DrainSink writes before it waits for its link to drain

Opening = Callable[[int], bytes]  # the message saying where a subscription starts (Session.start_message)


@runtime_checkable
class ItemLink(Protocol):
    """What a subscription needs of a connection's link (``connection.Link`` has it)."""

    @property
    def writable(self) -> bool:
        """True while the peer takes more (or the connection is closing: writes are dropped)."""

    def write_item(self, prefix: bytes, payload: bytes, suffix: bytes) -> None:
        """Queue one text message made of three parts, in order with everything else written."""

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the peer takes more."""


class LinkSink:
    """The :class:`~synapse_cli.core.topics.Sink` of one subscription: its link and its call's framing."""

    __slots__ = ("link", "prefix", "suffix", "metrics", "framing", "opening")

    def __init__(self, link: ItemLink, prefix: bytes, suffix: bytes, metrics: Metrics | None, opening: Opening) -> None:
        self.link = link
        self.prefix = prefix
        self.suffix = suffix
        self.metrics = metrics
        self.framing = len(prefix) + len(suffix)
        self.opening = opening

    def offer(self, payload: bytes) -> bool:
        """Write the item now if the connection takes it; False when it does not (nothing is written)."""
        link = self.link
        if not link.writable:
            return False
        link.write_item(self.prefix, payload, self.suffix)
        metrics = self.metrics
        if metrics is not None:
            metrics.items_out += 1
            metrics.sent(self.framing + len(payload))
        return True

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the connection takes more."""
        self.link.when_writable(callback)

    def start(self, position: int) -> None:
        """Write where the subscription starts (before any item: it is written whether or not the peer takes more)."""
        self.link.write_item(self.opening(position), b"", b"")


class PlainLink(Protocol):
    """A link that only writes whole messages and says when it drained (``connection.Link``)."""

    def write(self, data: bytes) -> None: ...

    def drained(self) -> Awaitable[None]: ...


class DrainSink:
    """The sink over a link that is not an :class:`ItemLink` (a mounted ASGI app's): one message per
    item, and no more items while the link drains what it was given."""

    __slots__ = ("link", "prefix", "suffix", "metrics", "opening", "_pending", "_draining", "_callbacks")

    def __init__(
        self, link: PlainLink, prefix: bytes, suffix: bytes, metrics: Metrics | None, opening: Opening
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.suffix = suffix
        self.metrics = metrics
        self.opening = opening
        self._pending = 0  # items written since the link last said it drained
        self._draining: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []

    def offer(self, payload: bytes) -> bool:
        if self._pending >= DRAIN_EVERY:
            return False
        data = self.prefix + payload + self.suffix
        self.link.write(data)
        self._pending += 1
        if self.metrics is not None:  # as LinkSink counts
            self.metrics.items_out += 1
            self.metrics.sent(len(data))
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return True

    def when_writable(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def start(self, position: int) -> None:
        self.link.write(self.opening(position))

    async def _drain(self) -> None:
        try:
            await self.link.drained()
        finally:
            self._draining = None
            self._pending = 0
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
