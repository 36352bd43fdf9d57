"""The tally of one benchmark run: every measured call counted once, in total, per second and per function.

Pure: the time of each call is passed in (``time.perf_counter_ns()`` values), so a fake clock tests it.
Latencies are counted in a plain dict per second (a dict increment per call on the hot path), set aside
as sorted arrays when the second ends, and turned into one HDR histogram per second after the run; the
run's histogram is the exact sum of those.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from synapse_cli.bench.report import ErrorCount, FunctionStats, Interval
from synapse_cli.core import stats

__all__ = ["Tally"]

_NS = 1_000_000_000


@dataclass
class _Second:
    """One closed second: its span (ns), its calls, and its latencies as sorted values (µs) with their counts."""

    begin: int
    end: int
    ok: int
    failed: int
    values: array[int]
    counts: array[int]

    def rate_and_p99(self) -> tuple[float, float | None]:
        length = (self.end - self.begin) / _NS
        rate = (self.ok + self.failed) / length if length > 0 else 0.0
        if not self.values:
            return rate, None
        cumulative = list(accumulate(self.counts))
        index = bisect_left(cumulative, cumulative[-1] * 0.99)
        return rate, self.values[index] / 1000


class Tally:
    """Counts of measured calls: ``record`` one reply, ``lose`` calls that got none, ``note_error`` why."""

    def __init__(
        self,
        *,
        highest_us: int,
        functions: Sequence[str] = ("",),
        interval_ns: int = _NS,
        target: Callable[[float, float], float] | None = None,
    ) -> None:
        self.highest_us = highest_us
        self.interval_ns = interval_ns
        self.target = target  # open model: the target rate between two times (s since measuring started)
        self.functions = list(functions)
        self.start = 0
        self.boundary = 2**62  # no rotation before begin()
        self.counts: dict[int, int] = {}  # this second's latencies (µs) -> count
        self.service = stats.Recorder(highest_us)  # open model: from the actual send, whole run
        self.total = stats.new_histogram(highest_us)
        self.ok = self.failed = 0
        self._mark = (0, 0)  # ok, failed when the current second began
        self._seconds: list[_Second] = []  # closed seconds, waiting for finish() to become intervals
        self.intervals: list[Interval] = []
        self.errors: dict[tuple[str, Any], list[Any]] = {}  # (kind, code) -> [count, first message]
        many = len(self.functions) > 1
        self.by_function = [stats.Recorder(highest_us) for _ in self.functions] if many else None
        self.function_ok = [0] * len(self.functions)
        self.function_failed = [0] * len(self.functions)

    def begin(self, now: int) -> None:
        """Measuring starts at ``now``: the first second ends one interval later."""
        self.start = now
        self.boundary = now + self.interval_ns

    def record(self, now: int, latency_us: int, ok: bool = True, func: int = 0) -> None:
        """One reply at ``now``, ``latency_us`` after its scheduled send; ``ok`` unless the server sent an error."""
        if now >= self.boundary:
            self._rotate(now)
        counts = self.counts
        counts[latency_us] = counts.get(latency_us, 0) + 1
        if ok and self.by_function is None:  # the common case, first: one function, an ok reply
            self.ok += 1
            return
        if ok:
            self.ok += 1
        else:
            self.failed += 1
        if self.by_function is not None:
            self.by_function[func].record(latency_us)
            if ok:
                self.function_ok[func] += 1
            else:
                self.function_failed[func] += 1
        else:
            self.function_failed[0] += 1

    def lose(self, now: int, count: int = 1, func: int = 0) -> None:
        """``count`` calls that ended with no reply (timed out, never sent, connection lost)."""
        if now >= self.boundary:
            self._rotate(now)
        self.failed += count
        self.function_failed[func] += count

    def note_error(self, kind: str, code: Any, message: str, count: int = 1) -> None:
        """Why calls failed: counted by kind and code, with the first message of each."""
        entry = self.errors.get((kind, code))
        if entry is None:
            self.errors[(kind, code)] = [count, message]
        else:
            entry[0] += count

    def tick(self, now: int) -> None:
        """Close the seconds that ended with no reply in them (a stall shows as seconds of 0 calls)."""
        if now >= self.boundary:
            self._rotate(now)

    def _rotate(self, now: int) -> None:
        while now >= self.boundary:
            self._close(self.boundary - self.interval_ns, self.boundary)
            self.boundary += self.interval_ns

    def _close(self, begin: int, end: int) -> None:
        """Set the second aside as sorted arrays (C-speed, ~1 ms): its histogram is built after the run.

        Building an HDR histogram is a Python call per distinct value (tens of ms a second): done here it
        would stall the event loop once a second and show up in the very latencies being measured.
        """
        values = sorted(self.counts)
        counts = self.counts
        self.counts = {}
        ok, failed = self.ok - self._mark[0], self.failed - self._mark[1]
        self._mark = (self.ok, self.failed)
        self._seconds.append(
            _Second(begin, end, ok, failed, array("q", values), array("q", map(counts.__getitem__, values)))
        )

    def recent(self, count: int) -> list[tuple[float, float | None]]:
        """The last ``count`` seconds as (calls/s, p99 ms), cheaply, for the live sparklines."""
        return [second.rate_and_p99() for second in self._seconds[-count:]]

    def finish(self, end: int) -> None:
        """Measuring ended at ``end``: close the last (partial) second, then build every second's histogram."""
        self._rotate(end)
        begin = self.boundary - self.interval_ns
        if end - begin >= self.interval_ns // 100 or self.counts or self.ok + self.failed > sum(self._mark):
            self._close(begin, max(end, begin + 1))
        self.boundary = 2**62
        for second in self._seconds:
            self.intervals.append(self._interval(second))
        self._seconds = []

    def _interval(self, second: _Second) -> Interval:
        histogram = stats.new_histogram(self.highest_us)
        for value, count in zip(second.values, second.counts, strict=True):
            histogram.record_value(min(max(value, stats.LOWEST_US), self.highest_us), count)
        self.total.add(histogram)
        start_s, end_s = (second.begin - self.start) / _NS, (second.end - self.start) / _NS
        length = end_s - start_s
        calls = second.ok + second.failed
        return Interval(
            t=round(start_s, 3), duration_s=round(length, 4), calls=calls, ok=second.ok, errors=second.failed,
            calls_per_s=round(calls / length, 2), latency_ms=stats.interval_summary(histogram),
            histogram=stats.encode_histogram(histogram),
            target=round(self.target(start_s, end_s), 2) if self.target else None,
        )  # fmt: skip

    def error_counts(self) -> list[ErrorCount]:
        ordered = sorted(self.errors.items(), key=lambda item: -item[1][0])
        return [ErrorCount(kind, code, count, message) for (kind, code), (count, message) in ordered]

    def function_stats(self) -> list[FunctionStats]:
        """Latency and errors per function (one entry, the run's totals, when there is one function)."""
        recorders = self.by_function
        result = []
        for index, name in enumerate(self.functions):
            histogram = recorders[index].flush() if recorders is not None else self.total
            ok = self.function_ok[index] if recorders is not None else self.ok
            failed = self.function_failed[index]
            result.append(
                FunctionStats(
                    func=name, calls=ok + failed, ok=ok, errors=failed, latency_ms=stats.summarize(histogram),
                    histogram=stats.encode_histogram(histogram),
                )
            )  # fmt: skip
        return result
