"""What ``synapse bench`` shows: its report as rich tables and charts, the live progress bar, comparisons.

Pure functions from a result object to a renderable, like :mod:`synapse_cli.cli.render` (whose console,
escaping and number helpers they share); the JSON form of each result is its own ``to_json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from synapse_cli.cli.render import plain

if TYPE_CHECKING:
    from synapse_cli.bench.capacity import Capacity, ProbeResult
    from synapse_cli.bench.report import BenchReport

__all__ = [
    "BenchProgress",
    "bench_report",
    "capacity_table",
    "comparison_table",
    "over_time_chart",
    "probe_line",
    "sparkline",
    "stream_report",
]


def stream_report(report: Any) -> Any:
    """The table of a ``bench --stream`` / ``bench --topic`` run."""
    from rich.table import Table

    table = Table(title=f"{report.mode}: {plain(report.target)}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    topic = report.mode == "topic"
    rows = [
        ("subscribers" if topic else "connections", f"{report.connections:,}"),
        ("seconds", f"{report.seconds:.2f}"),
        ("items received", f"{report.items:,}"),
        ("deliveries/s" if topic else "items/s", f"{report.items_per_s:,.0f}"),
    ]
    if topic:
        rows += _topic_rows(report)
    label, values = ("latency ms", report.latency_ms) if topic else ("gap ms", report.gap_ms)
    rows += [(f"{label} {key}", "-" if value is None else f"{value:.3f}") for key, value in values.items()]
    if topic:
        rows.append(("latency clock", "one clock (this machine)"))
        rows += _topic_generator_rows(report.generator)
    rows += [("error", plain(error)) for error in report.errors]
    for row in rows:
        table.add_row(*row)
    if topic and report.generator is not None and report.generator.bound:
        table.caption = "[bold red]the load generator, not the server, was the limit: try more --procs[/]"
    return table


def _topic_rows(report: Any) -> list[tuple[str, str]]:
    rows = [("processes", f"{report.procs:,}")]
    publish = report.publish
    if publish is not None:
        rows.append(("publishes/s (target)", f"{publish.achieved_rate:,.1f} ({publish.target_rate:g})"))
        if publish.not_sent:
            rows.append(("publishes due, never sent", f"{publish.not_sent:,}"))
        if publish.failed:
            rows.append(("publishes failed", f"{publish.failed:,}"))
    rows += [("published", f"{report.published:,}"), ("missed, max per subscriber", f"{report.missed['max']:,}")]
    rows.append(("missed, total", f"{report.missed['total']:,}"))
    if report.out_of_order:
        rows.append(("out of order", f"{report.out_of_order:,}"))
    if report.ended:
        rows.append(("subscribers ended early", f"{report.ended:,}"))
    return rows


def _topic_generator_rows(generator: Any) -> list[tuple[str, str]]:
    if generator is None:
        return []
    rows = [
        ("generator CPU (busiest process)", f"{generator.cpu_pct:.0f} %"),
        (f"generator CPU ({generator.processes} on {generator.cores} cores)", f"{generator.cpu_total_pct:.0f} %"),
        ("generator event-loop lag p99", f"{generator.loop_lag_ms:.3f} ms"),
    ]
    if generator.schedule_lag_ms is not None:
        rows.append(("publish schedule lag p99", f"{generator.schedule_lag_ms:.3f} ms"))
    return rows


_LATENCY_ROWS = ("min", "mean", "stdev", "p50", "p90", "p99", "p99.9", "max")
_BLOCKS = " ▁▂▃▄▅▆▇█"


def _ms(value: float | None) -> str:
    if value is None:
        return "n too small"
    return f"{value:,.3f} ms" if value < 100 else f"{value:,.1f} ms"


def _kv_table(title: str, rows: list[tuple[str, str]]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
    table.add_column(style="dim")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _call_text(config: dict[str, Any]) -> str:
    if config.get("functions"):
        return f"{len(config['functions'])} functions from {config.get('data')}: {', '.join(config['functions'])}"
    args = config.get("args")
    if isinstance(args, dict):
        return f"{config['func']}({orjson.dumps(args).decode()})"
    return f"{config['func']}({', '.join(orjson.dumps(a).decode() for a in args or [])})"


def _run_table(report: BenchReport) -> Any:
    config = report.config
    if config.get("stages"):
        model = f"open, stages {config['stages']} calls/s"
    else:
        model = f"open, {config['rate']:g} calls/s" if config.get("rate") else "closed"
    call = _call_text(config) + (" (JSON-RPC)" if config.get("dialect") == "jsonrpc" else "")
    rows = [
        ("url", str(config["url"])),
        ("call", call),
        ("model", model),
        ("concurrency", f"{config['concurrency']} over {config['connections']} connections"),
        ("processes", str(config.get("procs", 1))),
    ]
    if config.get("shard"):
        rows.append(("shard", str(config["shard"])))
    if report.versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in report.versions.items())))
    return _kv_table("run", rows)


def _summary_table(report: BenchReport) -> Any:
    calls = report.calls
    rows = [
        ("calls", f"{calls.measured:,}"),
        ("ok", f"{calls.ok:,}"),
        ("errors", f"[red]{calls.errors:,}[/]" if calls.errors else "0"),
        ("warm-up calls (excluded)", f"{calls.warmup:,}"),
        ("duration", f"{report.duration_s:,.3f} s"),
        ("calls/s", f"[bold]{report.calls_per_s:,.0f}[/]"),
    ]
    rate = report.rate
    if rate:
        share = rate.achieved / rate.target * 100 if rate.target else 0.0
        style = "red" if share < 98 else "green"
        rows.append(("target rate", f"{rate.target:,.0f} calls/s"))
        rows.append(("achieved rate", f"[{style}]{rate.achieved:,.0f} calls/s ({share:.1f} %)[/]"))
        rows.append(("late sends (no free slot)", f"{rate.late_sends:,}"))
        if rate.not_sent:
            rows.append(("due but never sent", f"[red]{rate.not_sent:,}[/]"))
    traffic = report.traffic
    if traffic:
        rows.append(("sent / received", f"{traffic.bytes_sent:,} B / {traffic.bytes_received:,} B"))
        if traffic.unmatched + traffic.duplicates + traffic.late_replies:
            rows.append(
                (
                    "unmatched / duplicate / late replies",
                    f"{traffic.unmatched} / {traffic.duplicates} / {traffic.late_replies}",
                )
            )
    return _kv_table("summary", rows)


def _latency_table(report: BenchReport) -> Any:
    from rich.table import Table

    table = Table(title="latency", title_justify="left")
    table.add_column("")
    service = report.service_latency_ms
    table.add_column("response time" if service else "latency", justify="right")
    if service:
        table.add_column("service time", justify="right")
    for key in _LATENCY_ROWS:
        row = [key, _ms(report.latency_ms.get(key))]
        if service:
            row.append(_ms(service.get(key)))
        table.add_row(*row)
    if service:
        table.caption = (
            "response time: from the scheduled send (coordinated omission corrected); service: from the actual send"
        )
    return table


def _histogram_panel(report: BenchReport, width: int = 40) -> Any:
    from rich.table import Table

    from synapse_cli.core import stats

    buckets = stats.log_buckets(stats.decode_histogram(report.histogram))
    table = Table(title="latency histogram (log scale)", title_justify="left", box=None, padding=(0, 1))
    table.add_column("latency", justify="right", style="dim")
    table.add_column("")
    table.add_column("calls", justify="right")
    top = max((count for _, _, count in buckets), default=0)
    for low, high, count in buckets:
        bar = "█" * max(1 if count else 0, round(count / top * width)) if top else ""
        table.add_row(f"{low:,.3f} – {high:,.3f} ms", f"[cyan]{bar}[/]", f"{count:,}")
    return table


def _errors_table(report: BenchReport) -> Any:
    from rich.table import Table

    table = Table(title="errors", title_justify="left")
    for column in ("kind", "code", "count", "first message"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for error in report.errors:
        code = "" if error.code is None else str(error.code)
        table.add_row(error.kind, code, f"{error.count:,}", str(error.first_message))
    return table


def _functions_table(report: BenchReport) -> Any:
    from rich.table import Table

    table = Table(title="per function", title_justify="left")
    for column in ("function", "calls", "errors", "p50", "p99", "max"):
        table.add_column(column, justify="left" if column == "function" else "right")
    for function in report.functions:
        latency = function.latency_ms
        errors = f"[red]{function.errors:,}[/]" if function.errors else "0"
        table.add_row(
            function.func, f"{function.calls:,}", errors, _ms(latency.get("p50")), _ms(latency.get("p99")),
            _ms(latency.get("max")),
        )  # fmt: skip
    return table


def _generator_table(report: BenchReport) -> Any:
    generator = report.generator
    rows = [("CPU", f"{generator.cpu_pct:.0f} %"), ("event-loop lag p99", f"{generator.loop_lag_ms:.3f} ms")]
    if generator.schedule_lag_ms is not None:
        rows.append(("schedule lag p99", f"{generator.schedule_lag_ms:.3f} ms"))
    table = _kv_table("generator health", rows)
    if generator.bound:
        table.caption = "[bold red]the load generator, not the server, was the limit: try --procs 2 or more[/]"
    return table


def sparkline(values: list[float | None], width: int | None = None) -> str:
    """Values as one line of block characters, scaled from 0 to their max (None: a blank)."""
    if width is not None and len(values) > width:
        step = len(values) / width
        values = [values[int(i * step)] for i in range(width)]
    top = max((v for v in values if v is not None), default=0.0)
    if not top:
        return "".join(" " if v is None else _BLOCKS[1] for v in values)
    return "".join(" " if v is None else _BLOCKS[max(1, round(v / top * 8))] for v in values)


def _columns(values: list[float | None], width: int, combine: Callable[[list[float]], float]) -> list[float | None]:
    """At most ``width`` values: neighbours combined (mean for rates, max for p99) when there are more seconds."""
    step = max(1.0, len(values) / width)
    columns = []
    for index in range(min(width, len(values))):
        chunk = [
            v for v in values[int(index * step) : max(int((index + 1) * step), int(index * step) + 1)] if v is not None
        ]
        columns.append(combine(chunk) if chunk else None)
    return columns


def over_time_chart(report: BenchReport, *, width: int = 60, height: int = 6) -> Any:
    """calls/s over time as a block chart, and p99 under it as a sparkline: a stall shows as a gap."""
    from rich.text import Text

    intervals = [i for i in report.timeseries if i.duration_s >= 0.25]  # a last sliver says nothing of a rate
    chart = Text("over time (one column per second" + (", averaged)" if len(intervals) > width else ")"))
    if not intervals:
        return chart
    rates = [rate or 0.0 for rate in _columns([i.calls_per_s for i in intervals], width, lambda c: sum(c) / len(c))]
    p99 = _columns([i.latency_ms.get("p99") for i in intervals], width, max)
    top = max(rates) or 1.0
    labels = [f"{top:,.0f}/s", *[""] * (height - 2), "0/s", f"p99 ≤{max(v or 0.0 for v in p99):,.1f} ms"]
    margin = max(len(label) for label in labels)
    for row in range(height, 0, -1):
        line = "".join(_BLOCKS[min(8, max(0, round((rate / top * height - (row - 1)) * 8)))] for rate in rates)
        chart.append(f"\n{labels[height - row]:>{margin}} │", style="dim")
        chart.append(line, style="cyan")
    chart.append(f"\n{labels[-1]:>{margin}} │", style="dim")
    chart.append(sparkline(p99), style="magenta")
    end = f"{intervals[-1].t + intervals[-1].duration_s:.0f} s"
    chart.append(f"\n{'':>{margin}} └0 s{end:>{max(len(rates) - 3, len(end) + 1)}}", style="dim")
    return chart


def bench_report(report: BenchReport) -> Any:
    """Every table of a benchmark report: run, summary, latency, histogram, over time, errors, generator."""
    from rich.console import Group

    parts = [_run_table(report), _summary_table(report), _latency_table(report)]
    if report.calls.measured:
        parts.append(_histogram_panel(report))
    if len(report.timeseries) > 1:
        parts.append(over_time_chart(report))
    if len(report.functions) > 1:
        parts.append(_functions_table(report))
    if report.errors:
        parts.append(_errors_table(report))
    parts.append(_generator_table(report))
    return Group(*parts)


def comparison_table(rows: list[dict[str, Any]], base: str, new: str) -> Any:
    """``bench compare``: one row per metric, the delta coloured by whether it got better."""
    from rich.table import Table

    table = Table(title=f"{base} → {new}", title_justify="left")
    for column in ("metric", "base", "new", "delta", "%"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        style = "" if row["better"] is None else "green" if row["better"] else "red"
        unit = " ms" if row["metric"].startswith("p") else ""
        cells = [_number(row["base"], unit), _number(row["new"], unit), _number(row["delta"], unit, sign=True)]
        percent = "" if row["pct"] is None else f"{row['pct']:+.1f} %"
        table.add_row(row["metric"], *cells[:2], f"[{style}]{cells[2]}[/]" if style else cells[2], percent)
    return table


def _number(value: float | None, unit: str, *, sign: bool = False) -> str:
    if value is None:
        return "n/a"
    text = f"{value:+,.3f}" if sign else f"{value:,.3f}"
    return text.rstrip("0").rstrip(".") + unit


def probe_line(probe: ProbeResult) -> str:
    """One ``--find-max`` probe as it finishes (stderr)."""
    verdict = "met" if probe.met else "missed: " + "; ".join(probe.failures)
    bound = " (generator-bound)" if probe.generator_bound else ""
    return (
        f"probe {probe.rate:,.0f} calls/s: achieved {probe.achieved:,.0f}, p50 {_ms(probe.p50_ms)}, "
        f"p99 {_ms(probe.p99_ms)}, {probe.errors} errors — {verdict}{bound}"
    )


def capacity_table(answer: Capacity) -> Any:
    """``--find-max``: the probes in the order they ran, and the answer."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="capacity search", title_justify="left")
    for column in ("rate", "achieved", "p50", "p99", "errors", "met?"):
        table.add_column(column, justify="right")
    for probe in answer.probes:
        met = "[green]yes[/]" if probe.met else "[red]no[/]"
        table.add_row(
            f"{probe.rate:,.0f}", f"{probe.achieved:,.0f}", _ms(probe.p50_ms), _ms(probe.p99_ms), f"{probe.errors:,}",
            met + (" (generator-bound)" if probe.generator_bound else ""),
        )  # fmt: skip
    if answer.rate is None:
        verdict = Text("even the lowest probe missed the SLO", style="bold red")
    elif answer.generator_bound:
        verdict = Text(f"at least {answer.rate:,.0f} calls/s (generator-bound: try --procs)", style="bold yellow")
    else:
        verdict = Text(f"capacity: {answer.rate:,.0f} calls/s", style="bold green")
    return Group(table, verdict)


class BenchProgress:
    """The live progress bar on stderr: calls done, calls/s, in flight, errors, and sparklines over time."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[trend]}"),
            console=console,
            transient=True,
        )
        self._task = self._progress.add_task("warming up", total=None, status="", trend="")

    def __enter__(self) -> BenchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def update(self, snapshot: Any) -> None:
        """Take a :class:`synapse_cli.bench.config.Progress` snapshot (called from the benchmark's loop)."""
        if snapshot.warming_up:
            self._progress.update(self._task, description="warming up", status="")
            return
        if snapshot.total is not None:
            total, completed = float(snapshot.total), float(snapshot.done)
        else:
            total, completed = float(snapshot.planned or 1), min(snapshot.elapsed, float(snapshot.planned or 1))
        status = (
            f"{snapshot.done:,} calls  {snapshot.calls_per_s:,.0f}/s  "
            f"{snapshot.in_flight} in flight  {snapshot.errors} errors"
        )
        recent = snapshot.recent[-20:]
        trend = ""
        if recent:
            rates = sparkline([rate for rate, _ in recent])
            p99 = sparkline([p for _, p in recent])
            trend = f"calls/s [cyan]{rates}[/]  p99 [magenta]{p99}[/] {recent[-1][1] or 0:,.1f} ms"
        self._progress.update(
            self._task, description="benchmarking", total=total, completed=completed, status=status, trend=trend
        )
