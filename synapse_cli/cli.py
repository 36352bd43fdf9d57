"""The ``synapse`` command: serve / call / list / bench. Thin: parse, call the library, render, exit code.

Heavy modules (uvicorn, starlette, pydantic, rich tables) are imported inside the command that needs
them, so ``synapse --help`` and ``synapse call`` start fast. Option defaults come from where they are
defined once (``settings.Settings``, ``client``); error text comes from ``render``.
"""

import contextlib
import dataclasses
import enum
import re
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer
from typer.core import TyperCommand, TyperGroup

from synapse_cli import __version__, render
from synapse_cli.errors import CallTimeout, ConnectError, ConnectionLost, RPCError, SynapseError
from synapse_cli.settings import DEFAULT_TIMEOUT, DEFAULT_URL, Settings

if TYPE_CHECKING:  # imported where used: `synapse --help` starts without asyncio or websockets
    from synapse_cli.client import Client

__all__ = ["ExitStatus", "app", "main"]

DEFAULTS = Settings()
_Command = TyperCommand


class _Group(TyperGroup):
    """typer's group, its ``parse_args`` typed (the base of the ``bench`` group)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        rest: list[str] = super().parse_args(ctx, args)
        return rest


class ExitStatus(enum.IntEnum):
    """Exit codes of SPEC §4."""

    OK = 0
    ERROR = 1
    USAGE = 2
    CONNECT = 3
    TIMEOUT = 4
    SLO_NOT_MET = 99
    INTERRUPTED = 130


class UsageError(Exception):
    """Bad flags or arguments: exit 2."""


app = typer.Typer(
    name="synapse",
    help="WebSocket RPC in one command: serve functions, call them, benchmark them.",
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

UrlOption = Annotated[str, typer.Option("--url", envvar="SYNAPSE_URL", metavar="URL", help="Server WebSocket URL.")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="SYNAPSE_TOKEN", metavar="TOKEN", help="Bearer token for the handshake.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Compact JSON on stdout, even on a terminal.")]
TimeoutOption = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.001, metavar="SECONDS", help="Seconds to wait for the connection and for each reply."
    ),
]
JsonRpcOption = Annotated[bool, typer.Option("--jsonrpc", help="Speak JSON-RPC 2.0 (servers synapse did not write).")]
CafileOption = Annotated[
    Path | None,
    typer.Option("--cafile", exists=True, dir_okay=False, metavar="FILE", help="Trust this CA bundle for wss:// URLs."),
]
InsecureTLSOption = Annotated[bool, typer.Option("--insecure", help="wss://: do not verify the certificate.")]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"synapse {__version__}\n")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """WebSocket RPC in one command: serve functions, call them, benchmark them."""
    if ctx.invoked_subcommand is None:  # a bare `synapse`: the help, as a usage error
        sys.stderr.write(ctx.get_help() + "\n")
        raise typer.Exit(int(ExitStatus.USAGE))


# -- serve ---------------------------------------------------------------------------------------


@app.command()
def serve(
    target: Annotated[str | None, typer.Argument(metavar="APP", help="module:registry or path/to/file.py.")] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Interface to bind.")] = DEFAULTS.host,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="Port (0: any free port).")
    ] = DEFAULTS.port,
    token: TokenOption = DEFAULTS.token,
    allow_origins: Annotated[
        list[str] | None,
        typer.Option("--allow-origin", metavar="ORIGIN", help="Browser origin to accept (repeatable)."),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback --host without --token.")] = DEFAULTS.insecure,
    certfile: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, metavar="FILE", help="TLS certificate (PEM): serve wss://."),
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, metavar="FILE", help="TLS private key (PEM).")
    ] = None,
    max_message_size: Annotated[
        int, typer.Option(min=1, metavar="BYTES", help="Largest message in bytes (close 1009).")
    ] = DEFAULTS.max_message_size,
    max_connections: Annotated[
        int, typer.Option(min=1, metavar="N", help="Open WebSockets (HTTP 503 past it).")
    ] = DEFAULTS.max_connections,
    max_inflight: Annotated[
        int, typer.Option(min=1, metavar="N", help="Calls running per connection.")
    ] = DEFAULTS.max_inflight,
    max_batch: Annotated[
        int, typer.Option(min=1, metavar="N", help="Largest batch (array) accepted.")
    ] = DEFAULTS.max_batch,
    call_timeout: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="Seconds a call may run (0: no limit).")
    ] = DEFAULTS.call_timeout,
    grace: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="Seconds in-flight calls get at shutdown.")
    ] = DEFAULTS.grace,
    ping_interval: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="Seconds between keepalive pings (0: none).")
    ] = DEFAULTS.ping_interval,
    ping_timeout: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="Close a peer whose pong is this late.")
    ] = DEFAULTS.ping_timeout,
    threads: Annotated[
        int, typer.Option(min=1, metavar="N", help="Threads running sync functions.")
    ] = DEFAULTS.threads,
    workers: Annotated[
        int, typer.Option(min=1, metavar="N", help="Processes serving the same port.")
    ] = DEFAULTS.workers,
    subscriber_queue: Annotated[
        int, typer.Option(min=1, metavar="N", help="Items a topic subscriber may fall behind (then -32004).")
    ] = DEFAULTS.subscriber_queue,
    broker: Annotated[
        str | None, typer.Option(metavar="URL", help="redis://HOST:PORT/DB: topics across workers and servers.")
    ] = DEFAULTS.broker,
    docs: Annotated[
        bool, typer.Option(help="Serve the /docs page (try every function from a browser).")
    ] = DEFAULTS.docs,
    reload: Annotated[bool, typer.Option(help="Restart when a .py file changes (development).")] = False,
    debug: Annotated[bool, typer.Option(help="Send exception text and tracebacks to clients.")] = DEFAULTS.debug,
    log_level: Annotated[
        str, typer.Option(metavar="LEVEL", help="critical, error, warning, info, debug.")
    ] = DEFAULTS.log_level,
    log_format: Annotated[
        str, typer.Option(metavar="FORMAT", help="human (uvicorn-style) or json (one object per line).")
    ] = DEFAULTS.log_format,
) -> None:
    """Serve functions over WebSocket (the built-ins, or your registry)."""
    from synapse_cli import runner

    settings = _settings(locals())
    try:
        clean = runner.run(target, settings, reload=reload, on_ready=_print_banner)
    except runner.ServeError as exc:
        raise UsageError(str(exc)) from None
    if not clean:  # a second Ctrl-C cut the drain short: not a clean exit
        raise typer.Exit(ExitStatus.INTERRUPTED)


def _settings(options: dict[str, Any]) -> Settings:
    """The ``Settings`` named by ``serve``'s options (each option is named after its field)."""
    fields = {field.name for field in dataclasses.fields(Settings)}
    values = {name: value for name, value in options.items() if name in fields}
    values["allow_origins"] = tuple(values["allow_origins"] or ())
    values.update({name: str(values[name]) for name in ("certfile", "keyfile") if values[name] is not None})
    values.update(log_level=values["log_level"].lower(), log_format=values["log_format"].lower())
    return Settings(**values)


def _print_banner(settings: Settings, functions: list[dict[str, Any]]) -> None:
    render.write_banner(settings, functions, version=__version__)


# -- call ----------------------------------------------------------------------------------------

_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def _client(
    url: str, token: str | None, timeout: float, jsonrpc: bool, cafile: Path | None, insecure: bool
) -> "Client":
    """The Client the ``call`` and ``list`` options describe; a malformed URL is a usage error."""
    from synapse_cli.client import Client, check_url

    try:
        check_url(url)
        return Client(url, token=token, timeout=timeout, dialect="jsonrpc" if jsonrpc else "native",
                      cafile=str(cafile) if cafile else None, insecure=insecure)  # fmt: skip
    except ValueError as exc:  # a malformed URL, a timeout that is not a time (NaN)
        raise UsageError(str(exc)) from None


def _wants_json(json_output: bool) -> bool:
    """Compact JSON on stdout: asked for, or stdout is not a terminal (SPEC §4)."""
    return json_output or not sys.stdout.isatty()


def _literal(text: str) -> Any:
    """A JSON literal, else the text itself; JSON the protocol refuses (a 65-bit integer) is a usage error."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    from synapse_cli.protocol import json_problem

    problem = json_problem(text)
    if problem is not None:
        raise UsageError(f"argument {text!r}: {problem}")
    return value


def parse_call_args(values: list[str], data: str | None) -> list[Any] | dict[str, Any]:
    """``ARG ...`` (JSON literals, else strings; ``name=value`` all or none) or ``-d JSON|@file|@-``."""
    if data is not None:
        if values:
            raise UsageError("give arguments either as ARG ... or with -d, not both")
        args = _literal(_read_data(data))
        if type(args) not in (list, dict):
            raise UsageError("-d must be a JSON array (positional) or object (by name)")
        return args  # type: ignore[no-any-return]
    for value in values:
        if value.startswith("--") and value != "--":
            raise UsageError(f"no such option: {value}")
    named = [_NAMED.match(value) for value in values]
    if any(named) and not all(named):
        raise UsageError("pass arguments all by position or all as name=value, not mixed")
    if named and all(named):
        return {m.group(1): _literal(m.group(2)) for m in named if m is not None}
    return [_literal(value) for value in values]


def _read_data(data: str) -> str:
    if not data.startswith("@"):
        return data
    source = data[1:]
    try:
        return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None


@app.command(context_settings={"ignore_unknown_options": True})
def call(
    func: Annotated[str | None, typer.Argument(metavar="FUNC", help="Function to call.")] = None,
    args: Annotated[
        list[str] | None, typer.Argument(metavar="[ARG]...", help="Arguments: JSON literals or name=value.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("-d", "--data", metavar="JSON", help="All arguments as JSON, @file or @- (stdin).")
    ] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", metavar="FILE", help="NDJSON calls from FILE or - (stdin).")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, metavar="N", help="Batch calls in flight.")
    ] = 16,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, metavar="N", help="Stop a stream after N items.")
    ] = None,
) -> None:
    """Call a function and print its result, or a stream's items as they arrive (or a --batch of calls)."""
    if batch is not None and (func is not None or args or data is not None):
        raise UsageError("--batch takes its calls from the file: no FUNC, ARG or -d")
    if batch is None and (func is None or func.startswith("-")):
        raise UsageError(f"no such option: {func}" if func else "missing FUNC (or --batch FILE)")
    client = _client(url, token, timeout, jsonrpc, cafile, insecure)
    if batch is not None:
        raise typer.Exit(_run(_call_batch(client, _open(batch), concurrency)))
    assert func is not None
    as_json = _wants_json(json_output)

    def show(value: Any) -> None:
        if as_json:
            render.write_json(value)
        else:
            render.console().print(render.pretty_value(value))

    items, result = _run(_call_once(client, func, parse_call_args(args or [], data), show, limit))
    if not items:
        show(result)


async def _call_once(
    client: "Client", func: str, args: list[Any] | dict[str, Any], show: Any, limit: int | None
) -> tuple[int, Any]:
    """Make the call, showing a stream's items as they arrive; (items shown, the result)."""
    import asyncio

    shown = 0

    def item(value: Any) -> None:
        nonlocal shown
        if limit is None or shown < limit:
            show(value)
            shown += 1
            if shown == limit:
                task.cancel()  # enough: cancelling the call stops the stream on the server

    async with client:
        task = asyncio.ensure_future(client.request(func, args, on_item=item))
        try:
            result = await task
        except asyncio.CancelledError:
            if limit is None or shown < limit:
                raise
            return shown, None
        return shown, result


async def _call_batch(client: "Client", stream: Any, concurrency: int) -> int:
    from synapse_cli.batch import ordered_calls, read_lines

    failed = False
    async with client:
        async for answer in ordered_calls(client, read_lines(stream), concurrency=concurrency):
            failed = failed or answer["error"] is not None
            render.write_json(answer)
    return ExitStatus.ERROR if failed else ExitStatus.OK


def _open(path: str) -> Any:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115 - read line by line while calls run
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


# -- list ----------------------------------------------------------------------------------------


@app.command("list")
def list_functions(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """List the server's functions with their signatures."""
    functions = _run(_list(_client(url, token, timeout, jsonrpc, cafile, insecure)))
    if _wants_json(json_output):
        render.write_json({"functions": functions})
    else:
        render.console().print(render.functions_table(functions))


async def _list(client: "Client") -> list[dict[str, Any]]:
    async with client:
        return await client.list()


# -- bench ---------------------------------------------------------------------------------------


class _BenchRun(_Command):
    """``synapse bench``'s own options, shown as ``synapse bench [OPTIONS] [FUNC] [ARGS]...``."""

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        path = ctx.parent.command_path if ctx.parent is not None else ctx.command_path
        formatter.write_usage(path, " ".join(self.collect_usage_pieces(ctx)))


class _DefaultToRun(_Group):
    """``synapse bench [FUNC ARG ...]`` runs a benchmark; ``compare`` and ``merge`` are its siblings.

    ``synapse bench --help`` and shell completion after ``synapse bench`` show the benchmark's options.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=_DefaultToRun,
    help="Measure throughput and latency of a WebSocket RPC endpoint.",
    rich_markup_mode=None,
)
app.add_typer(bench_app, name="bench")


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h`` or plain seconds."""
    from synapse_cli.schedule import parse_duration as parse

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
    from synapse_cli import bench, bench_options, bench_processes

    if func is not None and func.startswith("-"):
        raise UsageError(f"no such option: {func}")
    if stream or topic is not None:
        raise typer.Exit(_bench_streams(func, args or [], url, token, timeout, duration, connections, json_output,
                                        stream=stream, topic=topic, subscribers=subscribers,
                                        publish_rate=publish_rate, publish_func=publish_func))  # fmt: skip
    options = bench_options.BenchOptions(
        func=func, args=args or [], args_json=args_json, data=data, calls=calls, duration=duration,
        rate=rate, find_max=find_max, shard=shard, start_at=start_at, slo=slo, procs=procs,
    )  # fmt: skip
    try:
        checked = bench_options.check(options, parse_call_args)
        _check_writable([output, html, hdr_log])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    config = bench.BenchConfig(
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


def _bench_streams(
    func: str | None, args: list[str], url: str | None, token: str | None, timeout: float, duration: str | None,
    connections: int | None, json_output: bool, *, stream: bool, topic: str | None, subscribers: int,
    publish_rate: float, publish_func: str,
) -> int:  # fmt: skip
    """`bench --stream` / `bench --topic`: measure, render, exit code (1 when nothing arrived or errors)."""
    from synapse_cli import bench_processes, bench_streams

    if stream and topic is not None:
        raise UsageError("--stream and --topic measure different things: give one")
    if stream and func is None:
        raise UsageError("--stream needs FUNC, a stream function (e.g. synapse bench ticks 1000 0 --stream)")
    seconds = parse_duration(duration) if duration else None
    stderr = render.console(stderr=True)
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(bench_processes.embedded_server())
            stderr.print(f"no --url: benchmarking an embedded synapse server at {url} (stopped afterwards)")
        if topic is not None:
            measuring = bench_streams.measure_topic(
                url, topic, subscribers=subscribers, publish_rate=publish_rate, duration=seconds or 5.0,
                publish_func=publish_func, token=token, timeout=timeout,
            )  # fmt: skip
        else:
            assert func is not None
            measuring = bench_streams.measure_stream(
                url, func, parse_call_args(args, None), connections=connections or 1, duration=seconds, token=token,
                timeout=timeout,
            )  # fmt: skip
        report = _run(measuring)
    if _wants_json(json_output):
        render.write_json(report.to_json())
    else:
        render.console().print(render.stream_report(report))
    return ExitStatus.ERROR if report.errors or not report.items else ExitStatus.OK


def _check_writable(paths: list[Path | None]) -> None:
    """Refuse, before a run, an output file that cannot be written (the run would be lost)."""
    for path in paths:
        if path is None:
            continue
        existed = path.exists()
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
        if not existed:
            path.unlink()


def _bench_status(report: Any, rules: Any, written: bool) -> int:
    from synapse_cli import report as reports

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
    from synapse_cli import capacity

    stderr = render.console(stderr=True)
    with _target(config, stderr) as target:

        def probe(rate: float) -> Any:
            probe_config = dataclasses.replace(target, rate=rate, calls=None)
            return _run_bench(probe_config, stderr, quiet=True)

        def shown(result: Any) -> None:
            if stderr.is_terminal or not _wants_json(json_output):
                stderr.print(render.probe_line(result))

        answer = capacity.find_max(probe, rules, start=config.rate or 100.0, on_probe=shown)
    if _wants_json(json_output):
        render.write_json(answer.to_json())
    else:
        render.console().print(render.capacity_table(answer))
    return ExitStatus.OK if answer.rate is not None else ExitStatus.SLO_NOT_MET


@contextlib.contextmanager
def _target(config: Any, stderr: Any) -> Any:
    """The config with its URL: the given one, or an embedded server's for the block's duration."""
    from synapse_cli import bench_processes

    if config.url:
        yield config
        return
    try:
        with bench_processes.embedded_server() as url:
            stderr.print(f"no --url: benchmarking an embedded synapse server at {url} (stopped afterwards)")
            yield dataclasses.replace(config, url=url)
    except SynapseError as exc:
        _fail(*_describe(exc))


def _run_bench(config: Any, stderr: Any, *, quiet: bool = False) -> Any:
    from synapse_cli import bench, bench_processes

    run = bench_processes.run_bench_procs if config.procs > 1 else bench.run_bench
    bar = render.BenchProgress(stderr) if stderr.is_terminal and not quiet else None
    try:
        with bar or contextlib.nullcontext():
            return run(config, progress=bar.update if bar else None)
    except SynapseError as exc:
        _fail(*_describe(exc))
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)


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
    from synapse_cli import html_report

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
    if _wants_json(json_output) or (not written and output is not None):
        render.write_json(report.to_json())
    else:
        render.console().print(render.bench_report(report))
    return written


def _load_reports(paths: list[Path]) -> list[Any]:
    from synapse_cli.report import BenchReport

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


@bench_app.command("compare", cls=_Command)
def bench_compare(
    base: Annotated[Path, typer.Argument(help="The reference report (JSON).")],
    new: Annotated[Path, typer.Argument(help="The report to compare with it.")],
    html: Annotated[Path | None, typer.Option("--html", help="Also write an HTML page overlaying both runs.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Per-metric deltas between two saved reports (calls/s, p50, p90, p99, p99.9, errors)."""
    from synapse_cli import html_report
    from synapse_cli.report import compare_reports

    loaded = _load_reports([base, new])
    rows, warnings = compare_reports(*loaded)
    for warning in warnings:
        sys.stderr.write(f"synapse: warning: {warning}\n")
    if html is not None:
        try:
            html.write_text(html_report.page(loaded, names=[base.name, new.name]), encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {html}: {exc.strerror or exc}", ExitStatus.ERROR)
    if _wants_json(json_output):
        render.write_json({"base": str(base), "new": str(new), "metrics": rows, "warnings": warnings})
    else:
        render.console().print(render.comparison_table(rows, str(base), str(new)))


@bench_app.command("merge", cls=_Command)
def bench_merge(
    reports: Annotated[list[Path], typer.Argument(help="Reports of runs made at the same time (JSON).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the merged report here.")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Also write the merged run's HTML report.")] = None,
    hdr_log: Annotated[Path | None, typer.Option("--hdr-log", help="Write its per-second HdrHistogram log.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Merge reports from several machines into one (histograms merged exactly, rates over the merged window)."""
    from synapse_cli.report import merge_reports

    try:
        _check_writable([output, html, hdr_log])
        merged, warnings = merge_reports(_load_reports(reports))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for warning in warnings:
        sys.stderr.write(f"synapse: warning: {warning}\n")
    written = _write_report(merged, output, json_output, html=html, hdr_log=hdr_log)
    raise typer.Exit(ExitStatus.OK if written else ExitStatus.ERROR)


# -- running and failing -------------------------------------------------------------------------


def _fail(message: str, status: ExitStatus) -> NoReturn:
    sys.stderr.write(render.error_line(message) + "\n")
    sys.stderr.flush()
    raise typer.Exit(int(status))


def _describe(exc: SynapseError) -> tuple[str, ExitStatus]:
    if isinstance(exc, RPCError):
        return render.rpc_error_text(exc.message, exc.code, exc.data), ExitStatus.ERROR
    if isinstance(exc, (ConnectError, ConnectionLost)):
        return str(exc), ExitStatus.CONNECT
    if isinstance(exc, CallTimeout):
        return str(exc), ExitStatus.TIMEOUT
    return str(exc), ExitStatus.ERROR  # InvalidReply: the server answered, wrongly


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run the command's coroutine: Ctrl-C cancels it (calls send ``cancel``) and exits 130."""
    import asyncio

    from synapse_cli.batch import BatchInputError

    async def main() -> Any:
        task = asyncio.ensure_future(coroutine)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        try:
            return await task
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    try:
        return asyncio.run(main())
    except SynapseError as exc:
        _fail(*_describe(exc))
    except BatchInputError as exc:
        raise UsageError(str(exc)) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        _fail("interrupted", ExitStatus.INTERRUPTED)


def main() -> None:
    """Entry point of the ``synapse`` command: one ``synapse: error:`` line per failure, SPEC §4 exit codes."""
    render.tolerant_streams()
    try:
        status = app(standalone_mode=False, prog_name="synapse")
    except UsageError as exc:
        _exit_with(render.error_line(str(exc)), ExitStatus.USAGE)
    except (typer.Abort, KeyboardInterrupt):
        _exit_with(render.error_line("interrupted"), ExitStatus.INTERRUPTED)
    except Exception as exc:
        # click's exceptions (or the copy typer vendors): they carry their usage text and exit code.
        format_message = getattr(exc, "format_message", None)
        if format_message is None:
            raise
        command = getattr(getattr(exc, "ctx", None), "command_path", None)
        hint = f" (see '{command} --help')" if command and command != "synapse" else ""
        _exit_with(render.error_line(format_message()) + hint, ExitStatus.USAGE)
    sys.exit(status if isinstance(status, int) else 0)


def _exit_with(line: str, status: ExitStatus) -> NoReturn:
    sys.stderr.write(line + "\n")
    sys.exit(int(status))
