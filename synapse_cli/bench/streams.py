"""``synapse bench`` for streams (SPEC §5): one stream's items/s and the gap between its items, and a
topic's fan-out latency (publish to receipt) to many subscribers.

* :func:`measure_stream` runs a stream call on each of ``connections`` connections to its end (or for
  ``duration`` seconds) and records the gap between consecutive items in an HDR histogram.
* :func:`measure_topic` subscribes ``subscribers`` connections to a topic, publishes ``{"t": <ns>,
  "seq": n}`` through a publish function at ``publish_rate`` per second for ``duration`` seconds, and
  records each item's publish-to-receipt latency and how many items each subscriber missed.

Both return a :class:`StreamReport`; the CLI renders it (``cli.bench_render.stream_report``) or prints its JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from synapse_cli.client.client import Client
from synapse_cli.core.stats import new_histogram, summarize

__all__ = ["StreamReport", "measure_stream", "measure_topic"]


@dataclass
class StreamReport:
    """What a stream or topic benchmark measured."""

    mode: str  # "stream" or "topic"
    target: str  # the stream function or topic
    connections: int
    seconds: float
    items: int
    items_per_s: float
    gap_ms: dict[str, float | None] = field(default_factory=dict)  # stream: between consecutive items
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # topic: publish to receipt
    published: int = 0
    missed: dict[str, int] = field(default_factory=dict)  # topic: per subscriber, max and total
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "stream_bench": self.__dict__}


async def measure_stream(
    url: str, func: str, args: list[Any] | dict[str, Any], *, connections: int = 1, duration: float | None = None,
    token: str | None = None, timeout: float = 10.0,
) -> StreamReport:  # fmt: skip
    """Run the stream call on each connection until it ends (or ``duration`` passes)."""
    gaps = new_histogram()
    counts = [0] * connections
    errors: list[str] = []

    async def one(index: int) -> None:
        async with Client(url, token=token, timeout=timeout) as client:
            stream = client.stream(func, **args) if isinstance(args, dict) else client.stream(func, *args)
            last = None
            async for _ in stream:
                now = time.perf_counter_ns()
                if last is not None:
                    gaps.record_value(max(1, (now - last) // 1000))
                last = now
                counts[index] += 1

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(index)) for index in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=duration)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            exception = await asyncio.gather(task, return_exceptions=True)
            if isinstance(exception[0], Exception):
                errors.append(str(exception[0]))
    seconds = time.perf_counter() - started
    items = sum(counts)
    return StreamReport(
        "stream", func, connections, seconds, items, items / seconds, gap_ms=summarize(gaps), errors=errors
    )


async def measure_topic(
    url: str, topic: str, *, subscribers: int = 100, publish_rate: float = 10.0, duration: float = 5.0,
    publish_func: str = "publish_event", token: str | None = None, timeout: float = 10.0,
) -> StreamReport:  # fmt: skip
    """Subscribe ``subscribers`` connections to ``topic``; publish at ``publish_rate`` for ``duration`` s."""
    latency = new_histogram()
    received = [0] * subscribers
    ready = 0
    all_ready = asyncio.Event()
    errors: list[str] = []

    async def subscriber(index: int) -> None:
        nonlocal ready
        async with Client(url, token=token, timeout=None) as client:
            ready += 1
            if ready == subscribers:
                all_ready.set()
            async for item in client.stream(topic):
                now = time.time_ns()
                if isinstance(item, dict) and isinstance(item.get("t"), int):
                    latency.record_value(max(1, (now - item["t"]) // 1000))
                    received[index] += 1

    tasks = [asyncio.ensure_future(subscriber(index)) for index in range(subscribers)]
    published = 0
    started = time.perf_counter()
    try:
        await asyncio.wait_for(all_ready.wait(), timeout)
        await asyncio.sleep(0.5)  # the subscriptions reach the server
        async with Client(url, token=token, timeout=timeout) as publisher:
            started = time.perf_counter()
            while time.perf_counter() - started < duration:
                published += 1
                await publisher.call(publish_func, {"t": time.time_ns(), "seq": published})
                await asyncio.sleep(max(0.0, started + published / publish_rate - time.perf_counter()))
        await asyncio.sleep(0.5)  # the last publishes arrive
    except Exception as exc:  # the report says what went wrong
        errors.append(str(exc))
    seconds = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(outcome, Exception):
            errors.append(str(outcome))
    missed = [max(0, published - count) for count in received]
    items = sum(received)
    return StreamReport(
        "topic", topic, subscribers, seconds, items, items / seconds if seconds else 0.0,
        latency_ms=summarize(latency), published=published,
        missed={"max": max(missed, default=0), "total": sum(missed)}, errors=errors[:5],
    )  # fmt: skip
