"""The server: a Starlette app whose ``/ws`` endpoint moves frames between the socket and the core.

The endpoint speaks raw ASGI (no per-message Starlette wrapper): it checks the handshake (token, origin,
connection limit), then a :class:`Connection` reads frames, hands them to :mod:`synapse_cli.protocol` and
:mod:`synapse_cli.registry`, runs each call (inline, on the loop, or in a thread) and writes the replies
as they finish. ``run`` starts uvicorn with a graceful drain on SIGINT/SIGTERM (SPEC §2).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import itertools
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypedDict

from synapse_cli import protocol
from synapse_cli.errors import RPCError
from synapse_cli.logs import RateLimitedLog
from synapse_cli.metrics import Metrics
from synapse_cli.protocol import CALL, CANCEL, LIST, NATIVE, ErrorInfo, Invalid, Request
from synapse_cli.registry import Function, Registry, error_from_exception

__all__ = [
    "DEFAULT_HOST",
    "DIRECT_EXTENSION",
    "DEFAULT_PORT",
    "Settings",
    "ServerState",
    "balanced_ports",
    "bind_socket",
    "bind_sockets",
    "create_app",
    "is_loopback",
]

logger = logging.getLogger("synapse.server")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# An ASGI extension our uvicorn protocol (runner.py) puts in the WebSocket scope:
#   receive_nowait() -> the next message if one is queued, else None;
#   send_text(utf8: bytes, now: bool) -> True when the frame was written (False: use the ASGI send, which
#       waits). Frames are coalesced until the end of the loop iteration; ``now`` sends them at once when
#       no other message of this connection waits to be answered;
#   on_text(handler | None): give the server a handler(text) -> bool for text messages as they arrive,
#       called when no message is queued before it and the socket takes writes (False: queue it).
# Without it (another ASGI server) the endpoint uses plain ASGI messages.
DIRECT_EXTENSION = "synapse.direct"


class Direct(TypedDict):
    receive_nowait: Callable[[], Message | None]
    send_text: Callable[[bytes, bool], bool]
    on_text: Callable[[Callable[[str], bool] | None], None]


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``synapse serve`` can be told (SPEC §2); the defaults are the documented ones."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    allow_origins: tuple[str, ...] = ()
    insecure: bool = False
    certfile: str | None = None
    keyfile: str | None = None
    max_message_size: int = 2**20
    max_connections: int = 1000
    max_inflight: int = 128
    max_batch: int = 1000
    call_timeout: float = 30.0
    grace: float = 5.0
    handshake_timeout: float = 10.0
    threads: int = 40
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    workers: int = 1
    debug: bool = False
    log_level: str = "info"
    log_format: str = "human"

    @property
    def url(self) -> str:
        scheme = "wss" if self.certfile else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/ws"


def is_loopback(host: str) -> bool:
    """True for localhost and the loopback ranges (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(slots=True)
class ServerState:
    """What the connections of one server process share."""

    registry: Registry
    settings: Settings
    version: str = "0"
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False
    metrics: Metrics = field(init=False)
    threads: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        # Sync functions run here. asyncio's default pool has only min(32, CPUs + 4) threads: a few
        # slow calls on one connection would stall everyone's; starlette/anyio use 40 too.
        self.threads = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="synapse-call")
        self.metrics = Metrics(
            connections=lambda: len(self.connections),
            inflight=lambda: sum(len(c.pending) for c in self.connections),
        )

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        """True when no token is set, or the headers carry ``Authorization: Bearer <token>`` (constant time)."""
        if self.settings.token is None:
            return True
        expected = b"Bearer " + self.settings.token.encode()
        return hmac.compare_digest(headers.get(b"authorization", b""), expected)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """Why a handshake must be refused (HTTP status and text), or None to accept it."""
        headers = dict(scope.get("headers") or [])
        if not self.authorized(headers):
            return 401, "missing or wrong bearer token"
        origin = headers.get(b"origin")
        if origin is not None and origin.decode("latin-1") not in self.settings.allow_origins:
            return 403, "origin not allowed"
        if self.draining:
            return 503, "server is shutting down"
        if len(self.connections) >= self.settings.max_connections:
            return 503, "too many connections"
        return None

    async def drain(self) -> None:
        """Shut down gracefully: refuse new calls, give in-flight ones ``grace`` seconds, close with 1001."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.grace
        while any(c.pending for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.cancel_all(protocol.SHUTTING_DOWN)
        deadline = loop.time() + 1.0  # let the cancelled calls write their -32003
        while any(c.pending for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            await connection.close(1001)


@dataclass(slots=True)
class _Pending:
    """An in-flight call: its task, and why it was cancelled (decides the reply)."""

    task: asyncio.Task[None] | None = None
    reason: int | None = None
    timer: asyncio.TimerHandle | None = None
    batch: bool = False  # a batch's gathering task: it has no timeout of its own
    started: bool = False
    answered: bool = False  # its reply is decided: cancelling now would lose it

    def stop(self, reason: int | None) -> None:
        """Cancel the call; ``reason`` (an error code) decides its reply, None means no reply.

        A task cancelled before its first step never enters its ``try``, so a call that has not
        started yet is only marked: it answers with the reason as soon as it starts.
        """
        if self.task is None or self.task.done() or self.answered:
            return
        if self.reason is None:
            self.reason = reason
        if self.started or reason is None:
            self.task.cancel()


class Connection:
    """One WebSocket connection: reads frames, runs calls concurrently, writes replies as they finish."""

    def __init__(
        self, state: ServerState, send: Send, *, number: int = 0, peer: str = "", direct: Direct | None = None
    ) -> None:
        self.number = number
        self.peer = peer
        self.state = state
        self.settings = state.settings
        self.registry = state.registry
        self.metrics = state.metrics
        self._send = send
        # The server's direct calls (runner.py's protocol): no coroutine, dict or await per message.
        self._receive_now = direct["receive_nowait"] if direct else None
        self._send_now = direct["send_text"] if direct else None
        self.pending: dict[Any, _Pending] = {}
        self._slot_freed: asyncio.Event | None = None  # made when needed: an idle connection keeps less
        self._running = asyncio.Semaphore(state.settings.max_inflight)  # batches included
        self._closed = False
        self._protocol_log = RateLimitedLog()
        self._answered: list[tuple[Request, str, str, float]] = []  # answered at once, not counted yet

    def _observe(self, item: Request, function: str, outcome: str, start: float) -> None:
        """Count an answered call in the metrics; log it at debug level (ids and names, never bodies)."""
        seconds = time.perf_counter() - start
        self.metrics.record(function, outcome, seconds)
        if logger.isEnabledFor(logging.DEBUG):
            fields = {"connection": self.number, "call_id": item.id, "function": function, "outcome": outcome}
            logger.debug("call %s %s", function, outcome, extra={**fields, "duration_ms": round(seconds * 1000, 3)})

    async def serve(self, receive: Receive) -> None:
        """The connection loop: read, decode, dispatch; stop reading while ``max_inflight`` calls run."""
        limit = self.settings.max_inflight
        receive_now = self._receive_now
        # on_text answers most messages as they arrive; this loop takes those queued behind others.
        while True:
            message = receive_now() if receive_now is not None else None
            if message is None:
                message = await receive()
            text = message.get("text")
            if text is None:
                if message["type"] == "websocket.receive":  # a binary frame
                    await self.close(1003)
                return
            while len(self.pending) >= limit:  # backpressure: the queue fills up, then the socket waits
                self._slot_freed = asyncio.Event()
                await self._slot_freed.wait()
                self._slot_freed = None
            unsent = self._answer(text)
            if unsent is not None:
                await self.send(unsent)

    def on_text(self, text: str) -> bool:
        """A message the server hands over as it arrives (no queue, no task to wake); False: queue it.

        Only while nothing is queued before it and the socket takes writes (the server checks both),
        and while a slot is free (backpressure as in :meth:`serve`).
        """
        # The loop holds a message while it waits for a slot: later ones must not overtake it.
        if self._closed or self._slot_freed is not None or len(self.pending) >= self.settings.max_inflight:
            return False
        try:
            unsent = self._answer(text, now=False)  # the server writes the replies to one read together
        except Exception:  # a bug of ours: never silent, and the peer gets a close frame
            logger.exception("connection handler failed")
            self._track(asyncio.ensure_future(self.close(1011)), _Pending(batch=True), None)
            return True
        if unsent is not None:  # closing meanwhile, or the socket filled up: the async way, in a task
            self._track(asyncio.ensure_future(self.send(unsent)), _Pending(batch=True), None)
        return True

    def _answer(self, text: str, *, now: bool = True) -> bytes | None:
        """Handle one message; the reply that could not be written without waiting, if any."""
        reply = self._handle(text)
        unsent = reply if reply is not None and not self._write_now(reply, now=now) else None
        # Bookkeeping once the reply is on its way: it is not kept waiting for it.
        self.metrics.received(text)
        if self._answered:
            for answered in self._answered:
                self._observe(*answered)
            self._answered.clear()
        return unsent

    def _handle(self, text: str) -> bytes | None:
        """Start what ``text`` asks for; the reply to write now, if there is one already."""
        frame = protocol.decode_frame(text, max_batch=self.settings.max_batch)
        if not frame.batch:
            reply = self._start(frame.items[0], send=True)
            return reply if type(reply) is bytes else None
        replies = [self._start(item, send=False) for item in frame.items]
        if any(isinstance(reply, asyncio.Task) for reply in replies):
            batch = _Pending(batch=True)
            self._track(asyncio.ensure_future(self._finish_batch(replies)), batch, None)
            return None
        done = [reply for reply in replies if type(reply) is bytes]
        return protocol.join_batch(done) if done else None

    async def _finish_batch(self, replies: list[Any]) -> None:
        parts = [await reply if isinstance(reply, asyncio.Task) else reply for reply in replies]
        done = [part for part in parts if type(part) is bytes]
        if done:
            await self.send(protocol.join_batch(done))

    def _start(self, item: Request | Invalid, *, send: bool) -> bytes | None | asyncio.Task[bytes | None]:
        """Answer what can be answered now; start a task for the rest."""
        if type(item) is Invalid:
            code = item.error.code
            self.metrics.protocol_errors.labels(str(code)).inc()
            fields = {"connection": self.number, "peer": self.peer, "code": code}
            self._protocol_log(logger, logging.INFO, "protocol error %d: %s", code, item.error.message, **fields)
            return protocol.reply_error(item.id, item.dialect, item.error)
        assert type(item) is Request
        if item.kind == CANCEL:
            self.cancel(item.id, protocol.CANCELLED)
            return None
        if item.kind != CALL:
            return self._describe(item)
        if self.state.draining:
            return self._error(item, _CANCEL_ERRORS[protocol.SHUTTING_DOWN])
        key = _key_of(item.id) if item.id is not None else None  # JSON-RPC allows a null id: nothing to track
        if key is not None and key in self.pending:
            return self._error(item, ErrorInfo(protocol.INVALID_REQUEST, f"duplicate id: {item.id!r} is in flight"))
        start = time.perf_counter()
        try:
            entry, args, kwargs = self.registry.resolve(item.func, item.args)
        except RPCError as exc:
            known = exc.code != protocol.METHOD_NOT_FOUND  # unknown names would make labels unbounded
            self._answered.append((item, item.func if known else "<unknown>", str(exc.code), start))
            return self._error(item, ErrorInfo(exc.code, exc.message, exc.data))
        if entry.inline and not entry.is_async:
            return self._run_inline(item, entry, args, kwargs, start)
        pending = _Pending()
        task = asyncio.ensure_future(self._run(item, entry, args, kwargs, send, pending, start))
        self._track(task, pending, key)
        return task

    def _track(self, task: asyncio.Task[Any], pending: _Pending, key: Any) -> None:
        pending.task = task
        key = object() if key is None else key
        self.pending[key] = pending
        task.add_done_callback(functools.partial(self._done, key))
        self.metrics.call_started()

    @staticmethod
    def _expire(pending: _Pending) -> None:
        pending.stop(protocol.CALL_TIMEOUT)

    def _done(self, key: Any, task: asyncio.Task[Any]) -> None:
        pending = self.pending.pop(key, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        if self._slot_freed is not None:
            self._slot_freed.set()
        self.metrics.call_finished()
        if not task.cancelled() and task.exception() is not None:  # a bug of ours: never silent
            logger.error("connection task failed", exc_info=task.exception())

    def _run_inline(
        self, item: Request, entry: Function, args: tuple[Any, ...], kwargs: dict[str, Any], start: float
    ) -> bytes | None:
        try:
            result = entry.func(*args, **kwargs)
        except Exception as exc:
            error = error_from_exception(exc, debug=self.settings.debug, function=entry.name)
            self._answered.append((item, entry.name, str(error.code), start))
            return self._error(item, error)
        self._answered.append((item, entry.name, "ok", start))
        return None if item.notification else protocol.reply_result(item.id, item.dialect, result)

    async def _run(
        self,
        item: Request,
        entry: Function,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        send: bool,
        pending: _Pending,
        start: float,
    ) -> bytes | None:
        pending.started = True
        outcome = "ok"
        try:
            if pending.reason is not None:  # cancelled before it started
                raise asyncio.CancelledError
            async with self._running:
                if self.settings.call_timeout > 0:  # from the start of the run, not of the wait for a slot
                    timeout = self.settings.call_timeout
                    pending.timer = asyncio.get_running_loop().call_later(timeout, self._expire, pending)
                if entry.is_async:
                    result = await entry.func(*args, **kwargs)
                else:
                    call = functools.partial(entry.func, *args, **kwargs)
                    result = await asyncio.get_running_loop().run_in_executor(self.state.threads, call)
            reply = None if item.notification else protocol.reply_result(item.id, item.dialect, result)
        except asyncio.CancelledError:
            reason = pending.reason
            if reason is None:  # the client went away: nobody to answer
                raise
            outcome = str(reason)
            reply = self._error(item, _CANCEL_ERRORS[reason])
        except Exception as exc:
            error = error_from_exception(exc, debug=self.settings.debug, function=entry.name)
            outcome = str(error.code)
            reply = self._error(item, error)
        pending.answered = True
        self._observe(item, entry.name, outcome, start)
        if send and reply is not None:
            await self.send(reply)
        return reply

    def _describe(self, item: Request) -> bytes | None:
        if item.notification:
            return None
        if item.kind == LIST:
            return protocol.reply_result(item.id, NATIVE, {"functions": self.registry.describe()})
        document = self.registry.openrpc(version=self.state.version)
        return protocol.reply_result(item.id, item.dialect, document)

    @staticmethod
    def _error(item: Request, error: ErrorInfo) -> bytes | None:
        return None if item.notification else protocol.reply_error(item.id, item.dialect, error)

    def cancel(self, request_id: Any, reason: int) -> None:
        """Cancel the in-flight call with this id (unknown ids are ignored)."""
        pending = self.pending.get(_key_of(request_id))
        if pending is not None:
            pending.stop(reason)

    def cancel_all(self, reason: int | None) -> None:
        """Cancel every in-flight call; ``reason`` None means nobody is left to answer."""
        for pending in list(self.pending.values()):
            if reason is not None and pending.batch:
                continue  # its calls answer for themselves; the batch then replies
            pending.stop(reason)

    def _write_now(self, data: bytes, *, now: bool = False) -> bool:
        """Write one text frame without waiting, when the server offers that and the socket takes it.

        False: use :meth:`send` (another ASGI server, or the peer is slow to read: flow control waits).
        """
        if self._closed:
            return True  # nobody to write to
        if self._send_now is not None and self._send_now(data, now):
            self.metrics.sent(len(data))
            return True
        return False

    async def send(self, data: bytes) -> None:
        """Write one text frame; a peer that is gone is not an error worth raising."""
        if self._write_now(data):
            return
        self.metrics.sent(len(data))
        try:
            await self._send({"type": "websocket.send", "text": data.decode()})
        except (OSError, RuntimeError):
            self._closed = True
        except Exception as exc:  # uvicorn's ClientDisconnected is not public
            if type(exc).__name__ != "ClientDisconnected":
                raise
            self._closed = True

    async def close(self, code: int) -> None:
        """Close the WebSocket with ``code`` (once)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._send({"type": "websocket.close", "code": code})
        except Exception:  # already gone
            logger.debug("close(%d) on a connection already gone", code)


_CANCEL_ERRORS = {
    protocol.CANCELLED: ErrorInfo(protocol.CANCELLED, "call cancelled"),
    protocol.CALL_TIMEOUT: ErrorInfo(protocol.CALL_TIMEOUT, "call timed out"),
    protocol.SHUTTING_DOWN: ErrorInfo(protocol.SHUTTING_DOWN, "server is shutting down"),
}


def _key_of(request_id: Any) -> Any:
    """The in-flight table's key: 1 and "1" are different ids."""
    return (type(request_id) is str, request_id)


class RPCEndpoint:
    """The raw ASGI ``/ws`` endpoint: handshake checks, then one :class:`Connection`."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._numbers = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        refusal = self.state.refusal(scope)
        if refusal is not None:
            await _deny(scope, send, *refusal)
            return
        await send({"type": "websocket.accept"})
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else ""
        direct = scope.get("extensions", {}).get(DIRECT_EXTENSION)
        connection = Connection(self.state, send, number=next(self._numbers), peer=peer, direct=direct)
        self.state.connections.add(connection)
        self.state.metrics.refresh()
        if direct:
            direct["on_text"](connection.on_text)
        try:
            await connection.serve(receive)
        finally:
            if direct:
                direct["on_text"](None)
            self.state.connections.discard(connection)
            self.state.metrics.refresh()
            connection.cancel_all(None)


async def _deny(scope: Scope, send: Send, status: int, text: str) -> None:
    """Refuse a handshake with an HTTP status (the ASGI denial-response extension), else 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode() + b"\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def create_app(registry: Registry, settings: Settings | None = None, *, version: str = "0") -> Any:
    """The ASGI application: ``/ws`` (RPC), ``/health`` (JSON), ``/metrics`` (Prometheus text)."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute

    from synapse_cli.metrics import CONTENT_TYPE_LATEST

    state = ServerState(registry, settings or Settings(), version)

    async def metrics(request: HTTPRequest) -> Response:
        if not state.authorized(dict(request.scope["headers"])):  # metrics reveal function names and load
            return Response("missing or wrong bearer token\n", 401, {"www-authenticate": "Bearer"})
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def health(request: HTTPRequest) -> JSONResponse:
        body = {
            "status": "shutting down" if state.draining else "ok",
            "version": version,
            "functions": len(registry),
            "connections": len(state.connections),
        }
        return JSONResponse(body, status_code=503 if state.draining else 200)

    endpoint = RPCEndpoint(state)
    routes = [WebSocketRoute("/ws", endpoint), Route("/health", health), Route("/metrics", metrics)]
    app = Starlette(routes=routes)
    app.state.synapse = state
    return _WebSocketFirst(endpoint, app)


class _WebSocketFirst:
    """``/ws`` straight to the endpoint; the rest (``/health``, ``/metrics``, 404s) to Starlette.

    Starlette's routing and middleware would add a stack of coroutines to every connection (memory
    while idle) and a wrapper to every message sent.
    """

    def __init__(self, endpoint: RPCEndpoint, app: Any) -> None:
        self.endpoint = endpoint
        self.app = app
        self.state = app.state  # app.state.synapse: the ServerState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """Listening sockets for ``count`` workers: one each on one port where the kernel balances them.

    On Linux (SO_REUSEPORT) the kernel spreads new connections evenly over the sockets; elsewhere the
    workers share one socket, and whichever wakes first accepts. A port another process listens on
    fails here as it would without workers.
    """
    if count < 2 or not balanced_ports():
        return [bind_socket(host, port)]
    if port:
        bind_socket(host, port).close()  # in use (even by a SO_REUSEPORT group): OSError now
    first = bind_socket(host, port, reuse_port=True)
    port = first.getsockname()[1]
    return [first, *(bind_socket(host, port, reuse_port=True) for _ in range(count - 1))]


def balanced_ports() -> bool:
    """True where each worker can listen on the port itself and the kernel spreads connections (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind the listening socket ourselves: the real port is known before serving (port 0 works).

    ``reuse_port``: more sockets of ours listen on the same port (SO_REUSEPORT, one per worker).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
