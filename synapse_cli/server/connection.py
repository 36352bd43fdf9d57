"""The asyncio driver of one connection: feeds a :class:`~synapse_cli.core.session.Session`, runs what it starts.

The driver owns no decision. It hands each message to the session, then carries out the actions
that come back: :class:`~synapse_cli.core.session.Reply` is written to the :class:`Link`,
:class:`~synapse_cli.core.session.Start` becomes a task (a coroutine on the loop, or a sync function in the
server's thread pool) with its call timeout, :class:`~synapse_cli.core.session.Stop` cancels that task. A
task's end goes back to the session, whose answer is carried out the same way. Both servers drive
connections through it: our WebSocket protocol under uvicorn (``transport.py``) and the plain ASGI
endpoint (``server.py``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import AsyncGenerator, Generator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

from synapse_cli.core import protocol
from synapse_cli.core.loglines import RateLimitedLog
from synapse_cli.core.session import Action, Answered, Reply, Session, Start, Stop
from synapse_cli.core.topics import Sink, Subscriber
from synapse_cli.server.channel import PeerChannel
from synapse_cli.server.subscription import DrainSink, ItemLink, LinkSink

if TYPE_CHECKING:
    from synapse_cli.server.metrics import Metrics

__all__ = ["Connection", "Link"]

logger = logging.getLogger("synapse.server")

CLOSE_GRACE = 1.0  # seconds stopped calls get to write their replies before the close


class Link(Protocol):
    """Where a connection's replies go: a WebSocket, written in order, never waited on. A link that is
    also an :class:`~synapse_cli.server.subscription.ItemLink` takes a topic's items without a copy."""

    def write(self, data: bytes) -> None:
        """Queue one text message (UTF-8); dropped when the connection is closing."""

    def update_reading(self, saturated: bool) -> None:
        """Stop reading from the peer while ``saturated`` (calls wait for a slot); read again after."""

    async def drained(self) -> None:
        """Return once the peer can take more (what was written is leaving, not piling up)."""


class Connection:
    """Runs the calls one :class:`Session` starts and writes what it answers to a :class:`Link`.

    Args:
        session: the decisions of this connection.
        link: its WebSocket.
        threads: where sync functions run.
        call_timeout: seconds a call may run (0: no limit).
        metrics: the server's tallies (optional).
        number: the connection's number in the logs.
        peer: ``host:port`` of the peer, for the logs.
    """

    def __init__(
        self,
        session: Session,
        link: Link,
        *,
        threads: Executor,
        call_timeout: float = 30.0,
        metrics: Metrics | None = None,
        number: int = 0,
        peer: str = "",
    ) -> None:
        self.session = session
        self.link = link
        self.threads = threads
        self.call_timeout = call_timeout
        self.metrics = metrics
        self.number = number
        self.peer = peer
        self.tasks: dict[Any, asyncio.Task[Any]] = {}
        self.timers: dict[Any, asyncio.TimerHandle] = {}
        self.subscribers: dict[Any, Subscriber] = {}  # the topic subscriptions running, by call key
        self._idle: asyncio.Event | None = None  # made while someone waits for the calls to end
        self._protocol_log = RateLimitedLog()
        self._log_calls = logger.isEnabledFor(logging.DEBUG)  # decided when the connection opens
        session.observer = self
        self.channel = PeerChannel(self)  # ctx.notify and ctx.call: back to this connection's client
        session.channel = self.channel

    @property
    def streams(self) -> int:
        """Stream calls running now."""
        return sum(1 for call in self.session.calls.values() if call.running and call.function.stream)

    @property
    def saturated(self) -> bool:
        """True while calls wait for a slot: stop reading from the peer."""
        return self.session.saturated

    # -- what the link feeds ---------------------------------------------------------------------

    def receive(self, text: str) -> None:
        """One text message from the peer."""
        actions = self.session.receive(text)
        metrics = self.metrics
        if metrics is not None:
            metrics.received(text)
        if len(actions) == 1 and type(actions[0]) is Reply and self._idle is None:  # most messages: one reply
            self._write(actions[0].data)
        elif actions or self.session.saturated:
            self.act(actions)

    def abandon(self) -> None:
        """The peer is gone: stop every call, answer nothing."""
        self.channel.lost()
        self.act(self.session.stop_all(None))

    async def drain(self, grace: float) -> None:
        """Shutdown: refuse new calls, give running ones ``grace`` seconds, then stop them with -32003."""
        self.act(self.session.drain())
        await self._wait_idle(grace)
        self.act(self.session.stop_all(protocol.SHUTTING_DOWN))
        await self._wait_idle(CLOSE_GRACE)

    # -- carrying out actions ----------------------------------------------------------------------

    def act(self, actions: list[Action]) -> None:
        """Carry out what the session decided."""
        for action in actions:
            if type(action) is Reply:
                self._write(action.data)
            elif type(action) is Start:
                self._start(action)
            elif type(action) is Stop:
                task = self.tasks.get(action.key)
                if task is not None:
                    task.cancel()
                subscriber = self.subscribers.pop(action.key, None)
                if subscriber is not None:  # no item after the stop, not even before the task ends
                    subscriber.topic.unsubscribe(subscriber)
            elif type(action) is Answered:
                self.channel.answered(action)
        self.link.update_reading(self.session.saturated)
        if self._idle is not None and not self.session.calls:
            self._idle.set()

    def _write(self, data: bytes) -> None:
        self.link.write(data)
        if self.metrics is not None:
            self.metrics.sent(len(data))

    def _start(self, start: Start) -> None:
        loop = asyncio.get_running_loop()
        function = start.function
        if start.guard is not None:  # the call's async checks first (they may refuse it)
            task = loop.create_task(self._guarded(start))
        elif start.topic is not None:
            task = loop.create_task(self._subscribe(start))
        elif function.stream:
            task = loop.create_task(self._stream(start))
        elif function.is_async:
            task = loop.create_task(function.func(*start.args, **start.kwargs))
        else:
            call = functools.partial(function.func, *start.args, **start.kwargs)
            task = loop.create_task(_in_thread(loop, self.threads, call))
        key = start.key
        self.tasks[key] = task
        task.add_done_callback(functools.partial(self._ended, key))
        if self.call_timeout > 0 and not function.stream:  # a stream lasts as long as its caller wants
            self.timers[key] = loop.call_later(self.call_timeout, self._expire, key)
        if self.metrics is not None:
            self.metrics.call_started()

    async def _guarded(self, start: Start) -> Any:
        assert start.guard is not None
        await start.guard()
        function = start.function
        if start.topic is not None:
            return await self._subscribe(start)
        if function.stream:
            return await self._stream(start)
        if function.is_async:
            return await function.func(*start.args, **start.kwargs)
        return await _in_thread(
            asyncio.get_running_loop(), self.threads, functools.partial(function.func, *start.args, **start.kwargs)
        )

    async def _stream(self, start: Start) -> None:
        """Send a generator's items as they come, taking the next only when the peer can take it."""
        items: Any = start.function.func(*start.args, **start.kwargs)
        source = _AsyncItems(items) if inspect.isasyncgen(items) else _ThreadItems(items, self.threads)
        try:
            sent = 0
            while True:
                value = await source.next()
                if value is _END:
                    return
                self.act(self.session.item(start.key, value))
                if self.metrics is not None:
                    self.metrics.items_out += 1
                sent += 1
                if sent % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a generator that never waits must not hold the loop
                await self.link.drained()
        finally:
            await source.close()

    async def _subscribe(self, start: Start) -> None:
        """A topic subscription: its items are written by the publishes themselves; this waits for its end."""
        topic = start.topic
        assert topic is not None
        prefix, suffix = self.session.item_framing(start.key)
        link = self.link
        opening = functools.partial(self.session.start_message, start.key)
        sink: Sink = DrainSink(link, prefix, suffix, self.metrics, opening)
        if isinstance(link, ItemLink):  # ours: the shared payload is written as it is, at once
            sink = LinkSink(link, prefix, suffix, self.metrics, opening)
        subscriber = await topic.subscribe(sink, topic.since_of(start.args, start.kwargs))
        self.subscribers[start.key] = subscriber
        try:
            await subscriber.ended
        finally:
            self.subscribers.pop(start.key, None)
            topic.unsubscribe(subscriber)
        if subscriber.error is not None:
            raise subscriber.error

    def _expire(self, key: Any) -> None:
        self.timers.pop(key, None)
        self.act(self.session.expire(key))

    def _ended(self, key: Any, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(key, None)
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if self.metrics is not None:
            self.metrics.call_finished()
        if task.cancelled():
            actions = self.session.finish(key, error=asyncio.CancelledError())
        else:
            error = task.exception()
            actions = self.session.finish(key, None if error is not None else task.result(), error)
        self.act(actions)

    async def _wait_idle(self, seconds: float) -> None:
        if not self.session.calls:
            return
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            self._idle = None

    # -- the session's observer ------------------------------------------------------------------

    def record(self, function: str, outcome: str, seconds: float, call_id: Any) -> None:
        """Count an answered call; log it at debug level (ids and names, never bodies)."""
        if self.metrics is not None:
            self.metrics.record(function, outcome, seconds)
        if self._log_calls:
            fields = {"connection": self.number, "call_id": call_id, "function": function, "outcome": outcome}
            logger.debug("call %s %s", function, outcome, extra={**fields, "duration_ms": round(seconds * 1000, 3)})

    def protocol_error(self, code: int, message: str) -> None:
        """Count a refused message; log it, at most once a second per connection."""
        if self.metrics is not None:
            self.metrics.protocol_errors.labels(str(code)).inc()
        fields = {"connection": self.number, "peer": self.peer, "code": code}
        self._protocol_log(logger, logging.INFO, "protocol error %d: %s", code, message, **fields)


_END: Any = object()
_YIELD_EVERY = 64  # items a stream sends before it lets other work run


class _AsyncItems:
    """An async generator's items; closing it runs its ``finally``."""

    def __init__(self, generator: AsyncGenerator[Any, Any]) -> None:
        self.generator = generator

    async def next(self) -> Any:
        try:
            return await self.generator.__anext__()
        except StopAsyncIteration:
            return _END

    async def close(self) -> None:
        await self.generator.aclose()


class _ThreadItems:
    """A sync generator's items, each taken in the thread pool (it may block); one step at a time."""

    def __init__(self, generator: Generator[Any, None, None], threads: Executor) -> None:
        self.generator = generator
        self.threads = threads
        self.lock = threading.Lock()  # a cancelled step may still run: close waits for it

    def _step(self) -> Any:
        with self.lock:
            return next(self.generator, _END)

    def _close(self) -> None:
        with self.lock:
            self.generator.close()

    async def next(self) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.threads, self._step)

    async def close(self) -> None:
        closing = asyncio.get_running_loop().run_in_executor(self.threads, self._close)
        await asyncio.shield(closing)


async def _in_thread(loop: asyncio.AbstractEventLoop, threads: Executor, call: functools.partial[Any]) -> Any:
    return await loop.run_in_executor(threads, call)
