"""Calls one side of a connection sends to its peer (a server's ``ctx.call``), sans I/O: ids out, replies in.

The server's :class:`~synapse_cli.core.session.Session` holds one :class:`Outgoing`. Each call gets an id
of its own id space, a string ``"s:<n>"`` (n counts from 1 on each connection, never reused): a client's
ids are its own business, and a reply is told from a request by its shape (``result``/``error``, no
``func``/``method``/``op``), so the two never meet; the prefix only makes a server's call easy to spot
in a log or for a client that routes by id alone. A reply to an id this side never sent (or no longer
waits for) is ignored and logged at debug level.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Final

from synapse_cli.core import encoding
from synapse_cli.core.loglines import RateLimitedLog, loggable
from synapse_cli.core.protocol import Dialect, ErrorInfo, Reply

__all__ = ["SERVER_ID_PREFIX", "Answered", "Outgoing"]

logger = logging.getLogger("synapse.calls")

SERVER_ID_PREFIX: Final = "s:"


@dataclass(slots=True)
class Answered:
    """The peer answered the call ``key``: with ``result``, or ``error`` (``invalid``: a malformed reply)."""

    key: str
    result: Any = None
    error: ErrorInfo | None = None
    invalid: bool = False


class Outgoing:
    """The calls sent to the peer that wait for a reply: id -> the function called."""

    __slots__ = ("waiting", "_ids", "_stray_log")

    def __init__(self) -> None:
        self.waiting: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._stray_log = RateLimitedLog()

    def send(self, func: str, args: list[Any] | dict[str, Any], dialect: Dialect) -> tuple[str, bytes]:
        """A new call: its id and its request; ValueError (nothing recorded) for args JSON cannot carry."""
        request_id = f"{SERVER_ID_PREFIX}{next(self._ids)}"
        data = encoding.encode_call(request_id, func, args, dialect)
        self.waiting[request_id] = func
        return request_id, data

    def withdraw(self, key: str) -> bytes | None:
        """No reply is awaited any more (timed out, cancelled): the ``cancel`` to send, if it still ran."""
        if self.waiting.pop(key, None) is None:
            return None
        return encoding.encode_cancel(key)

    def answer(self, reply: Reply) -> Answered | None:
        """The peer's reply: what it answers, or None for an id no call of ours waits on (logged)."""
        key = reply.id
        func = self.waiting.pop(key, None) if type(key) is str else None
        if func is None:
            if logger.isEnabledFor(logging.DEBUG):
                shown = loggable(repr(key), 80)
                self._stray_log(
                    logger, logging.DEBUG, "ignoring a reply to %s: no call of ours waits on that id", shown
                )
            return None
        return Answered(key, reply.result, reply.error, reply.kind == "invalid")

    def clear(self) -> list[str]:
        """The connection is gone: forget every call; their ids."""
        keys = list(self.waiting)
        self.waiting.clear()
        return keys
