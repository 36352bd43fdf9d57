"""A topic whose publish function takes 50 ms per call: ``bench --topic news -c 1`` cannot reach its rate."""

from __future__ import annotations

import asyncio
from typing import Any

from synapse_cli import Registry

registry = Registry()
news = registry.topic("news")

PUBLISH_SECONDS = 0.05


@registry.function
async def publish_slowly(value: Any) -> int:
    """Publish ``value`` to news after 50 ms; how many subscribers it reached."""
    await asyncio.sleep(PUBLISH_SECONDS)
    return await news.publish(value)
