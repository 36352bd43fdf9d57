"""The uvicorn protocols ``synapse serve`` runs: uvicorn's own, tuned for many small messages.

* :func:`deadline_protocol`: uvicorn's HTTP protocol, dropping a connection whose handshake does not
  arrive within ``--handshake-timeout``.
* :func:`websocket_protocol`: uvicorn's ``websockets-sansio`` WebSocket protocol, with

  - writes of one event-loop iteration coalesced into one syscall (:class:`_CoalescingTransport`);
  - the :data:`~synapse_cli.server.DIRECT_EXTENSION` ASGI extension: take a queued message and write
    a text frame as plain calls, without a coroutine, a dict and a ``bytes -> str -> bytes`` round trip
    per message;
  - up to :data:`READ_AHEAD` messages read ahead of the app, instead of uvicorn's pause and resume
    of the socket around every message;
  - a lean idle connection: a single-reader inbox instead of an ``asyncio.Queue`` (three deques), and
    the handshake's request, response and headers dropped once the connection is accepted.

Split from ``runner.py`` (processes, signals, user code) on purpose: this module is the socket side of
the server. Each measured change is in benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from typing import Any

__all__ = ["READ_AHEAD", "deadline_protocol", "websocket_protocol"]

READ_AHEAD = 16  # messages a connection may have received and not yet handed to the app

logger = logging.getLogger("synapse.server")


def deadline_protocol(timeout: float) -> Any:
    """uvicorn's HTTP protocol, dropping a connection whose handshake request is not in after ``timeout``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class DeadlineProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            # A weak reference: after an upgrade this protocol is gone from the transport, and the
            # timer must not keep it (its parser, its request) alive until the deadline.
            self._deadline = self.loop.call_later(timeout, _expire, weakref.ref(self))

        def connection_lost(self, exc: Exception | None) -> None:
            self._deadline.cancel()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self, *args: Any) -> None:
            self._deadline.cancel()  # the handshake arrived in time (both uvicorn HTTP protocols call this)
            super().handle_websocket_upgrade(*args)

    def _expire(reference: weakref.ref[Any]) -> None:
        protocol = reference()
        if protocol is None:
            return
        transport = protocol.transport
        # Still the transport's protocol (not upgraded) and no request ever completed its headers.
        if transport.get_protocol() is protocol and protocol.cycle is None and not transport.is_closing():
            logger.info("dropping a connection whose request did not arrive within %g s", timeout)
            transport.close()

    return DeadlineProtocol


class _CoalescingTransport:
    """A transport whose writes made in one event-loop iteration leave in one syscall.

    A pipelined client gets many replies per iteration; uvicorn writes each WebSocket frame on its own,
    and those ``send`` syscalls were a third of the server's time. Everything but ``write`` is the
    real transport's; ``close`` flushes first, so nothing written is lost or reordered.
    """

    __slots__ = ("_transport", "_loop", "_buffer")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(data)

    def flush(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Inbox:
    """The messages a connection received and its app has not read yet: one reader, no size limit.

    What uvicorn uses of ``asyncio.Queue``, without its three deques and their blocks (about 2 KiB
    per idle connection): the deque exists only while messages wait.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: collections.deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0


def _frame_header(size: int) -> bytes:
    """The header of a server's unfragmented text frame (RFC 6455 §5.2: FIN, opcode 1, no mask)."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


def websocket_protocol() -> Any:
    """uvicorn's websockets-sansio protocol with coalesced writes, direct calls and lean idle connections."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State

    from synapse_cli.server import DIRECT_EXTENSION

    class SynapseWebSocketProtocol(WebSocketsSansIOProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = _Inbox()  # type: ignore[assignment]
            self.text_handler: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            scope: Any = getattr(self, "scope", None)  # set when the handshake goes to the app
            if scope is not None:
                direct = {"receive_nowait": self.receive_nowait, "send_text": self.send_text, "on_text": self.on_text}
                scope["extensions"][DIRECT_EXTENSION] = direct

        async def send(self, message: Any) -> None:
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                # The handshake is over: what only it needed goes, so an idle connection keeps less.
                self.request = self.response = None  # type: ignore[assignment]
                self.scope["headers"] = []

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # The replies to what this read held leave together, and now.
            self.transport.flush()  # type: ignore[attr-defined]

        def on_text(self, handler: Any) -> None:
            """The app's handler(text) -> bool for text messages as they arrive (None: queue them all)."""
            self.text_handler = handler

        def send_receive_event_to_app(self) -> None:
            # The app takes the message on the spot when nothing is queued before it and the socket
            # takes writes: no queue, no task to wake (a sequential caller's reply leaves sooner).
            handler = self.text_handler
            if (
                handler is not None
                and self.curr_msg_data_type == "text"
                and self.queue.empty()
                and self.writable.is_set()
                and not self.close_sent
            ):
                data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    text = None  # uvicorn's own path closes with 1007
                if text is not None and handler(text):
                    self.frames = []
                    return
            # uvicorn stops reading the socket after every message until the app takes it: two
            # epoll changes per message, on a sequential caller's critical path. Read ahead up to
            # READ_AHEAD messages instead; past that the socket waits (backpressure as before).
            paused, self.read_paused = self.read_paused, True  # keeps uvicorn from pausing
            super().send_receive_event_to_app()
            self.read_paused = paused
            if not paused and self.queue.qsize() >= READ_AHEAD:
                self.read_paused = True
                self.transport.pause_reading()

        async def receive(self) -> Any:
            # The app wants more input and none is waiting: what it wrote so far goes out now, not
            # one loop iteration later (sequential calls get their reply without that delay).
            if self.queue.empty():
                self.transport.flush()  # type: ignore[attr-defined]
            return await super().receive()

        def receive_nowait(self) -> Any:
            """The next queued message, or None (then the app awaits ``receive``)."""
            if self.queue.empty():
                return None
            message = self.queue.get_nowait()
            if self.read_paused and self.queue.empty():  # what uvicorn's receive does
                self.read_paused = False
                self.transport.resume_reading()
            return message

        def send_text(self, data: bytes, now: bool = False) -> bool:
            """Write ``data`` (UTF-8) as one text frame; False when the ASGI send must be used.

            The frame leaves with the others of this loop iteration, or at once when ``now`` and no
            other message of this connection waits (a sequential caller is not kept waiting).
            """
            if not (self.handshake_complete and self.writable.is_set()) or self.close_sent or self.disconnected:
                return False  # not open yet, closing, or flow control says wait
            if self.conn.state is not State.OPEN:
                return False
            self.transport.write(_frame_header(len(data)))
            self.transport.write(data)
            if now and self.queue.empty():
                self.transport.flush()  # type: ignore[attr-defined]
            return True

    return SynapseWebSocketProtocol
