"""The topic benchmark's ``--procs`` processes: a :class:`~synapse_cli.bench.subscribers.SubscriberGroup`
in each, driven by the parent over a pipe.

The parent's :class:`RemoteGroup` has the steps of a local group (``connect``, ``wait_warm``, ``start``,
``drain``, ``close``); each sends a message to :func:`serve_group` in the child, which runs them on its
own event loop and answers with plain data (the group's part of the report crosses the pipe as a dict).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from synapse_cli.bench.subscribers import (
    FILES_PER_PROCESS,
    Refusal,
    SubscriberGroup,
    TopicConfig,
    event_loop_runner,
    raise_open_files,
)
from synapse_cli.core.errors import SynapseError

__all__ = ["RemoteGroup", "serve_group"]


def serve_group(connection: Any, config: TopicConfig, count: int) -> None:
    """The body of one ``--procs`` process: run a group, driven by the parent over ``connection``."""
    try:
        raise_open_files(count + FILES_PER_PROCESS)
    except ValueError as exc:
        connection.send(("failed", str(exc)))
        return
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError, EOFError):
        event_loop_runner()(_serve(connection, config, count))


async def _serve(connection: Any, config: TopicConfig, count: int) -> None:
    commands = _Inbox(connection)
    group = SubscriberGroup(config, count)
    try:
        refusal = await group.connect()
        connection.send(("connected", refusal.__dict__))
        warm = asyncio.ensure_future(group.wait_warm())
        warm.add_done_callback(lambda done: done.cancelled() or connection.send(("warm", *done.result())))
        while True:
            command = await commands.get()
            if command[0] == "start":
                group.start()
            elif command[0] == "stop":
                connection.send(("part", await group.drain(*command[1:])))
            else:  # "close", or the parent went away
                break
        warm.cancel()
    finally:
        group.close()
        commands.close()


class _Inbox:
    """Messages from the other end of a pipe, awaited on the event loop (no thread)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(connection.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.connection.poll():
                self.queue.put_nowait(self.connection.recv())
        except (EOFError, OSError):
            self.close()
            self.queue.put_nowait(("gone",))

    async def get(self) -> tuple[Any, ...]:
        return await self.queue.get()

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.connection.fileno())


@dataclass
class RemoteGroup:
    """The parent's handle on a group in another process: the same steps as :class:`SubscriberGroup`."""

    config: TopicConfig
    count: int
    process: Any = None
    connection: Any = None
    inbox: _Inbox | None = None
    waiting: list[tuple[Any, ...]] = field(default_factory=list)

    def launch(self, context: Any) -> None:
        """Start the process (``context``: multiprocessing's spawn context)."""
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve_group, args=(child, self.config, self.count), daemon=True)
        self.process.start()
        child.close()
        self.inbox = _Inbox(self.connection)

    async def _expect(self, kind: str) -> tuple[Any, ...]:
        assert self.inbox is not None
        while True:
            for index, message in enumerate(self.waiting):
                if message[0] == kind:
                    return self.waiting.pop(index)
            message = await self.inbox.get()
            if message[0] in ("failed", "gone"):
                reason = message[1] if len(message) > 1 else f"exit code {self.process.exitcode}"
                raise SynapseError(f"a load process failed: {reason}")
            self.waiting.append(message)

    async def connect(self) -> Refusal:
        return Refusal(**(await self._expect("connected"))[1])

    async def wait_warm(self) -> tuple[int, str | None]:
        _, live, error = await self._expect("warm")
        return int(live), error

    def start(self) -> None:
        self.connection.send(("start",))

    async def drain(self, published: int, timeout: float) -> dict[str, Any]:
        self.connection.send(("stop", published, timeout))
        part: dict[str, Any] = (await self._expect("part"))[1]
        return part

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.connection.send(("close",))
        if self.inbox is not None:
            self.inbox.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.connection.close()
