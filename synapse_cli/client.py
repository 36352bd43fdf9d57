"""The client: one persistent WebSocket connection, any number of concurrent calls routed by id.

Foreign exceptions (``websockets``, ``OSError``, ``ssl``, timeouts) are translated in exactly one place,
:func:`_mapped_errors`; everything else raises from :mod:`synapse_cli.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import random
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future as ThreadFuture
from types import TracebackType
from typing import Any, TypeVar

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from synapse_cli import protocol
from synapse_cli.errors import CallTimeout, ConnectError, ConnectionLost, RPCError, SynapseError
from synapse_cli.protocol import JSONRPC, NATIVE, Dialect
from synapse_cli.wire import ClientFrames, fast_connection

__all__ = ["DEFAULT_URL", "Client", "SyncClient", "backoff_delays", "call", "ordered_calls"]

logger = logging.getLogger("synapse.client")
T = TypeVar("T")

DEFAULT_URL = "ws://127.0.0.1:8000/ws"
DEFAULT_TIMEOUT = 10.0
_OPEN = State.OPEN
_HIGH_WATER = 2**16  # bytes waiting in the socket's buffer past which a call waits for it to drain
# Handshake refusals that another attempt cannot fix: never retried.
_FINAL_STATUSES = frozenset({400, 401, 403, 404, 405, 426})


def backoff_delays(
    attempts: int, *, base: float = 0.1, cap: float = 5.0, rng: random.Random | None = None
) -> list[float]:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""
    draw = (rng or random).uniform
    return [draw(0.0, min(cap, base * 2**attempt)) for attempt in range(attempts)]


def _ssl_context(url: str, cafile: str | None, insecure: bool) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _translate(exc: BaseException, url: str) -> SynapseError | None:
    """The synapse error for a foreign exception, or None when it is not one we know."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = exc.response.body.decode("utf-8", "replace").strip() if exc.response.body else ""
        detail = f" ({body})" if body else ""
        return ConnectError(f"{url}: handshake rejected: HTTP {status}{detail}", url=url, status=status)
    if isinstance(exc, (InvalidURI, ValueError)):  # websockets raises ValueError for a port out of range
        return ConnectError(f"invalid URL {url!r}: {exc}", url=url)
    if isinstance(exc, InvalidHandshake):
        return ConnectError(f"{url}: handshake failed: {exc}", url=url)
    if isinstance(exc, ConnectionClosed):
        return ConnectionLost(f"connection lost: {exc}")
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"{url}: TLS error: {exc.reason or exc}", url=url)
    if isinstance(exc, (OSError, EOFError)):
        errno = getattr(exc, "errno", None)
        reason = os.strerror(errno) if errno else str(exc) or type(exc).__name__
        return ConnectError(f"cannot connect to {url}: {reason}", url=url)
    if isinstance(exc, asyncio.TimeoutError):
        return ConnectError(f"cannot connect to {url}: timed out opening the connection", url=url)
    return None


@contextlib.contextmanager
def _mapped_errors(url: str) -> Iterator[None]:
    """The one boundary where foreign exceptions become synapse errors (see :func:`_translate`)."""
    try:
        yield
    except Exception as exc:
        mapped = _translate(exc, url)
        if mapped is None:
            raise
        raise mapped from exc


class Client:
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
        reconnect_attempts: attempts after the connection drops (exponential backoff, full jitter).
        max_message_size: the largest reply accepted, in bytes.
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
        open_timeout: float = 10.0,
        reconnect_attempts: int = 5,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        max_message_size: int = 2**24,
    ) -> None:
        if dialect not in (NATIVE, JSONRPC):
            raise ValueError(f"dialect must be 'native' or 'jsonrpc', not {dialect!r}")
        self.url = url
        self.token = token
        self.timeout = timeout
        self._limit = _time_limit(timeout)  # ValueError now for a timeout that is not a time
        self.dialect = dialect
        self.open_timeout = open_timeout
        self.reconnect_attempts = reconnect_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_message_size = max_message_size
        self._tls = (cafile, insecure)  # the context is built when connecting: its errors are ConnectErrors
        self._ids = itertools.count(1)  # never reused, across reconnects too
        self._pending: dict[Any, _Call] = {}
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._connected_once = False
        self._outgoing: list[bytes] = []  # frames written at the end of this loop iteration
        self._frames = ClientFrames()
        self._deadlines = _Deadlines(self._time_out)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while the connection is open."""
        return self._reader is not None and not self._reader.done()

    async def connect(self) -> None:
        """Open the connection (one attempt); ``ConnectError`` when it cannot be opened."""
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        with _mapped_errors(self.url):
            tls = _ssl_context(self.url, *self._tls)
            self._ws = await connect(
                self.url,
                create_connection=fast_connection(),
                additional_headers=headers,
                compression=None,
                max_size=self.max_message_size,
                ssl=tls,
                open_timeout=self.open_timeout,
                user_agent_header=None,
                proxy=None,
            )
        self._connected_once = True
        self._ws.on_text = self._dispatch_frame
        self._reader = asyncio.ensure_future(self._read(self._ws))

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ``ConnectionLost``."""
        if self._background:  # cancels still being written (Ctrl-C, timeouts) go out first
            await asyncio.wait(list(self._background), timeout=1.0)
        if self._ws is not None:
            if self._outgoing:  # calls made in this loop iteration leave before the close frame
                self._flush(self._ws)
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader
        self._fail_pending("connection closed")

    def call(self, func: str, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Call ``func`` with positional or keyword arguments (not both); await it for the result.

        The request leaves at once (within this event-loop iteration); what comes back is an
        ``asyncio.Future`` for the reply, so ``asyncio.gather`` of thousands of calls costs no task
        per call. Before the connection is open, or while the server reads slowly, it is a coroutine
        that connects or waits for the socket first.

        Raises:
            RPCError: the server answered with an error.
            CallTimeout: no reply within the client's timeout (a ``cancel`` is sent).
            ConnectionLost: the connection dropped while waiting (the call is not re-sent).
            ConnectError: the connection could not be (re)opened.
        """
        if args and kwargs:
            return _raising(TypeError("pass arguments by position or by name, not both"))
        return self.request(func, kwargs if kwargs else args)

    def request(
        self, func: str, args: list[Any] | tuple[Any, ...] | dict[str, Any], *, timeout: float | None = -1.0
    ) -> Awaitable[Any]:
        """Call ``func`` with ``args`` as the protocol carries them (an array or an object); await it."""
        request_id = next(self._ids)
        try:
            limit = self._limit if timeout == -1.0 else _time_limit(timeout)
            data = protocol.encode_call(request_id, func, args, self.dialect)
        except ValueError as exc:
            return _raising(exc)  # raised where the call is awaited, as any other failure of it
        return self._start(request_id, data, func, limit)

    async def list(self) -> list[dict[str, Any]]:
        """The server's functions: ``[{"name", "description", "params", "result"}]``."""
        if self.dialect == NATIVE:
            request_id = next(self._ids)
            result = await self._start(request_id, b'{"id":%d,"op":"list"}' % request_id, "list", self._limit)
            return list(result["functions"])
        document = await self.request("rpc.discover", [])
        return [_from_openrpc(method) for method in document.get("methods", [])]

    def _start(self, request_id: int, data: bytes, what: str, limit: float | None) -> Awaitable[Any]:
        """Send one request: the future of its reply, routed to us by id (or a coroutine that sends first)."""
        call = self._send_now(request_id, data, what, limit)
        return call if call is not None else self._exchange(request_id, data, what, limit)

    async def _exchange(self, request_id: int, data: bytes, what: str, limit: float | None) -> Any:
        """The slow way: (re)connect or wait for the socket to drain, send, then wait for the reply."""
        call = await self._send(request_id, data.decode(), what, limit)
        if limit is not None:
            self._deadlines.add(call, asyncio.get_running_loop())
        return await call  # cancelling this cancels the call, which tells the server

    def _new_call(self, loop: asyncio.AbstractEventLoop, request_id: int, what: str, limit: float | None) -> _Call:
        call = _Call(loop=loop)
        call.client, call.request_id, call.what, call.limit, call.slot = self, request_id, what, limit, None
        self._pending[request_id] = call  # before sending: the reply may come at once
        return call

    def _forget(self, call: _Call) -> None:
        """``call`` was cancelled: no reply is awaited any more, and the server is told."""
        self._pending.pop(call.request_id, None)
        self._deadlines.discard(call)
        self._send_cancel(call.request_id)

    def _time_out(self, call: _Call) -> None:
        if not call.done():
            self._pending.pop(call.request_id, None)
            call.set_exception(CallTimeout(f"no reply to {call.what} within {call.limit:g} s"))
            self._send_cancel(call.request_id)

    def _send_now(self, request_id: int, data: bytes, what: str, limit: float | None) -> _Call | None:
        """The reply's future, with the request queued without waiting; None: use :meth:`_send`.

        ``websockets``' ``send`` costs an async context manager, a frame object and a syscall per
        message: more than the rest of a call. While the connection is open and its buffer is short,
        the frame is built here and the frames of one loop iteration leave in one write.
        """
        ws = self._ws
        if ws is None or ws.protocol.state is not _OPEN or ws.transport.get_write_buffer_size() > _HIGH_WATER:
            return None  # not connected yet, reconnecting, closing, or the peer reads slowly: send() waits
        loop = _running_loop()
        if loop is None or loop is not ws.loop:
            return None  # called from another thread (run_coroutine_threadsafe): the coroutine runs there
        call = self._new_call(loop, request_id, what, limit)
        if limit is not None:
            self._deadlines.add(call, loop)
        if not self._outgoing:
            loop.call_soon(self._flush, ws)
        self._outgoing.append(self._frames.text(data))
        return call

    def _flush(self, ws: Any) -> None:
        frames, self._outgoing = self._outgoing, []
        if ws.protocol.state is _OPEN and not ws.transport.is_closing():
            ws.transport.write(b"".join(frames))
        # else the connection is closing: its reader fails these calls with ConnectionLost

    async def _send(self, request_id: int, text: str, what: str, limit: float | None) -> _Call:
        """Register the reply's future, then send; a connection found dead before sending is reopened once."""
        for attempt in (1, 2):
            ws = await self._ready()
            call = self._new_call(asyncio.get_running_loop(), request_id, what, limit)
            try:
                await ws.send(text)
                return call
            except ConnectionClosed as exc:
                self._pending.pop(request_id, None)
                if attempt == 2:
                    raise ConnectionLost(f"connection lost: {exc}") from exc
                # It dropped before we noticed, so nothing went out: reconnecting is not a re-send.
                if self._reader is not None:
                    await asyncio.wait([self._reader], timeout=self.open_timeout)
            except BaseException as exc:
                self._pending.pop(request_id, None)
                mapped = _translate(exc, self.url) if isinstance(exc, Exception) else None
                if mapped is None:
                    raise
                raise mapped from exc
        raise AssertionError("unreachable")

    async def _ready(self) -> Any:
        if self._ws is not None and self.connected:
            return self._ws
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.connected:
                await self._reconnect()
        return self._ws

    async def _reconnect(self) -> None:
        if not self._connected_once:
            await self.connect()
            return
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

    async def _read(self, ws: Any) -> None:
        reason = "connection lost"
        try:
            async for message in ws:
                self._dispatch(message)
        except Exception as exc:
            reason = f"connection lost: {exc}"
        else:
            code = getattr(ws, "close_code", None)
            reason = f"connection lost (close code {code})" if code is not None else reason
        finally:
            self._fail_pending(reason)

    def _dispatch_frame(self, payload: bytes | bytearray) -> bool:
        """A text frame's payload, straight from ``wire.fast_connection``; False: let websockets judge it."""
        try:
            replies = protocol.decode_replies(payload)
        except ValueError:
            return False  # not UTF-8 (websockets closes with 1007) or not JSON (logged as malformed)
        self._settle(replies)
        return True

    def _dispatch(self, message: str | bytes) -> None:
        try:
            replies = protocol.decode_replies(message)
        except ValueError as exc:
            logger.warning("ignoring a malformed reply: %s", exc)
            return
        self._settle(replies)

    def _settle(self, replies: Sequence[protocol.Reply]) -> None:
        for reply in replies:
            if type(reply.id) is not int:
                continue  # our ids are integers: a reply with another id answers no call of ours
            call = self._pending.pop(reply.id, None)
            if call is None or call.done():
                continue  # a late reply to a call that timed out or was cancelled
            self._deadlines.discard(call)
            if reply.error is None:
                call.set_result(reply.result)
            else:
                call.set_exception(RPCError(reply.error.message, reply.error.code, reply.error.data))

    def _fail_pending(self, reason: str) -> None:
        calls, self._pending = self._pending, {}
        for call in calls.values():
            self._deadlines.discard(call)
            if not call.done():
                call.set_exception(ConnectionLost(reason))

    def _send_cancel(self, request_id: Any) -> None:
        if self.dialect != NATIVE or not self.connected:
            return
        task = asyncio.ensure_future(self._send_quietly(protocol.encode_cancel(request_id).decode()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_quietly(self, text: str) -> None:
        with contextlib.suppress(Exception):
            await self._ws.send(text)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _time_limit(timeout: float | None) -> float | None:
    """Seconds to wait for a reply: None (or infinity) waits forever; ValueError unless positive."""
    if timeout is None or timeout == math.inf:
        return None
    if not timeout > 0:  # NaN too
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


async def _raising(error: Exception) -> Any:
    raise error


class _Call(asyncio.Future):  # type: ignore[type-arg]
    """The reply to one call in flight. Cancelling it (or the task awaiting it) tells the server."""

    __slots__ = ("client", "request_id", "what", "limit", "slot", "_steps")
    _steps: Any
    client: Client
    request_id: int
    what: str
    limit: float | None
    slot: int | None

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self.client._forget(self)
        return True

    # Also a coroutine (send/throw/close over the future's own iterator): create_task(client.call(...))
    # and TaskGroup accept it, as they accepted the coroutine call() used to return.
    def _iterator(self) -> Any:
        try:
            return self._steps
        except AttributeError:
            self._steps = self.__await__()
            return self._steps

    def send(self, value: Any) -> Any:
        return self._iterator().send(value)

    def throw(self, *exc_info: Any) -> Any:
        return self._iterator().throw(*exc_info)

    def close(self) -> None:
        self._iterator().close()


class _Deadlines:
    """Call timeouts, one event-loop timer per ``tick`` of deadlines rather than one per call.

    With thousands of calls in flight, a timer each (or ``wait_for``) cost more than the rest of a call:
    asyncio keeps its timers in a heap ordered by Python-level comparisons. Calls whose deadlines fall
    in the same tick share one timer, which fires at the end of that tick: a timeout is reported at
    most ``tick`` seconds late.
    """

    __slots__ = ("_slots", "_tick", "_expire_call")

    def __init__(self, expire: Callable[[_Call], None], tick: float = 0.005) -> None:
        self._tick = tick
        self._expire_call = expire
        self._slots: dict[int, dict[int, _Call]] = {}

    def add(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        """Expire ``call`` after its ``limit`` seconds."""
        assert call.limit is not None
        slot = call.slot = math.ceil((loop.time() + call.limit) / self._tick)
        calls = self._slots.get(slot)
        if calls is None:
            calls = self._slots[slot] = {}
            loop.call_at(slot * self._tick, self._expire, slot)
        calls[call.request_id] = call

    def discard(self, call: _Call) -> None:
        """The call is over: no timeout for it (its slot's timer still fires, and finds less to do)."""
        calls = self._slots.get(call.slot) if call.slot is not None else None
        if calls is not None:
            calls.pop(call.request_id, None)

    def _expire(self, slot: int) -> None:
        for call in self._slots.pop(slot, {}).values():
            self._expire_call(call)


def _from_openrpc(method: dict[str, Any]) -> dict[str, Any]:
    params = method.get("params", [])
    schema = {
        "type": "object",
        "properties": {p["name"]: p.get("schema", {}) for p in params},
        "required": [p["name"] for p in params if p.get("required")],
    }
    result = method.get("result", {}).get("schema", {})
    return {"name": method["name"], "description": method.get("description", ""), "params": schema, "result": result}


async def _awaited(start: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    return await start(*args, **kwargs)


class SyncClient:
    """A blocking facade over :class:`Client` for scripts (its event loop runs in a thread).

    ::

        with SyncClient("ws://127.0.0.1:8000/ws") as client:
            client.call("add_numbers", 1, 2)   # -> 3
    """

    def __init__(self, url: str = DEFAULT_URL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="synapse-client", daemon=True)
        self._thread.start()
        self._client = Client(url, **options)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def __enter__(self) -> SyncClient:
        try:
            self._run(self._client.connect())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, func: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``func`` and block until its result (same errors as :meth:`Client.call`)."""
        return self._run(_awaited(self._client.call, func, *args, **kwargs))  # started on the loop's thread

    def list(self) -> list[dict[str, Any]]:
        """The server's functions."""
        return self._run(self._client.list())

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(SynapseError):
            self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def call(url: str, func: str, /, *args: Any, **kwargs: Any) -> Any:
    """One call from a script, blocking: ``call(url, "add_numbers", 1, 2)`` -> 3.

    Keyword arguments go to the remote function; the token comes from ``SYNAPSE_TOKEN``. For options
    (timeout, TLS, dialect) or many calls, use :class:`SyncClient` or :class:`Client`.
    """
    with SyncClient(url, token=os.environ.get("SYNAPSE_TOKEN")) as client:
        return client.call(func, *args, **kwargs)


def _batch_error(number: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"id": number, "result": None, "error": error}


def _parse_batch_line(line: str) -> tuple[str, list[Any] | dict[str, Any]]:
    """One NDJSON line: ``{"func": "...", "args": ...}`` or ``["func", arg, ...]``; ValueError otherwise."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if type(value) is list and value and type(value[0]) is str:
        return value[0], value[1:]
    if type(value) is dict and type(value.get("func")) is str:
        args = value.get("args", [])
        if type(args) in (list, dict):
            return value["func"], args
    raise ValueError('expected {"func": "...", "args": [...]} or ["func", arg, ...]')


async def _batch_call(client: Client, number: int, line: str) -> dict[str, Any]:
    try:
        func, args = _parse_batch_line(line)
    except ValueError as exc:
        return _batch_error(number, protocol.INVALID_REQUEST, f"line {number}: {exc}")
    try:
        result = await client.request(func, args)
    except RPCError as exc:
        return _batch_error(number, exc.code, exc.message, exc.data)
    except CallTimeout as exc:
        return _batch_error(number, protocol.CALL_TIMEOUT, str(exc))
    except ConnectionLost as exc:
        return _batch_error(number, protocol.SERVER_ERROR, str(exc))
    return {"id": number, "result": result, "error": None}


async def ordered_calls(
    client: Client, lines: AsyncIterator[str], *, concurrency: int = 16
) -> AsyncIterator[dict[str, Any]]:
    """Run NDJSON calls concurrently over ``client``; yield ``{"id", "result", "error"}`` in input order.

    At most ``concurrency`` calls are in flight, and at most a few times that many finished replies
    wait for a slower call ahead of them, so memory stays bounded on endless input.
    """
    slots = asyncio.Semaphore(concurrency)
    window: asyncio.Queue[asyncio.Task[dict[str, Any]] | None] = asyncio.Queue(maxsize=4 * concurrency)

    async def run(number: int, line: str) -> dict[str, Any]:
        try:
            return await _batch_call(client, number, line)
        finally:
            slots.release()

    async def produce() -> None:
        number = 0
        try:
            async for line in lines:
                if line.strip():
                    number += 1
                    await slots.acquire()
                    await window.put(asyncio.ensure_future(run(number, line)))
        finally:
            await window.put(None)  # even when reading fails: the consumer must not wait forever

    producer = asyncio.ensure_future(produce())
    try:
        while (task := await window.get()) is not None:
            yield await task
        await producer  # surfaces a read error
    finally:
        producer.cancel()
        leftovers = [task for task in (window.get_nowait() for _ in range(window.qsize())) if task is not None]
        for task in leftovers:
            task.cancel()
        # Let each cancelled call run its handler (which sends `cancel`) before the client closes.
        await asyncio.gather(*leftovers, return_exceptions=True)
