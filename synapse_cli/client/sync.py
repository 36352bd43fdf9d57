"""Blocking calls for scripts: :class:`SyncClient` and :func:`call`, over a :class:`Client` in a thread.

The asyncio client runs on an event loop of its own in a daemon thread; each blocking method hands it
a coroutine with ``asyncio.run_coroutine_threadsafe`` and waits for the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future as ThreadFuture
from types import TracebackType
from typing import Any, TypeVar

from synapse_cli.client.client import Client
from synapse_cli.core.errors import SynapseError
from synapse_cli.core.settings import DEFAULT_URL

__all__ = ["SyncClient", "call"]

T = TypeVar("T")
_END: Any = object()


class SyncClient:
    """A blocking facade over :class:`Client` for scripts (its event loop runs in a thread).

    ::

        with SyncClient("ws://127.0.0.1:8000/ws") as client:
            client.call("add_numbers", 1, 2)   # -> 3
    """

    def __init__(self, url: str = DEFAULT_URL, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="synapse-client", daemon=True)
        self._thread.start()
        self._client = Client(url, **options)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    def __enter__(self) -> SyncClient:
        try:
            self._run(self._client.connect())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, func: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``func`` and block until its result (same errors as :meth:`Client.call`)."""
        return self._run(self._client.call(func, *args, **kwargs))

    def stream(self, func: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """A stream function's items as they arrive (see :meth:`Client.stream`); leaving the loop stops it."""
        items = self._client.stream(func, *args, **kwargs)

        async def next_item() -> Any:
            try:
                return await items.__anext__()
            except StopAsyncIteration:
                return _END

        try:
            while (item := self._run(next_item())) is not _END:
                yield item
        finally:
            self._run(items.aclose())

    def list(self) -> list[dict[str, Any]]:
        """The server's functions."""
        return self._run(self._client.list())

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(SynapseError):
            self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def call(url: str, func: str, /, *args: Any, **kwargs: Any) -> Any:
    """One call from a script, blocking: ``call(url, "add_numbers", 1, 2)`` -> 3.

    Keyword arguments go to the remote function; the token comes from ``SYNAPSE_TOKEN``. For options
    (timeout, TLS, dialect) or many calls, use :class:`SyncClient` or :class:`Client`.
    """
    with SyncClient(url, token=os.environ.get("SYNAPSE_TOKEN")) as client:
        return client.call(func, *args, **kwargs)
