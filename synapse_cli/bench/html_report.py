"""``bench --html``: one self-contained HTML page of a run (or two, overlaid by ``bench compare --html``).

The charts are SVG drawn here, inline, with no script, font or style from anywhere else: the file opens
offline and weighs a few tens of kilobytes. Charts: calls/s over time (the target dashed in rate mode),
p50/p99/max over time, the latency percentile spectrum on a log axis (HdrHistogram's classic plot), the
latency histogram; then errors and the configuration. The warm-up, excluded from every number, is shaded.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from synapse_cli.bench.report import BenchReport
from synapse_cli.core import stats

__all__ = ["page"]

_WIDTH, _HEIGHT = 680, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 16, 40
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass
class _Series:
    label: str
    color: str
    points: list[tuple[float, float]]
    dashed: bool = False


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _label(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _chart(
    title: str,
    series: list[_Series],
    *,
    x_label: str,
    y_label: str,
    shade: tuple[float, float] | None = None,
    log_x: bool = False,
    log_y: bool = False,
    x_ticks: list[tuple[float, str]] | None = None,
) -> str:
    """A line chart as inline SVG: axes, ticks, one path per series, a legend."""
    points = [p for s in series for p in s.points if math.isfinite(p[1])]
    if not points:
        return f"<section><h2>{html.escape(title)}</h2><p>no data</p></section>"
    xs = [math.log10(p[0]) if log_x else p[0] for p in points]
    x_low, x_high = min(xs + ([shade[0]] if shade else [])), max(xs)
    x_high = x_high if x_high > x_low else x_low + 1
    y_high = max(p[1] for p in points) * 1.08 or 1.0
    positive = [p[1] for p in points if p[1] > 0]
    y_low = 10 ** math.floor(math.log10(min(positive))) if log_y and positive else 0.0
    if log_y:
        y_high = 10 ** math.ceil(math.log10(max(y_high, y_low * 10)))
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def x_of(x: float) -> float:
        value = math.log10(x) if log_x else x
        return _LEFT + (value - x_low) / (x_high - x_low) * plot_w

    def y_of(y: float) -> float:
        if log_y:
            share = (math.log10(max(y, y_low)) - math.log10(y_low)) / (math.log10(y_high) - math.log10(y_low))
            return _TOP + plot_h - share * plot_h
        return _TOP + plot_h - y / y_high * plot_h

    y_ticks = [y_low * 10**i for i in range(round(math.log10(y_high / y_low)) + 1)] if log_y else _ticks(0, y_high)

    parts = [f'<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" height="{_HEIGHT}" role="img">']
    parts.append(f"<title>{html.escape(title)}</title>")
    if shade is not None:
        left, right = _LEFT + (shade[0] - x_low) / (x_high - x_low) * plot_w, x_of(shade[1])
        parts.append(f'<rect class="warmup" x="{left:.1f}" y="{_TOP}" width="{max(right - left, 0):.1f}" '
                     f'height="{plot_h}"><title>warm-up (excluded)</title></rect>')  # fmt: skip
        parts.append(f'<text x="{left + 4:.1f}" y="{_TOP + plot_h - 6}" class="note">warm-up</text>')
    for tick in y_ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for x, text in x_ticks or [(t, _label(t)) for t in _ticks(x_low, x_high)]:
        position = x_of(x) if log_x else _LEFT + (x - x_low) / (x_high - x_low) * plot_w
        parts.append(f'<text x="{position:.1f}" y="{_HEIGHT - _BOTTOM + 16}" text-anchor="middle">{text}</text>')
    parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{_TOP + plot_h}" y2="{_TOP + plot_h}" class="axis"/>')
    parts.append(f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + plot_h}" class="axis"/>')
    parts.append(f'<text x="{_LEFT + plot_w / 2}" y="{_HEIGHT - 4}" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{_TOP + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {_TOP + plot_h / 2})">{html.escape(y_label)}</text>')  # fmt: skip
    for item in series:
        drawn = [(x, y) for x, y in item.points if math.isfinite(y)]
        if not drawn:
            continue
        path = "M" + " L".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in drawn)
        dash = ' stroke-dasharray="6 4"' if item.dashed else ""
        parts.append(f'<path d="{path}" stroke="{item.color}" fill="none" stroke-width="1.8"{dash}>'
                     f"<title>{html.escape(item.label)}</title></path>")  # fmt: skip
    legend_x = _LEFT + 8
    for item in series:
        parts.append(f'<rect x="{legend_x}" y="{_TOP + 4}" width="10" height="3" fill="{item.color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{_TOP + 9}" class="legend">{html.escape(item.label)}</text>')
        legend_x += 20 + 7 * len(item.label)
    parts.append("</svg>")
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _bars(title: str, reports: Sequence[BenchReport], names: Sequence[str]) -> str:
    """The latency histogram: log-spaced buckets as bars (several runs side by side)."""
    histograms = [stats.decode_histogram(r.histogram) for r in reports]
    seen = [h for h in histograms if h.get_total_count()]
    span = (min(h.get_min_value() for h in seen), max(h.get_max_value() for h in seen)) if seen else None
    buckets = [stats.log_buckets(h, max_buckets=24, span=span) for h in histograms]  # one scale for every run
    if not any(buckets):
        return f"<section><h2>{html.escape(title)}</h2><p>no data</p></section>"
    rows = max(len(b) for b in buckets)
    top = max(count for b in buckets for _, _, count in b) or 1
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    slot = plot_w / rows
    width = slot * 0.8 / len(buckets)
    parts = [f'<svg viewBox="0 0 {_WIDTH} {_HEIGHT}" width="{_WIDTH}" height="{_HEIGHT}" role="img">']
    parts.append(f"<title>{html.escape(title)}</title>")
    for run, run_buckets in enumerate(buckets):
        color = _COLORS[run % len(_COLORS)]
        for index, (low, high, count) in enumerate(run_buckets):
            height = count / top * plot_h
            x = _LEFT + index * slot + slot * 0.1 + run * width
            label = f"{names[run]}: {low:.3f} – {high:.3f} ms: {count:,} calls"
            parts.append(f'<path d="M{x:.1f},{_TOP + plot_h:.1f} v{-height:.1f} h{width:.1f} v{height:.1f} Z" '
                         f'fill="{color}"><title>{html.escape(label)}</title></path>')  # fmt: skip
    first = buckets[0]
    for index in range(0, len(first), max(1, len(first) // 6)):
        x = _LEFT + index * slot + slot / 2
        parts.append(
            f'<text x="{x:.1f}" y="{_HEIGHT - _BOTTOM + 16}" text-anchor="middle">{first[index][0]:.3g}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_HEIGHT - 4}" text-anchor="middle">latency (ms, log scale)</text>'
    )
    parts.append(f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{_TOP + plot_h}" y2="{_TOP + plot_h}" class="axis"/>')
    parts.append("</svg>")
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _time_charts(reports: Sequence[BenchReport], names: Sequence[str]) -> list[str]:
    warmup = max(float(r.config.get("warmup") or 0) for r in reports)
    shade = (-warmup, 0.0) if warmup else None
    throughput: list[_Series] = []
    latency: list[_Series] = []
    for report, name in zip(reports, names, strict=False):
        color = _COLORS[len(throughput) % len(_COLORS)]
        prefix = f"{name} " if len(reports) > 1 else ""
        # A last sliver of a second (the drain after the final call) says nothing about a rate: left out.
        middle = [(i.t + i.duration_s / 2, i) for i in report.timeseries if i.duration_s >= 0.25]
        throughput.append(_Series(f"{prefix}calls/s", color, [(t, i.calls_per_s) for t, i in middle]))
        if any(i.errors for _, i in middle):
            errors = [(t, i.errors / i.duration_s) for t, i in middle]
            throughput.append(_Series(f"{prefix}errors/s", _COLORS[(len(throughput) + 1) % len(_COLORS)], errors))
        if any(i.target is not None for _, i in middle):
            targets = [(t, i.target or 0.0) for t, i in middle]
            throughput.append(_Series(f"{prefix}target", color, targets, dashed=True))
        for key in ("p50", "p99", "max"):
            values = [(t, i.latency_ms.get(key)) for t, i in middle]
            points = [(t, float(v)) for t, v in values if v is not None]
            latency.append(_Series(f"{prefix}{key}", _COLORS[len(latency) % len(_COLORS)], points, dashed=key == "max"))
    return [
        _chart("calls/s over time", throughput, x_label="seconds since measuring started", y_label="calls/s",
               shade=shade),
        _chart("latency over time", latency, x_label="seconds since measuring started", y_label="ms (log scale)",
               shade=shade, log_y=True),
    ]  # fmt: skip


def _spectrum(reports: Sequence[BenchReport], names: Sequence[str]) -> str:
    """Latency by percentile, the x axis in nines (1/(1-p)): HdrHistogram's percentile distribution plot."""
    series = []
    for run, (report, name) in enumerate(zip(reports, names, strict=False)):
        points = stats.percentile_spectrum(stats.decode_histogram(report.histogram))
        plotted = [(1 / (1 - p / 100), v) for p, v in points if p < 100]
        series.append(_Series(name if len(reports) > 1 else "latency", _COLORS[run % len(_COLORS)], plotted))
    ticks = [(1 / (1 - p / 100), f"p{p:g}") for p in (0, 90, 99, 99.9, 99.99, 99.999)]
    reached = max((x for s in series for x, _ in s.points), default=1.0)
    return _chart("latency by percentile", series, x_label="percentile (log scale of 1/(1-p))", y_label="ms",
                  log_x=True, x_ticks=[t for t in ticks if t[0] <= reached * 1.01])  # fmt: skip


def _table(rows: Sequence[Sequence[str]], header: tuple[str, ...] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _ms(value: float | None) -> str:
    return "n too small" if value is None else f"{value:.3f}"


def _summary(report: BenchReport, name: str) -> str:
    latency = report.latency_ms
    rows = [
        ("calls", f"{report.calls.measured:,} ({report.calls.ok:,} ok, {report.calls.errors:,} errors)"),
        ("warm-up calls (excluded)", f"{report.calls.warmup:,}"),
        ("duration", f"{report.duration_s:,.3f} s"),
        ("calls/s", f"{report.calls_per_s:,.0f}"),
    ]
    if report.rate:
        rows.append(("target / achieved", f"{report.rate.target:,.0f} / {report.rate.achieved:,.0f} calls/s"))
    rows += [(key, "n too small" if latency.get(key) is None else f"{latency[key]:.3f} ms")
             for key in ("p50", "p90", "p99", "p99.9", "max")]  # fmt: skip
    errors = _table([(e.kind, "" if e.code is None else str(e.code), f"{e.count:,}", e.first_message)
                     for e in report.errors], ("kind", "code", "count", "first message")) if report.errors else (
        "<p>no errors</p>")  # fmt: skip
    functions = ""
    if len(report.functions) > 1:
        functions = "<h3>per function</h3>" + _table(
            [(f.func, f"{f.calls:,}", f"{f.errors:,}", _ms(f.latency_ms.get("p50")), _ms(f.latency_ms.get("p99")))
             for f in report.functions], ("function", "calls", "errors", "p50 ms", "p99 ms"))  # fmt: skip
    config = _table([(key, str(value)) for key, value in sorted(report.config.items())])
    return (
        f"<section class='run'><h2>{html.escape(name)}</h2>{_table(rows)}<h3>errors</h3>{errors}{functions}"
        f"<details><summary>configuration</summary>{config}</details></section>"
    )


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;max-width:1440px}
h1{font-size:20px} h2{font-size:16px;margin:18px 0 6px} h3{font-size:14px;margin:10px 0 4px}
.charts{display:flex;flex-wrap:wrap;gap:12px} .runs{display:flex;flex-wrap:wrap;gap:24px}
svg{background:#fff;border:1px solid #ddd;max-width:100%;height:auto} svg text{font-size:11px;fill:#444}
.grid{stroke:#eee} .axis{stroke:#888} .warmup{fill:#000;fill-opacity:.06} .note{fill:#888}
table{border-collapse:collapse} td,th{border-bottom:1px solid #eee;padding:2px 10px 2px 0;text-align:left}
"""


def page(reports: Sequence[BenchReport], *, names: Sequence[str] | None = None) -> str:
    """The HTML page of one run, or of several overlaid (``bench compare --html``)."""
    names = list(names or [f"run {i + 1}" for i in range(len(reports))])
    title = "synapse bench" + (": " + " vs ".join(names) if len(reports) > 1 else "")
    charts = [*_time_charts(reports, names), _spectrum(reports, names), _bars("latency histogram", reports, names)]
    summaries = "".join(_summary(report, name) for report, name in zip(reports, names, strict=False))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class='charts'>{''.join(charts)}</div>"
        f"<div class='runs'>{summaries}</div></body></html>\n"
    )
