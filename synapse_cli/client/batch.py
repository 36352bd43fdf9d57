"""``synapse call --batch``: NDJSON calls run concurrently over one client, answered in input order.

Each line is one call, ``{"func": "...", "args": ...}`` or ``["func", arg, ...]``; each answer is one
``{"id", "result", "error"}`` object whose ``id`` is the line's number (every line counts, blank ones
included: they are skipped, not answered).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from synapse_cli.core import protocol
from synapse_cli.core.errors import CallTimeout, ConnectionLost, RPCError

if TYPE_CHECKING:
    from synapse_cli.client.client import Client

__all__ = ["BatchInputError", "ordered_calls", "parse_line", "read_lines"]


class BatchInputError(Exception):
    """The batch input could not be read (not UTF-8, an I/O error)."""


def _error(number: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"id": number, "result": None, "error": error}


def parse_line(line: str) -> tuple[str, list[Any] | dict[str, Any]]:
    """One NDJSON line: ``{"func": "...", "args": ...}`` or ``["func", arg, ...]``; ValueError otherwise."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if type(value) is list and value and type(value[0]) is str:
        return value[0], value[1:]
    if type(value) is dict and type(value.get("func")) is str:
        args = value.get("args", [])
        if type(args) in (list, dict):
            return value["func"], args
    raise ValueError('expected {"func": "...", "args": [...]} or ["func", arg, ...]')


async def _answer(client: Client, number: int, line: str) -> dict[str, Any]:
    try:
        func, args = parse_line(line)
    except ValueError as exc:
        return _error(number, protocol.INVALID_REQUEST, f"line {number}: {exc}")
    try:
        result = await client.request(func, args)
    except RPCError as exc:
        return _error(number, exc.code, exc.message, exc.data)
    except CallTimeout as exc:
        return _error(number, protocol.CALL_TIMEOUT, str(exc))
    except ConnectionLost as exc:
        return _error(number, protocol.SERVER_ERROR, str(exc))
    return {"id": number, "result": result, "error": None}


async def ordered_calls(
    client: Client, lines: AsyncIterator[str], *, concurrency: int = 16
) -> AsyncIterator[dict[str, Any]]:
    """Run NDJSON calls concurrently over ``client``; yield ``{"id", "result", "error"}`` in input order.

    At most ``concurrency`` calls are in flight, and at most a few times that many finished replies
    wait for a slower call ahead of them, so memory stays bounded on endless input.
    """
    slots = asyncio.Semaphore(concurrency)
    window: asyncio.Queue[asyncio.Task[dict[str, Any]] | None] = asyncio.Queue(maxsize=4 * concurrency)

    async def run(number: int, line: str) -> dict[str, Any]:
        try:
            return await _answer(client, number, line)
        finally:
            slots.release()

    async def produce() -> None:
        number = 0
        try:
            async for line in lines:
                number += 1  # every line counts: a line's answer carries its line number
                if line.strip():
                    await slots.acquire()
                    await window.put(asyncio.ensure_future(run(number, line)))
        finally:
            await window.put(None)  # even when reading fails: the consumer must not wait forever

    producer = asyncio.ensure_future(produce())
    try:
        while (task := await window.get()) is not None:
            yield await task
        await producer  # surfaces a read error
    finally:
        producer.cancel()
        leftovers = [task for task in (window.get_nowait() for _ in range(window.qsize())) if task is not None]
        for task in leftovers:
            task.cancel()
        # Let each cancelled call run its handler (which sends `cancel`) before the client closes; and
        # retrieve every outcome, the producer's included: no "exception was never retrieved".
        await asyncio.gather(producer, *leftovers, return_exceptions=True)


async def read_lines(stream: Iterable[str]) -> AsyncIterator[str]:
    """Lines of ``stream`` read by a daemon thread: Ctrl-C never waits for a blocked ``readline``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(maxsize=1024)

    def read() -> None:
        def put(item: str | BaseException | None) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        try:
            for line in stream:
                put(line)
            put(None)
        except RuntimeError:
            return  # the loop closed while we were reading: nobody waits for the rest
        except Exception as exc:  # unreadable input (not UTF-8, an I/O error): reported, not hung on
            put(exc)

    threading.Thread(target=read, name="synapse-batch-reader", daemon=True).start()
    while (item := await queue.get()) is not None:
        if isinstance(item, BaseException):
            raise BatchInputError(f"cannot read the batch input: {item}")
        yield item
