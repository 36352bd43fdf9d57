"""foreign.py: every foreign exception we can meet becomes a synapse error (httpx tests/test_exceptions.py's model).

The classes are enumerated from the modules that define them, so a new exception class in websockets, picows
or ssl fails here until it is mapped or listed as one we cannot meet (with the reason).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
from types import ModuleType

import picows
import pytest
import websockets.exceptions as ws_errors
from websockets.datastructures import Headers
from websockets.frames import Close
from websockets.http11 import Response

from synapse_cli.client import foreign
from synapse_cli.client.wire import HandshakeRefused
from synapse_cli.core.errors import ConnectError, ConnectionLost, SynapseError

URL = "ws://127.0.0.1:8000/ws"

# Classes no code path of ours can raise: legacy API, proxies (we pass none), misuse of APIs we do not call.
NOT_MET = {
    "WebSocketException": "abstract base",
    "AbortHandshake": "legacy server API",
    "RedirectHandshake": "legacy client API",
    "InvalidStatusCode": "legacy client API",
    "WebSocketProtocolError": "legacy alias",
    "InvalidState": "raised by the send API on a closed connection; we check the state first",
    "ConcurrencyError": "raised by websockets' own asyncio/sync connections, which we do not use",
    "InvalidProxy": "we pass no proxy",
}


def response(status: int, body: bytes = b"") -> Response:
    """A handshake response websockets would have parsed."""
    return Response(status, "Reason", Headers(), body)


# One instance per class we can meet, and the synapse error it must become. Built from the names present:
# websockets 16 (the newest on Python 3.10) lacks the classes 17 added (TooManyFragments, the HTTP line
# and header limits, InvalidMethod, InvalidProtocol); the enumeration below checks what this version has.
WEBSOCKETS_CASES: list[tuple[str, tuple[object, ...], type[SynapseError]]] = [
    ("InvalidURI", ("ws://x:99999", "port out of range"), ConnectError),
    ("InvalidHandshake", ("bad",), ConnectError),
    ("SecurityError", ("bad",), ConnectError),
    ("RequestLineTooLong", ("bad",), ConnectError),
    ("StatusLineTooLong", ("bad",), ConnectError),
    ("HeaderLineTooLong", ("bad",), ConnectError),
    ("TooManyHeaders", ("bad",), ConnectError),
    ("ProxyError", ("bad",), ConnectError),
    ("InvalidProxyMessage", ("bad",), ConnectError),
    ("InvalidProxyStatus", (response(407),), ConnectError),
    ("InvalidMessage", ("bad",), ConnectError),
    ("InvalidMethod", ("POST",), ConnectError),
    ("InvalidProtocol", ("HTTP/1.0",), ConnectError),
    ("InvalidStatus", (response(404, b"no WebSocket endpoint at /x: the endpoint is /ws"),), ConnectError),
    ("InvalidHeader", ("Upgrade",), ConnectError),
    ("InvalidHeaderFormat", ("Upgrade", "bad", "x", 0), ConnectError),
    ("InvalidHeaderValue", ("Upgrade", "x"), ConnectError),
    ("InvalidOrigin", ("http://x",), ConnectError),
    ("InvalidUpgrade", ("Upgrade", "h2"), ConnectError),
    ("NegotiationError", ("bad",), ConnectError),
    ("DuplicateParameter", ("x",), ConnectError),
    ("InvalidParameterName", ("x",), ConnectError),
    ("InvalidParameterValue", ("x", "y"), ConnectError),
    ("ConnectionClosed", (Close(1001, "bye"), None), ConnectionLost),
    ("ConnectionClosedOK", (Close(1000, ""), Close(1000, ""), True), ConnectionLost),
    ("ConnectionClosedError", (None, None), ConnectionLost),
    ("ProtocolError", ("bad",), ConnectionLost),
    ("PayloadTooBig", (2**30, 2**20), ConnectionLost),
    ("TooManyFragments", (1024,), ConnectionLost),
]
WEBSOCKETS: list[tuple[BaseException, type[SynapseError]]] = [
    (getattr(ws_errors, name)(*args), expected) for name, args, expected in WEBSOCKETS_CASES if hasattr(ws_errors, name)
]

PICOWS: list[tuple[BaseException, type[SynapseError]]] = [
    (picows.WSError("bad"), ConnectError),
    (picows.WSHandshakeError("bad"), ConnectError),
    (picows.WSInvalidMessageError("bad"), ConnectError),
    (picows.WSInvalidStatusError("rejected", raw_body=b"nope"), ConnectError),
    (picows.WSInvalidHeaderError("bad", "Upgrade"), ConnectError),
    (picows.WSInvalidUpgradeError("bad", "Upgrade"), ConnectError),
    (picows.WSInvalidURL("http://x", "scheme isn't ws or wss"), ConnectError),
    (picows.WSProtocolError(1009, "frame too big"), ConnectionLost),
]

SSL: list[tuple[BaseException, type[SynapseError]]] = [
    (ssl.SSLError(1, "bad"), ConnectError),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), ConnectError),
    (ssl.SSLZeroReturnError(6, "closed"), ConnectError),
    (ssl.SSLWantReadError(2, "want read"), ConnectError),
    (ssl.SSLWantWriteError(3, "want write"), ConnectError),
    (ssl.SSLSyscallError(5, "syscall"), ConnectError),
    (ssl.SSLEOFError(8, "eof"), ConnectError),
]

OS_AND_ASYNCIO: list[tuple[BaseException, type[SynapseError]]] = [
    (ConnectionRefusedError(111, "Connection refused"), ConnectError),
    (ConnectionResetError(104, "Connection reset by peer"), ConnectError),
    (ConnectionAbortedError(103, "aborted"), ConnectError),
    (BrokenPipeError(32, "Broken pipe"), ConnectError),
    (socket.gaierror(-2, "Name or service not known"), ConnectError),
    (OSError(101, "Network is unreachable"), ConnectError),
    (TimeoutError(), ConnectError),
    (asyncio.TimeoutError(), ConnectError),
    (EOFError(), ConnectError),
    (HandshakeRefused(404, "File not found"), ConnectError),
]

ALL = WEBSOCKETS + PICOWS + SSL + OS_AND_ASYNCIO


@pytest.mark.parametrize(("exc", "expected"), ALL, ids=[f"{type(e).__module__}.{type(e).__name__}" for e, _ in ALL])
def test_each_foreign_exception_becomes_its_synapse_error(exc: BaseException, expected: type[SynapseError]) -> None:
    """translate() maps the exception to the expected class, with a message."""
    translated = foreign.translate(exc, URL)
    assert type(translated) is expected
    assert str(translated)


def classes(module: ModuleType, base: type[BaseException]) -> set[type[BaseException]]:
    """The exception classes ``module`` defines or re-exports (its legacy lazy names left alone)."""
    return {value for value in vars(module).values() if inspect.isclass(value) and issubclass(value, base)}


@pytest.mark.parametrize(
    ("module", "base", "tested"),
    [
        (ws_errors, ws_errors.WebSocketException, WEBSOCKETS),
        (picows, picows.WSError, PICOWS),
        (ssl, ssl.SSLError, SSL),
    ],
    ids=["websockets", "picows", "ssl"],
)
def test_every_exception_class_of_the_library_is_mapped_or_explained(
    module: ModuleType, base: type[BaseException], tested: list[tuple[BaseException, type[SynapseError]]]
) -> None:
    """Each exception class the library defines is in the table above, or in NOT_MET with its reason."""
    covered = {type(exc) for exc, _ in tested}
    assert {cls.__name__ for cls in classes(module, base) - covered} - set(NOT_MET) == set()


def test_statuses_and_reasons_are_shown() -> None:
    """A refused handshake names its status (and the server's text); DNS errors read as getaddrinfo says."""
    refused = foreign.translate(ws_errors.InvalidStatus(response(404, b"the endpoint is /ws\n")), URL)
    assert isinstance(refused, ConnectError) and refused.status == 404
    assert str(refused) == f"{URL}: handshake rejected: HTTP 404 (the endpoint is /ws)"
    http10 = foreign.translate(HandshakeRefused(404, "File not found"), URL)
    assert str(http10) == f"{URL}: handshake rejected: HTTP 404 (File not found)"
    dns = foreign.translate(socket.gaierror(-2, "Name or service not known"), URL)
    assert str(dns) == f"cannot connect to {URL}: Name or service not known"


def test_unknown_exceptions_pass_through_mapped() -> None:
    """mapped() re-raises what it does not know unchanged (a bug stays a bug, not a ConnectError)."""
    with pytest.raises(KeyError), foreign.mapped(URL):
        raise KeyError("x")
    with pytest.raises(ConnectError) as info, foreign.mapped(URL):
        raise ConnectionRefusedError(111, "Connection refused")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_tls_context_for_wss_only() -> None:
    """One TLS builder: None for ws://, verifying by default, nothing verified with insecure=True."""
    assert foreign.tls_context(URL) is None
    strict = foreign.tls_context("wss://h/ws")
    assert strict is not None and strict.verify_mode is ssl.CERT_REQUIRED and strict.check_hostname
    lax = foreign.tls_context("wss://h/ws", insecure=True)
    assert lax is not None and lax.verify_mode is ssl.CERT_NONE and not lax.check_hostname
