"""Topics: publish/subscribe over stream functions (SPEC §5).

``prices = registry.topic("prices")`` registers a stream function ``prices``; each call of it is a
subscriber with its own bounded queue, fed by ``await prices.publish(value)``. A subscriber that falls
``queue_size`` items behind is ended with -32004 "subscriber too slow": the publisher never waits for
it and the server never holds more than ``queue_size`` items for it. By default a topic lives in one
process; with a broker (``--broker redis://...``, :mod:`synapse_cli.server.broker`) a publish reaches the
subscribers of every process sharing it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any, Protocol

from synapse_cli.core.errors import RPCError
from synapse_cli.core.protocol import SUBSCRIBER_TOO_SLOW
from synapse_cli.core.settings import DEFAULT_SUBSCRIBER_QUEUE

__all__ = ["DEFAULT_SUBSCRIBER_QUEUE", "Broker", "Subscriber", "Topic"]


class Broker(Protocol):
    """Carries topics between processes (``broker.RedisBroker``)."""

    async def publish(self, topic: str, value: Any) -> int:
        """Send ``value`` to every process's subscribers of ``topic``."""

    async def ready(self) -> None:
        """Return once deliveries flow in this process; raise RPCError -32005 if they cannot."""


class Subscriber:
    """One subscription's queue: bounded, one reader; ended with an error instead of growing."""

    __slots__ = ("items", "limit", "error", "_waiter")

    def __init__(self, limit: int) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.limit = limit
        self.error: RPCError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put(self, value: Any) -> bool:
        """Queue ``value``; False when this subscriber has fallen too far behind (it is ended)."""
        if self.error is not None:
            return True
        if len(self.items) >= self.limit:
            self.fail(RPCError(f"subscriber too slow: {self.limit} items behind", SUBSCRIBER_TOO_SLOW))
            return False
        self.items.append(value)
        self._wake()
        return True

    def fail(self, error: RPCError) -> None:
        """End this subscription with ``error`` (what is still queued is dropped)."""
        if self.error is None:
            self.error = error
            self.items.clear()
            self._wake()

    async def get(self) -> Any:
        while not self.items:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.error is not None:
            raise self.error
        return self.items.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Topic:
    """A named stream of published values; made by :meth:`Registry.topic <synapse_cli.Registry.topic>`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue_size = DEFAULT_SUBSCRIBER_QUEUE
        self.broker: Broker | None = None
        self.subscribers: set[Subscriber] = set()
        self.too_slow = 0  # subscribers ended for falling behind
        self.published = 0

    async def publish(self, value: Any) -> int:
        """Send ``value`` to every subscriber; returns how many received it here (or processes, with a broker)."""
        if self.broker is not None:
            return await self.broker.publish(self.name, value)
        return self.deliver(value)

    def deliver(self, value: Any) -> int:
        """Queue ``value`` for this process's subscribers (a broker calls this for every publish)."""
        self.published += 1
        reached = 0
        for subscriber in list(self.subscribers):
            if subscriber.put(value):
                reached += 1
            else:
                self.too_slow += 1
        return reached

    def fail_all(self, error: RPCError) -> None:
        """End every subscription of this process with ``error`` (the broker connection was lost)."""
        for subscriber in list(self.subscribers):
            subscriber.fail(error)

    async def items(self) -> AsyncIterator[Any]:
        """One subscription: every value published from now on, until the caller stops."""
        if self.broker is not None:
            await self.broker.ready()
        subscriber = Subscriber(self.queue_size)
        self.subscribers.add(subscriber)
        try:
            while True:
                yield await subscriber.get()
        finally:
            self.subscribers.discard(subscriber)
