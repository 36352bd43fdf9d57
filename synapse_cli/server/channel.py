"""The way back to a connection's client: ``ctx.notify`` and ``ctx.call`` (server-to-client calls).

:class:`PeerChannel` is the :class:`~synapse_cli.core.context.Channel` of one
:class:`~synapse_cli.server.connection.Connection`. What to send and which reply answers which call is
the sans-I/O session's (:meth:`~synapse_cli.core.session.Session.send_call`, the ``Answered`` action);
this module only holds each call's future and its timer, and carries the session's answers out.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from synapse_cli.core.errors import CallTimeout, ConnectionLost, InvalidReply, RPCError
from synapse_cli.core.outgoing import Answered
from synapse_cli.core.protocol import Dialect

if TYPE_CHECKING:
    from synapse_cli.server.connection import Connection

__all__ = ["PeerChannel"]

_LOST = "the caller's connection is closed"


class PeerChannel:
    """Calls to and notifications for the client of one connection, as a Context asks for them."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.waiting: dict[str, asyncio.Future[Any]] = {}
        self.closed = False

    async def call(self, dialect: Dialect, func: str, args: list[Any] | dict[str, Any], timeout: float | None) -> Any:
        """Call ``func`` on the client and wait for its answer (see :meth:`Context.call`)."""
        if self.closed:
            raise ConnectionLost(_LOST)
        connection = self.connection
        key, actions = connection.session.send_call(func, args, dialect)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.waiting[key] = future
        timer = loop.call_later(timeout, self._expire, key, func, timeout) if timeout is not None else None
        connection.act(actions)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            if future.done() and not future.cancelled():
                future.exception()  # retrieved, even when a cancellation overtook it: asyncio stays quiet
            if self.waiting.pop(key, None) is not None:  # cancelled while waiting: the client is told
                connection.act(connection.session.withdraw_call(key))

    async def notify(self, dialect: Dialect, method: str, params: list[Any] | dict[str, Any] | None) -> None:
        """Send a notification to the client; return once it can take more (see :meth:`Context.notify`)."""
        if self.closed:
            raise ConnectionLost(_LOST)
        self.connection.act(self.connection.session.send_notification(method, params))
        await self.connection.link.drained()

    def answered(self, answer: Answered) -> None:
        """The session matched a reply of the client to one of our calls."""
        future = self.waiting.pop(answer.key, None)
        if future is None or future.done():
            return
        error = answer.error
        if error is None:
            future.set_result(answer.result)
        elif answer.invalid:
            future.set_exception(InvalidReply(error.message))
        else:
            future.set_exception(RPCError(error.message, error.code, error.data))

    def lost(self) -> None:
        """The connection is gone: every call waiting for the client fails with ``ConnectionLost``."""
        self.closed = True
        self.connection.session.outgoing.clear()
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionLost(_LOST))

    def _expire(self, key: str, func: str, timeout: float) -> None:
        future = self.waiting.pop(key, None)
        if future is None or future.done():
            return
        future.set_exception(CallTimeout(f"no reply to {func} within {timeout:g} s"))
        self.connection.act(self.connection.session.withdraw_call(key))
