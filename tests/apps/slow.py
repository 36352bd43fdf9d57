"""Functions for the server's end-to-end tests: slow, blocking, unserializable, and ones that record.

The module-level records let a test see what happened inside the server (which calls started, how many
ran at once, which were cancelled) without mocking anything.
"""

from __future__ import annotations

import asyncio
import threading
import time

from synapse_cli import Registry, RPCError

registry = Registry()

_lock = threading.Lock()
active: dict[str, int] = {}  # tag -> calls of `tracked` running now
peak: dict[str, int] = {}  # tag -> the most that ever ran at once
started: list[str] = []  # tags of `watched` calls that began
cancelled: list[str] = []  # tags of `watched` calls that were cancelled
finished: list[str] = []  # tags of `watched` calls that ran to the end


@registry.function
async def tracked(tag: str, seconds: float) -> int:
    """Sleep, counting how many calls with this tag run at once; return the count seen at the start."""
    with _lock:
        active[tag] = active.get(tag, 0) + 1
        running = active[tag]
        peak[tag] = max(peak.get(tag, 0), running)
    try:
        await asyncio.sleep(seconds)
    finally:
        with _lock:
            active[tag] -= 1
    return running


@registry.function
async def watched(tag: str, seconds: float) -> str:
    """Sleep, recording whether the call started, was cancelled or finished."""
    started.append(tag)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        cancelled.append(tag)
        raise
    finished.append(tag)
    return tag


@registry.function
def blocking_sleep(seconds: float) -> float:
    """Block the calling thread (a sync function: the server runs it in its thread pool)."""
    time.sleep(seconds)
    return seconds


@registry.function
def not_a_number() -> float:
    """Return NaN, which JSON cannot carry."""
    return float("nan")


@registry.function
def infinity() -> float:
    """Return Infinity, which JSON cannot carry."""
    return float("inf")


@registry.function
def a_set() -> object:
    """Return a set, which JSON cannot carry."""
    return {1, 2, 3}


@registry.function
def huge_integer() -> int:
    """Return an integer beyond 64 bits."""
    return 2**70


@registry.function
def deep_list(depth: int) -> object:
    """Return lists nested ``depth`` levels deep."""
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@registry.function
def insufficient_funds() -> None:
    """Raise an RPCError with a code of its own."""
    raise RPCError("insufficient funds", code=4002, data={"balance": 3})


@registry.function
def secret_failure() -> None:
    """Raise an unexpected exception whose text must not reach clients."""
    raise ValueError("secret-detail-4711")
