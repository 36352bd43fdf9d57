"""The client as callee: the functions a client exposes, run when its server calls them.

The same protocol both ways: a server calls a client as a client calls a server (SPEC §1, both dialects),
so the client decides with the same sans-I/O :class:`~synapse_cli.core.session.Session` over a
:class:`~synapse_cli.core.registry.Registry` of what it exposes: the same validation (pydantic, from the
type hints), the same errors (-32601 for a function it does not expose, -32602 for arguments that do not
fit, -32603 when one raises), ``cancel`` stopping a running call. :class:`Callee` is the asyncio driver
of that session for one connection: coroutine functions run on the loop, sync ones in a thread (unless
``inline``). Imported only when a client exposes something or a server first calls it
(:mod:`synapse_cli.client.exposed`): ``synapse call`` starts without pydantic.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import orjson

from synapse_cli.core.registry import Registry
from synapse_cli.core.session import Reply, Session, Start, Stop

__all__ = ["Callee", "check_exposable", "is_request"]

_REQUEST_KEYS = ("func", "method", "op")


def is_request(payload: bytes) -> bool:
    """True when a message the server sent is a request (a call, a cancel, a notification), not a reply."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    items = value if type(value) is list else [value]
    return any(type(item) is dict and any(key in item for key in _REQUEST_KEYS) for item in items)


def check_exposable(registry: Registry) -> None:
    """ValueError for a function a client cannot expose: a stream, or one that takes a Context or checks."""
    for function in registry:
        if function.stream:
            raise ValueError(f"function {function.name!r}: a client cannot expose a stream function")
        if function.contextual:
            raise ValueError(f"function {function.name!r}: a client's functions take no Context and no requires")


class Callee:
    """Server-to-client calls on one connection: decided by a Session, run here, answered through ``write``.

    Args:
        registry: the functions this client exposes (the server gets -32601 for any other).
        write: sends one text message to the server.
    """

    def __init__(self, registry: Registry, write: Callable[[bytes], None]) -> None:
        self.session = Session(registry)
        self.write = write
        self.tasks: dict[Any, asyncio.Task[Any]] = {}

    def receive(self, payload: bytes) -> None:
        """A request from the server."""
        self.act(self.session.receive(payload))

    def abandon(self) -> None:
        """The connection is gone: cancel every running call (nobody is left to answer)."""
        self.act(self.session.stop_all(None))

    def act(self, actions: list[Any]) -> None:
        """Carry out what the session decided (replies, starts, stops)."""
        for action in actions:
            if type(action) is Reply:
                self.write(action.data)
            elif type(action) is Start:
                self._start(action)
            elif type(action) is Stop:
                task = self.tasks.get(action.key)
                if task is not None:
                    task.cancel()

    def _start(self, start: Start) -> None:
        function = start.function
        if function.is_async:
            task = asyncio.ensure_future(function.func(*start.args, **start.kwargs))
        else:
            task = asyncio.ensure_future(asyncio.to_thread(function.func, *start.args, **start.kwargs))
        self.tasks[start.key] = task
        task.add_done_callback(functools.partial(self._ended, start.key))

    def _ended(self, key: Any, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(key, None)
        if task.cancelled():
            actions = self.session.finish(key, error=asyncio.CancelledError())
        else:
            error = task.exception()
            actions = self.session.finish(key, None if error is not None else task.result(), error)
        self.act(actions)
