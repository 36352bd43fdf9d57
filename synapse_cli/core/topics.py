"""Topics: publish/subscribe over stream functions (SPEC §5), each publish encoded once.

``prices = registry.topic("prices")`` registers a stream function ``prices``; each call of it is a
:class:`Subscriber`, fed by ``await prices.publish(value)``. A publish is serialized once
(:class:`Published`) and the same bytes go to every subscriber's :class:`Sink`: the connection puts its
own prefix (the call's id, or its JSON-RPC subscription) in front, so nothing is encoded per subscriber.
A subscriber whose connection takes the item now gets it written at once, with no queue and no task
switch; one whose connection does not is *behind*: it keeps only its place (a position), the topic
keeps the items it still needs, and it catches up when its connection can take more. A subscriber
more than ``limit`` items behind (``--subscriber-queue``, or the topic's history when that is longer:
those items are kept anyway) is ended with -32004 "subscriber too slow"; the publisher never waits
for it and the topic never keeps more than ``limit`` items.

``registry.topic("prices", history=100)`` keeps the last 100 items (``ttl=``: none older than that):
each item carries its position (1, 2, 3... per topic) on the wire, and a subscriber that passes
``since=<position>`` gets every item after it, then the live ones, with no gap and no duplicate, or
-32006 "history lost" when the topic no longer holds them. Such a subscription is told first where it
starts (:meth:`Sink.start`: ``since``, or the latest position), so a subscriber that received nothing yet
can resume too. By default a topic lives in one process;
with a broker (``--broker redis://...``, :mod:`synapse_cli.server.broker`) a publish reaches the
subscribers of every process sharing it, and the history lives there.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import orjson
from pydantic import Field, NonNegativeInt

from synapse_cli.core.encoding import dump_json
from synapse_cli.core.errors import RPCError
from synapse_cli.core.protocol import HISTORY_LOST, SUBSCRIBER_TOO_SLOW
from synapse_cli.core.settings import DEFAULT_SUBSCRIBER_QUEUE

# The parameter of a topic with a history (its schema's description is what /docs shows beside the field).
Since = Annotated[
    NonNegativeInt | None,
    Field(description="The position of the last item received: the kept items after it come first (none: from now)."),
]

__all__ = ["DEFAULT_SUBSCRIBER_QUEUE", "Broker", "Published", "Sink", "Subscriber", "Topic", "history_lost"]


@dataclass(slots=True)
class Published:
    """One published item, encoded once for every subscriber.

    Attributes:
        position: its place in the topic (1, 2, 3, ...).
        body: the value as JSON.
        payload: what every subscriber's item carries after its own prefix: ``body``, then
            ``,"position":N`` when the topic keeps a history (see :func:`~synapse_cli.core.encoding.item_framing`).
        time: when it was published here (``time.monotonic``), for the history's ``ttl``.
    """

    position: int
    body: bytes
    payload: bytes
    time: float


class Broker(Protocol):
    """Carries topics between processes (``broker.RedisBroker``)."""

    async def publish(self, topic: Topic, body: bytes) -> int:
        """Send ``body`` (a value as JSON) to every process's subscribers of ``topic``."""

    async def ready(self) -> None:
        """Return once deliveries flow in this process; raise RPCError -32005 if they cannot."""

    async def replay(self, topic: Topic, since: int) -> list[tuple[int, bytes]]:
        """The items of ``topic`` after position ``since`` (position, body); RPCError -32006 when lost."""

    async def latest(self, topic: Topic) -> int:
        """The latest position of ``topic`` (a topic with a history), the same in every process."""


class Sink(Protocol):
    """Where a subscriber's items go: its connection (``server/subscription.py``), or a queue."""

    def offer(self, payload: bytes) -> bool:
        """Send one item now if the connection can take it; False when it cannot (it is not sent)."""

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the connection can take more."""

    def start(self, position: int) -> None:
        """Say where the subscription starts (a topic with a history), before any item: after ``position``."""


class Subscriber:
    """One subscription: its sink, its place when behind, and how it ended (``ended`` is done, ``error`` set)."""

    __slots__ = ("topic", "sink", "cursor", "backlog", "error", "ended", "replaying", "stalled")

    def __init__(self, topic: Topic, sink: Sink) -> None:
        self.topic = topic
        self.sink = sink
        self.cursor = 0  # behind: the position it needs next
        self.backlog: collections.deque[Published] | None = None  # replayed from a broker, not sent yet
        self.error: RPCError | None = None
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.replaying = False  # a broker's replay is on its way: hold on to the items, send nothing yet
        self.stalled = False  # behind and waiting for its sink's ``when_writable`` callback

    def fail(self, error: RPCError) -> None:
        """End this subscription with ``error`` (what it has not received yet is dropped)."""
        if self.error is None:
            self.error = error
            self.topic.unsubscribe(self)
            if not self.ended.done():
                self.ended.set_result(None)  # whoever waits on it raises ``error``

    def resume(self) -> None:
        """The connection can take more: catch up (the sink's ``when_writable`` callback)."""
        self.stalled = False
        self.topic.catch_up(self)


class Topic:
    """A named stream of published values; made by :meth:`Registry.topic <synapse_cli.Registry.topic>`.

    Args:
        name: the topic's name (its stream function's).
        history: items kept for subscribers that pass ``since`` (0: none; items then carry no position).
        ttl: seconds an item stays in the history (None: until ``history`` newer ones push it out).
        encode: a value as JSON, or None when it cannot be (the item type's encoder).
        clock: seconds, for ``ttl``.
    """

    def __init__(
        self,
        name: str,
        *,
        history: int = 0,
        ttl: float | None = None,
        encode: Callable[[Any], bytes | None] = dump_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if type(history) is not int or history < 0:
            raise ValueError(f"topic {name!r}: history must be a number of items >= 0, not {history!r}")
        if ttl is not None and (not history or not ttl > 0):
            raise ValueError(f"topic {name!r}: ttl needs history=N (the most items kept) and must be > 0 seconds")
        self.name = name
        self.history = history
        self.ttl = ttl
        self.encode = encode
        self.clock = clock
        self.queue_size = DEFAULT_SUBSCRIBER_QUEUE
        self.broker: Broker | None = None
        self.subscribers: set[Subscriber] = set()
        self.live: set[Subscriber] = set()  # caught up: each publish is offered to them at once
        self.behind: set[Subscriber] = set()  # waiting for their connection: they read from ``kept``
        self.kept: collections.deque[Published] = collections.deque()  # positions without a gap
        self.position = 0  # the latest position published here
        self.too_slow = 0  # subscribers ended for falling behind
        self.published = 0

    @property
    def limit(self) -> int:
        """Items a subscriber may fall behind before it is ended (-32004)."""
        return max(self.queue_size, self.history)

    # -- publishing ----------------------------------------------------------------------------------

    async def publish(self, value: Any) -> int:
        """Send ``value`` to every subscriber; how many received it here (or processes, with a broker).

        Raises ValueError for a value JSON cannot carry (nobody's subscription ends for it).
        """
        body = self.encode(value)
        if body is None:
            raise ValueError(
                f"cannot publish {type(value).__name__} to {self.name!r}: JSON cannot carry it "
                "(NaN, Infinity, a set, 64+ bit integers, nesting deeper than 64, not the topic's item type?)"
            )
        if self.broker is not None:
            return await self.broker.publish(self, body)
        return self.deliver(body)

    def deliver(self, body: bytes, position: int | None = None) -> int:
        """Send ``body`` (JSON) to this process's subscribers; a broker passes the ``position`` it gave it.

        Returns how many subscribers received it or will (those behind but still within the limit).
        """
        if position is None:
            position = self.position + 1
        elif position != self.position + 1 and self.kept:
            self.kept.clear()  # a gap (the broker came back): what is kept no longer runs up to it
        self.position = position
        self.published += 1
        payload = body + b',"position":%d' % position if self.history else body
        item = Published(position, body, payload, self.clock())
        self.kept.append(item)
        reached = 0
        stalled: list[Subscriber] | None = None
        for subscriber in self.live:
            if subscriber.sink.offer(payload):
                reached += 1
            elif stalled is None:
                stalled = [subscriber]
            else:
                stalled.append(subscriber)
        if stalled is not None:
            for subscriber in stalled:
                self._fall_behind(subscriber, position)
        if self.behind:
            reached += self._check_behind(position)
        self._trim()
        return reached

    def _fall_behind(self, subscriber: Subscriber, cursor: int) -> None:
        self.live.discard(subscriber)
        self.behind.add(subscriber)
        subscriber.cursor = cursor
        subscriber.stalled = True
        subscriber.sink.when_writable(subscriber.resume)

    def _check_behind(self, position: int) -> int:
        """End the subscribers now more than ``limit`` behind; how many are still within it."""
        limit = self.limit
        within = 0
        for subscriber in list(self.behind):
            waiting = position - subscriber.cursor + 1 + (len(subscriber.backlog) if subscriber.backlog else 0)
            if waiting > limit:
                self.too_slow += 1
                subscriber.fail(self._too_slow())
                continue
            within += 1
            if subscriber.cursor == position and not subscriber.stalled:  # it waited for this item to arrive here
                self.catch_up(subscriber)
        return within

    def _too_slow(self) -> RPCError:
        return RPCError(f"subscriber too slow: {self.limit} items behind", SUBSCRIBER_TOO_SLOW)

    def _trim(self) -> None:
        """Keep the history and what the subscribers behind still need, nothing more."""
        kept = self.kept
        floor = self.position - self.history + 1
        if self.behind:
            floor = min(floor, min(subscriber.cursor for subscriber in self.behind))
        while kept and kept[0].position < floor:
            kept.popleft()
        if self.ttl is not None:
            expired = self.clock() - self.ttl
            needed = min((subscriber.cursor for subscriber in self.behind), default=self.position + 1)
            while kept and kept[0].time < expired and kept[0].position < needed:
                kept.popleft()

    def fail_all(self, error: RPCError) -> None:
        """End every subscription of this process with ``error`` (the broker connection was lost)."""
        for subscriber in list(self.subscribers):
            subscriber.fail(error)

    # -- subscribing ---------------------------------------------------------------------------------

    def since_of(self, args: Sequence[Any], kwargs: dict[str, Any]) -> int | None:
        """The ``since`` of a call of this topic's stream function (its one parameter)."""
        if args:
            return args[0]  # type: ignore[no-any-return]
        return kwargs.get("since")

    async def subscribe(self, sink: Sink, since: int | None = None) -> Subscriber:
        """A new subscription over ``sink``: the items after position ``since`` (None: from now on).

        Raises RPCError -32006 when the history no longer holds them, -32005 when the broker is away.
        """
        if self.broker is None:
            return self.open(sink, since)
        await self.broker.ready()
        if since is None:
            if not self.history:
                return self.open(sink, None)
            since = await self.broker.latest(self)  # this process may not have seen the latest yet
        subscriber = self._attach(sink, self.position + 1, since)
        subscriber.replaying = True  # what arrives meanwhile is kept for it
        try:
            entries = await self.broker.replay(self, since)
        except BaseException:
            self.unsubscribe(subscriber)
            raise
        subscriber.replaying = False
        if subscriber.error is None:
            self._replayed(subscriber, since, entries)
        return subscriber

    def open(self, sink: Sink, since: int | None = None) -> Subscriber:
        """Subscribe from this process's own history (no broker); see :meth:`subscribe`."""
        if since is None or since == self.position:
            subscriber = self._attach(sink, 0, self.position)
            self.live.add(subscriber)
            return subscriber
        oldest = self.oldest()
        if since > self.position or since + 1 < oldest:
            raise history_lost(self.name, since, oldest, self.position)
        subscriber = self._attach(sink, since + 1, since)
        self.catch_up(subscriber)
        return subscriber

    def oldest(self) -> int:
        """The oldest position a subscriber can still be sent (the latest + 1 when none is kept)."""
        kept = self.kept
        if not self.history or not kept:
            return self.position + 1
        if self.ttl is None:
            return max(kept[0].position, self.position - self.history + 1)
        expired = self.clock() - self.ttl
        for item in kept:
            if item.time >= expired:
                return max(item.position, self.position - self.history + 1)
        return self.position + 1

    def _attach(self, sink: Sink, cursor: int, start: int) -> Subscriber:
        """A new subscriber (behind, from ``cursor``, when it is not 0), told first that it starts after ``start``."""
        subscriber = Subscriber(self, sink)
        if self.history:
            sink.start(start)
        self.subscribers.add(subscriber)
        if cursor:
            subscriber.cursor = cursor
            self.behind.add(subscriber)
        return subscriber

    def _replayed(self, subscriber: Subscriber, since: int, entries: list[tuple[int, bytes]]) -> None:
        """A broker's replay came back: send it, then what arrived here after it, then live items."""
        now = self.clock()
        suffix = b',"position":%d'
        backlog = collections.deque(
            Published(position, body, body + suffix % position, now) for position, body in entries if position > since
        )
        last = backlog[-1].position if backlog else since
        subscriber.backlog = backlog or None
        subscriber.cursor = max(subscriber.cursor, last + 1)
        self.catch_up(subscriber)

    def catch_up(self, subscriber: Subscriber) -> None:
        """Send a subscriber behind what it missed while its connection takes it; live again once caught up."""
        if subscriber.error is not None or subscriber.replaying or subscriber not in self.behind:
            return
        sink = subscriber.sink
        backlog = subscriber.backlog
        while backlog:
            if not sink.offer(backlog[0].payload):
                subscriber.stalled = True
                sink.when_writable(subscriber.resume)
                return
            backlog.popleft()
        subscriber.backlog = None
        if subscriber.cursor > self.position + 1:
            return  # a broker's replay ran ahead of what reached this process: its next items come here first
        kept = self.kept
        start = kept[0].position if kept else self.position + 1
        if subscriber.cursor < start:
            self.too_slow += 1
            subscriber.fail(self._too_slow())
            return
        for index in range(subscriber.cursor - start, len(kept)):
            item = kept[index]
            if not sink.offer(item.payload):
                subscriber.cursor = item.position
                subscriber.stalled = True
                sink.when_writable(subscriber.resume)
                return
        self.behind.discard(subscriber)
        self.live.add(subscriber)
        subscriber.cursor = 0
        self._trim()

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget ``subscriber``: it is sent nothing more."""
        self.subscribers.discard(subscriber)
        self.live.discard(subscriber)
        if subscriber in self.behind:
            self.behind.discard(subscriber)
            self._trim()

    def stream_function(self) -> Callable[..., AsyncIterator[Any]]:
        """The stream function a subscriber calls (``since=`` when the topic keeps a history).

        Made here, not in the (compiled) registry: pydantic reads its signature, and it is an async
        generator, which mypyc does not compile.
        """
        topic = self
        if self.history:

            async def subscribe(since: Since = None) -> AsyncIterator[Any]:
                async for value in topic.items(since):
                    yield value

            return subscribe

        async def subscribe_live() -> AsyncIterator[Any]:
            async for value in topic.items():
                yield value

        return subscribe_live

    async def items(self, since: int | None = None) -> AsyncIterator[Any]:
        """One subscription in this process: every value published from now on (or after ``since``)."""
        queue = _QueueSink(self.queue_size)
        subscriber = await self.subscribe(queue, since)
        try:
            while True:
                yield await queue.get(subscriber)
        finally:
            self.unsubscribe(subscriber)


def history_lost(topic: str, since: int, oldest: int, latest: int) -> RPCError:
    """-32006 for ``since``, with the oldest position still held and the latest in ``data``."""
    if since > latest:
        why = f"position {since} is ahead of the latest, {latest} (the history was reset)"
    elif oldest > latest:
        why = f"position {since} is no longer held (nothing is held; the latest is {latest})"
    else:
        why = f"position {since} is no longer held (the oldest held is {oldest})"
    return RPCError(f"history lost: {topic}: {why}", HISTORY_LOST, {"oldest": oldest, "latest": latest})


class _QueueSink:
    """A bounded queue of items for a subscriber in this process (:meth:`Topic.items`)."""

    def __init__(self, limit: int) -> None:
        self.items: collections.deque[bytes] = collections.deque()
        self.limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._writable: Callable[[], None] | None = None

    def offer(self, payload: bytes) -> bool:
        if len(self.items) >= self.limit:
            return False
        self.items.append(payload)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    def when_writable(self, callback: Callable[[], None]) -> None:
        self._writable = callback

    def start(self, position: int) -> None:
        pass  # Topic.items yields values alone

    async def get(self, subscriber: Subscriber) -> Any:
        while not self.items:
            if subscriber.error is not None:
                raise subscriber.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait([self._waiter, subscriber.ended], return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiter = None
        payload = self.items.popleft()
        callback, self._writable = self._writable, None
        if callback is not None:
            callback()
        return orjson.loads(b'{"item":' + payload + b"}")["item"]
