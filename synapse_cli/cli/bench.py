"""``synapse bench`` (run, the default), ``bench compare`` and ``bench merge``: options in, a report out.

``bench`` is a group whose default command runs a benchmark, so ``synapse bench add_numbers 1 2`` and
``synapse bench compare A.json B.json`` both read naturally.
"""

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from typer.core import TyperCommand, TyperGroup

from synapse_cli.cli import bench_render, render
from synapse_cli.cli.app import (
    CafileOption,
    ExitStatus,
    InsecureTLSOption,
    JsonOption,
    JsonRpcOption,
    TimeoutOption,
    TokenOption,
    UsageError,
    app,
    check_writable,
    describe,
    fail,
    run_coroutine,
    wants_json,
)
from synapse_cli.cli.call import parse_call_args
from synapse_cli.core.errors import SynapseError

__all__ = ["bench_app", "bench_compare", "bench_merge", "bench_run", "parse_duration"]


class _BenchRun(TyperCommand):
    """``synapse bench``'s own options, shown as ``synapse bench [OPTIONS] [FUNC] [ARGS]...``."""

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        path = ctx.parent.command_path if ctx.parent is not None else ctx.command_path
        formatter.write_usage(path, " ".join(self.collect_usage_pieces(ctx)))


class _DefaultToRun(TyperGroup):
    """``synapse bench [FUNC ARG ...]`` runs a benchmark; ``compare`` and ``merge`` are its siblings.

    ``synapse bench --help`` and shell completion after ``synapse bench`` show the benchmark's options.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        rest: list[str] = super().parse_args(ctx, args)  # typed here: click's own is not
        return rest


bench_app = typer.Typer(
    cls=_DefaultToRun,
    help="Measure throughput and latency of a WebSocket RPC endpoint.",
    rich_markup_mode=None,
)
app.add_typer(bench_app, name="bench")


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h`` or plain seconds."""
    from synapse_cli.bench.schedule import parse_duration as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


_BENCH_EPILOG = (
    "Also: 'synapse bench compare BASE.json NEW.json [--html FILE]' and "
    "'synapse bench merge A.json B.json ... [--output FILE] [--html FILE]'."
)


@bench_app.command(
    "run", cls=_BenchRun, context_settings={"ignore_unknown_options": True}, epilog=_BENCH_EPILOG, hidden=True
)
def bench_run(
    func: Annotated[str | None, typer.Argument(help="Function to call (default: add_numbers 1 2).")] = None,
    args: Annotated[list[str] | None, typer.Argument(help="Arguments: JSON literals or name=value.")] = None,
    args_json: Annotated[str | None, typer.Option("-d", help="All arguments as JSON, @file or @-.")] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="NDJSON calls (call --batch format, optional weight).")
    ] = None,
    calls: Annotated[int | None, typer.Option("-n", "--calls", min=1, help="Measured calls [default: 1000].")] = None,
    duration: Annotated[str | None, typer.Option("-z", "--duration", help="Measure for this long (10s, 2m).")] = None,
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1, help="Calls in flight.")] = 50,
    connections: Annotated[int | None, typer.Option(min=1, help="Connections (default min(c, 8)).")] = None,
    warmup: Annotated[str, typer.Option(help="Warm-up before measuring (excluded from results).")] = "1s",
    rate: Annotated[str | None, typer.Option(help='Open model: calls/s, or stages "200:10s, 200->5000:60s".')] = None,
    find_max: Annotated[bool, typer.Option("--find-max", help="Search the highest rate meeting --slo.")] = False,
    stream: Annotated[bool, typer.Option("--stream", help="FUNC streams: measure items/s and the gaps.")] = False,
    topic: Annotated[str | None, typer.Option(help="Measure a topic's fan-out latency (publish to receipt).")] = None,
    subscribers: Annotated[int, typer.Option(min=1, help="Topic subscribers, one connection each.")] = 100,
    publish_rate: Annotated[float, typer.Option(min=0.001, help="Topic publishes per second.")] = 10.0,
    publish_func: Annotated[str, typer.Option(help="Function that publishes to --topic.")] = "publish_event",
    timeout: TimeoutOption = 10.0,
    procs: Annotated[int, typer.Option(min=1, help="Load processes; histograms merged exactly.")] = 1,
    shard: Annotated[str | None, typer.Option(help="Run part I (from 0) of N of the load, e.g. 0/4.")] = None,
    start_at: Annotated[str | None, typer.Option(help="Start measuring at this Unix time or ISO 8601 instant.")] = None,
    slo: Annotated[str | None, typer.Option(help='Exit 99 unless met, e.g. "p99<20ms,errors=0".')] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")] = None,
    hdr_log: Annotated[Path | None, typer.Option("--hdr-log", help="Write per-second HdrHistogram log.")] = None,
    url: Annotated[str | None, typer.Option(envvar="SYNAPSE_URL", help="Target (default: an embedded server).")] = None,
    token: TokenOption = None,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """Benchmark a function: closed model (-n/-z, -c) or open model (--rate), with an HDR latency histogram."""
    from synapse_cli.bench import options as bench_options
    from synapse_cli.bench import processes as bench_processes
    from synapse_cli.bench.config import BenchConfig

    if func is not None and func.startswith("-"):
        raise UsageError(f"no such option: {func}")
    if stream and topic is not None:
        raise UsageError("--stream and --topic measure different things: give one")
    if topic is not None:
        from synapse_cli.bench.topic import TopicConfig

        topic_config = TopicConfig(
            url=url or "", topic=topic, subscribers=subscribers, publish_rate=publish_rate,
            duration=parse_duration(duration) if duration else 5.0, publish_func=publish_func, procs=procs,
            concurrency=concurrency, timeout=timeout, token=token, dialect="jsonrpc" if jsonrpc else "native",
            cafile=str(cafile) if cafile else None, insecure=insecure,
        )  # fmt: skip
        raise typer.Exit(_bench_topic(topic_config, json_output))
    if stream:
        raise typer.Exit(_bench_stream(func, args or [], url, token, timeout, duration, connections, json_output))
    options = bench_options.BenchOptions(
        func=func, args=args or [], args_json=args_json, data=data, calls=calls, duration=duration,
        rate=rate, find_max=find_max, shard=shard, start_at=start_at, slo=slo, procs=procs,
    )  # fmt: skip
    try:
        checked = bench_options.check(options, parse_call_args)
        check_writable([output, html, hdr_log])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = BenchConfig(
        url=url or "", func=checked.func, args=checked.args, calls=checked.calls, duration=checked.duration,
        concurrency=concurrency, connections=connections, warmup=parse_duration(warmup), rate=checked.rate,
        shape=checked.shape, timeout=timeout, token=token, dialect="jsonrpc" if jsonrpc else "native",
        cafile=str(cafile) if cafile else None, insecure=insecure, procs=procs, mix=checked.mix, data=data,
        shard=checked.shard, start_at=checked.start_at,
    )  # fmt: skip
    config = bench_processes.sharded(config)
    if find_max:
        raise typer.Exit(_find_max(config, checked.rules, json_output))
    report = _bench(config)
    written = _write_report(report, output, json_output, html=html, hdr_log=hdr_log)
    raise typer.Exit(_bench_status(report, checked.rules, written))


def _bench_stream(
    func: str | None, args: list[str], url: str | None, token: str | None, timeout: float, duration: str | None,
    connections: int | None, json_output: bool,
) -> int:  # fmt: skip
    """`bench --stream`: measure, render, exit code (1 when nothing arrived or errors)."""
    from synapse_cli.bench import processes as bench_processes
    from synapse_cli.bench import streams as bench_streams

    if func is None:
        raise UsageError("--stream needs FUNC, a stream function (e.g. synapse bench ticks 1000 0 --stream)")
    seconds = parse_duration(duration) if duration else None
    stderr = render.console(stderr=True)
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(bench_processes.embedded_server())
            stderr.print(f"no --url: benchmarking an embedded synapse server at {url} (stopped afterwards)")
        measuring = bench_streams.measure_stream(
            url, func, parse_call_args(args, None), connections=connections or 1, duration=seconds, token=token,
            timeout=timeout,
        )  # fmt: skip
        report = run_coroutine(measuring)
    if wants_json(json_output):
        render.write_json(report.to_json())
    else:
        render.console().print(bench_render.stream_report(report))
    return ExitStatus.ERROR if report.errors or not report.items else ExitStatus.OK


def _bench_topic(config: Any, json_output: bool) -> int:
    """`bench --topic`: measure (over --procs processes), render, say what went short, exit code."""
    from synapse_cli.bench import topic as bench_topic

    stderr = render.console(stderr=True)
    try:
        bench_topic.prepare_open_files(config, embedded_server=not config.url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with _target(config, stderr) as target:
        try:
            report = bench_topic.measure_topic(target)
        except SynapseError as exc:
            fail(*describe(exc))
        except KeyboardInterrupt:
            fail("interrupted", ExitStatus.INTERRUPTED)
    if wants_json(json_output):
        render.write_json(report.to_json())
    else:
        render.console().print(bench_render.stream_report(report))
    for warning in bench_topic.topic_warnings(report):
        sys.stderr.write(f"synapse: warning: {warning}\n")
    return ExitStatus.ERROR if bench_topic.topic_failed(report) else ExitStatus.OK


def _bench_status(report: Any, rules: Any, written: bool) -> int:
    from synapse_cli.bench import report as reports

    for warning in _shortfall(report):
        sys.stderr.write(f"synapse: warning: {warning}\n")
    failures = reports.check_slo(report, rules) if rules else []
    for failure in failures:
        sys.stderr.write(render.error_line(f"SLO not met: {failure}") + "\n")
    if rules and failures:
        return ExitStatus.SLO_NOT_MET
    if not report.calls.measured:  # never report a number that was not measured as a success
        reason = "every connection closed or stopped answering before measuring began (see the warm-up)"
        sys.stderr.write(render.error_line(f"no call was measured: {reason}") + "\n")
        return ExitStatus.ERROR
    if not written or report.calls.errors or _shortfall(report):
        return ExitStatus.ERROR
    return ExitStatus.OK


def _shortfall(report: Any) -> list[str]:
    """A rate run that fell far (over 10 %) short of its target says so."""
    rate = report.rate
    if rate is None or not rate.target or rate.achieved >= 0.9 * rate.target:
        return []
    share = rate.achieved / rate.target * 100
    return [
        f"achieved {rate.achieved:,.0f} calls/s, {share:.0f} % of the target {rate.target:,.0f} "
        f"({rate.not_sent:,} calls due were never sent): the server or the generator could not keep up"
    ]


def _find_max(config: Any, rules: Any, json_output: bool) -> int:
    from synapse_cli.bench import capacity

    stderr = render.console(stderr=True)
    with _target(config, stderr) as target:

        def probe(rate: float) -> Any:
            probe_config = dataclasses.replace(target, rate=rate, calls=None)
            return _run_bench(probe_config, stderr, quiet=True)

        def shown(result: Any) -> None:
            if stderr.is_terminal or not wants_json(json_output):
                stderr.print(bench_render.probe_line(result))

        answer = capacity.find_max(probe, rules, start=config.rate or 100.0, on_probe=shown)
    if wants_json(json_output):
        render.write_json(answer.to_json())
    else:
        render.console().print(bench_render.capacity_table(answer))
    return ExitStatus.OK if answer.rate is not None else ExitStatus.SLO_NOT_MET


@contextlib.contextmanager
def _target(config: Any, stderr: Any) -> Any:
    """The config with its URL: the given one, or an embedded server's for the block's duration."""
    from synapse_cli.bench import processes as bench_processes

    if config.url:
        yield config
        return
    try:
        with bench_processes.embedded_server() as url:
            stderr.print(f"no --url: benchmarking an embedded synapse server at {url} (stopped afterwards)")
            yield dataclasses.replace(config, url=url)
    except SynapseError as exc:
        fail(*describe(exc))


def _run_bench(config: Any, stderr: Any, *, quiet: bool = False) -> Any:
    from synapse_cli.bench import driver as bench
    from synapse_cli.bench import processes as bench_processes

    run = bench_processes.run_bench_procs if config.procs > 1 else bench.run_bench
    bar = bench_render.BenchProgress(stderr) if stderr.is_terminal and not quiet else None
    try:
        with bar or contextlib.nullcontext():
            return run(config, progress=bar.update if bar else None)
    except SynapseError as exc:
        fail(*describe(exc))
    except KeyboardInterrupt:
        fail("interrupted", ExitStatus.INTERRUPTED)


def _bench(config: Any) -> Any:
    stderr = render.console(stderr=True)
    with _target(config, stderr) as target:
        report = _run_bench(target, stderr)
    report.config["embedded"] = not config.url
    return report


def _write_report(
    report: Any, output: Path | None, json_output: bool, *, html: Path | None = None, hdr_log: Path | None = None
) -> bool:
    """Print the report and write the files asked for; False when a file failed (the run is printed all the same)."""
    from synapse_cli.bench import html_report

    written = True
    files: list[tuple[Path | None, Any]] = [
        (output, lambda: render.json_line(report.to_json())),
        (html, lambda: html_report.page([report])),
        (hdr_log, lambda: report.hdr_log()),
    ]
    for path, text in files:
        if path is None:
            continue
        try:
            path.write_text(text(), encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(render.error_line(f"cannot write {path}: {exc.strerror or exc}") + "\n")
            written = False
    if wants_json(json_output) or (not written and output is not None):
        render.write_json(report.to_json())
    else:
        render.console().print(bench_render.bench_report(report))
    return written


def _load_reports(paths: list[Path]) -> list[Any]:
    from synapse_cli.bench.report import BenchReport

    reports = []
    for path in paths:
        try:
            document = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UsageError(f"cannot read report {path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            reports.append(BenchReport.from_json(document))
        except ValueError as exc:
            raise UsageError(f"{path}: {exc}") from None
    return reports


@bench_app.command("compare", cls=TyperCommand)
def bench_compare(
    base: Annotated[Path, typer.Argument(help="The reference report (JSON).")],
    new: Annotated[Path, typer.Argument(help="The report to compare with it.")],
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page overlaying both runs.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Per-metric deltas between two saved reports (calls/s, p50, p90, p99, p99.9, errors)."""
    from synapse_cli.bench import html_report
    from synapse_cli.bench.report import compare_reports

    loaded = _load_reports([base, new])
    rows, warnings = compare_reports(*loaded)
    for warning in warnings:
        sys.stderr.write(f"synapse: warning: {warning}\n")
    if html is not None:
        try:
            html.write_text(html_report.page(loaded, names=[base.name, new.name]), encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {html}: {exc.strerror or exc}", ExitStatus.ERROR)
    if wants_json(json_output):
        render.write_json({"base": str(base), "new": str(new), "metrics": rows, "warnings": warnings})
    else:
        render.console().print(bench_render.comparison_table(rows, str(base), str(new)))


@bench_app.command("merge", cls=TyperCommand)
def bench_merge(
    reports: Annotated[list[Path], typer.Argument(help="Reports of runs made at the same time (JSON).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the merged report here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the merged run's HTML report.")] = None,
    hdr_log: Annotated[Path | None, typer.Option("--hdr-log", help="Write its per-second HdrHistogram log.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Merge reports from several machines into one (histograms merged exactly, rates over the merged window)."""
    from synapse_cli.bench.report import merge_reports

    try:
        check_writable([output, html, hdr_log])
        merged, warnings = merge_reports(_load_reports(reports))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for warning in warnings:
        sys.stderr.write(f"synapse: warning: {warning}\n")
    written = _write_report(merged, output, json_output, html=html, hdr_log=hdr_log)
    raise typer.Exit(ExitStatus.OK if written else ExitStatus.ERROR)
