"""The items of one stream call, as an async iterator (SPEC §5): what :meth:`Client.stream` returns.

The client's reader puts each item in as it arrives and ends the stream with the call's reply; leaving
the loop early (break, exception, cancellation) tells the client to stop the stream on the server.

A stream holds at most ``max_items`` items its reader has not taken yet: past that, the client stops
reading the socket (TCP pushes back to the server, which ends a topic subscriber that falls too far
behind with -32004) and reads again once the reader has taken half of them. Items of a topic with a
history carry their position (:attr:`Stream.position`, the last one received; before the first item,
the one the server said the subscription starts after); with ``resume=True`` a dropped connection is
reopened (the client's backoff) and the stream subscribes again with ``since=<position>``: the items it
missed, then live ones, with no gap and no duplicate, even when none had arrived yet.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from synapse_cli.core import protocol
from synapse_cli.core.errors import ConnectionLost, RPCError

if TYPE_CHECKING:
    from synapse_cli.client.client import Client

__all__ = ["Stream"]


class Stream:
    """The items of one stream call, as an async iterator (made by :meth:`Client.stream`).

    Attributes:
        position: the position of the last item received, for a topic with a history (else None);
            before the first item, the position the server said the subscription starts after:
            ``client.stream(topic, since=stream.position)`` later goes on from there.
        result: what the call returned, once it ended (None for a stream function).
        resumes: how many times the stream was resumed after a dropped connection.
    """

    def __init__(
        self,
        client: Client,
        func: str,
        args: list[Any] | tuple[Any, ...] | dict[str, Any],
        *,
        max_items: int,
        resume: bool = False,
    ) -> None:
        if resume and not isinstance(args, dict) and len(args) > 1:
            raise ValueError("resume=True adds since=<position> to the arguments: pass them by name")
        self.client = client
        self.func = func
        self.args = args
        self.max_items = max_items
        self.resume = resume
        self.request_id = 0
        self.subscription: str | None = None
        self.result: Any = None
        self.done = False
        self.position: int | None = None
        self.resumes = 0
        self.held = False  # the client stopped reading for this stream's sake
        self._items: collections.deque[Any] = collections.deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._opened = False

    def put(self, item: Any, position: int | None = None) -> None:
        if position is not None:
            if self.position is not None and position <= self.position:
                return  # already received (a resumed subscription never sends it; a server might)
            self.position = position
        self._items.append(item)
        if len(self._items) >= self.max_items and not self.held:
            self.held = True
            self.client._hold(self)
        self._wake()

    def start(self, position: int | None) -> None:
        """The server says where the subscription starts: its items are those after ``position``."""
        if self.position is None and position is not None:
            self.position = position

    def finish(self, result: Any, error: protocol.ErrorInfo | None) -> None:
        self.done = True
        self.result = result
        if error is not None:
            self._error = RPCError(error.message, error.code, error.data)
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if not self._opened:
            self._opened = True
            await self.client._open_stream(self)
        try:
            while not self._items:
                if self.done:
                    if self.resume and isinstance(self._error, ConnectionLost):
                        await self._reopen()
                        continue
                    self.client._close_stream(self)
                    if self._error is not None:
                        raise self._error
                    raise StopAsyncIteration
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        except BaseException:
            if not self.done or self._items:
                self.client._close_stream(self)
            raise
        item = self._items.popleft()
        if self.held and len(self._items) <= self.max_items // 2:
            self.held = False
            self.client._release(self)
        return item

    async def _reopen(self) -> None:
        """The connection dropped: reconnect (with the client's backoff) and subscribe again after ``position``."""
        self.client._close_stream(self)
        if self.position is not None:
            self.args = (
                {**self.args, "since": self.position} if isinstance(self.args, dict) else {"since": self.position}
            )
        self.done, self._error, self.subscription = False, None, None
        self.resumes += 1
        await self.client._open_stream(self)

    async def aclose(self) -> None:
        """Stop the stream (on the server too, if it still runs)."""
        self.client._close_stream(self)
        self.done = True

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
