"""The items of one stream call, as an async iterator (SPEC §5): what :meth:`Client.stream` returns.

The client's reader puts each item in as it arrives and ends the stream with the call's reply; leaving
the loop early (break, exception, cancellation) tells the client to stop the stream on the server.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from synapse_cli.core import protocol
from synapse_cli.core.errors import RPCError

if TYPE_CHECKING:
    from synapse_cli.client.client import Client

__all__ = ["Stream"]


class Stream:
    """The items of one stream call, as an async iterator (made by :meth:`Client.stream`)."""

    def __init__(self, client: Client, func: str, args: list[Any] | tuple[Any, ...] | dict[str, Any]) -> None:
        self.client = client
        self.func = func
        self.args = args
        self.request_id = 0
        self.subscription: str | None = None
        self.result: Any = None
        self.done = False
        self._items: collections.deque[Any] = collections.deque()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._opened = False

    def put(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

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
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop the stream (on the server too, if it still runs)."""
        self.client._close_stream(self)
        self.done = True

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
