"""The benchmark report: one typed model (:class:`BenchReport`), its JSON, and what is done with reports.

``bench`` builds a report, ``merge`` adds reports of runs made together, ``compare`` sets two side by side,
``check_slo`` judges one, and :mod:`synapse_cli.cli.render` and :mod:`synapse_cli.bench.html_report` show it. The JSON
is ``schema_version`` 1 (SPEC §4): later fields (``timeseries``, ``window``, ``functions``) were added
without changing the meaning of any field, so every version-1 file still reads.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from synapse_cli.core import stats

__all__ = [
    "COMPARED",
    "SCHEMA_VERSION",
    "BenchReport",
    "CallCounts",
    "ErrorCount",
    "FunctionStats",
    "Generator",
    "Interval",
    "RateResult",
    "Traffic",
    "Window",
    "check_slo",
    "compare_reports",
    "merge_reports",
    "metric",
    "windows_overlap",
    "with_unit",
]

SCHEMA_VERSION = 1
Latency = dict[str, float | None]  # min, mean, stdev, p50, p90, p99, p99.9, max (ms); None: too few samples


@dataclass
class CallCounts:
    """Measured calls (warm-up calls apart)."""

    measured: int = 0
    ok: int = 0
    errors: int = 0
    warmup: int = 0


@dataclass
class ErrorCount:
    """Failed calls of one kind (``rpc``, ``close``, ``timeout``, ``protocol``) and code."""

    kind: str
    code: Any
    count: int
    first_message: str


@dataclass
class Traffic:
    """Bytes of measured calls and replies, and replies that matched no call."""

    bytes_sent: int = 0
    bytes_received: int = 0
    unmatched: int = 0
    duplicates: int = 0
    late_replies: int = 0


@dataclass
class Generator:
    """The load generator's own health: was it, not the server, the limit?"""

    cpu_pct: float = 0.0
    loop_lag_ms: float = 0.0
    bound: bool = False
    schedule_lag_ms: float | None = None  # open model only


@dataclass
class RateResult:
    """Open model: the target against what was sent (``not_sent``: due calls the run ended before sending)."""

    target: float
    achieved: float
    late_sends: int = 0
    not_sent: int = 0


@dataclass
class Window:
    """The wall-clock span of measuring (Unix seconds): where merged runs line up."""

    start: float
    end: float


@dataclass
class Interval:
    """One second of measuring (the last may be shorter): calls finished in it and their latency."""

    t: float  # seconds since measuring started
    duration_s: float
    calls: int
    ok: int
    errors: int
    calls_per_s: float
    latency_ms: dict[str, float | None]  # p50, p90, p99, max
    histogram: str
    target: float | None = None  # open model: the target rate of this second


@dataclass
class FunctionStats:
    """One function's share of a run (``--data`` mixes several)."""

    func: str
    calls: int
    ok: int
    errors: int
    latency_ms: Latency
    histogram: str


def _section(kind: type[Any], value: Any) -> Any:
    if value is None:
        return None
    known = {f.name for f in fields(kind)}
    return kind(**{key: item for key, item in value.items() if key in known})


@dataclass
class BenchReport:
    """A benchmark's results (SPEC §4 ``--json``): built by bench, merged, compared, rendered, drawn."""

    config: dict[str, Any]
    calls: CallCounts
    duration_s: float
    calls_per_s: float
    latency_ms: Latency
    histogram: str
    errors: list[ErrorCount] = field(default_factory=list)
    generator: Generator = field(default_factory=Generator)
    traffic: Traffic | None = None
    versions: dict[str, str] = field(default_factory=dict)
    rate: RateResult | None = None
    service_latency_ms: Latency | None = None
    service_histogram: str | None = None
    window: Window | None = None
    timeseries: list[Interval] = field(default_factory=list)
    functions: list[FunctionStats] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The JSON document (``--json``, ``--output``): optional sections left out when absent."""
        document = asdict(self)
        document = {"schema_version": document.pop("schema_version"), **document}
        for key in ("traffic", "rate", "service_latency_ms", "service_histogram", "window"):
            if document[key] is None:
                del document[key]
        if self.generator.schedule_lag_ms is None:
            del document["generator"]["schedule_lag_ms"]
        for interval in document["timeseries"]:
            if interval["target"] is None:
                del interval["target"]
        return document

    @classmethod
    def from_json(cls, document: Any) -> BenchReport:
        """A report from its JSON document (any ``schema_version`` 1 file); ValueError when it is not one."""
        if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
            version = document.get("schema_version") if isinstance(document, dict) else None
            raise ValueError(f"not a synapse bench report of schema_version {SCHEMA_VERSION} (found {version!r})")
        try:
            return cls(
                config=dict(document["config"]),
                calls=_section(CallCounts, document["calls"]),
                duration_s=float(document["duration_s"]),
                calls_per_s=float(document["calls_per_s"]),
                latency_ms=dict(document["latency_ms"]),
                histogram=str(document["histogram"]),
                errors=[_section(ErrorCount, error) for error in document.get("errors", [])],
                generator=_section(Generator, document.get("generator") or {}),
                traffic=_section(Traffic, document.get("traffic")),
                versions=dict(document.get("versions") or {}),
                rate=_section(RateResult, document.get("rate")),
                service_latency_ms=document.get("service_latency_ms"),
                service_histogram=document.get("service_histogram"),
                window=_section(Window, document.get("window")),
                timeseries=[_section(Interval, item) for item in document.get("timeseries", [])],
                functions=[_section(FunctionStats, item) for item in document.get("functions", [])],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a synapse bench report: {type(exc).__name__} {exc}") from None

    def hdr_log(self) -> str:
        """The per-second histograms in the standard HdrHistogram interval log format (values in µs).

        Written with hdrh's own :class:`HistogramLogWriter`; timestamps are seconds since the start of
        measuring, the log's StartTime (wall clock).
        """
        import io
        from datetime import datetime, timezone

        from hdrh.log import HistogramLogWriter

        buffer = io.StringIO()
        writer = HistogramLogWriter(buffer)
        start = self.window.start if self.window else 0.0
        writer.output_comment(f"Logged by synapse bench: {self.config.get('func')} at {self.config.get('url')}")
        writer.output_log_format_version()
        when = datetime.fromtimestamp(start, timezone.utc).isoformat()
        # Timestamps relative to StartTime, with no BaseTime line: readers then take StartTime as the base
        # (HdrHistogram's rule for relative logs), so no rounding can put the first interval before the start.
        writer.output_comment(f"[StartTime: {start:.6f} (seconds since epoch), {when}]")
        writer.output_legend()
        for interval in self.timeseries:
            histogram = stats.decode_histogram(interval.histogram)
            writer.output_interval_histogram(
                histogram, interval.t or 1e-9, interval.t + interval.duration_s, max_value_unit_ratio=1000.0
            )
        return buffer.getvalue()

    def error_rate(self) -> float:
        return self.calls.errors / self.calls.measured if self.calls.measured else 0.0


# -- merging ---------------------------------------------------------------------------------------


def _merge_errors(reports: list[BenchReport]) -> list[ErrorCount]:
    merged: dict[tuple[str, Any], ErrorCount] = {}
    for report in reports:
        for error in report.errors:
            key = (error.kind, error.code)
            if key in merged:
                merged[key].count += error.count
            else:
                merged[key] = replace(error)
    return sorted(merged.values(), key=lambda e: -e.count)


def _add_histograms(encoded: list[str]) -> Any:
    histogram = stats.decode_histogram(encoded[0])
    for other in encoded[1:]:
        histogram.add(stats.decode_histogram(other))
    return histogram


def _merge_timeseries(reports: list[BenchReport], start: float) -> list[Interval]:
    """Intervals of the same wall-clock second added up (exactly: their histograms merged)."""
    slots: dict[int, list[Interval]] = {}
    for report in reports:
        offset = (report.window.start - start) if report.window else 0.0
        for interval in report.timeseries:
            slots.setdefault(round(offset + interval.t), []).append(interval)
    merged = []
    for second in sorted(slots):
        items = slots[second]
        histogram = _add_histograms([item.histogram for item in items])
        calls = sum(item.calls for item in items)
        length = max(item.duration_s for item in items)
        targets = [item.target for item in items if item.target is not None]
        merged.append(
            Interval(
                t=float(second), duration_s=length, calls=calls, ok=sum(item.ok for item in items),
                errors=sum(item.errors for item in items), calls_per_s=round(calls / length, 2) if length else 0.0,
                latency_ms=stats.interval_summary(histogram), histogram=stats.encode_histogram(histogram),
                target=round(sum(targets), 2) if targets else None,
            )
        )  # fmt: skip
    return merged


def _merge_functions(reports: list[BenchReport]) -> list[FunctionStats]:
    names = list(dict.fromkeys(function.func for report in reports for function in report.functions))
    merged = []
    for name in names:
        parts = [function for report in reports for function in report.functions if function.func == name]
        histogram = _add_histograms([part.histogram for part in parts])
        merged.append(
            FunctionStats(
                func=name, calls=sum(p.calls for p in parts), ok=sum(p.ok for p in parts),
                errors=sum(p.errors for p in parts), latency_ms=stats.summarize(histogram),
                histogram=stats.encode_histogram(histogram),
            )
        )  # fmt: skip
    return merged


def windows_overlap(reports: list[BenchReport]) -> bool:
    """Whether the runs measured at the same time: some instant lies in every run's window."""
    windows = [report.window for report in reports if report.window is not None]
    if len(windows) < len(reports):
        return True  # an older report without a window: nothing to judge by
    return max(w.start for w in windows) < min(w.end for w in windows)


def merge_reports(reports: list[BenchReport]) -> tuple[BenchReport, list[str]]:
    """One report from runs made together (processes, machines): histograms merged exactly; and warnings.

    The merged rate is the merged calls over the merged window (first start to last end); runs whose
    windows do not overlap are merged all the same, with a warning, since their rates did not add up.
    """
    if not reports:
        raise ValueError("nothing to merge")
    warnings = []
    if len(reports) > 1 and not windows_overlap(reports):
        warnings.append("the runs' time windows do not overlap: they ran one after the other, not together")
    first = reports[0]
    histogram = _add_histograms([report.histogram for report in reports])
    calls = CallCounts(*(sum(getattr(r.calls, key) for r in reports) for key in ("measured", "ok", "errors", "warmup")))
    windows = [report.window for report in reports if report.window is not None]
    window = (
        Window(min(w.start for w in windows), max(w.end for w in windows)) if len(windows) == len(reports) else None
    )
    duration = (window.end - window.start) if window else max(r.duration_s for r in reports)
    calls_per_s = calls.measured / duration if window and duration > 0 else sum(r.calls_per_s for r in reports)
    generators = [report.generator for report in reports]
    lags = [g.schedule_lag_ms for g in generators if g.schedule_lag_ms is not None]
    traffics = [report.traffic for report in reports if report.traffic is not None]
    merged = BenchReport(
        config={**first.config, "sources": sum(r.config.get("sources", 1) for r in reports)},
        calls=calls,
        duration_s=round(duration, 4),
        calls_per_s=round(calls_per_s, 2),
        latency_ms=stats.summarize(histogram),
        histogram=stats.encode_histogram(histogram),
        errors=_merge_errors(reports),
        generator=Generator(
            cpu_pct=max(g.cpu_pct for g in generators),
            loop_lag_ms=max(g.loop_lag_ms for g in generators),
            bound=any(g.bound for g in generators),
            schedule_lag_ms=max(lags) if lags else None,
        ),  # fmt: skip
        traffic=Traffic(*(sum(getattr(t, f.name) for t in traffics) for f in fields(Traffic))) if traffics else None,
        versions=first.versions,
        window=window,
        timeseries=_merge_timeseries(reports, window.start if window else 0.0),
        functions=_merge_functions(reports),
    )
    rates = [report.rate for report in reports if report.rate is not None]
    services = [report.service_histogram for report in reports if report.service_histogram]
    if rates:
        merged.rate = RateResult(
            target=round(sum(r.target for r in rates), 2),
            achieved=round(sum(r.achieved for r in rates), 2),
            late_sends=sum(r.late_sends for r in rates),
            not_sent=sum(r.not_sent for r in rates),
        )
    if services and len(services) == len(reports):
        service = _add_histograms(services)
        merged.service_latency_ms = stats.summarize(service)
        merged.service_histogram = stats.encode_histogram(service)
    return merged, warnings


# -- comparing -------------------------------------------------------------------------------------

COMPARED = ("calls_per_s", "p50", "p90", "p99", "p99.9", "errors")
_HIGHER_IS_BETTER = {"calls_per_s"}
_OUTPUT_ONLY = {"sources", "output", "json", "html", "hdr_log", "start_at"}


def metric(report: BenchReport, name: str) -> float | None:
    """``calls_per_s``, ``errors``, ``error_rate`` or a latency key (ms) of a report."""
    if name == "calls_per_s":
        return float(report.calls_per_s)
    if name == "errors":
        return float(report.calls.errors)
    if name == "error_rate":
        return report.error_rate()
    value = report.latency_ms.get(name)
    return None if value is None else float(value)


def _clean(value: float | None) -> float | None:
    """A number without float noise (0.30000000000000004 -> 0.3)."""
    return None if value is None or math.isnan(value) else round(value, 6)


def _shown(value: Any) -> str:
    """A config value as JSON spells it (null, false), not as Python does."""
    import orjson

    return orjson.dumps(value, default=str).decode()


def compare_reports(base: BenchReport, new: BenchReport) -> tuple[list[dict[str, Any]], list[str]]:
    """Per-metric deltas (new against base) and warnings about differing configurations."""
    rows = []
    for name in COMPARED:
        before, after = metric(base, name), metric(new, name)
        delta = None if before is None or after is None else after - before
        percent = None if delta is None or not before else delta / before * 100
        better = None if not delta else (delta > 0) == (name in _HIGHER_IS_BETTER)
        rows.append(
            {"metric": name, "base": _clean(before), "new": _clean(after), "delta": _clean(delta),
             "pct": _clean(percent), "better": better}
        )  # fmt: skip
    warnings = []
    ignored = set(_OUTPUT_ONLY)
    if base.config.get("embedded") and new.config.get("embedded"):
        ignored.add("url")  # each embedded server gets a fresh port: not a difference worth a warning
    for key in sorted(set(base.config) | set(new.config)):
        if key not in ignored and base.config.get(key) != new.config.get(key):
            warnings.append(f"config differs: {key} = {_shown(base.config.get(key))} vs {_shown(new.config.get(key))}")
    return rows, warnings


# -- SLOs ------------------------------------------------------------------------------------------


def with_unit(metric_name: str, value: float) -> str:
    """A measured value with its unit: `31.2 ms`, `1 %`, `2000 calls/s`."""
    if metric_name in stats.LATENCY_METRICS:
        return f"{value:g} ms"
    if metric_name == "error_rate":
        return f"{value * 100:g} %"
    if metric_name == "calls_per_s":
        return f"{value:g} calls/s"
    return f"{value:g}"


def check_slo(report: BenchReport, rules: list[stats.SloRule]) -> list[str]:
    """The terms the report does not meet, each explained with its unit; empty when the SLO holds."""
    failures = []
    for rule in rules:
        actual = metric(report, rule.metric)
        if actual is None:
            failures.append(f"{rule.text}: not enough samples to know {rule.metric}")
        elif not stats.holds(rule, actual):
            failures.append(f"{rule.text}: measured {with_unit(rule.metric, actual)}")
    return failures
