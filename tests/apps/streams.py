"""Stream functions for the streams tests: generators that record how far they got and whether they closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from synapse_cli import Registry, RPCError

registry = Registry()
prices = registry.topic("prices")

produced: dict[str, int] = {}  # tag -> items a generator produced
closed: list[str] = []  # tags of generators whose finally ran


@registry.function
async def count(tag: str, n: int, interval: float = 0.0) -> AsyncIterator[int]:
    """Async generator: 0..n-1, recording each item and its own end."""
    try:
        for i in range(n):
            produced[tag] = i + 1
            yield i
            await asyncio.sleep(interval)
    finally:
        closed.append(tag)


@registry.function
def sync_count(tag: str, n: int, interval: float = 0.0) -> Iterator[str]:
    """Sync generator (runs in the thread pool): "0".."n-1" as strings."""
    try:
        for i in range(n):
            produced[tag] = i + 1
            yield str(i)
            time.sleep(interval)
    finally:
        closed.append(tag)


@registry.function
async def firehose(tag: str) -> AsyncIterator[str]:
    """Endless 1 KiB items as fast as the connection takes them."""
    chunk = "x" * 1024
    produced[tag] = 0
    try:
        while True:
            produced[tag] += 1
            yield chunk
    finally:
        closed.append(tag)


@registry.function
async def breaks(after: int) -> AsyncIterator[int]:
    """Yields `after` items, then raises an RPCError."""
    for i in range(after):
        yield i
    raise RPCError("broke", 4001, {"after": after})


@registry.function
async def publish_price(symbol: str, price: float) -> int:
    """Publish to the prices topic; how many subscribers it reached."""
    return await prices.publish({"symbol": symbol, "price": price})


@registry.function
def state(tag: str) -> dict[str, object]:
    """What the server saw of a tag: items produced, whether it closed."""
    return {"produced": produced.get(tag, 0), "closed": tag in closed}
