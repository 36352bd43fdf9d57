"""The client's WebSocket connection: ``websockets``' public sans-I/O protocol, our frame codec, asyncio.

The mirror of ``transport.py`` on the client side. The opening handshake, the closing handshake and
every frame that is not a complete unfragmented text frame (pings aside) go to ``websockets``' public
sans-I/O :class:`~websockets.client.ClientProtocol`; complete text frames, nearly every message, take
a short path through :mod:`synapse_cli.core.frames` straight to ``on_text``. Requests written during one
loop iteration leave in one ``write``.

Nothing a server sends can make the client wait or grow without bound:

* the opening handshake (TCP, TLS, HTTP) is bounded by the caller's ``timeout``;
* a frame announcing more than ``max_size`` bytes fails the connection (1009) before its payload is read;
* a text message that is not UTF-8 fails it (1007); any other framing error fails it (1002);
* a close frame ends every call at once, whether or not the server then closes TCP;
* a server that does not finish the closing handshake gets :data:`CLOSE_TIMEOUT` seconds;
* pongs are dropped while the server does not read what we write (a ping flood cannot grow memory).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import re
import ssl
from collections.abc import Callable

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from synapse_cli.core.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, Frame, FrameError, FrameReader, encode_frame

__all__ = [
    "CLOSE_TIMEOUT",
    "HIGH_WATER",
    "MAX_HEAD_BYTES",
    "HandshakeRefused",
    "WebSocket",
    "close_text",
    "open_websocket",
    "translate_url_error",
]

logger = logging.getLogger("synapse.client")

CLOSE_TIMEOUT = 1.0  # seconds a server gets to finish the closing handshake before we drop TCP
MAX_HEAD_BYTES = 64 * 1024  # the handshake response's head (status line + headers)
HIGH_WATER = 2**16  # bytes waiting in the socket's buffer past which writers wait (and pongs are dropped)

_OPEN = State.OPEN
_UTF8Decoder = codecs.getincrementaldecoder("utf-8")  # strict: refuses what can never be UTF-8 as soon as it arrives
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ?([^\r\n]*)")
_CLOSE_MEANINGS = {
    1000: "normal closure",
    1001: "going away",
    1002: "protocol error",
    1003: "unsupported data",
    1005: "no status code",
    1006: "abnormal closure",
    1007: "invalid data",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
}


class HandshakeRefused(Exception):
    """The server answered the handshake with an HTTP status that websockets could not parse (HTTP/1.0)."""

    def __init__(self, status: int, phrase: str) -> None:
        super().__init__(f"HTTP {status} {phrase}".rstrip())
        self.status = status
        self.phrase = phrase


def close_text(code: int, reason: str = "") -> str:
    """``close code 1012 (service restart): reason`` — each fact once."""
    meaning = _CLOSE_MEANINGS.get(code)
    text = f"close code {code}" + (f" ({meaning})" if meaning else "")
    return f"{text}: {reason}" if reason and reason != meaning else text


class WebSocket(asyncio.Protocol):
    """One client connection. Replies go to ``on_text``; ``on_lost`` is told once when it stops working.

    Args:
        protocol: the ``websockets`` sans-I/O client protocol for this URL.
        max_size: the largest message accepted, in bytes (larger: close 1009).
        on_text: called with each text message's payload; returns False when it is not JSON it can use.
        on_lost: called once, with a reason, when no more replies can arrive.
    """

    def __init__(
        self,
        protocol: ClientProtocol,
        *,
        headers: dict[str, str],
        max_size: int,
        on_text: Callable[[bytes], bool],
        on_lost: Callable[[str], None],
    ) -> None:
        self.ws = protocol
        self.headers = headers
        self.max_size = max_size
        self.on_text = on_text
        self.on_lost = on_lost
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(masked=False, max_size=max_size)
        self.lost: str | None = None  # why the connection stopped working, once it did
        self.junk = 0  # messages that were not replies we could read
        self.dropped_pongs = 0
        self._head = bytearray()  # the handshake response, until its head is complete
        self._head_done = False
        self._status_line = b""  # kept to report a refusal websockets could not parse
        self._out: list[bytes] = []
        self._flush_soon = False
        self._queued_pongs = 0  # bytes of pongs waiting for the next flush
        self._writable: asyncio.Future[None] | None = None  # set while the server does not read
        self._fragments: bytearray | None = None
        self._utf8: codecs.IncrementalDecoder | None = None  # checks a fragmented text message as it arrives
        self._close_timer: asyncio.TimerHandle | None = None
        self._masks = b""  # random bytes the next masking keys are taken from
        self._mask_offset = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = self.ws.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._take_output()
        self._flush()

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self._handshake(data)
        elif self.ws.state is _OPEN:
            self._frames(data)
        else:  # closing: websockets reads the server's close frame and discards the rest (RFC 6455 §1.4)
            self.ws.receive_data(data)
            self.ws.events_received()
            self._take_output()
        self._flush()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        if not self.opened.done():
            self._handshake_result()
        self._take_output()
        self._stop("connection lost: the server closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionResetError("the server closed the connection"))
        reason = f"connection lost: {exc}" if exc else "connection lost: the server closed the connection"
        self._stop(reason)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # -- the opening handshake -----------------------------------------------------------------------

    def _handshake(self, data: bytes) -> None:
        if self._head_done:  # a refusal whose body is still arriving: websockets reads it
            self.ws.receive_data(data)
            self._handshake_result()
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._refuse(InvalidMessage(f"handshake response head over {MAX_HEAD_BYTES} bytes"))
            return
        self._head_done = True
        head, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        self._head = bytearray()
        self._status_line = head[:200]
        self.ws.receive_data(head)
        if self._handshake_result() and rest:
            self._frames(rest)
        elif rest and not self.opened.done():
            self.ws.receive_data(rest)
            self._handshake_result()

    def _handshake_result(self) -> bool:
        """Settle ``opened`` once websockets has read the response; True when the connection is open."""
        for event in self.ws.events_received():
            if isinstance(event, Response) and not self.opened.done():
                if self.ws.state is _OPEN:
                    self.opened.set_result(None)
                    return True
                self._refuse(self.ws.handshake_exc or InvalidStatus(event))
        if not self.opened.done() and self.ws.handshake_exc is not None:
            self._refuse(self._readable_refusal(self.ws.handshake_exc))
        return False

    def _readable_refusal(self, exc: Exception) -> Exception:
        """websockets reads HTTP/1.1 only: a plain HTTP/1.0 server's status is still worth showing."""
        match = _STATUS_LINE.match(self._status_line)
        if isinstance(exc, InvalidMessage) and match and match.group(1) != b"101":
            return HandshakeRefused(int(match.group(1)), match.group(2).decode("latin-1"))
        return exc

    def _refuse(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    # -- frames in -----------------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        failure = None
        try:
            frames = self.reader.feed(data)
        except FrameError as exc:
            frames, failure = exc.frames, exc  # the replies before the violation still count
        self._handle(frames)
        if failure is not None and self.ws.state is _OPEN:
            reason = failure.reason
            if failure.code == 1009:
                reason = f"the reply is over the client's limit of {self.max_size} bytes"
            self.fail(failure.code, reason)

    def _handle(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self.ws.state is not _OPEN:
                return  # after a close frame or a failure, the rest is discarded (RFC 6455 §1.4)
            opcode = frame.opcode
            if opcode == OP_TEXT and frame.fin and self._fragments is None:
                self._message(frame.payload)
            elif opcode == OP_PING:
                self._pong(frame.payload)
            elif opcode != OP_PONG:
                self._to_websockets(frame.raw, opcode == OP_CLOSE)

    def _message(self, payload: bytes, check_utf8: bool = True) -> None:
        if self.on_text(payload):
            return
        if check_utf8:  # only for what on_text refused: its JSON decoder checks UTF-8 itself
            try:
                payload.decode()
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in a text message")
                return
        self.junk += 1
        if self.junk == 1:
            logger.warning("ignoring a message that is not a reply (more are counted, not logged): %.80r", payload)

    def _pong(self, payload: bytes) -> None:
        """Answer a ping, unless the server does not read what we write (a flood is dropped, not kept)."""
        if self.congested or self._queued_pongs > HIGH_WATER:
            self.dropped_pongs += 1
            return
        pong = encode_frame(OP_PONG, payload, mask=True)
        self._queued_pongs += len(pong)
        self._out.append(pong)

    def _to_websockets(self, raw: bytes, is_close: bool) -> None:
        """A frame for websockets' rules: close, fragments, binary."""
        ws = self.ws
        ws.receive_data(raw)
        for event in ws.events_received():
            opcode = getattr(event, "opcode", None)
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                if opcode is not Opcode.CONT:
                    self._fragments, self._utf8 = bytearray(), _UTF8Decoder() if opcode is Opcode.TEXT else None
                self._assemble(bytes(event.data), event.fin)  # type: ignore[union-attr]
        self._take_output()
        if ws.state is not _OPEN:
            received = ws.close_rcvd
            if is_close and received is not None:
                self._stop(f"connection closed by the server with {close_text(received.code, received.reason)}")
            else:
                sent = ws.close_sent
                detail = f"{sent.reason} (close code {sent.code})" if sent else "protocol error"
                self._stop(f"connection lost: {detail}")

    def _assemble(self, data: bytes, fin: bool) -> None:
        """A message in fragments (its size bounded by websockets' ``max_size``), handed on whole; a text
        message fails the connection at the first fragment that cannot be UTF-8, as websockets' own do."""
        fragments = self._fragments
        assert fragments is not None  # websockets refuses a continuation with no message started
        fragments += data
        if self._utf8 is not None:
            try:
                self._utf8.decode(data, fin)
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in a text message")
                return
        if fin:
            self._fragments = None
            self._message(bytes(fragments), check_utf8=False)  # checked: binary, or text decoded as it came

    # -- frames out ----------------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """True while requests can be written."""
        return self.ws.state is _OPEN and self.lost is None

    @property
    def congested(self) -> bool:
        """True while the server reads slower than we write: writers should :meth:`drain` first."""
        transport = self.transport
        return (self._writable is not None and not self._writable.done()) or (
            transport is not None and transport.get_write_buffer_size() > HIGH_WATER
        )

    async def drain(self) -> None:
        """Wait until the server reads again (or the connection ends)."""
        if self._writable is not None and not self._writable.done():
            await asyncio.shield(self._writable)

    def write(self, message: bytes) -> None:
        """Queue one text message; the messages of one loop iteration leave in one write."""
        if not self.open:
            return
        self._out.append(encode_frame(OP_TEXT, message, mask=True, key=self._mask_key()))
        if not self._flush_soon:
            self._flush_soon = True
            self.loop.call_soon(self._flush)

    def _mask_key(self) -> bytes:
        """A fresh masking key (RFC 6455 §5.3), from 4 KiB of ``os.urandom`` at a time."""
        offset = self._mask_offset
        if offset >= len(self._masks):
            self._masks, offset = os.urandom(4096), 0
        self._mask_offset = offset + 4
        return self._masks[offset : offset + 4]

    def _take_output(self) -> None:
        for chunk in self.ws.data_to_send():
            if chunk:
                self._out.append(chunk)
            elif self.transport is not None and self.transport.can_write_eof():
                self._flush()
                self.transport.write_eof()
        if self.ws.close_expected() and self._close_timer is None and self.transport is not None:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def _flush(self) -> None:
        self._flush_soon = False
        self._queued_pongs = 0
        transport = self.transport
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        if transport is not None and not transport.is_closing():
            transport.write(data)

    # -- closing -------------------------------------------------------------------------------------

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection: close frame with ``code``, every call ends now (RFC 6455 §7.1.7)."""
        if self.ws.state is _OPEN:
            self.ws.fail(code, reason)
            self._take_output()
            self._flush()
        self._stop(f"connection lost: {reason} (close code {code})")

    def _stop(self, reason: str) -> None:
        if self.lost is None:
            self.lost = reason
            if self.junk > 1:
                logger.warning("ignored %d messages in all that were not replies", self.junk)
            self.on_lost(reason)

    async def close(self, code: int = 1000) -> None:
        """The closing handshake, waiting at most :data:`CLOSE_TIMEOUT` seconds for the server's part."""
        if self.ws.state is _OPEN:
            self.ws.send_close(code)
            self._take_output()
            self._flush()
        self._stop("connection closed")
        if self.transport is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            self.transport.abort()
            await asyncio.shield(self.closed)


def _parse_url(url: str) -> WebSocketURI:
    try:
        return parse_uri(url)
    except ValueError as exc:  # a port out of range
        raise InvalidURI(url, str(exc)) from None


def translate_url_error(url: str) -> str | None:
    """Why ``url`` cannot be connected to (``invalid URL 'x': ...``), or None when it can."""
    try:
        _parse_url(url)
    except InvalidURI as exc:
        return f"invalid URL {url!r}: {exc.msg}"
    return None


async def open_websocket(
    url: str,
    *,
    headers: dict[str, str],
    ssl_context: ssl.SSLContext | None,
    max_size: int,
    timeout: float | None,
    on_text: Callable[[bytes], bool],
    on_lost: Callable[[str], None],
) -> WebSocket:
    """Connect to ``url`` and complete the opening handshake, all within ``timeout`` seconds.

    Raises websockets' ``InvalidURI``/``InvalidHandshake``, :class:`HandshakeRefused`, ``OSError``,
    ``ssl.SSLError`` or ``asyncio.TimeoutError``: :mod:`synapse_cli.client.foreign` translates them.
    """
    uri = _parse_url(url)
    protocol = ClientProtocol(uri, max_size=max_size, logger=logging.getLogger("synapse.wire"))
    loop = asyncio.get_running_loop()
    connection = WebSocket(protocol, headers=headers, max_size=max_size, on_text=on_text, on_lost=on_lost)

    async def connect() -> None:
        await loop.create_connection(
            lambda: connection,
            uri.host,
            uri.port,
            ssl=ssl_context if uri.secure else None,
            server_hostname=uri.host if uri.secure else None,
        )
        await connection.opened

    try:
        await asyncio.wait_for(connect(), timeout)
    except BaseException:
        if connection.transport is not None:
            connection.transport.abort()
        raise
    return connection
