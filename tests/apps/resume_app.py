"""Topics with a history for the resume and backpressure tests: ``build()`` makes a fresh registry."""

from __future__ import annotations

import asyncio

from synapse_cli import Registry


def build() -> Registry:
    """counter (history 20,000), small (history 3), sets (items typed set[int]), burst (no history)."""
    registry = Registry()
    counter = registry.topic("counter", history=20_000)
    small = registry.topic("small", history=3)
    sets = registry.topic("sets", item=set[int])
    burst = registry.topic("burst")

    @registry.function
    async def publish_range(start: int, stop: int, every: int = 50, pause: float = 0.001) -> int:
        """Publish start..stop-1 to counter, pausing `pause` s after every `every` items; the last position."""
        for n in range(start, stop):
            await counter.publish(n)
            if (n - start + 1) % every == 0:
                await asyncio.sleep(pause)
        return counter.position

    @registry.function
    async def publish_small(value: int) -> int:
        """Publish to small; how many subscribers it reached."""
        return await small.publish(value)

    @registry.function
    async def publish_set(values: list[int]) -> int:
        """Publish a set to sets (written as a JSON array: the topic's item type)."""
        return await sets.publish(set(values))

    @registry.function
    async def publish_nan() -> int:
        """Publish NaN to small: JSON cannot carry it."""
        return await small.publish(float("nan"))

    @registry.function
    async def publish_burst(count: int, size: int) -> int:
        """Publish `count` strings of `size` bytes to burst as fast as possible."""
        chunk = "x" * size
        for n in range(count):
            await burst.publish(chunk)
            if n % 100 == 99:
                await asyncio.sleep(0)
        return count

    return registry


registry = build()
