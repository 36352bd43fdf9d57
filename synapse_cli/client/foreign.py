"""Where the outside world's exceptions become synapse errors, and the one TLS context builder.

Every client of a server (``Client``, ``synapse bench``, the CLI) connects through the same two
functions: :func:`tls_context` for ``wss://`` and :func:`translate` (or the :func:`mapped` context
manager around a block) for whatever ``websockets``, ``picows``, ``ssl``, ``asyncio`` or the OS raise.
The model is httpx's ``map_httpcore_exceptions``; ``tests/test_foreign.py`` proves every foreign class
we can meet is mapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import sys
from collections.abc import Iterator

import websockets.exceptions
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
)

from synapse_cli.client.wire import HandshakeRefused
from synapse_cli.core.errors import ConnectError, ConnectionLost, SynapseError

# websockets 17 (Python 3.11+) refuses a message in more fragments than its limit; 16, the newest on Python
# 3.10, has no such limit nor class (looked up, not imported: mypy checks against whichever is installed).
_TOO_MANY_FRAGMENTS = getattr(websockets.exceptions, "TooManyFragments", None)
_BROKEN: tuple[type[Exception], ...] = (ConnectionClosed, ProtocolError, PayloadTooBig) + (
    (_TOO_MANY_FRAGMENTS,) if _TOO_MANY_FRAGMENTS is not None else ()
)

__all__ = ["mapped", "tls_context", "translate"]


def tls_context(url: str, *, cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext | None:
    """The TLS context for ``url``: None for ``ws://``; ``cafile`` trusted; ``insecure`` verifies nothing."""
    if not url.startswith("wss://"):
        return None
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _refused(url: str, status: int, detail: str) -> ConnectError:
    detail = " ".join(detail.split())
    suffix = f" ({detail})" if detail else ""
    return ConnectError(f"{url}: handshake rejected: HTTP {status}{suffix}", url=url, status=status)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):  # getaddrinfo's own numbering: os.strerror does not know it
        return exc.strerror or str(exc)
    errno = getattr(exc, "errno", None)
    if errno:
        return os.strerror(errno)
    return str(exc) or type(exc).__name__


def _picows(exc: BaseException, url: str) -> SynapseError | None:
    """picows' exceptions (``synapse bench``); picows is only imported by code that already uses it."""
    if "picows" not in sys.modules:
        return None
    from picows import WSError, WSInvalidStatusError, WSInvalidURL, WSProtocolError

    if isinstance(exc, WSInvalidStatusError):
        response = exc.response
        status = int(response.status) if response is not None else 0
        body = (exc.raw_body or b"").decode("utf-8", "replace")
        return _refused(url, status, body)
    if isinstance(exc, WSInvalidURL):
        return ConnectError(f"invalid URL {url!r}: {exc}", url=url)
    if isinstance(exc, WSProtocolError):
        return ConnectionLost(f"connection lost: {exc}")
    if isinstance(exc, WSError):
        return ConnectError(f"{url}: handshake failed: {exc}", url=url)
    return None


def translate(exc: BaseException, url: str) -> SynapseError | None:
    """The synapse error for a foreign exception met while talking to ``url``; None when it is not one."""
    if isinstance(exc, SynapseError):
        return exc
    if isinstance(exc, InvalidStatus):
        response = exc.response
        body = response.body.decode("utf-8", "replace") if response.body else ""
        return _refused(url, response.status_code, body)
    if isinstance(exc, HandshakeRefused):
        return _refused(url, exc.status, exc.phrase)
    if isinstance(exc, InvalidURI):
        return ConnectError(f"invalid URL {url!r}: {exc.msg}", url=url)
    if isinstance(exc, InvalidHandshake):
        return ConnectError(f"{url}: handshake failed: {exc}", url=url)
    if isinstance(exc, _BROKEN):
        return ConnectionLost(f"connection lost: {exc}")
    if isinstance(exc, ssl.SSLError):  # before OSError: it is one
        return ConnectError(f"{url}: TLS error: {getattr(exc, 'reason', None) or exc}", url=url)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ConnectError(f"cannot connect to {url}: no answer to the opening handshake in time", url=url)
    if isinstance(exc, (OSError, EOFError)):
        return ConnectError(f"cannot connect to {url}: {_os_reason(exc)}", url=url)
    return _picows(exc, url)


@contextlib.contextmanager
def mapped(url: str) -> Iterator[None]:
    """Run a block that talks to ``url``: foreign exceptions leave it as synapse errors."""
    try:
        yield
    except Exception as exc:
        translated = translate(exc, url)
        if translated is None or translated is exc:
            raise
        raise translated from exc
