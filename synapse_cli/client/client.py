"""The client: one persistent WebSocket connection, any number of concurrent calls routed by id.

:class:`Client` owns the connection (:mod:`synapse_cli.client.wire`), routes each reply to its call by id
and reconnects after a drop; the server's calls to the functions it exposes go to
:mod:`synapse_cli.client.exposed`. Calls in flight and their deadlines live in :mod:`synapse_cli.client.calls`;
foreign exceptions become synapse errors in :mod:`synapse_cli.client.foreign`, nowhere else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from synapse_cli.client.calls import Call, Deadlines, new_call, time_limit
from synapse_cli.client.exposed import ExposedFunctions
from synapse_cli.client.foreign import mapped, tls_context
from synapse_cli.client.listing import functions_of_list, functions_of_openrpc
from synapse_cli.client.stream import Stream
from synapse_cli.client.wire import WebSocket, open_websocket, translate_url_error
from synapse_cli.core import encoding, protocol
from synapse_cli.core.errors import CallTimeout, ConnectError, ConnectionLost, RPCError
from synapse_cli.core.protocol import JSONRPC, NATIVE, Dialect
from synapse_cli.core.settings import DEFAULT_STREAM_QUEUE, DEFAULT_TIMEOUT, DEFAULT_URL

if TYPE_CHECKING:  # imported when used: a client that exposes nothing never loads pydantic
    from synapse_cli.core.registry import Registry

__all__ = ["DEFAULT_TIMEOUT", "DEFAULT_URL", "Client", "backoff_delays", "check_url"]

logger = logging.getLogger("synapse.client")

DEFAULT_MAX_MESSAGE_SIZE = 2**24
# Handshake refusals that another attempt cannot fix: never retried.
_FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 426})


def backoff_delays(
    attempts: int, *, base: float = 0.1, cap: float = 5.0, rng: random.Random | None = None
) -> list[float]:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""
    draw = (rng or random).uniform
    return [draw(0.0, min(cap, base * 2**attempt)) for attempt in range(attempts)]


def check_url(url: str) -> None:
    """ValueError unless ``url`` is a ``ws://`` or ``wss://`` URL a client can connect to."""
    error = translate_url_error(url)
    if error is not None:
        raise ValueError(error)


class Client(ExposedFunctions):
    """An asyncio client for synapse and other WebSocket JSON-RPC servers.

    ::

        async with Client("ws://127.0.0.1:8000/ws") as client:
            await client.call("add_numbers", 1, 2)        # -> 3

    Args:
        url: the server's WebSocket URL.
        token: sent as ``Authorization: Bearer <token>`` on the handshake.
        timeout: seconds to wait for each reply (``CallTimeout`` past it); None waits forever.
        dialect: ``"native"`` or ``"jsonrpc"`` (JSON-RPC 2.0, for servers synapse did not write).
        cafile: a CA bundle to trust for ``wss://``; ``insecure`` skips certificate checks.
        open_timeout: seconds for the opening handshake (TCP, TLS, HTTP); default: ``timeout``.
        reconnect_attempts: attempts after the connection drops (exponential backoff, full jitter).
        max_message_size: the largest reply accepted, in bytes (larger: the connection fails, 1009).
        functions: what this client exposes to the server (``ctx.call`` on the server side); more with
            :meth:`expose`. A server calling anything else gets -32601.
        stream_queue: items a :meth:`stream` holds that its reader has not taken yet; past that the
            client stops reading the socket until the reader catches up (TCP backpressure).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        dialect: Dialect = NATIVE,
        cafile: str | None = None,
        insecure: bool = False,
        open_timeout: float | None = None,
        reconnect_attempts: int = 5,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        functions: Registry | None = None,
        stream_queue: int = DEFAULT_STREAM_QUEUE,
    ) -> None:
        if dialect not in (NATIVE, JSONRPC):
            raise ValueError(f"dialect must be 'native' or 'jsonrpc', not {dialect!r}")
        self.url = url
        self.token = token
        self.timeout = timeout
        self._limit = time_limit(timeout)  # ValueError now for a timeout that is not a time
        self.dialect = dialect
        self.open_timeout = time_limit(open_timeout) if open_timeout is not None else self._limit
        self.reconnect_attempts = reconnect_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_message_size = max_message_size
        self._tls = (cafile, insecure)  # the context is built when connecting: its errors are ConnectErrors
        self._ids = itertools.count(1)  # never reused, across reconnects too
        self._pending: dict[int, Call] = {}
        self._ws: WebSocket | None = None
        self._lock: asyncio.Lock | None = None
        self._connected_once = False
        self._deadlines = Deadlines(self._time_out)
        self._streams: dict[int, Stream] = {}  # request id -> the stream reading its items
        self._subscriptions: dict[str, int] = {}  # JSON-RPC subscription id -> request id
        if type(stream_queue) is not int or stream_queue < 1:
            raise ValueError(f"stream_queue must be a number of items >= 1, not {stream_queue!r}")
        self.stream_queue = stream_queue
        self._held: set[Stream] = set()  # streams whose reader fell behind: the socket is not read meanwhile
        self._init_exposed(functions)  # ValueError for functions a client cannot expose

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the connection is open."""
        return self._ws is not None and self._ws.open

    async def connect(self) -> None:
        """Open the connection (one attempt, within ``open_timeout``); ``ConnectError`` when it cannot."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with mapped(self.url):
            cafile, insecure = self._tls
            self._ws = await open_websocket(
                self.url,
                headers=headers,
                ssl_context=tls_context(self.url, cafile=cafile, insecure=insecure),
                max_size=self.max_message_size,
                timeout=self.open_timeout,
                on_text=self._on_text,
                on_lost=self._fail_pending,
            )
        self._connected_once = True

    async def close(self) -> None:
        """Close the connection (at most ``wire.CLOSE_TIMEOUT`` s); waiting calls fail with ``ConnectionLost``."""
        if self._ws is not None:
            await self._ws.close()
        self._fail_pending("connection closed")

    # -- calls ---------------------------------------------------------------------------------------

    async def call(self, func: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``func`` with positional or keyword arguments (not both) and return its result.

        A coroutine like any other: await it, gather it, wrap it in a task, ``wait_for`` or ``shield``
        it. Cancelling it sends ``cancel`` to the server.

        Raises:
            RPCError: the server answered with an error.
            CallTimeout: no reply within the client's timeout (a ``cancel`` is sent).
            ConnectionLost: the connection dropped while waiting (the call is not re-sent).
            ConnectError: the connection could not be (re)opened.
        """
        if args and kwargs:
            raise TypeError("pass arguments by position or by name, not both")
        return await self.request(func, kwargs if kwargs else args)

    async def request(
        self,
        func: str,
        args: list[Any] | tuple[Any, ...] | dict[str, Any],
        *,
        on_item: Callable[[Any], None] | None = None,
    ) -> Any:
        """Call ``func`` with ``args`` as the protocol carries them (an array or an object).

        ``on_item`` receives a stream function's items as they arrive (native dialect); once items flow,
        the call has no timeout (a stream lasts as long as it lasts).
        """
        request_id = next(self._ids)
        data = encoding.encode_call(request_id, func, args, self.dialect)
        call = self._send_now(request_id, data, func)
        if call is None:
            call = await self._send(request_id, data, func)
        call.on_item = on_item
        return await call  # cancelling the awaiting task cancels the call, which tells the server

    def send(self, func: str, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Pipelining: send the call now and return the ``asyncio.Future`` of its result.

        While the connection is open, no task is made per call; otherwise the future is a task that
        connects first. Must be called from the client's event loop.
        """
        if args and kwargs:
            raise TypeError("pass arguments by position or by name, not both")
        request_id = next(self._ids)
        data = encoding.encode_call(request_id, func, kwargs if kwargs else args, self.dialect)
        call = self._send_now(request_id, data, func)
        if call is not None:
            return call
        return asyncio.ensure_future(self._send_then_wait(request_id, data, func))

    def stream(self, func: str, *args: Any, resume: bool = False, **kwargs: Any) -> Stream:
        """Call a stream function; iterate over its items as they arrive (SPEC §5).

        ::

            async for n in client.stream("ticks", 5):
                print(n)

            async for price in client.stream("prices", since=42, resume=True):
                ...

        Leaving the loop early (``break``, an exception, cancellation) stops the stream on the server.
        After the loop, ``stream.result`` holds what the call returned (None for a stream function; a
        plain function's result, so any function can be called this way). No call timeout applies.

        A topic with a history numbers its items: ``since=<position>`` (an argument of the topic's
        function) first sends the kept items after it, ``stream.position`` is the last one received.
        ``resume=True`` (the one keyword that is not the remote function's) reconnects after a drop,
        with the client's backoff, and subscribes again after ``stream.position``: nothing missed,
        nothing twice. It raises what it cannot recover from: RPCError -32006 when the history no
        longer holds that position, ConnectError when the server cannot be reached again.
        """
        if args and kwargs:
            raise TypeError("pass arguments by position or by name, not both")
        return Stream(self, func, kwargs if kwargs else args, max_items=self.stream_queue, resume=resume)

    async def _open_stream(self, stream: Stream) -> None:
        request_id = next(self._ids)
        stream.request_id = request_id
        self._streams[request_id] = stream
        data = encoding.encode_call(request_id, stream.func, stream.args, self.dialect)
        ws = await self._ready()
        while ws.congested and ws.open:
            await ws.drain()
        if not ws.open:
            raise ConnectionLost(ws.lost or "connection lost")
        ws.write(data)

    def _close_stream(self, stream: Stream) -> None:
        """The caller left the loop: forget the stream, and stop it on the server if it still runs."""
        self._streams.pop(stream.request_id, None)
        if stream.held:
            stream.held = False
            self._release(stream)
        if stream.subscription is not None:
            self._subscriptions.pop(stream.subscription, None)
        if stream.done or self._ws is None or not self._ws.open:
            return
        if stream.subscription is not None:
            request = {
                "jsonrpc": "2.0",
                "id": next(self._ids),
                "method": "rpc.unsubscribe",
                "params": [stream.subscription],
            }
            self._ws.write(encoding.dump_json(request) or b"")
        elif self.dialect == NATIVE:
            self._ws.write(encoding.encode_cancel(stream.request_id))

    def _stream_event(self, reply: protocol.Reply) -> None:
        request_id = self._subscriptions.get(reply.subscription) if reply.subscription is not None else reply.id
        stream = self._streams.get(request_id) if type(request_id) is int else None
        if stream is None:
            call = self._pending.get(request_id) if type(request_id) is int else None
            if call is not None and call.on_item is not None:
                if reply.kind == "item":
                    self._deadlines.discard(call)
                    call.on_item(reply.result)
                elif reply.kind == "end" and reply.subscription is not None:  # a JSON-RPC stream's end ends its call
                    self._subscriptions.pop(reply.subscription, None)
                    self._settle([protocol.Reply(request_id, None, reply.error)])
            return  # else a stream we left already
        if reply.kind == "item":
            stream.put(reply.result, reply.position)
        elif reply.kind == "start":
            stream.start(reply.position)
        else:
            stream.finish(None, reply.error)

    async def _send_then_wait(self, request_id: int, data: bytes, what: str) -> Any:
        return await (await self._send(request_id, data, what))

    async def list(self) -> list[dict[str, Any]]:
        """The server's functions: ``[{"name", "description", "params", "result"}]``.

        Raises ``InvalidReply`` when the server's answer does not have that shape.
        """
        if self.dialect == NATIVE:
            request_id = next(self._ids)
            data = encoding.encode_list(request_id)
            call = self._send_now(request_id, data, "list") or await self._send(request_id, data, "list")
            return functions_of_list(await call)
        return functions_of_openrpc(await self.request("rpc.discover", []))

    def _new_call(self, loop: asyncio.AbstractEventLoop, request_id: int, what: str) -> Call:
        call = new_call(loop, request_id, what, self._limit, self._forget)
        self._pending[request_id] = call  # before sending: the reply may come at once
        self._deadlines.add(call, loop)
        return call

    def _send_now(self, request_id: int, data: bytes, what: str) -> Call | None:
        """The reply's future with the request queued (no waiting); None when the connection is not ready."""
        ws = self._ws
        if ws is None or not ws.open or ws.congested or asyncio.get_running_loop() is not ws.loop:
            return None  # not connected yet, closing, or the server reads slowly: _send waits
        call = self._new_call(ws.loop, request_id, what)
        ws.write(data)
        return call

    async def _send(self, request_id: int, data: bytes, what: str) -> Call:
        """(Re)connect or wait for the server to read, then send; the reply's future."""
        ws = await self._ready()
        while ws.congested and ws.open:
            await ws.drain()
        if not ws.open:
            raise ConnectionLost(ws.lost or "connection lost")
        call = self._new_call(ws.loop, request_id, what)
        ws.write(data)
        return call

    async def _ready(self) -> WebSocket:
        if self._ws is None or not self._ws.open:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if self._ws is None or not self._ws.open:
                    await self._reconnect()
        assert self._ws is not None
        return self._ws

    async def _reconnect(self) -> None:
        if not self._connected_once:
            await self.connect()
            return
        if self._ws is not None:
            await self._ws.close()  # at most CLOSE_TIMEOUT: the old one may still be closing
        delays = backoff_delays(self.reconnect_attempts, base=self.backoff_base, cap=self.backoff_cap)
        for attempt, delay in enumerate(delays):
            try:
                await self.connect()
                return
            except ConnectError as exc:
                if exc.status in _FINAL_STATUSES or attempt == len(delays) - 1:
                    raise
                logger.info("reconnect attempt %d failed (%s); retrying in %.2f s", attempt + 1, exc, delay)
                await asyncio.sleep(delay)

    # -- replies -------------------------------------------------------------------------------------

    def _on_text(self, payload: bytes) -> bool:
        """A text message from the server; False when it is not a reply we can read."""
        try:
            replies = encoding.decode_replies(payload)
        except ValueError:
            return self._serve(payload)
        self._settle(replies)
        return True

    def _settle(self, replies: Sequence[protocol.Reply]) -> None:
        for reply in replies:
            if reply.kind != "reply":
                self._stream_event(reply)
                continue
            request_id = reply.id
            if self._streams and type(request_id) is int and request_id in self._streams:
                self._stream_reply(self._streams[request_id], reply)
                continue
            if type(request_id) is not int:
                if request_id is None and reply.error is not None:
                    self._unaddressed(reply.error)
                continue  # our ids are integers: another id answers no call of ours
            call = self._pending.pop(request_id, None)
            if call is None or call.done():
                continue  # a late reply to a call that timed out or was cancelled
            self._deadlines.discard(call)
            if call.on_item is not None and reply.error is None and self.dialect == JSONRPC:
                subscription = _subscription_of(reply.result)
                if subscription is not None:  # its items and its end will name this subscription
                    self._pending[request_id] = call
                    self._subscriptions[subscription] = request_id
                    continue
            if reply.error is None:
                call.set_result(reply.result)
            else:
                call.set_exception(RPCError(reply.error.message, reply.error.code, reply.error.data))

    def _unaddressed(self, error: protocol.ErrorInfo) -> None:
        """An error with ``"id": null``: the server could not read some request of ours.

        With one call in flight it is that call's; with several it cannot be told whose it is, so it
        is logged and each call still ends with its own reply or its timeout.
        """
        if len(self._pending) == 1:
            (request_id,) = self._pending
            self._settle([protocol.Reply(request_id, None, error)])
            return
        logger.warning(
            "the server answered an error naming no call (%s, code %d); %d calls in flight wait for their "
            "own replies or their timeout",
            error.message,
            error.code,
            len(self._pending),
        )

    def _stream_reply(self, stream: Stream, reply: protocol.Reply) -> None:
        """The reply to a stream call: its end (native), or the subscription its items will name (JSON-RPC)."""
        result = reply.result
        if (
            reply.error is None
            and self.dialect == JSONRPC
            and type(result) is dict
            and result.keys() == {"subscription"}
        ):
            stream.subscription = str(result["subscription"])
            self._subscriptions[stream.subscription] = stream.request_id
            return
        stream.finish(result, reply.error)

    def _hold(self, stream: Stream) -> None:
        """A stream's reader fell behind: stop reading the socket (the server sees TCP push back)."""
        self._held.add(stream)
        self._set_reading()

    def _release(self, stream: Stream) -> None:
        """A stream's reader caught up: read again unless another one is still behind."""
        self._held.discard(stream)
        self._set_reading()

    def _set_reading(self) -> None:
        transport = self._ws.transport if self._ws is not None else None
        if transport is None or transport.is_closing():
            return
        if self._held:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _fail_pending(self, reason: str) -> None:
        self._end_exposed()
        self._held.clear()  # a new connection is read from the start
        streams, self._streams, self._subscriptions = self._streams, {}, {}
        for stream in streams.values():
            stream.fail(ConnectionLost(reason))
        calls, self._pending = self._pending, {}
        for call in calls.values():
            self._deadlines.discard(call)
            if not call.done():
                call.set_exception(ConnectionLost(reason))

    def _forget(self, call: Call) -> None:
        """``call`` was cancelled: no reply is awaited any more, and the server is told."""
        self._pending.pop(call.request_id, None)
        self._deadlines.discard(call)
        self._send_cancel(call.request_id)

    def _time_out(self, call: Call) -> None:
        if not call.done():
            self._pending.pop(call.request_id, None)
            call.set_exception(CallTimeout(f"no reply to {call.what} within {call.limit:g} s"))
            self._send_cancel(call.request_id)

    def _send_cancel(self, request_id: int) -> None:
        if self._ws is None or not self._ws.open:
            return
        if self.dialect == NATIVE:
            self._ws.write(encoding.encode_cancel(request_id))
            return
        for subscription, owner in list(self._subscriptions.items()):  # a JSON-RPC stream: unsubscribe
            if owner == request_id and request_id not in self._streams:
                del self._subscriptions[subscription]
                self._ws.write(encoding.encode_call(next(self._ids), "rpc.unsubscribe", [subscription], JSONRPC))


def _subscription_of(result: Any) -> str | None:
    """The id in a JSON-RPC stream call's reply, ``{"subscription": id}`` (None: a plain result)."""
    if type(result) is dict and result.keys() == {"subscription"} and type(result["subscription"]) is str:
        return result["subscription"]
    return None
