"""The HTTP side of ``synapse serve`` under uvicorn: its own HTTP protocol, guarded.

:func:`guarded_http_protocol` makes the class given as ``uvicorn.Config(http=...)``: uvicorn's own HTTP
protocol (the documented ``auto`` choice), held rather than subclassed, with a deadline on every
request's headers and a bound on their size, so a silent or trickling peer cannot hold a connection or
memory. Once a request upgrades to WebSocket, :mod:`synapse_cli.server.transport` takes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn
    import uvicorn.server

__all__ = ["MAX_HEADER_BYTES", "guarded_http_protocol"]

logger = logging.getLogger("synapse.server")

MAX_HEADER_BYTES = 64 * 1024  # an HTTP request's head (request line + headers)


class _GuardedHTTP(asyncio.Protocol):
    """uvicorn's HTTP protocol, with a deadline and a size bound on every request's head."""

    inner_class: Callable[..., asyncio.Protocol]
    deadline: float

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: uvicorn.server.ServerState,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.inner = self.inner_class(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        self.loop = _loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = 0  # bytes of the request head read so far (-1: between requests)
        self._tail = b""  # the last bytes read, to find a head's end across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._watch(data)
        if self.transport is not None and self.transport.is_closing():
            return
        self.inner.data_received(data)
        if self.transport is not None and self.transport.get_protocol() is not self:
            self._disarm()  # upgraded to WebSocket: the request is over

    def _watch(self, data: bytes) -> None:
        """Track where each request's head ends; enforce its deadline and size."""
        view = self._tail + data
        position = len(self._tail)
        while position < len(view):
            if self._head < 0:  # a new request begins
                self._head = 0
                self._arm()
            end = view.find(b"\r\n\r\n", max(position - 3, 0))
            if end < 0:
                self._head += len(view) - position
                break
            self._head += max(end - position, 0)
            if self._head > MAX_HEADER_BYTES:
                break
            self._head = -1  # the head is complete: what follows is a body or the next request
            self._disarm()
            position = end + 4
        self._tail = view[-3:]
        if self._head > MAX_HEADER_BYTES:
            logger.info("refusing a request whose head exceeds %d bytes", MAX_HEADER_BYTES)
            self._refuse(b"431 Request Header Fields Too Large")

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.loop.call_later(self.deadline, _expire, weakref.ref(self))

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _refuse(self, status: bytes | None) -> None:
        """Close the connection, after an HTTP ``status`` line when one is given."""
        self._disarm()
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.get_protocol() is self:
            if status is not None:
                transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            transport.close()

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _expire(reference: weakref.ref[_GuardedHTTP]) -> None:
    protocol = reference()
    if protocol is not None:
        logger.info("dropping a connection whose request did not arrive within %g s", protocol.deadline)
        protocol._refuse(None)


def guarded_http_protocol(deadline: float) -> type[asyncio.Protocol]:
    """The class for ``uvicorn.Config(http=...)``: uvicorn's ``auto`` HTTP protocol, guarded."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    inner = import_from_string(HTTP_PROTOCOLS["auto"])
    return type("GuardedHTTPProtocol", (_GuardedHTTP,), {"inner_class": inner, "deadline": deadline})
