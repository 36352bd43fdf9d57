"""What one connection decides, sans I/O: text in, actions out.

A :class:`Session` owns a connection's in-flight table: it decodes each message, routes it by op,
refuses duplicate ids, answers what can be answered at once (errors, ``list``, cheap inline
functions), tells its driver which calls to :class:`Start` and which to :class:`Stop`, gathers the
replies of a batch, holds calls past ``max_inflight`` until a slot frees, and words every reply,
cancellations and the drain at shutdown included. It never touches a socket, a task or a clock: the
asyncio driver (``connection.py``) reads, feeds the session, runs what it starts and writes what it
returns, so everything here is tested with strings in and actions out.

The other way too: a function's :class:`~synapse_cli.core.context.Context` calls the peer (``ctx.call``)
through :meth:`Session.send_call`; the peer's reply comes back through :meth:`Session.receive` as an
:class:`~synapse_cli.core.outgoing.Answered` action (:mod:`synapse_cli.core.outgoing` keeps the ids).
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from synapse_cli.core import encoding, protocol
from synapse_cli.core.context import Caller, Channel, Context, prepare_call
from synapse_cli.core.errors import RPCError
from synapse_cli.core.functions import Function
from synapse_cli.core.outgoing import Answered, Outgoing
from synapse_cli.core.protocol import CALL, CANCEL, LIST, NATIVE, ErrorInfo, Invalid, Request
from synapse_cli.core.registry import Registry, error_from_exception
from synapse_cli.core.topics import Topic

__all__ = ["Action", "Answered", "Observer", "Reply", "Session", "Start", "Stop"]


@dataclass(slots=True)
class Reply:
    """Write ``data`` (one text message) to the peer."""

    data: bytes


@dataclass(slots=True)
class Start:
    """Run ``function(*args, **kwargs)`` (after awaiting ``guard()``, if any); report its end with
    :meth:`Session.finish`."""

    key: Any
    function: Function
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    guard: Callable[[], Awaitable[None]] | None = None  # the call's async checks (raise to refuse it)
    topic: Topic | None = None  # a subscription to this topic: its items come from publishes, not a generator


@dataclass(slots=True)
class Stop:
    """Cancel the running call ``key``; report its end with :meth:`Session.finish` as usual."""

    key: Any


Action = Reply | Start | Stop | Answered


class Observer(Protocol):
    """Where a session reports what it answered (the server's metrics); plain numbers, no I/O."""

    def record(self, function: str, outcome: str, seconds: float, call_id: Any) -> None: ...

    def protocol_error(self, code: int, message: str) -> None: ...


_CANCEL_ERRORS = {
    protocol.INTERNAL_ERROR: ErrorInfo(protocol.INTERNAL_ERROR, "item not serializable"),
    protocol.CANCELLED: ErrorInfo(protocol.CANCELLED, "call cancelled"),
    protocol.CALL_TIMEOUT: ErrorInfo(protocol.CALL_TIMEOUT, "call timed out"),
    protocol.SHUTTING_DOWN: ErrorInfo(protocol.SHUTTING_DOWN, "server is shutting down"),
}


@dataclass(slots=True)
class _Batch:
    """A batch whose calls are still running: one slot per reply, in the order of the requests."""

    slots: list[bytes | None]
    waiting: int = 0


@dataclass(slots=True)
class _Call:
    """An accepted call: started, or held until a slot frees."""

    request: Request
    function: Function
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    start: float
    reason: int | None = None  # why it was stopped (an error code); None: not stopped
    batch: _Batch | None = None
    slot: int = 0
    running: bool = False
    subscription: str | None = None  # a JSON-RPC stream's id: its items and end name it
    guard: Callable[[], Awaitable[None]] | None = None


def _key_of(request_id: Any) -> Any:
    """The in-flight table's key: 1 and "1" are different ids; a null id (JSON-RPC) is never tracked."""
    return (type(request_id) is str, request_id) if request_id is not None else object()


class Session:
    """One connection's decisions. Feed it with :meth:`receive`, :meth:`finish` and :meth:`expire`.

    Args:
        registry: the functions callers may run.
        max_inflight: calls running at once (a batch's included); more wait for a slot.
        max_batch: the largest batch accepted.
        debug: put exception details in internal errors.
        version: the server version ``rpc.discover`` reports.
        observer: told of every answered call and protocol error (metrics).
        clock: seconds, for call durations (``time.perf_counter``).
        caller: what the connection knows of its peer, for each call's Context.

    Attributes:
        channel: the way back to the peer a Context's ``notify`` and ``call`` take (set by the driver).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        max_inflight: int = 128,
        max_batch: int = 1000,
        debug: bool = False,
        version: str = "0",
        observer: Observer | None = None,
        clock: Callable[[], float] = time.perf_counter,
        caller: Caller | None = None,
    ) -> None:
        self.registry = registry
        self.max_inflight = max_inflight
        self.max_batch = max_batch
        self.debug = debug
        self.version = version
        self.observer = observer
        self.clock = clock
        self.calls: dict[Any, _Call] = {}  # accepted, not answered: running or held
        self.running = 0
        self.held: collections.deque[Any] = collections.deque()  # keys of calls waiting for a slot
        self.subscriptions: dict[str, Any] = {}  # JSON-RPC stream id -> call key
        self._subscription_ids = itertools.count(1)
        self.draining = False
        self.caller = caller or Caller()
        self.channel: Channel | None = None
        self.outgoing = Outgoing()  # calls sent to the peer, waiting for its reply

    @property
    def saturated(self) -> bool:
        """True while calls wait for a slot: the driver should stop reading until one frees.

        Never while calls wait on the peer's answers (``ctx.call``): those answers must be read. Calls
        read meanwhile are held up to ``max_inflight`` more; past that they are refused with -32008.
        """
        return (bool(self.held) or self.running >= self.max_inflight) and not self.outgoing.waiting

    # -- input -------------------------------------------------------------------------------------

    def receive(self, text: str | bytes) -> list[Action]:
        """Decode one text message and decide what to do with it."""
        frame = protocol.decode_text(text, max_batch=self.max_batch)
        actions: list[Action] = []
        if isinstance(frame, Request) or not frame.batch:
            item = frame if isinstance(frame, Request) else frame.items[0]
            reply = self._accept(item, None, 0, actions)
            if reply is not None:
                actions.insert(0, Reply(reply))
            return actions
        batch = _Batch([None] * len(frame.items))
        for index, item in enumerate(frame.items):
            batch.slots[index] = self._accept(item, batch, index, actions)
        if not batch.waiting:
            done = [reply for reply in batch.slots if reply is not None]
            if done:
                actions.insert(0, Reply(encoding.join_batch(done)))
        return actions

    def finish(self, key: Any, result: Any = None, error: BaseException | None = None) -> list[Action]:
        """A started call ended: with ``result``, or raising ``error`` (``CancelledError`` when stopped)."""
        call = self.calls.pop(key, None)
        if call is None:
            return []
        self.running -= 1
        actions: list[Action] = []
        reply = self._outcome(call, result, error)
        self._deliver(call, reply, actions)
        self._start_held(actions)
        return actions

    def expire(self, key: Any) -> list[Action]:
        """The call ``key`` ran past the call timeout."""
        return self._stop(key, protocol.CALL_TIMEOUT)

    def cancel(self, request_id: Any) -> list[Action]:
        """The peer asked to cancel ``request_id`` (unknown ids are ignored)."""
        return self._stop(_key_of(request_id), protocol.CANCELLED)

    def drain(self) -> list[Action]:
        """Shutdown began: new calls are answered -32003; the running ones may finish, streams stop now."""
        self.draining = True
        return self.stop_all(protocol.SHUTTING_DOWN, streams_only=True)

    def stop_all(self, reason: int | None, *, streams_only: bool = False) -> list[Action]:
        """Stop every call (or every stream); ``reason`` words the replies (None: the peer is gone, no reply)."""
        actions: list[Action] = []
        for key, call in list(self.calls.items()):
            if call.function.stream or not streams_only:
                actions.extend(self._stop(key, reason))
        return actions

    def item(self, key: Any, value: Any) -> list[Action]:
        """A stream call produced ``value``: send it (nothing once the call is being stopped)."""
        call = self.calls.get(key)
        if call is None or call.reason is not None:
            return []
        body = call.function.encode_result(value)  # as the item type declares it, like a result
        if body is None:
            call.function.result_error(value)  # logged with the function and the types
            return self._stop(key, protocol.INTERNAL_ERROR)
        request = call.request
        return [Reply(encoding.encode_item(request.id, request.dialect, call.subscription, body))]

    def item_framing(self, key: Any) -> tuple[bytes, bytes]:
        """What goes around each item of the stream call ``key`` (a topic's subscription): prefix, suffix."""
        request = self.calls[key].request
        return encoding.item_framing(request.id, request.dialect, self.calls[key].subscription)

    def start_message(self, key: Any, position: int) -> bytes:
        """Where the subscription ``key`` starts (a topic with a history): sent before its first item."""
        request = self.calls[key].request
        return encoding.encode_start(request.id, request.dialect, self.calls[key].subscription, position)

    # -- calls to the peer (a Context's call and notify) -------------------------------------------

    def send_call(
        self, func: str, args: list[Any] | dict[str, Any], dialect: protocol.Dialect
    ) -> tuple[str, list[Action]]:
        """Call ``func`` on the peer: the call's key and the request to write (its reply: ``Answered``).

        ValueError for arguments JSON cannot carry.
        """
        key, data = self.outgoing.send(func, args, dialect)
        return key, [Reply(data)]

    def withdraw_call(self, key: str) -> list[Action]:
        """The call ``key`` to the peer is no longer awaited (timed out, cancelled): ``cancel`` it there."""
        data = self.outgoing.withdraw(key)
        return [] if data is None else [Reply(data)]

    def send_notification(self, method: str, params: list[Any] | dict[str, Any] | None) -> list[Action]:
        """A notification to the peer (no reply); ValueError for params JSON cannot carry."""
        return [Reply(encoding.encode_notification(method, params))]

    # -- deciding ----------------------------------------------------------------------------------

    def _accept(
        self, item: Request | Invalid | protocol.Reply, batch: _Batch | None, slot: int, actions: list[Action]
    ) -> bytes | None:
        """Answer ``item`` now (its reply, or None) or accept it as a call (its reply comes later)."""
        if type(item) is Invalid:
            if self.observer is not None:
                self.observer.protocol_error(item.error.code, item.error.message)
            return encoding.reply_error(item.id, item.dialect, item.error)
        if type(item) is protocol.Reply:  # the peer answers a call we sent it
            answered = self.outgoing.answer(item)
            if answered is not None:
                actions.append(answered)
            return None
        assert type(item) is Request
        kind = item.kind
        if kind != CALL:
            if kind == CANCEL:
                actions.extend(self.cancel(item.id))
                return None
            return self._describe(item)
        if item.func == "rpc.unsubscribe":
            return self._unsubscribe(item, actions)
        if self.draining:
            return _error(item, _CANCEL_ERRORS[protocol.SHUTTING_DOWN])
        key = _key_of(item.id)
        if key in self.calls:
            return _error(item, ErrorInfo(protocol.INVALID_REQUEST, f"duplicate id: {item.id!r} is in flight"))
        start = self.clock()
        try:
            function, args, kwargs = self.registry.resolve(item.func, item.args)
        except RPCError as exc:
            known = exc.code != protocol.METHOD_NOT_FOUND  # unknown names would make labels unbounded
            self._observe(item.func if known else "<unknown>", str(exc.code), start, item.id)
            return _error(item, ErrorInfo(exc.code, exc.message, exc.data))
        guard = None
        if function.contextual:
            try:
                args, kwargs, guard = self._with_context(item, function, args, kwargs)
            except Exception as exc:  # a check refused the call (or failed)
                error = error_from_exception(exc, debug=self.debug, function=function.name)
                self._observe(function.name, str(error.code), start, item.id)
                return _error(item, error)
        if function.inline and not function.is_async and guard is None:
            return self._run_inline(item, function, args, kwargs, start)
        if self.held and len(self.held) >= self.max_inflight and self.outgoing.waiting:
            self._observe(function.name, str(protocol.OVERLOADED), start, item.id)  # see ``saturated``
            return _error(item, self._overloaded())
        call = _Call(item, function, args, kwargs, start, batch=batch, slot=slot, guard=guard)
        reply = None
        if function.stream:
            if item.notification:
                return None  # nobody to send the items to
            call.batch = None  # its items and end go out on their own, not in the batch's reply
            if item.dialect != NATIVE:
                call.subscription = str(next(self._subscription_ids))
                self.subscriptions[call.subscription] = key
                reply = encoding.reply_result(item.id, item.dialect, {"subscription": call.subscription})
        self.calls[key] = call
        if call.batch is not None:
            call.batch.waiting += 1
        if self.running < self.max_inflight and not self.held:
            self._launch(key, call, actions)
        else:
            self.held.append(key)
        return reply

    def _overloaded(self) -> ErrorInfo:
        waiting = len(self.outgoing.waiting)
        message = f"too many calls: {len(self.calls)} in flight while this server waits on {waiting} of its answers"
        return ErrorInfo(protocol.OVERLOADED, message)

    def _with_context(
        self, item: Request, function: Function, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], Callable[[], Awaitable[None]] | None]:
        """The call's Context in its parameter, its sync checks run (raising a refusal), its async ones to come."""
        ctx = Context(self.caller, item.dialect, item.id, function.name, self.channel)
        guard = prepare_call(function.checks, function.sync_checks, ctx) if function.checks else None
        args, kwargs = function.with_context(args, kwargs, ctx)
        return args, kwargs, guard

    def _unsubscribe(self, item: Request, actions: list[Action]) -> bytes | None:
        """``rpc.unsubscribe`` with ``[subscription]``: stop that stream; true if it was running."""
        params = item.args
        subscription = params[0] if type(params) is list and len(params) == 1 else None
        if type(params) is dict and params.keys() == {"subscription"}:
            subscription = params["subscription"]
        if type(subscription) is not str:
            error = ErrorInfo(protocol.INVALID_PARAMS, "rpc.unsubscribe takes [subscription]")
            return _error(item, error)
        key = self.subscriptions.get(subscription)
        if key is not None:
            actions.extend(self._stop(key, protocol.CANCELLED))
        return None if item.notification else encoding.reply_result(item.id, item.dialect, key is not None)

    def _run_inline(
        self, item: Request, function: Function, args: tuple[Any, ...], kwargs: dict[str, Any], start: float
    ) -> bytes | None:
        """A cheap sync function, run right here: no task, no thread."""
        try:
            result = function.func(*args, **kwargs)
            if (body := function.encode_result(result)) is None:  # orjson for plain JSON types, else as declared
                raise function.result_error(result)  # -32603, logged with the function and the types
        except Exception as exc:
            error = error_from_exception(exc, debug=self.debug, function=function.name)
            self._observe(function.name, str(error.code), start, item.id)
            return _error(item, error)
        self._observe(function.name, "ok", start, item.id)
        return None if item.notification else encoding.reply_body(item.id, item.dialect, body)

    def _launch(self, key: Any, call: _Call, actions: list[Action]) -> None:
        call.running = True
        self.running += 1
        function = call.function
        topic = self.registry.topics.get(function.name) if function.stream else None
        actions.append(Start(key, function, call.args, call.kwargs, call.guard, topic))

    def _start_held(self, actions: list[Action]) -> None:
        while self.held and self.running < self.max_inflight:
            key = self.held.popleft()
            call = self.calls.get(key)
            if call is not None:
                self._launch(key, call, actions)

    def _stop(self, key: Any, reason: int | None) -> list[Action]:
        call = self.calls.get(key)
        if call is None or (call.reason is not None and reason is not None):
            return []  # unknown, or already stopped (the first reason words the reply)
        call.reason = reason
        if call.running:
            return [Stop(key)]
        # Held, never started: it ends here.
        self.calls.pop(key)
        self.held.remove(key)
        actions: list[Action] = []
        self._deliver(call, self._outcome(call, None, _Stopped()), actions)
        return actions

    def _outcome(self, call: _Call, result: Any, error: BaseException | None) -> bytes | None:
        """The reply to a call that ended (None: no reply is owed)."""
        request, name = call.request, call.function.name
        if call.subscription is not None:
            del self.subscriptions[call.subscription]
        body = None  # a stream's end carries no result
        if error is None and not call.function.stream:  # orjson for plain JSON types, else as declared
            if (body := call.function.encode_result(result)) is None:
                error = call.function.result_error(result)  # -32603, logged with the function and the types
        if error is None:
            self._observe(name, "ok", call.start, request.id)
            if call.subscription is not None:
                return encoding.encode_end(call.subscription, None)
            return None if request.notification else encoding.reply_body(request.id, request.dialect, body or b"null")
        if call.reason is not None:  # stopped on purpose: the reason words the reply
            info = _CANCEL_ERRORS[call.reason]
        elif not isinstance(error, Exception):  # cancelled with no reason: the peer is gone
            return None
        else:
            info = error_from_exception(error, debug=self.debug, function=name)
        self._observe(name, str(info.code), call.start, request.id)
        if call.subscription is not None:
            return encoding.encode_end(call.subscription, info)
        return _error(request, info)

    def _deliver(self, call: _Call, reply: bytes | None, actions: list[Action]) -> None:
        batch = call.batch
        if batch is None:
            if reply is not None:
                actions.append(Reply(reply))
            return
        batch.slots[call.slot] = reply
        batch.waiting -= 1
        if not batch.waiting:
            done = [part for part in batch.slots if part is not None]
            if done:
                actions.append(Reply(encoding.join_batch(done)))

    def _describe(self, item: Request) -> bytes | None:
        if item.notification:
            return None
        if item.kind == LIST:
            return encoding.reply_result(item.id, NATIVE, {"functions": self.registry.describe()})
        document = self.registry.openrpc(version=self.version)
        return encoding.reply_result(item.id, item.dialect, document)

    def _observe(self, function: str, outcome: str, start: float, call_id: Any) -> None:
        if self.observer is not None:
            self.observer.record(function, outcome, self.clock() - start, call_id)


class _Stopped(BaseException):
    """A held call stopped before it started (worded by its reason, like a cancelled task)."""


def _error(item: Request, error: ErrorInfo) -> bytes | None:
    return None if item.notification else encoding.reply_error(item.id, item.dialect, error)
