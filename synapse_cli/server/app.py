"""The server: a Starlette app (``/ws``, ``/health``, ``/metrics``) and what its connections share.

:class:`ServerState` holds one server process's registry, settings, open connections and metrics, and
decides whether a handshake is accepted (token, origin, path, connection limit, drain). Each accepted
connection is a :class:`~synapse_cli.server.connection.Connection` driving a sans-I/O
:class:`~synapse_cli.core.session.Session`. Under uvicorn, ``/ws`` is served by our own WebSocket protocol
(``transport.py``); :class:`RPCEndpoint` serves it through plain ASGI under any other server.
Processes, signals and user code are ``runner.py``'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from synapse_cli.core.context import Caller, Headers
from synapse_cli.core.errors import RPCError
from synapse_cli.core.registry import Registry
from synapse_cli.core.session import Session
from synapse_cli.core.settings import DEFAULT_HOST, DEFAULT_PORT, WS_PATH, Settings, is_loopback
from synapse_cli.server.broker import RedisBroker
from synapse_cli.server.connection import Connection, Link
from synapse_cli.server.docs import page
from synapse_cli.server.metrics import Metrics
from synapse_cli.server.tokens import BEARER_PREFIX, Tokens
from synapse_cli.server.tokens import offered_subprotocols as _subprotocols

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "BEARER_PREFIX",
    "SUBPROTOCOL",
    "WS_PATH",
    "RPCEndpoint",
    "ServerState",
    "Settings",
    "balanced_ports",
    "bind_socket",
    "bind_sockets",
    "create_app",
    "is_loopback",
    "text_headers",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("synapse.server")


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
    broker: RedisBroker | None = field(init=False)
    tokens: Tokens = field(init=False)

    def __post_init__(self) -> None:
        # Sync functions run here. asyncio's default pool has only min(32, CPUs + 4) threads: a few
        # slow calls on one connection would stall everyone's; starlette/anyio use 40 too.
        self.threads = ThreadPoolExecutor(max_workers=self.settings.threads, thread_name_prefix="synapse-call")
        self.metrics = Metrics(
            connections=lambda: len(self.connections),
            inflight=lambda: sum(c.session.running for c in self.connections),
            streams=lambda: sum(c.streams for c in self.connections),
            topics=self.registry.topics,
        )
        self.broker = RedisBroker(self.settings.broker, self.registry.topics) if self.settings.broker else None
        self.tokens = Tokens(self.settings.token, self.settings.tokens)
        for topic in self.registry.topics.values():
            topic.queue_size = self.settings.subscriber_queue
            topic.broker = self.broker

    async def start(self) -> None:
        """Startup (ASGI lifespan): connect the broker, so publishes reach this process from the start."""
        if self.broker is not None:
            try:
                await self.broker.ready()
            except RPCError as exc:
                logger.warning("%s; retrying in the background", exc.message)

    async def close(self) -> None:
        """Shutdown (ASGI lifespan): close the broker connection and the thread pool."""
        if self.broker is not None:
            await self.broker.close()
        self.threads.shutdown(wait=False)

    def authorized(self, headers: Sequence[tuple[str, str]]) -> bool:
        """True when no token is set, or the request carries one of them (``tokens.py``: constant time)."""
        return self.tokens.identify(headers)[0]

    def refusal(self, path: str, headers: Sequence[tuple[str, str]]) -> tuple[int, str] | None:
        """Why a handshake must be refused (HTTP status and text), or None to accept it."""
        if path != WS_PATH:
            return 404, f"no WebSocket endpoint at {path}: the endpoint is {WS_PATH}"
        if not self.authorized(headers):
            return 401, "missing or wrong bearer token"
        origins = [value for name, value in headers if name.lower() == "origin"]
        if origins and (len(origins) > 1 or not self._origin_allowed(origins[0], headers)):
            return 403, "origin not allowed"
        if self.draining:
            return 503, "server is shutting down"
        if len(self.connections) >= self.settings.max_connections:
            return 503, "too many connections"
        return None

    def _origin_allowed(self, origin: str, headers: Sequence[tuple[str, str]]) -> bool:
        """An origin in ``--allow-origin``, or the server's own (its ``/docs`` page)."""
        if origin in self.settings.allow_origins:
            return True
        hosts = [value for name, value in headers if name.lower() == "host"]
        scheme = "https" if self.settings.certfile else "http"
        return len(hosts) == 1 and origin == f"{scheme}://{hosts[0]}"

    def log_drain(self) -> None:
        """Say what the shutdown waits for (the calls in flight, for how long), instead of a silence."""
        calls = sum(len(connection.session.calls) for connection in self.connections)
        streams = sum(connection.streams for connection in self.connections)
        if calls - streams > 0:
            logger.info(
                "draining: waiting up to %g s for %d call%s in flight to finish (Ctrl-C again to stop now)",
                self.settings.grace,
                calls - streams,
                "" if calls - streams == 1 else "s",
            )
        if streams:
            logger.info("draining: ending %d stream%s with -32003", streams, "" if streams == 1 else "s")

    def session(self, caller: Caller | None = None) -> Session:
        """A new connection's session, with this server's limits (``caller``: what its calls' Context says)."""
        settings = self.settings
        return Session(
            self.registry,
            max_inflight=settings.max_inflight,
            max_batch=settings.max_batch,
            debug=settings.debug,
            version=self.version,
            caller=caller,
        )

    def connect(self, link: Link, *, number: int, peer: str, headers: Sequence[tuple[str, str]] = ()) -> Connection:
        """Open a connection over ``link`` (``headers``: its handshake's): a new session and its driver, counted."""
        caller = Caller(number, peer, Headers(headers), self.tokens.identify(headers)[1])
        connection = Connection(
            self.session(caller),
            link,
            threads=self.threads,
            call_timeout=self.settings.call_timeout,
            metrics=self.metrics,
            number=number,
            peer=peer,
        )
        self.connections.add(connection)
        self.metrics.refresh()
        return connection

    def disconnect(self, connection: Connection) -> None:
        """The connection is gone: forget it, stop its calls (nobody is left to answer)."""
        self.connections.discard(connection)
        self.metrics.refresh()
        connection.abandon()


def text_headers(scope: Scope) -> list[tuple[str, str]]:
    """An ASGI scope's headers as text, the way HTTP carries them (Latin-1)."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope.get("headers") or []]


# The page is self-contained: nothing may load from elsewhere, and it may open a WebSocket to its own host.
_DOCS_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
}
SUBPROTOCOL = "synapse.v1"


class RPCEndpoint:
    """The plain ASGI ``/ws`` endpoint (any ASGI server): handshake checks, then one :class:`Connection`.

    Under uvicorn, ``synapse serve`` answers ``/ws`` with its own WebSocket protocol (``transport.py``)
    and never reaches this; it is what another ASGI server, or an app mounting ours, runs.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self._numbers = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        refusal = self.state.refusal(scope.get("path", WS_PATH), text_headers(scope))
        if refusal is not None:
            await _deny(scope, send, *refusal)
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if SUBPROTOCOL in _subprotocols(text_headers(scope)):
            accept["subprotocol"] = SUBPROTOCOL
        await send(accept)
        client = scope.get("client")
        link = _ASGILink(send)
        peer = f"{client[0]}:{client[1]}" if client else ""
        connection = self.state.connect(link, number=next(self._numbers), peer=peer, headers=text_headers(scope))
        try:
            while True:
                await link.readable()
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    await link.close(1003)
                    break
                connection.receive(text)
        finally:
            self.state.disconnect(connection)
            link.stop()


_ASGI_QUEUE = 16  # messages a stream may queue for the ASGI server before it waits


class _ASGILink:
    """A :class:`~synapse_cli.server.connection.Link` over ASGI ``send``: one writer task keeps the order."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._sent = asyncio.Event()  # set after each message the server took
        self._closed = False
        self._writer = asyncio.ensure_future(self._write_all())

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._queue.append(data)
            self._wake.set()

    def update_reading(self, saturated: bool) -> None:
        if saturated:
            self._reading.clear()
        else:
            self._reading.set()

    async def drained(self) -> None:
        while len(self._queue) > _ASGI_QUEUE and not self._closed:
            self._sent.clear()
            await self._sent.wait()

    async def readable(self) -> None:
        await self._reading.wait()

    async def _write_all(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self._closed:
                data = self._queue.popleft()
                try:
                    await self._send({"type": "websocket.send", "text": data.decode()})
                except Exception:  # the peer is gone (each server words it its own way)
                    self._closed = True
                self._sent.set()

    async def close(self, code: int) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send({"type": "websocket.close", "code": code})

    def stop(self) -> None:
        self._closed = True
        self._sent.set()
        self._writer.cancel()


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

    from synapse_cli.server.metrics import CONTENT_TYPE_LATEST

    state = ServerState(registry, settings or Settings(), version)

    async def metrics(request: HTTPRequest) -> Response:
        if not state.authorized(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
        ):  # metrics reveal function names and load
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
    if state.settings.docs:

        async def docs(request: HTTPRequest) -> Response:
            return Response(page(), media_type="text/html; charset=utf-8", headers=_DOCS_HEADERS)

        routes.append(Route("/docs", docs))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.synapse = state
    return app


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
