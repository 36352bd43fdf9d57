"""Latency math and the benchmark report, pure: no I/O, no clock, no event loop.

Latencies live in HDR histograms (microsecond resolution, 3 significant digits). The hot path of the
load generator counts values in a plain dict (:class:`Recorder`) and hands them to the histogram in
bulk, which is exact and costs a dict increment per call instead of a Python ``record_value``.
The report model built from these numbers lives in :mod:`synapse_cli.bench.report`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

__all__ = [
    "LATENCY_METRICS",
    "PERCENTILES",
    "Recorder",
    "SloRule",
    "decode_histogram",
    "encode_histogram",
    "holds",
    "interval_summary",
    "log_buckets",
    "min_samples",
    "new_histogram",
    "parse_slo",
    "percentile_spectrum",
    "summarize",
]
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
LOWEST_US = 1
SIGNIFICANT_DIGITS = 3
DEFAULT_HIGHEST_US = 3_600_000_000  # one hour: anything longer is clamped


def new_histogram(highest_us: int = DEFAULT_HIGHEST_US) -> HdrHistogram:
    """An empty histogram from 1 µs to ``highest_us`` with 3 significant digits."""
    return HdrHistogram(LOWEST_US, max(highest_us, 1000), SIGNIFICANT_DIGITS)


class Recorder:
    """Latency values in µs, counted exactly, flushed into an HDR histogram in bulk."""

    __slots__ = ("counts", "histogram", "highest")

    def __init__(self, highest_us: int = DEFAULT_HIGHEST_US) -> None:
        self.counts: dict[int, int] = {}
        self.histogram = new_histogram(highest_us)
        self.highest = self.histogram.highest_trackable_value

    def record(self, microseconds: int) -> None:
        """Count one value (the hot path inlines this as a dict increment)."""
        self.counts[microseconds] = self.counts.get(microseconds, 0) + 1

    def flush(self) -> HdrHistogram:
        """Move the counted values into the histogram and return it."""
        highest, histogram = self.highest, self.histogram
        for value, count in self.counts.items():
            histogram.record_value(min(max(value, LOWEST_US), highest), count)
        self.counts.clear()
        return histogram


def min_samples(percentile: float) -> int:
    """Samples needed before a percentile means something: 10 / (1 - p), e.g. 1,000 for p99."""
    return math.ceil(round(10 / (1 - percentile / 100), 6))  # round: 10 / (1 - 0.999) is 10000.0000000011


def _key(percentile: float) -> str:
    return f"p{percentile:g}"


def summarize(histogram: HdrHistogram) -> dict[str, float | None]:
    """min, mean, stdev, p50, p90, p99, p99.9 and max in ms; a percentile is None when n is too small."""
    count = histogram.get_total_count()
    if count == 0:
        return {"min": None, "mean": None, "stdev": None, **{_key(p): None for p in PERCENTILES}, "max": None}
    summary: dict[str, float | None] = {
        "min": histogram.get_min_value() / 1000,
        "mean": histogram.get_mean_value() / 1000,
        "stdev": histogram.get_stddev() / 1000,
    }
    for percentile in PERCENTILES:
        enough = count >= min_samples(percentile)
        summary[_key(percentile)] = histogram.get_value_at_percentile(percentile) / 1000 if enough else None
    summary["max"] = histogram.get_max_value() / 1000
    return {key: None if value is None else round(value, 4) for key, value in summary.items()}


def interval_summary(histogram: HdrHistogram) -> dict[str, float | None]:
    """p50, p90, p99 and max (ms) of one second's calls: shown however few, since a second holds few calls."""
    if histogram.get_total_count() == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    summary = {_key(p): histogram.get_value_at_percentile(p) / 1000 for p in (50.0, 90.0, 99.0)}
    summary["max"] = histogram.get_max_value() / 1000
    return {key: round(value, 4) for key, value in summary.items()}


def percentile_spectrum(histogram: HdrHistogram) -> list[tuple[float, float]]:
    """(percentile, latency ms) pairs from p0 up to the max, the points of HdrHistogram's classic plot."""
    count = histogram.get_total_count()
    if count == 0:
        return []
    points = []
    nines = 0.0
    while True:
        percentile = 100 - 100 / 10**nines
        points.append((percentile, histogram.get_value_at_percentile(percentile) / 1000))
        if count * 10 ** (-nines) < 1 or nines >= 6:
            break
        nines += 0.125
    points.append((100.0, histogram.get_max_value() / 1000))
    return points


def encode_histogram(histogram: HdrHistogram) -> str:
    """The standard compressed, base64 HDR encoding (readable by every HdrHistogram library)."""
    encoded = histogram.encode()
    return encoded.decode() if isinstance(encoded, bytes) else str(encoded)


def decode_histogram(encoded: str) -> HdrHistogram:
    """The histogram back from :func:`encode_histogram`."""
    return HdrHistogram.decode(encoded.encode())


def log_buckets(
    histogram: HdrHistogram, *, max_buckets: int = 16, span: tuple[int, int] | None = None
) -> list[tuple[float, float, int]]:
    """Counts in log-spaced latency ranges (ms), from the fastest to the slowest value seen (or over ``span`` µs)."""
    count = histogram.get_total_count()
    if count == 0:
        return []
    low = max(span[0] if span else histogram.get_min_value(), LOWEST_US)
    high = max(span[1] if span else histogram.get_max_value(), low + 1)
    steps = max(1, min(max_buckets, math.ceil(math.log10(high / low) * 8)))
    edges = [low * (high / low) ** (i / steps) for i in range(steps + 1)]
    buckets = [0] * steps
    for item in histogram.get_recorded_iterator():
        value = histogram.get_highest_equivalent_value(item.value_iterated_to)
        index = min(steps - 1, max(0, int(math.log(max(value, low) / low) / math.log(high / low) * steps)))
        buckets[index] += item.count_added_in_this_iter_step
    return [(edges[i] / 1000, edges[i + 1] / 1000, buckets[i]) for i in range(steps)]


# -- SLOs ------------------------------------------------------------------------------------------

_SLO = re.compile(r"^\s*([a-z_][a-z0-9_.]*)\s*(<=|>=|==|<|>|=)\s*([0-9.]+(?:e[+-]?\d+)?)\s*([a-zµ%/]*)\s*$", re.I)
LATENCY_METRICS = frozenset({"min", "mean", "max", "p50", "p90", "p99", "p99.9"})
_ALIASES = {"rps": "calls_per_s", "qps": "calls_per_s", "throughput": "calls_per_s", "error_rate": "error_rate"}
_UNITS = {"": 1.0, "ms": 1.0, "us": 0.001, "µs": 0.001, "s": 1000.0}


@dataclass(frozen=True)
class SloRule:
    """One SLO term, e.g. ``p99 < 20 ms``: the metric, the comparison, the bound (ms, count, ratio or calls/s)."""

    metric: str
    op: str
    bound: float
    text: str


def parse_slo(text: str) -> list[SloRule]:
    """Parse ``"p99<20ms,errors=0,error_rate<0.1%,calls_per_s>=5000"``; ValueError with the bad term."""
    rules = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        match = _SLO.match(term)
        if not match:
            raise ValueError(f"cannot read SLO term {term!r} (expected e.g. p99<20ms, errors=0)")
        name, op, number, unit = match.groups()
        metric = _ALIASES.get(name.lower(), name.lower())
        value = float(number)
        if metric in LATENCY_METRICS:
            if unit.lower() not in _UNITS:
                raise ValueError(f"unknown unit {unit!r} in {term!r} (use us, ms or s)")
            value *= _UNITS[unit.lower()]
        elif metric == "error_rate":
            value = value / 100 if unit == "%" else value
        elif metric not in ("errors", "calls_per_s") or unit not in ("", "/s"):
            raise ValueError(f"unknown SLO metric or unit in {term!r}")
        rules.append(SloRule(metric, "=" if op == "==" else op, value, term))
    if not rules:
        raise ValueError("empty SLO")
    return rules


def holds(rule: SloRule, actual: float) -> bool:
    """Whether ``actual`` (in the rule's unit: ms, a count, a ratio or calls/s) meets ``rule``."""
    compare = {
        "<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "=": float.__eq__,
    }  # fmt: skip
    return compare[rule.op](float(actual), rule.bound)
