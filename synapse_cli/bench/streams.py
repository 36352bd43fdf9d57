"""``synapse bench`` for streams (SPEC §5): one stream's items/s and the gap between its items, and the
report both stream and topic benchmarks make.

* :func:`measure_stream` runs a stream call on each of ``connections`` connections to its end (or for
  ``duration`` seconds) and records the gap between consecutive items in an HDR histogram.
* A topic's fan-out (publish to receipt, to many subscribers, over ``--procs`` processes) is measured by
  :func:`synapse_cli.bench.topic.measure_topic`.

Both return a :class:`StreamReport`; the CLI renders it (``cli.bench_render.stream_report``) or prints its JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from synapse_cli.bench.report import Generator
from synapse_cli.client.client import Client
from synapse_cli.core.stats import new_histogram, summarize

__all__ = ["LATENCY_CLOCK", "Publishing", "StreamReport", "TopicGenerator", "measure_stream"]

LATENCY_CLOCK = "one clock: the publisher's time.time_ns() in each item against the subscriber's, on this machine"
_TOPIC_ONLY = ("procs", "publish", "generator", "latency_clock", "histogram", "out_of_order", "ended")


@dataclass
class Publishing:
    """A topic benchmark's publishes: the rate asked for against what went out and was accepted."""

    target_rate: float
    achieved_rate: float
    sent: int = 0
    ok: int = 0
    failed: int = 0
    not_sent: int = 0  # due within the run but never sent (the server or the generator fell behind)


@dataclass
class TopicGenerator(Generator):
    """A topic benchmark's generator health: the busiest process (``cpu_pct``, ``loop_lag_ms``) and all of
    its processes together against the cores they may run on."""

    cpu_total_pct: float = 0.0  # every process's CPU share added up (100 = one core)
    processes: int = 1  # the subscribers' processes, and the publisher's when it has its own
    cores: int = 1  # the cores these processes may run on (their CPU affinity)


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
    published: int = 0  # topic: measured publishes the server accepted (every subscriber should get each)
    missed: dict[str, int] = field(default_factory=dict)  # topic: per subscriber, max and total
    errors: list[str] = field(default_factory=list)
    procs: int = 1  # topic: processes the subscribers were spread over
    publish: Publishing | None = None
    generator: TopicGenerator | None = None  # topic: the load processes' health
    latency_clock: str | None = None  # topic: where publish-to-receipt latency comes from
    histogram: str | None = None  # topic: the latency's HDR histogram (all processes merged exactly)
    out_of_order: int = 0  # topic: items whose seq was not above the last one the subscriber had
    ended: int = 0  # topic: subscribers ended before the run did (by the server, or a lost connection)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        if self.mode != "topic":
            for key in _TOPIC_ONLY:
                del document[key]
        elif self.generator is not None and self.generator.schedule_lag_ms is None:
            del document["generator"]["schedule_lag_ms"]
        return {"schema_version": 1, "stream_bench": document}


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
