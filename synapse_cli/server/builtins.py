"""The default functions ``synapse serve`` exposes when no application is given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from synapse_cli.core.errors import RPCError
from synapse_cli.core.registry import Registry

__all__ = ["MAX_SLEEP_SECONDS", "default_registry"]

MAX_SLEEP_SECONDS = 60.0


def add_numbers(a: int | float, b: int | float) -> int | float:
    """Add two numbers: int + int gives an int, anything with a float gives a float."""
    return a + b


def echo(value: Any) -> Any:
    """Return the value unchanged."""
    return value


async def sleep(seconds: float) -> float:
    """Wait the given number of seconds (0 to 60) without blocking the server; return it."""
    if not 0 <= seconds <= MAX_SLEEP_SECONDS:
        raise RPCError(f"seconds must be between 0 and {MAX_SLEEP_SECONDS:g}", -32602, {"seconds": seconds})
    await asyncio.sleep(seconds)
    return seconds


def divide(a: int | float, b: int | float) -> float:
    """Divide a by b; dividing by zero answers error -32000 "division by zero"."""
    if b == 0:
        raise RPCError("division by zero", data={"a": a})
    return a / b


def fail(message: str = "boom") -> None:
    """Raise an unexpected exception, to show what callers see: -32603 "internal error"."""
    raise RuntimeError(message)


async def ticks(n: int, interval: float = 0.1) -> AsyncIterator[int]:
    """Count from 0 to n-1, one number every `interval` seconds (a stream: each number is an item)."""
    if n < 0 or not 0 <= interval <= MAX_SLEEP_SECONDS:
        raise RPCError(f"n must be >= 0 and interval between 0 and {MAX_SLEEP_SECONDS:g}", -32602)
    for i in range(n):
        yield i
        if interval:
            await asyncio.sleep(interval)


def default_registry() -> Registry:
    """A fresh registry with the built-in functions."""
    registry = Registry()
    events = registry.topic("events", description="Every value given to publish_event, as it is published.")

    async def publish_event(value: Any) -> int:
        """Publish a value to the `events` topic; returns how many subscribers it reached."""
        return await events.publish(value)

    registry.add(add_numbers, inline=True)
    registry.add(echo, inline=True)
    registry.add(sleep)
    registry.add(divide, inline=True)
    registry.add(fail, inline=True)
    registry.add(ticks)
    registry.add(publish_event)
    return registry
