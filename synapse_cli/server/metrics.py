"""Server metrics in Prometheus form (``GET /metrics``), kept with ``prometheus_client``.

The hot path only adds to plain numbers (a :class:`Metrics` tally: an int, a list slot); a custom
collector turns them into Prometheus families when ``/metrics`` is scraped. prometheus_client's own
``inc``/``observe`` take a lock each and were an eighth of the server's time under pipelined load
(py-spy, benchmarks/profiles). Each app owns its own ``CollectorRegistry``, so several servers in one
process (tests, embedded benchmarks) never mix their numbers.

Under ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``: every worker moves its tallies
into prometheus_client's multiprocess values once per event-loop iteration in which they changed, so
whichever worker answers a scrape reports the whole server.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROCESS_ENV", "Metrics"]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Call latency buckets, in seconds: 50 µs to 30 s (the default call timeout).
_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
_LE = [floatToGoString(bound) for bound in _BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]

_CALLS = ("synapse_calls", "Calls answered, by function and outcome (ok or the error code).")
_LATENCY = ("synapse_call_duration_seconds", "Time from a call's arrival to its reply, by function.")
_MESSAGES = ("synapse_messages", "WebSocket messages, by direction (in, out).")
_BYTES = ("synapse_message_bytes", "WebSocket message payload bytes, by direction.")
_ITEMS = ("synapse_stream_items", "Stream items sent.")
_TOO_SLOW = ("synapse_subscribers_too_slow", "Subscribers ended with -32004 for falling behind, by topic.")


class Metrics:
    """The numbers one server process exposes.

    ``record``, ``received`` and ``sent`` are on every call's path: they only add to plain numbers.
    """

    def __init__(
        self,
        *,
        connections: Callable[[], int],
        inflight: Callable[[], int],
        streams: Callable[[], int] = lambda: 0,
        topics: Mapping[str, Any] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        self.items_out = 0  # stream items sent
        # (function, outcome) -> calls; function -> per-bucket counts (the last slot: above every
        # bucket), then the sum of the seconds
        self._calls: dict[tuple[str, str], int] = {}
        self._latency: dict[str, list[float]] = {}
        self.protocol_errors = Counter(
            "synapse_protocol_errors", "Messages refused before any function ran, by error code.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        # "livesum": the sum over the workers alive (ignored outside multiprocess mode)
        self.connections = Gauge(
            "synapse_connections", "Open WebSocket connections.", registry=self.registry, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "synapse_inflight_calls", "Calls running now.", registry=self.registry, multiprocess_mode="livesum"
        )
        self.streams = Gauge(
            "synapse_open_streams", "Stream calls running now.", registry=self.registry, multiprocess_mode="livesum"
        )
        self.subscribers = Gauge(
            "synapse_topic_subscribers",
            "Subscribers of each topic now.",
            ["topic"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.topics: Mapping[str, Any] = topics if topics is not None else {}
        self._count_connections = connections
        self._count_streams = streams
        self._shared: _Shared | None = None
        if self.multiprocess:  # workers write on every change (refresh) and move tallies (_publish)
            self._shared = _Shared(self.registry)
        else:  # read at scrape time
            self.connections.set_function(connections)
            self.inflight.set_function(inflight)
            self.streams.set_function(streams)
            for name, topic in self.topics.items():
                self.subscribers.labels(name).set_function(functools.partial(_count, topic.subscribers))
            self.registry.register(_TallyCollector(self))

    def received(self, text: str) -> None:
        """Count one message in (its UTF-8 size)."""
        self.messages_in += 1
        self.bytes_in += len(text) if text.isascii() else len(text.encode())
        if self._shared is not None:
            self._shared.soon(self)

    def sent(self, size: int) -> None:
        """Count one message out."""
        self.messages_out += 1
        self.bytes_out += size
        if self._shared is not None:
            self._shared.soon(self)

    def refresh(self) -> None:
        """Multiprocess mode: write this worker's connection count (a connection opened or closed)."""
        if self.multiprocess:
            self.connections.set(self._count_connections())

    def call_started(self) -> None:
        """Multiprocess mode: one more call in flight in this worker."""
        if self.multiprocess:
            self.inflight.inc()

    def call_finished(self) -> None:
        """Multiprocess mode: one call fewer in flight in this worker."""
        if self.multiprocess:
            self.inflight.dec()

    def record(self, function: str, outcome: str, seconds: float) -> None:
        """Count one answered call and its latency."""
        key = (function, outcome)
        self._calls[key] = self._calls.get(key, 0) + 1
        counts = self._latency.get(function)
        if counts is None:
            counts = self._latency[function] = [0.0] * (len(_BUCKETS) + 2)
        counts[bisect_left(_BUCKETS, seconds)] += 1  # a bucket holds values <= its bound
        counts[-1] += seconds
        if self._shared is not None:
            self._shared.soon(self)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        if self._shared is None:
            return generate_latest(self.registry)
        self._shared.publish(self)
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)  # type: ignore[no-untyped-call]
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(_Families(_with_histograms(every_worker.collect())))
        return generate_latest(exposed)


def _count(items: Any) -> int:
    return len(items)


# The collectors below are prometheus_client collectors by shape (its ``Collector`` is a Protocol): they
# do not derive from it, since this module is compiled and a mypyc class deriving from a Protocol breaks
# attribute lookup at run time (``SystemError`` in ``registry.register``).
class _TallyCollector:
    """Turns a process's tallies into Prometheus families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        calls = CounterMetricFamily(*_CALLS, labels=["function", "outcome"])
        for (function, outcome), total in list(m._calls.items()):
            calls.add_metric([function, outcome], total)
        latency = HistogramMetricFamily(*_LATENCY, labels=["function"])
        for function, counts in list(m._latency.items()):
            cumulative, buckets = 0.0, []
            for le, count in zip(_LE, counts, strict=False):
                cumulative += count
                buckets.append((le, cumulative))
            latency.add_metric([function], buckets, counts[-1])
        messages = CounterMetricFamily(*_MESSAGES, labels=["direction"])
        messages.add_metric(["in"], m.messages_in)
        messages.add_metric(["out"], m.messages_out)
        sizes = CounterMetricFamily(*_BYTES, labels=["direction"])
        sizes.add_metric(["in"], m.bytes_in)
        sizes.add_metric(["out"], m.bytes_out)
        items = CounterMetricFamily(*_ITEMS)
        items.add_metric([], m.items_out)
        too_slow = CounterMetricFamily(*_TOO_SLOW, labels=["topic"])
        for name, topic in m.topics.items():
            too_slow.add_metric([name], topic.too_slow)
        yield from (calls, latency, messages, sizes, items, too_slow)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are known only at scrape time


class _Families:
    """Families built already (the whole server's, read from every worker's files)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _with_histograms(families: Iterable[Metric]) -> list[Metric]:
    """The families, with the latency tallies (per-bucket counters) turned back into a histogram."""
    out: list[Metric] = []
    buckets: dict[str, list[float]] = {}
    for family in families:
        if family.name not in (_BUCKET_TALLY[0], _SUM_TALLY[0]):
            out.append(family)
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # the "_created" samples of the tallies
            function = sample.labels["function"]
            counts = buckets.setdefault(function, [0.0] * (len(_LE) + 1))
            if family.name == _SUM_TALLY[0]:
                counts[-1] += sample.value
            else:
                counts[_LE.index(sample.labels["le"])] += sample.value
    latency = HistogramMetricFamily(*_LATENCY, labels=["function"])
    for function, counts in sorted(buckets.items()):
        latency.add_metric([function], list(zip(_LE, itertools.accumulate(counts[:-1]), strict=True)), counts[-1])
    out.append(latency)
    return out


_BUCKET_TALLY = ("synapse_call_latency_bucket_tally", "Per-bucket call latency counts (workers' shared tally).")
_SUM_TALLY = ("synapse_call_latency_sum_tally", "Sum of call latencies in seconds (workers' shared tally).")


class _Shared:
    """Multiprocess mode: a worker's tallies, moved into prometheus_client's shared values.

    The move happens once per event-loop iteration in which something changed (and before this
    worker renders a scrape), so a scrape answered by any worker is at most one iteration behind.
    The latency histogram travels as plain counters (one per bucket, and the sum), which a scrape turns
    back into the histogram: prometheus_client has no public way to add to a histogram's buckets.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(*_CALLS, ["function", "outcome"], registry=registry)
        self.buckets = Counter(*_BUCKET_TALLY, ["function", "le"], registry=registry)
        self.sums = Counter(*_SUM_TALLY, ["function"], registry=registry)
        self.messages = Counter(*_MESSAGES, ["direction"], registry=registry)
        self.bytes = Counter(*_BYTES, ["direction"], registry=registry)
        self.items = Counter(*_ITEMS, registry=registry)
        self.too_slow = Counter(*_TOO_SLOW, ["topic"], registry=registry)
        self._published: dict[Any, float] = {}  # what is already in the shared values
        self._scheduled = False

    def soon(self, metrics: Metrics) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.publish, metrics)

    def _add(self, key: Any, total: float, inc: Callable[[float], None]) -> None:
        delta = total - self._published.get(key, 0)
        if delta:
            inc(delta)
            self._published[key] = total

    def publish(self, metrics: Metrics) -> None:
        self._scheduled = False
        for (function, outcome), total in list(metrics._calls.items()):
            self._add((function, outcome), total, self.calls.labels(function, outcome).inc)
        for function, counts in list(metrics._latency.items()):
            for index, count in enumerate(counts[:-1]):
                if count:
                    self._add((function, index), count, self.buckets.labels(function, _LE[index]).inc)
            self._add((function, "sum"), counts[-1], self.sums.labels(function).inc)
        self._add("messages_in", metrics.messages_in, self.messages.labels("in").inc)
        self._add("messages_out", metrics.messages_out, self.messages.labels("out").inc)
        self._add("bytes_in", metrics.bytes_in, self.bytes.labels("in").inc)
        self._add("bytes_out", metrics.bytes_out, self.bytes.labels("out").inc)
        self._add("items", metrics.items_out, self.items.inc)
        for name, topic in metrics.topics.items():
            self._add(("too_slow", name), topic.too_slow, self.too_slow.labels(name).inc)
            metrics.subscribers.labels(name).set(len(topic.subscribers))
        metrics.streams.set(metrics._count_streams())
