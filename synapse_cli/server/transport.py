"""The socket side of ``synapse serve`` under uvicorn, through uvicorn's public protocol settings.

* :func:`websocket_protocol` makes the class given as ``uvicorn.Config(ws=...)``: our own WebSocket protocol. The
  handshake, the closing handshake, control frames and fragmented messages go to ``websockets``' public sans-I/O
  :class:`~websockets.server.ServerProtocol`; complete unfragmented text frames, nearly every message, take a short
  path through our frame codec (``frames.py``) straight to the connection's ``Connection`` (connection.py).
  Replies written during one read, or one loop iteration, leave in one ``write``.
* its HTTP twin, ``uvicorn.Config(http=...)``, is :func:`synapse_cli.server.http.guarded_http_protocol`.

Everything a peer can make the server hold is bounded where the bytes arrive: one frame by ``--max-message-size``
(before its payload is read), a fragmented message by its size, its number of fragments and a deadline, pongs and
replies by the transport's flow control (we stop reading while the peer does not read).
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from mypy_extensions import mypyc_attr
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from synapse_cli.core.frames import OP_CLOSE, OP_TEXT, Frame, FrameError, FrameReader, text_header
from synapse_cli.server.app import select_subprotocol
from synapse_cli.server.connection import CLOSE_GRACE, Connection
from synapse_cli.server.item_output import FLUSH_AT, ItemOutput
from synapse_cli.server.logs import SafeLogFilter

if TYPE_CHECKING:
    import uvicorn
    import uvicorn.server

    from synapse_cli.server.app import ServerState

__all__ = ["CLOSE_TIMEOUT", "MAX_FRAGMENTS", "websocket_protocol"]

logger = logging.getLogger("synapse.server")
# websockets' own debug lines (handshake headers, frames): through the filter that keeps tokens and
# payloads out of the log.
wire_logger = logging.getLogger("synapse.wire")
wire_logger.addFilter(SafeLogFilter())
# websockets says "connection open" at INFO and never "connection closed": ours say both (at DEBUG).
wire_logger.addFilter(lambda record: record.msg != "connection open")

CLOSE_TIMEOUT = 2.0  # seconds a peer gets to answer our close frame before the TCP connection is closed
MAX_FRAGMENTS = 1024  # frames one fragmented message may take, empty ones included

_OPEN = State.OPEN
_TURN_FRAMES = 16  # frames of one read a connection handles before the other connections get a turn
_PARSE_BYTES = 2048  # bytes of one read split into frames at once (the rest waits for those turns)
_numbers = itertools.count(1)
_UTF8Decoder = codecs.getincrementaldecoder("utf-8")  # strict: refuses what can never be UTF-8 as soon as it arrives


@mypyc_attr(allow_interpreted_subclasses=True)
class _WebSocket(ItemOutput):
    """One WebSocket connection under uvicorn: handshake, frames, flow control, close, drain."""

    state: ServerState
    server: ClassVar[ServerState]  # on the class :func:`websocket_protocol` makes for one server
    topic_flushes: ClassVar[list[ItemOutput]]  # the same: its connections with topic items to flush

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: uvicorn.server.ServerState,
        app_state: dict[str, Any] | None = None,
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        made = type(self)  # the class websocket_protocol made for one server: it carries that server's state
        self.state = made.server
        self._dirty = made.topic_flushes
        settings = self.state.settings
        self.server_state = server_state  # uvicorn's: its shutdown calls our ``shutdown``
        self.loop = _loop or asyncio.get_running_loop()
        self.ws = ServerProtocol(
            select_subprotocol=select_subprotocol, max_size=settings.max_message_size, logger=wire_logger
        )
        self.reader = FrameReader(masked=True, max_size=settings.max_message_size)
        self.transport: asyncio.Transport | None = None
        self.connection: Connection | None = None
        self.peer = ""
        self._out: list[bytes] = []  # written this iteration, not flushed yet
        self._flush_soon = False
        self._out_size = 0  # payload bytes in ``_out``
        self._writable = True
        self._saturated = False
        self._yielding = False  # reading paused until the other connections had their turn
        self._waiting: list[Frame] | None = None  # frames of a read past this turn's share, from ``_next``
        self._next = 0
        self._unparsed: memoryview | None = None  # bytes of a read past ``_PARSE_BYTES``, not split yet
        self._reading = True
        self._fragments: list[str] | None = None  # a fragmented text message being assembled, decoded
        self._fragment_count = 0
        self._utf8: codecs.IncrementalDecoder | None = None  # decodes its fragments as they arrive
        self._timers: list[asyncio.TimerHandle] = []
        self._ping: bytes | None = None  # the keepalive ping waiting for its pong
        self._closing = False
        # Failed (not by a timeout): half-close after the close frame, drop what comes until the peer closes (or
        # CLOSE_TIMEOUT). A socket closed with data unread resets, discarding what is unsent (the close frame).
        self._linger = self._lingering = False
        self._drain_waiters: list[asyncio.Future[None]] | None = None  # streams waiting for the peer to read
        self._writable_callbacks: list[Callable[[], None]] | None = None  # topic subscribers behind
        self._held: list[bytes] | None = None  # a close frame (and what followed it) waiting for replies

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # uvicorn types this set as its own protocols; the class given as Config(ws=...) joins it all the same
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        client = transport.get_extra_info("peername")
        if isinstance(client, tuple):
            self.peer = f"{client[0]}:{client[1]}"

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # failed, half-closed: read only to let the peer's last bytes go (see __init__)
            return
        self._flush_soon = True  # what this read answers leaves at its end: no callback needed for it
        if self.connection is None:
            if not self._closing:
                self._handshake(data)
        else:
            self._frames(data)
        self._end_turn()

    def _take_turn(self) -> None:
        if self._yielding:
            self._yielding = False
            self._set_reading()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        for timer in self._timers:
            timer.cancel()
        self._closing = True
        self._wake_drained()
        connection = self.connection
        if connection is not None:
            self.state.disconnect(connection)
            logger.debug("connection closed", extra={"connection": connection.number, "peer": self.peer})

    def pause_writing(self) -> None:
        self._writable = False
        self._set_reading()

    def resume_writing(self) -> None:
        self._writable = True
        self._set_reading()
        self._wake_drained()
        callbacks, self._writable_callbacks = self._writable_callbacks, None
        for callback in callbacks or ():
            callback()

    def _wake_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- uvicorn -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """uvicorn is shutting down: drain the calls (``--grace``), then close with 1001."""
        if not self.state.draining:
            self.state.draining = True
            self.state.log_drain()
        if self.connection is None or self.ws.state is not _OPEN:
            self._close_transport()
            return
        task = self.loop.create_task(self._drain(self.connection))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    async def _drain(self, connection: Connection) -> None:
        await connection.drain(self.state.settings.grace)
        self.close(1001)

    # -- the handshake -----------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        events = ws.events_received()
        if not events:
            if ws.handshake_exc is not None:  # not a valid HTTP request: websockets sends nothing
                self._out.append(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self._closing = True
            return
        request = events[0]
        assert isinstance(request, Request)
        refusal = self.state.refusal(urlsplit(request.path).path, list(request.headers.raw_items()))
        if refusal is not None:
            status, text = refusal
            response = ws.reject(status, text + "\n")
            if status == 401:
                response.headers["WWW-Authenticate"] = "Bearer"
        else:
            response = ws.accept(request)
        if "Server" in response.headers:
            del response.headers["Server"]
        ws.send_response(response)
        self._take_output()
        if ws.state is _OPEN:
            self._open(list(request.headers.raw_items()))

    def _open(self, headers: list[tuple[str, str]]) -> None:
        number = next(_numbers)
        self.connection = self.state.connect(self, number=number, peer=self.peer, headers=headers)
        logger.debug("connection open", extra={"connection": number, "peer": self.peer})
        settings = self.state.settings
        if settings.ping_interval > 0:
            self._later(settings.ping_interval, self._keepalive)

    # -- frames in ---------------------------------------------------------------------------------

    def _read_waits(self) -> bool:
        """Part of a read still waits for a later turn (frames split off, or bytes not split yet). A method: after
        ``self._waiting = None`` mypy takes it to stay None across the calls that set it, and mypyc compiles that."""
        return self._waiting is not None or self._unparsed is not None

    def _frames(self, data: bytes) -> None:
        if self._read_waits():  # delivered while paused: keep the order
            self._unparsed = memoryview(bytes(self._unparsed or b"") + data)
            return
        self._parse(data)

    def _parse(self, data: bytes | memoryview) -> None:
        """Split ``_PARSE_BYTES`` of ``data`` into frames and take a turn of them; the rest of the bytes
        waits, unparsed (uvloop reads up to 256 KiB at once: thousands of small frames)."""
        rest = None
        share = max(_PARSE_BYTES, self.reader.missing)  # the rest of a large frame is only appended
        if len(data) > share:
            view = memoryview(data)
            data, rest = view[:share], view[share:]
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            self._unparsed = None
            self._process(exc.frames)  # sent before the violation: answered before the connection fails
            if not self._closing:
                self._fail(exc.code, exc.reason)
            return
        self._unparsed = rest
        self._take(frames, 0)

    def _take(self, frames: list[Frame], start: int) -> None:
        """Handle ``_TURN_FRAMES`` of ``frames`` from ``start`` now; the rest waits until every other
        connection had its turn (an event loop would otherwise keep serving this socket while it has data)."""
        end = start + _TURN_FRAMES
        more = len(frames) > end
        if (more or self._unparsed is not None) and not self._closing:
            self._waiting, self._next = (frames, end) if more else (None, 0)
            self._pause_turn()
            self.loop.call_soon(self._next_turn)
        self._process(frames[start:end] if more or start else frames)

    def _next_turn(self) -> None:
        try:
            self._turn()
        except Exception:  # as a transport does for data_received: a connection never left half-read
            logger.exception("connection %s failed", self.peer, extra={"peer": self.peer})
            if self.transport is not None:
                self.transport.abort()

    def _turn(self) -> None:
        waiting, self._waiting = self._waiting, None
        unparsed = self._unparsed
        if self._closing or self.transport is None or self.transport.is_closing():
            return
        self._flush_soon = True  # as in data_received
        if waiting is not None:
            self._take(waiting, self._next)
        elif unparsed is not None:
            self._parse(unparsed)
        self._end_turn()
        if not self._read_waits():
            self._take_turn()

    def _process(self, frames: list[Frame]) -> None:
        connection = self.connection
        assert connection is not None
        for frame in frames:
            if self._held is not None:  # behind a close frame that waits for the calls before it
                self._held.append(frame.raw)
            elif frame.opcode == OP_TEXT and frame.fin and self._fragments is None and self.ws.state is _OPEN:
                try:
                    text = frame.payload.decode()
                except UnicodeDecodeError:
                    self._fail(1007, "invalid UTF-8 in a text message")
                    return
                connection.receive(text)
            elif frame.opcode == OP_CLOSE and self.ws.state is _OPEN and connection.session.calls:
                self._hold_close(frame.raw, connection)
            elif self.ws.state is not _OPEN and frame.opcode < OP_CLOSE:
                continue  # data after a close: nobody will read its replies
            elif not self._to_websockets(frame.raw):
                return

    def _pause_turn(self) -> None:
        """Stop reading until the other connections had their turn (see ``_take_turn``)."""
        self._yielding = True
        self._set_reading()

    def _hold_close(self, raw: bytes, connection: Connection) -> None:
        """The peer closes with calls in flight: their replies go out first (for ``CLOSE_GRACE`` at most)."""
        self._held = [raw]
        connection.act(connection.session.stop_all(None, streams_only=True))  # nobody reads items now
        self._set_reading()
        self._later(CLOSE_GRACE, self._release_close)
        if not connection.session.calls:
            self._release_close()

    def _release_close(self) -> None:
        held, self._held = self._held, None
        for raw in held or ():
            if not self._to_websockets(raw):
                break
        self._flush()

    def _to_websockets(self, raw: bytes) -> bool:
        """A frame for websockets' rules (control, fragment, binary); False once the connection failed."""
        ws = self.ws
        ws.receive_data(raw)
        for event in ws.events_received():
            opcode = getattr(event, "opcode", None)
            if opcode is Opcode.BINARY:
                self._fail(1003, "binary messages are not supported")
                return False
            if opcode is Opcode.TEXT or opcode is Opcode.CONT:
                if not self._assemble(bytes(event.data), opcode is Opcode.TEXT, event.fin):  # type: ignore[union-attr]
                    return False
            elif opcode is Opcode.PONG and event.data == self._ping:  # type: ignore[union-attr]
                self._ping = None
        self._take_output()
        return not self._closing

    def _assemble(self, data: bytes, first: bool, fin: bool) -> bool:
        """Collect a fragmented text message, decoded as it arrives: the connection fails at the first fragment
        that cannot be UTF-8 (as websockets' own connections do), not at the last; hand it on whole. False once
        the connection failed."""
        if first:
            self._fragments, self._fragment_count, self._utf8 = [], 0, _UTF8Decoder()
            self._later(self.state.settings.handshake_timeout, self._message_late, self._fragments)
        fragments, decoder = self._fragments, self._utf8
        assert fragments is not None and decoder is not None  # websockets refuses a continuation with no message
        self._fragment_count += 1
        if self._fragment_count > MAX_FRAGMENTS:
            self._fail(1009, f"message in more than {MAX_FRAGMENTS} fragments")
            return False
        try:
            fragments.append(decoder.decode(data, fin))
        except UnicodeDecodeError:
            self._fail(1007, "invalid UTF-8 in a text message")
            return False
        if not fin:
            return True
        self._fragments = None
        assert self.connection is not None
        self.connection.receive("".join(fragments))
        return True

    def _message_late(self, fragments: list[str]) -> None:  # its deadline (``_assemble``)
        if self._fragments is fragments:
            self._fail(1008, "fragmented message not completed in time", linger=False)
            self._flush()

    # -- frames out --------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """One text message to the peer (the Link of our :class:`Connection`)."""
        if self.ws.state is not _OPEN or self._closing:
            return
        out = self._out
        out.append(text_header(len(data)))
        out.append(data)
        self._out_size += len(data)
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._end_turn)

    def update_reading(self, saturated: bool) -> None:
        """Stop reading while calls wait for a slot (the Link of our :class:`Connection`)."""
        if self._held is not None and self.connection is not None and not self.connection.session.calls:
            self.loop.call_soon(self._release_close)  # the last reply before the close is written
        if saturated is not self._saturated:
            self._saturated = saturated
            self._set_reading()

    def _set_reading(self) -> None:
        """Read while the peer reads our replies and a call slot is free; else let TCP push back."""
        want = self._lingering or (self._writable and not self._saturated and self._held is None and not self._yielding)
        if want is not self._reading and self.transport is not None and not self.transport.is_closing():
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _take_output(self) -> None:
        """What websockets wants sent (handshake response, pongs, close): after our queued frames."""
        for chunk in self.ws.data_to_send():
            if chunk:
                self._out.append(chunk)
            else:  # websockets' end of stream: close the TCP connection once written
                self._closing = True
        if self.ws.close_expected() and not self._closing:
            self._later(CLOSE_TIMEOUT, self._close_transport)

    def _end_turn(self) -> None:
        """Write what this turn (or loop iteration) answered; while input of the same read still waits
        for its next turn, hold up to ``FLUSH_AT`` bytes so that a pipelining peer's replies leave in
        a few large writes, not one per turn."""
        if not self._read_waits() or self._out_size >= FLUSH_AT or self._closing:
            self._flush()
        else:
            self._flush_soon = False

    def _flush(self) -> None:
        self._flush_soon = False
        transport = self.transport
        if transport is None or transport.is_closing():
            self._out.clear()
            self._out_size = 0
            return
        if self._out:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._out_size = 0
            transport.write(data)
        if self._closing and not self._lingering:
            if self._linger and transport.can_write_eof():
                self._lingering = True
                transport.write_eof()  # after what is written: our close frame
                self._set_reading()
                self._later(CLOSE_TIMEOUT, transport.close)
            else:
                transport.close()

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; the peer has ``CLOSE_TIMEOUT`` seconds to answer."""
        if self.ws.state is _OPEN:
            self.ws.send_close(code, reason)
            self._take_output()
        self._flush()

    def _fail(self, code: int, reason: str, linger: bool = True) -> None:
        logger.info("closing connection with %d: %s", code, reason, extra={"peer": self.peer, "code": code})
        self._linger = linger
        self.ws.fail(code, reason)
        self._take_output()

    def _close_transport(self) -> None:
        self._closing = True
        self._flush()

    # -- timers ------------------------------------------------------------------------------------

    def _later(self, delay: float, callback: Callable[..., object], *args: Any) -> None:
        self._timers = [timer for timer in self._timers if not timer.cancelled()]
        self._timers.append(self.loop.call_later(delay, callback, *args))

    def _keepalive(self) -> None:
        """Ping every ``--ping-interval``; no pong within ``--ping-timeout`` closes with 1011."""
        if self.ws.state is not _OPEN:
            return
        settings = self.state.settings
        if self._ping is not None:
            self._pong_due(self._ping)
            return
        self._ping = os.urandom(4)
        self.ws.send_ping(self._ping)
        self._take_output()
        self._flush()
        self._later(settings.ping_timeout or settings.ping_interval, self._pong_due, self._ping)
        self._later(settings.ping_interval, self._keepalive)

    def _pong_due(self, ping: bytes) -> None:
        if self._ping == ping and self.ws.state is _OPEN:
            self._fail(1011, "keepalive ping timeout", linger=False)
            self._flush()


def websocket_protocol(state: ServerState) -> type[asyncio.Protocol]:
    """The class for ``uvicorn.Config(ws=...)``: our WebSocket protocol, serving ``state``."""
    return type("SynapseWebSocket", (_WebSocket, asyncio.Protocol), {"server": state, "topic_flushes": []})
