"""The one exception hierarchy of synapse.

::

    SynapseError                 anything synapse raises on purpose
    ├── ConnectError             could not connect: refused, DNS, TLS, handshake rejected (.status)
    ├── ConnectionLost           the connection dropped while a call was waiting for its reply
    ├── CallTimeout              no reply within the call's timeout
    ├── InvalidReply             the server answered something the protocol does not allow
    └── RPCError                 the remote function (or the server) answered with an error

Foreign exceptions (``websockets``, ``picows``, ``OSError``, ``ssl``) are translated once, in
``foreign.py``; none of them escapes the library.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CallTimeout", "ConnectError", "ConnectionLost", "InvalidReply", "RPCError", "SynapseError"]


class SynapseError(Exception):
    """Base class of every error synapse raises on purpose."""


class ConnectError(SynapseError):
    """The connection could not be opened.

    Attributes:
        url: the URL we tried.
        status: the HTTP status when the server refused the handshake (401, 403, 503...), else None.
    """

    def __init__(self, message: str, *, url: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ConnectionLost(SynapseError):
    """The connection dropped before the reply arrived; the call was not re-sent."""


class CallTimeout(SynapseError):
    """No reply arrived within the timeout; a ``cancel`` was sent for the call."""


class InvalidReply(SynapseError):
    """The server's reply does not have the shape the protocol requires (a ``list`` result, say)."""


class RPCError(SynapseError):
    """An error answered by the remote side, or raised by a function to answer with one.

    Raise it from a registered function to send a chosen error to the caller::

        raise RPCError("insufficient funds", code=4002, data={"balance": 3})

    Args:
        message: a short human-readable message.
        code: the JSON-RPC error code (default -32000, "server error").
        data: anything JSON can carry, sent as the error's ``data`` member.
    """

    def __init__(self, message: str, code: int = -32000, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.data = data

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"

    def __repr__(self) -> str:
        return f"RPCError({self.message!r}, code={self.code}, data={self.data!r})"
