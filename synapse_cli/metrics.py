"""Server metrics in Prometheus form (``GET /metrics``), kept with ``prometheus_client``.

Each app owns its own ``CollectorRegistry``, so several servers in one process (tests, embedded
benchmarks) never mix their numbers. Under ``--workers N`` the supervisor sets
``PROMETHEUS_MULTIPROC_DIR`` and every worker writes its values there (prometheus_client's multiprocess
mode), so whichever worker answers a scrape reports the whole server.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


class Metrics:
    """The numbers one server process exposes."""

    def __init__(self, *, connections: Callable[[], int], inflight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "synapse_calls", "Calls answered, by function and outcome (ok or the error code).",
            ["function", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "synapse_call_duration_seconds", "Time from a call's arrival to its reply, by function.",
            ["function"], buckets=_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.messages = Counter(
            "synapse_messages", "WebSocket messages, by direction (in, out).", ["direction"], registry=self.registry
        )
        self.bytes = Counter(
            "synapse_message_bytes", "WebSocket message payload bytes, by direction.", ["direction"],
            registry=self.registry,
        )  # fmt: skip
        self.protocol_errors = Counter(
            "synapse_protocol_errors", "Messages refused before any function ran, by error code.", ["code"],
            registry=self.registry,
        )  # fmt: skip
        self.messages_in, self.messages_out = self.messages.labels("in"), self.messages.labels("out")
        self.bytes_in, self.bytes_out = self.bytes.labels("in"), self.bytes.labels("out")
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        # "livesum": the sum over the workers alive (ignored outside multiprocess mode)
        self.connections = Gauge(
            "synapse_connections", "Open WebSocket connections.", registry=self.registry, multiprocess_mode="livesum"
        )
        self.inflight = Gauge(
            "synapse_inflight_calls", "Calls running now.", registry=self.registry, multiprocess_mode="livesum"
        )
        self._count_connections = connections
        if not self.multiprocess:  # read at scrape time; workers instead write on every change (refresh)
            self.connections.set_function(connections)
            self.inflight.set_function(inflight)
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def received(self, text: str) -> None:
        """Count one message in (its UTF-8 size)."""
        self.messages_in.inc()
        self.bytes_in.inc(len(text) if text.isascii() else len(text.encode()))

    def sent(self, size: int) -> None:
        """Count one message out."""
        self.messages_out.inc()
        self.bytes_out.inc(size)

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
        children = self._children.get((function, outcome))
        if children is None:  # labels() takes a lock and builds a key: do it once per pair
            children = (self.calls.labels(function, outcome), self.latency.labels(function))
            self._children[(function, outcome)] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        multiprocess.MultiProcessCollector(every_worker)  # type: ignore[no-untyped-call]
        return generate_latest(every_worker)
