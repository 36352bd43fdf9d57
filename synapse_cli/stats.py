"""Latency math and the benchmark report, pure: no I/O, no clock, no event loop.

Latencies live in HDR histograms (microsecond resolution, 3 significant digits). The hot path of the
load generator counts values in a plain dict (:class:`Recorder`) and hands them to the histogram in
bulk, which is exact and costs a dict increment per call instead of a Python ``record_value``.
The report is a versioned JSON document (``schema_version`` 1); ``merge``, ``compare`` and SLO
checks work on it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = [
    "PERCENTILES",
    "SCHEMA_VERSION",
    "Recorder",
    "SloRule",
    "check_slo",
    "compare_reports",
    "decode_histogram",
    "encode_histogram",
    "log_buckets",
    "merge_reports",
    "min_samples",
    "new_histogram",
    "parse_slo",
    "summarize",
]

SCHEMA_VERSION = 1
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


def encode_histogram(histogram: HdrHistogram) -> str:
    """The standard compressed, base64 HDR encoding (readable by every HdrHistogram library)."""
    encoded = histogram.encode()
    return encoded.decode() if isinstance(encoded, bytes) else str(encoded)


def decode_histogram(encoded: str) -> HdrHistogram:
    """The histogram back from :func:`encode_histogram`."""
    return HdrHistogram.decode(encoded.encode())


def log_buckets(histogram: HdrHistogram, *, max_buckets: int = 16) -> list[tuple[float, float, int]]:
    """Counts in log-spaced latency ranges (ms), from the fastest to the slowest value seen."""
    count = histogram.get_total_count()
    if count == 0:
        return []
    low = max(histogram.get_min_value(), LOWEST_US)
    high = max(histogram.get_max_value(), low + 1)
    steps = max(1, min(max_buckets, math.ceil(math.log10(high / low) * 8)))
    edges = [low * (high / low) ** (i / steps) for i in range(steps + 1)]
    buckets = [0] * steps
    for item in histogram.get_recorded_iterator():
        value = histogram.get_highest_equivalent_value(item.value_iterated_to)
        index = min(steps - 1, max(0, int(math.log(max(value, low) / low) / math.log(high / low) * steps)))
        buckets[index] += item.count_added_in_this_iter_step
    return [(edges[i] / 1000, edges[i + 1] / 1000, buckets[i]) for i in range(steps)]


# -- merging and comparing reports -----------------------------------------------------------------


def _merge_errors(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, Any], dict[str, Any]] = {}
    for report in reports:
        for error in report.get("errors", []):
            key = (error["kind"], error.get("code"))
            if key in merged:
                merged[key]["count"] += error["count"]
            else:
                merged[key] = dict(error)
    return sorted(merged.values(), key=lambda e: -e["count"])


def _sum(reports: list[dict[str, Any]], section: str, key: str) -> Any:
    return sum((r.get(section) or {}).get(key, 0) or 0 for r in reports)


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs made in parallel (processes or machines): histograms merged exactly, rates summed."""
    if not reports:
        raise ValueError("nothing to merge")
    for report in reports:
        if report.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported report schema_version {report.get('schema_version')!r}")
    histogram = decode_histogram(reports[0]["histogram"])
    for report in reports[1:]:
        histogram.add(decode_histogram(report["histogram"]))
    merged = dict(reports[0])
    merged["config"] = {**reports[0]["config"], "sources": sum(r["config"].get("sources", 1) for r in reports)}
    merged["calls"] = {key: _sum(reports, "calls", key) for key in ("measured", "ok", "errors", "warmup")}
    merged["duration_s"] = max(r["duration_s"] for r in reports)
    merged["calls_per_s"] = round(sum(r["calls_per_s"] for r in reports), 2)
    merged["latency_ms"] = summarize(histogram)
    merged["histogram"] = encode_histogram(histogram)
    merged["errors"] = _merge_errors(reports)
    merged["traffic"] = {key: _sum(reports, "traffic", key) for key in (reports[0].get("traffic") or {})}
    generators = [r["generator"] for r in reports]
    merged["generator"] = {
        "cpu_pct": max(g["cpu_pct"] for g in generators),
        "loop_lag_ms": max(g["loop_lag_ms"] for g in generators),
        "bound": any(g["bound"] for g in generators),
    }
    if reports[0].get("rate"):
        service = decode_histogram(reports[0]["service_histogram"])
        for report in reports[1:]:
            service.add(decode_histogram(report["service_histogram"]))
        merged["service_latency_ms"] = summarize(service)
        merged["service_histogram"] = encode_histogram(service)
        merged["rate"] = {key: round(_sum(reports, "rate", key), 2) for key in reports[0]["rate"]}
        merged["generator"]["schedule_lag_ms"] = max(r["generator"].get("schedule_lag_ms", 0) for r in reports)
    return merged


COMPARED = ("calls_per_s", "p50", "p90", "p99", "p99.9", "errors")
_HIGHER_IS_BETTER = {"calls_per_s"}
_OUTPUT_ONLY = {"sources", "output", "json"}


def _metric(report: dict[str, Any], name: str) -> float | None:
    if name == "calls_per_s":
        return float(report["calls_per_s"])
    if name == "errors":
        return float(report["calls"]["errors"])
    value = report["latency_ms"].get(name)
    return None if value is None else float(value)


def compare_reports(base: dict[str, Any], new: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-metric deltas (new against base) and warnings about differing configurations."""
    rows = []
    for name in COMPARED:
        before, after = _metric(base, name), _metric(new, name)
        delta = None if before is None or after is None else after - before
        percent = None if delta is None or not before else delta / before * 100
        better = None
        if delta:
            better = (delta > 0) == (name in _HIGHER_IS_BETTER)
        rows.append({"metric": name, "base": before, "new": after, "delta": delta, "pct": percent, "better": better})
    warnings = []
    ignored = set(_OUTPUT_ONLY)
    if base["config"].get("embedded") and new["config"].get("embedded"):
        ignored.add("url")  # each embedded server gets a fresh port: not a difference worth a warning
    for key in sorted(set(base["config"]) | set(new["config"])):
        if key not in ignored and base["config"].get(key) != new["config"].get(key):
            warnings.append(f"config differs: {key} = {base['config'].get(key)!r} vs {new['config'].get(key)!r}")
    return rows, warnings


# -- SLOs ------------------------------------------------------------------------------------------

_SLO = re.compile(r"^\s*([a-z_][a-z0-9_.]*)\s*(<=|>=|==|<|>|=)\s*([0-9.]+(?:e[+-]?\d+)?)\s*([a-zµ%/]*)\s*$", re.I)
_LATENCY = {"min", "mean", "max", "p50", "p90", "p99", "p99.9"}
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
        if metric in _LATENCY:
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


def _actual(report: dict[str, Any], metric: str) -> float | None:
    if metric == "error_rate":
        measured = report["calls"]["measured"]
        return report["calls"]["errors"] / measured if measured else 0.0
    return _metric(report, metric)


def check_slo(report: dict[str, Any], rules: list[SloRule]) -> list[str]:
    """The terms the report does not meet, each explained; empty when the SLO holds."""
    compare = {
        "<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "=": float.__eq__,
    }  # fmt: skip
    failures = []
    for rule in rules:
        actual = _actual(report, rule.metric)
        if actual is None:
            failures.append(f"{rule.text}: not enough samples to know {rule.metric}")
        elif not compare[rule.op](actual, rule.bound):
            failures.append(f"{rule.text}: measured {actual:g}")
    return failures
