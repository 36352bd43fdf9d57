"""What the connections of one server share, and the ASGI app ``synapse serve`` runs (:func:`create_app`).

:class:`ServerState` holds one server process's registry, settings, open connections and metrics, and
decides whether a handshake is accepted (token, origin, path, connection limit, drain). Each accepted
connection is a :class:`~synapse_cli.server.connection.Connection` driving a sans-I/O
:class:`~synapse_cli.core.session.Session`. Under uvicorn, ``/ws`` is served by our own WebSocket protocol
(``transport.py``); ``mount.py``'s ``RPCEndpoint`` serves it through plain ASGI (another server, or an
app mounting ours), and its ``SynapseApp`` is the Starlette app itself. Processes, signals and user
code are ``runner.py``'s.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from websockets.typing import Subprotocol

from synapse_cli.core.context import Caller, Headers
from synapse_cli.core.errors import RPCError
from synapse_cli.core.registry import Registry
from synapse_cli.core.session import Session
from synapse_cli.core.settings import DEFAULT_HOST, DEFAULT_PORT, WS_PATH, Settings, is_loopback
from synapse_cli.server.broker import RedisBroker
from synapse_cli.server.connection import Connection, Link
from synapse_cli.server.metrics import Metrics
from synapse_cli.server.tokens import BEARER_PREFIX, Tokens

if TYPE_CHECKING:
    from websockets.server import ServerProtocol

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "BEARER_PREFIX",
    "SUBPROTOCOL",
    "WS_PATH",
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

    def refusal(
        self, path: str | None, headers: Sequence[tuple[str, str]], *, secure: bool | None = None
    ) -> tuple[int, str] | None:
        """Why a handshake must be refused (HTTP status and text), or None to accept it.

        ``path`` None: a router chose this endpoint already (an ASGI app, mounted anywhere). ``secure``:
        whether the handshake came over TLS (default: whether this server has a certificate).
        """
        if path is not None and path != WS_PATH:
            return 404, f"no WebSocket endpoint at {path}: the endpoint is {WS_PATH}"
        if not self.authorized(headers):
            return 401, "missing or wrong bearer token"
        origins = [value for name, value in headers if name.lower() == "origin"]
        if origins and (len(origins) > 1 or not self._origin_allowed(origins[0], headers, secure)):
            return 403, "origin not allowed"
        if self.draining:
            return 503, "server is shutting down"
        if len(self.connections) >= self.settings.max_connections:
            return 503, "too many connections"
        return None

    def _origin_allowed(self, origin: str, headers: Sequence[tuple[str, str]], secure: bool | None) -> bool:
        """An origin in ``--allow-origin``, or the server's own (its ``/docs`` page)."""
        if origin in self.settings.allow_origins:
            return True
        hosts = [value for name, value in headers if name.lower() == "host"]
        scheme = "https" if (bool(self.settings.certfile) if secure is None else secure) else "http"
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


SUBPROTOCOL = "synapse.v1"


def select_subprotocol(protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``synapse.v1`` when offered (a browser sending its token as ``bearer.…``), never the token itself.

    websockets' ``ServerProtocol(select_subprotocol=)`` binds it as a method: a plain Python function
    here, as the compiled transport's own functions cannot be bound.
    """
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def create_app(registry: Registry, settings: Settings | None = None, *, version: str = "0") -> Any:
    """The ASGI application ``synapse serve`` runs: ``/ws`` (RPC), ``/health``, ``/metrics``, ``/docs``.

    It is :class:`~synapse_cli.server.mount.SynapseApp`'s Starlette app (what ``synapse_cli.asgi`` gives
    to mount elsewhere), without the signal handling: ``synapse serve`` drains through uvicorn's shutdown.
    """
    from synapse_cli.server.mount import SynapseApp

    return SynapseApp(registry, settings, version=version, drain_on_signal=False).app


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
