"""synapse inside your ASGI app (FastAPI, Starlette) or under any ASGI server: :func:`asgi`.

::

    rpc = synapse_cli.asgi(registry, synapse_cli.Settings(token="s3cret"))
    app = FastAPI(lifespan=rpc.lifespan)
    app.mount("/rpc", rpc)  # ws://HOST/rpc/ws, /rpc/health, /rpc/metrics, /rpc/docs

:class:`SynapseApp` is the Starlette app ``synapse serve`` runs too (``/ws``, ``/health``, ``/metrics``,
``/docs``); here ``/ws`` is :class:`RPCEndpoint`, plain ASGI, where ``synapse serve`` under uvicorn has
its own WebSocket protocol (``transport.py``). The handshake checks (token, origin, connection limit)
are :class:`~synapse_cli.server.app.ServerState`'s, the same in both; ``--max-message-size`` is checked
on each message the ASGI server hands over (its own limit applies first: uvicorn's ``--ws-max-size``,
hypercorn's ``websocket_max_message_size``, 16 MiB by default).

Drain: ASGI tells an app nothing before the server closes its WebSockets (uvicorn closes them with 1012
at once; hypercorn closes them after its graceful timeout, both before the lifespan's shutdown). So while
:meth:`SynapseApp.lifespan` runs, the first SIGINT or SIGTERM drains first (new handshakes 503, new
calls -32003, calls in flight get ``grace`` seconds, then close 1001) and is then handed to the
handler that was there, the server's, which shuts down as it always does; a second signal is handed
over at once. :meth:`SynapseApp.drain` does the same for a host that runs its own shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from synapse_cli import __version__
from synapse_cli.core.registry import Registry
from synapse_cli.core.settings import Settings
from synapse_cli.server.app import SUBPROTOCOL, ServerState, text_headers
from synapse_cli.server.docs import page
from synapse_cli.server.tokens import offered_subprotocols

if TYPE_CHECKING:
    from synapse_cli.server.connection import Connection

__all__ = ["RPCEndpoint", "SynapseApp", "asgi"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("synapse.server")

# The page is self-contained: nothing may load from elsewhere, and it may open a WebSocket to its own host.
_DOCS_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
}
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def asgi(registry: Registry, settings: Settings | None = None, *, drain_on_signal: bool = True) -> SynapseApp:
    """synapse as an ASGI app to mount in yours, or to run with any ASGI server.

    ::

        rpc = asgi(registry, Settings(token="s3cret", allow_origins=("https://app.example.com",)))
        app = FastAPI(lifespan=rpc.lifespan)  # or, in a lifespan of your own: async with rpc.lifespan(app)
        app.mount("/rpc", rpc)  # or the endpoint alone: app.router.add_websocket_route("/ws", rpc.websocket)

    Of ``settings``, what the server process owns does not apply (host, port, workers, TLS, logs,
    ``--reload``, the handshake deadline, pings: your ASGI server's); the rest does: tokens, origins,
    the limits, call timeout, grace, docs, broker, threads, debug.

    Args:
        drain_on_signal: while the lifespan runs, drain on the first SIGINT/SIGTERM before the server
            shuts down (see the module docstring); False leaves the signals alone.
    """
    return SynapseApp(registry, settings, drain_on_signal=drain_on_signal)


class SynapseApp:
    """The ASGI app: ``/ws`` (RPC), ``/health``, ``/metrics`` (token-protected) and ``/docs``, under its mount.

    Attributes:
        state: what its connections share (registry, settings, connections, metrics).
        websocket: the ``/ws`` endpoint alone, to route where you like.
        app: the Starlette app behind it.
    """

    def __init__(
        self, registry: Registry, settings: Settings | None = None, *, version: str = __version__,
        drain_on_signal: bool = True,
    ) -> None:  # fmt: skip
        from starlette.applications import Starlette
        from starlette.routing import Route, WebSocketRoute

        self.state = ServerState(registry, settings or Settings(), version)
        self.drain_on_signal = drain_on_signal
        self.websocket = RPCEndpoint(self.state)
        routes = [WebSocketRoute("/ws", self.websocket), Route("/health", self.health), Route("/metrics", self.metrics)]
        if self.state.settings.docs:
            routes.append(Route("/docs", self.docs))
        self.app = Starlette(routes=routes, lifespan=self.lifespan)
        self.app.state.synapse = self.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """Startup and shutdown, for ``FastAPI(lifespan=rpc.lifespan)`` or ``async with rpc.lifespan(app):``.

        Startup connects the broker; while it runs, SIGINT/SIGTERM drain first (``drain_on_signal``);
        shutdown drains what is left, then closes the broker and the thread pool.
        """
        await self.state.start()
        self.websocket.started = True
        signals = _SignalDrain(self) if self.drain_on_signal else None
        try:
            yield
        finally:
            if signals is not None:
                signals.restore()
            await self.drain()
            await self.state.close()

    async def drain(self) -> None:
        """Refuse new handshakes (503) and calls (-32003), give calls in flight ``grace`` seconds, close with 1001."""
        if not self.state.draining:
            self.state.draining = True
            self.state.log_drain()
        await self.websocket.close_all(self.state.settings.grace)

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        state = self.state
        body = {
            "status": "shutting down" if state.draining else "ok",
            "version": state.version,
            "functions": len(state.registry),
            "connections": len(state.connections),
        }
        return JSONResponse(body, status_code=503 if state.draining else 200)

    async def metrics(self, request: Any) -> Any:
        from starlette.responses import Response

        from synapse_cli.server.metrics import CONTENT_TYPE_LATEST

        if not self.state.authorized(text_headers(request.scope)):  # metrics reveal function names and load
            return Response("missing or wrong bearer token\n", 401, {"www-authenticate": "Bearer"})
        return Response(self.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def docs(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response(page(), media_type="text/html; charset=utf-8", headers=_DOCS_HEADERS)


class _SignalDrain:
    """While installed: the first SIGINT/SIGTERM drains, then goes to the handler that was there; a second, at once."""

    def __init__(self, app: SynapseApp) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.previous: dict[int, Any] = {}
        self.signalled = False
        self.handed = False
        if threading.current_thread() is threading.main_thread():  # signals are the main thread's only
            self.previous = {sig: signal.signal(sig, self.received) for sig in _STOP_SIGNALS}

    def received(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled:
            self.hand_over(signum, frame)
            return
        self.signalled = True
        self.loop.call_soon_threadsafe(self.start, signum, frame)

    def start(self, signum: int, frame: FrameType | None) -> None:
        task = self.loop.create_task(self.app.drain())
        task.add_done_callback(lambda _: None if self.handed else self.hand_over(signum, frame))

    def hand_over(self, signum: int, frame: FrameType | None) -> None:
        self.handed = True
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:  # nobody handled it before us: what it would have done
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self.previous = {}


class RPCEndpoint:
    """The plain ASGI ``/ws`` endpoint (any ASGI server, any route): handshake checks, then one Connection.

    Under uvicorn, ``synapse serve`` answers ``/ws`` with its own WebSocket protocol (``transport.py``)
    and never reaches this; it is what another ASGI server, or an app mounting ours, runs.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.started = False  # the lifespan ran (else: said once, at the first connection)
        self._numbers = itertools.count(1)
        self._links: dict[Connection, _ASGILink] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = text_headers(scope)
        # The route matched already (wherever it is mounted): no path check.
        refusal = self.state.refusal(None, headers, secure=scope.get("scheme") == "wss")
        if refusal is not None:
            await _deny(scope, send, *refusal)
            return
        if not self.started:
            self.started = True
            logger.warning("synapse's lifespan is not running: pass lifespan=rpc.lifespan to your app (see asgi())")
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if SUBPROTOCOL in offered_subprotocols(headers):
            accept["subprotocol"] = SUBPROTOCOL
        await send(accept)
        client = scope.get("client")
        link = _ASGILink(send)
        peer = f"{client[0]}:{client[1]}" if client else ""
        connection = self.state.connect(link, number=next(self._numbers), peer=peer, headers=headers)
        self._links[connection] = link
        try:
            await self._read(connection, link, receive)
        finally:
            self._links.pop(connection, None)
            self.state.disconnect(connection)
            link.stop()

    async def _read(self, connection: Connection, link: _ASGILink, receive: Receive) -> None:
        limit = self.state.settings.max_message_size
        while True:
            await link.readable()
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await link.close(1003)  # binary: unsupported data
                return
            if len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit:
                await link.close(1009)  # message too big
                return
            connection.receive(text)

    async def close_all(self, grace: float) -> None:
        """Drain every connection (calls get ``grace`` seconds), then close it with 1001 (going away)."""
        await asyncio.gather(*(self._close(connection, link, grace) for connection, link in list(self._links.items())))

    async def _close(self, connection: Connection, link: _ASGILink, grace: float) -> None:
        await connection.drain(grace)
        await link.close(1001)


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
        """Send what is queued, then the close frame."""
        while self._queue and not self._closed:
            self._sent.clear()
            await self._sent.wait()
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._send({"type": "websocket.close", "code": code})

    def stop(self) -> None:
        self._closed = True
        self._sent.set()
        self._writer.cancel()


async def _deny(scope: Scope, send: Send, status: int, text: str) -> None:
    """Refuse a handshake with an HTTP status (the ASGI denial-response extension), else close 1008."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = text.encode() + b"\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
