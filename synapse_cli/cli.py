"""The ``synapse`` command: serve / call / list. Thin: parse, call the library, render, exit code.

Heavy modules (uvicorn, starlette, pydantic, rich tables) are imported inside the command that needs
them, so ``synapse --help`` and ``synapse call`` start fast.
"""

import asyncio
import contextlib
import dataclasses
import enum
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from typer.core import TyperCommand, TyperGroup

from synapse_cli import __version__, render
from synapse_cli.batch import ordered_calls
from synapse_cli.client import DEFAULT_URL, Client
from synapse_cli.errors import CallTimeout, ConnectError, ConnectionLost, RPCError, SynapseError
from synapse_cli.protocol import Dialect

__all__ = ["ExitStatus", "app", "main"]


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


class _PlainValue:
    """Converts an ``int``/``float``/``str``/``Path`` option (or a list of them) with plain Python.

    typer >= 0.2x converts every parameter through a pydantic ``TypeAdapter`` it builds on first use:
    importing pydantic and building the adapters was a third of every ``synapse call``'s wall time.
    Same rules and messages for these simple types; anything else keeps typer's own conversion.
    """

    _NAMES = {
        int: ("a valid integer", "an integer"),
        float: ("a valid number", "a number"),
        bool: ("a valid boolean", "a boolean"),
    }
    _BOOLEANS = {word: True for word in ("1", "true", "yes", "on", "y", "t")} | {
        word: False for word in ("0", "false", "no", "off", "n", "f")
    }

    def __init__(self, kind: type, info: Any) -> None:
        self.kind, self.minimum, self.maximum = kind, info.min, info.max
        self.exists, self.dir_okay = kind is Path and info.exists, kind is not Path or info.dir_okay
        self.readable = getattr(info, "readable", True)

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:
            return () if param.multiple or param.nargs == -1 else None
        if param.multiple or param.nargs == -1:
            return [self._one(item, param, ctx) for item in value]
        return self._one(value, param, ctx)

    def _one(self, value: Any, param: Any, ctx: Any) -> Any:
        if self.kind is bool and type(value) is not bool:
            value = self._BOOLEANS.get(str(value).strip().lower(), value)
        if type(value) is not self.kind:
            try:
                if self.kind is bool:
                    raise ValueError(value)
                value = self.kind(value)
            except (TypeError, ValueError):
                valid, article = self._NAMES.get(self.kind, (f"a valid {self.kind.__name__}", "one"))
                message = f"Input should be {valid}, unable to parse string as {article}"
                raise typer.BadParameter(message, ctx, param) from None
        if (self.minimum is not None or self.maximum is not None) and value != value:  # NaN passes < and >
            raise typer.BadParameter("Input should be a finite number", ctx, param)
        if self.minimum is not None and value < self.minimum:
            raise typer.BadParameter(f"Input should be greater than or equal to {self.minimum}", ctx, param)
        if self.maximum is not None and value > self.maximum:
            raise typer.BadParameter(f"Input should be less than or equal to {self.maximum}", ctx, param)
        if self.exists and not value.exists():
            raise typer.BadParameter(f"file {str(value)!r} does not exist.", ctx, param)
        if not self.dir_okay and value.is_dir():
            raise typer.BadParameter(f"file {str(value)!r} is a directory.", ctx, param)
        if self.exists and self.readable and not os.access(value, os.R_OK):
            raise typer.BadParameter(f"file {str(value)!r} is not readable.", ctx, param)
        return value


def _plain_value(param: Any) -> None:
    """Give ``param`` a :class:`_PlainValue` when its type is a simple one (and this typer converts with pydantic)."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", "absent") is not None:
        return  # another typer, or done already
    annotation, info = descriptor.annotation, descriptor.parameter_info
    kinds = [kind for kind in typing.get_args(annotation) or (annotation,) if kind is not type(None)]
    if len(kinds) == 1 and typing.get_origin(kinds[0]) is list:
        kinds = list(typing.get_args(kinds[0]))
        if not (param.multiple or param.nargs == -1):
            return
    if len(kinds) != 1 or kinds[0] not in (bool, int, float, str, Path) or getattr(info, "clamp", False):
        return
    if kinds[0] is Path and (info.writable or info.resolve_path or not info.file_okay):
        return  # typer's own checks
    param._runtime_param = _PlainValue(kinds[0], info)


class _PlainParams:
    """Commands whose simple parameters convert with :class:`_PlainValue` (help option included)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _plain_value(param)
        return params


class _Command(_PlainParams, TyperCommand):
    pass


class _Group(_PlainParams, TyperGroup):
    pass


app = typer.Typer(
    name="synapse",
    cls=_Group,
    help="WebSocket RPC in one command: serve functions, call them, benchmark them.",
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    rich_markup_mode=None,
)

UrlOption = Annotated[str, typer.Option("--url", envvar="SYNAPSE_URL", help="Server WebSocket URL.")]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="SYNAPSE_TOKEN", help="Bearer token for the handshake.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Compact JSON on stdout, even on a terminal.")]
TimeoutOption = Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds to wait for each reply.")]
JsonRpcOption = Annotated[bool, typer.Option("--jsonrpc", help="Speak JSON-RPC 2.0 (servers synapse did not write).")]
CafileOption = Annotated[
    Path | None, typer.Option("--cafile", exists=True, dir_okay=False, help="Trust this CA bundle for wss:// URLs.")
]
InsecureTLSOption = Annotated[bool, typer.Option("--insecure", help="wss://: do not verify the certificate.")]


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"synapse {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """WebSocket RPC in one command: serve functions, call them, benchmark them."""


# -- serve ---------------------------------------------------------------------------------------


@app.command(cls=_Command)
def serve(
    target: Annotated[str | None, typer.Argument(metavar="[APP]", help="module:registry or path/to/file.py.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    token: TokenOption = None,
    allow_origin: Annotated[list[str] | None, typer.Option(help="Browser origin to accept (repeatable).")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback --host without --token.")] = False,
    certfile: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="TLS certificate (PEM): serve wss://.")
    ] = None,
    keyfile: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="TLS private key (PEM).")] = None,
    max_message_size: Annotated[int, typer.Option(min=1, help="Largest message in bytes (close 1009).")] = 2**20,
    max_connections: Annotated[int, typer.Option(min=1, help="Open WebSockets (HTTP 503 past it).")] = 1000,
    max_inflight: Annotated[int, typer.Option(min=1, help="Calls running per connection.")] = 128,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch (array) accepted.")] = 1000,
    call_timeout: Annotated[float, typer.Option(min=0, help="Seconds a call may run (0: no limit).")] = 30.0,
    grace: Annotated[float, typer.Option(min=0, help="Seconds in-flight calls get at shutdown.")] = 5.0,
    ping_interval: Annotated[float, typer.Option(min=0, help="Seconds between keepalive pings (0: none).")] = 20.0,
    ping_timeout: Annotated[float, typer.Option(min=0, help="Close a peer whose pong is this late.")] = 20.0,
    threads: Annotated[int, typer.Option(min=1, help="Threads running sync functions.")] = 40,
    workers: Annotated[int, typer.Option(min=1, help="Processes serving the same port.")] = 1,
    subscriber_queue: Annotated[
        int, typer.Option(min=1, help="Items a topic subscriber may fall behind (then -32004).")
    ] = 1000,
    broker: Annotated[str | None, typer.Option(help="redis://HOST:PORT/DB: topics across workers and servers.")] = None,
    docs: Annotated[bool, typer.Option(help="Serve the /docs page (try every function from a browser).")] = True,
    reload: Annotated[bool, typer.Option(help="Restart when a .py file changes (development).")] = False,
    debug: Annotated[bool, typer.Option(help="Send exception text and tracebacks to clients.")] = False,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info, debug.")] = "info",
    log_format: Annotated[str, typer.Option(help="human (uvicorn-style) or json (one object per line).")] = "human",
) -> None:
    """Serve functions over WebSocket (the built-ins, or your registry)."""
    from synapse_cli import runner, server

    settings = server.Settings(
        host=host, port=port, token=token, allow_origins=tuple(allow_origin or ()), insecure=insecure,
        certfile=str(certfile) if certfile else None, keyfile=str(keyfile) if keyfile else None,
        max_message_size=max_message_size, max_connections=max_connections, max_inflight=max_inflight,
        max_batch=max_batch, call_timeout=call_timeout, grace=grace, workers=workers, debug=debug,
        ping_interval=ping_interval, ping_timeout=ping_timeout, log_format=log_format.lower(), threads=threads,
        subscriber_queue=subscriber_queue, broker=broker, docs=docs,
        log_level=log_level.lower(),
    )  # fmt: skip
    _check_serve_settings(settings)
    if reload and workers > 1:
        raise UsageError("--reload runs one process: it does not combine with --workers")
    try:
        registry = runner.load_registry(target)
        sockets = server.bind_sockets(host, port, workers if not reload else 1)
    except runner.LoadError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", ExitStatus.ERROR)
    sock = sockets[0]
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])
    details = _serve_details(settings)
    render.console(stderr=True).print(
        render.banner(settings.url, registry.describe(), version=__version__, details=details)
    )
    if reload:
        runner.serve_reload(target, settings, sock=sock, version=__version__)
    elif settings.workers > 1:
        runner.serve_workers(target, settings, sockets=sockets, version=__version__)
    else:
        runner.serve(registry, settings, sock=sock, version=__version__)


def _check_serve_settings(settings: Any) -> None:
    from synapse_cli.server import is_loopback

    if not is_loopback(settings.host) and settings.token is None and not settings.insecure:
        raise UsageError(f"refusing to listen on {settings.host} without --token (add --insecure to allow it)")
    if bool(settings.certfile) != bool(settings.keyfile):
        raise UsageError("--certfile and --keyfile go together")
    if settings.log_level not in {"critical", "error", "warning", "info", "debug", "trace"}:
        raise UsageError(f"unknown --log-level {settings.log_level!r}")
    if settings.log_format not in {"human", "json"}:
        raise UsageError(f"unknown --log-format {settings.log_format!r} (human or json)")
    if settings.broker is not None and not settings.broker.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--broker must be a redis:// URL, not {settings.broker!r}")


def _serve_details(settings: Any) -> dict[str, str]:
    details = {
        "auth": "bearer token required"
        if settings.token
        else "none (loopback only)"
        if not settings.insecure
        else "none",
        "limits": f"{settings.max_message_size} B/message, {settings.max_connections} connections, "
        f"{settings.max_inflight} in flight/connection, call timeout {settings.call_timeout:g} s",
        "health": settings.url.replace("ws", "http", 1).removesuffix("/ws") + "/health",
    }
    if settings.docs:
        details["docs"] = settings.url.replace("ws", "http", 1).removesuffix("/ws") + "/docs"
    if settings.workers > 1:
        details["workers"] = str(settings.workers)
    return details


# -- call ----------------------------------------------------------------------------------------

_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def _client(url: str, token: str | None, timeout: float, jsonrpc: bool, cafile: Path | None, insecure: bool) -> Client:
    """The Client the ``call`` and ``list`` options describe."""
    dialect: Dialect = "jsonrpc" if jsonrpc else "native"
    return Client(url, token=token, timeout=timeout, dialect=dialect, cafile=str(cafile) if cafile else None,
                  insecure=insecure)  # fmt: skip


def _wants_json(json_output: bool) -> bool:
    """Compact JSON on stdout: asked for, or stdout is not a terminal (SPEC §4)."""
    return json_output or not sys.stdout.isatty()


def _literal(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def parse_call_args(values: list[str], data: str | None) -> list[Any] | dict[str, Any]:
    """``ARG ...`` (JSON literals, else strings; ``name=value`` all or none) or ``-d JSON|@file|@-``."""
    if data is not None:
        if values:
            raise UsageError("give arguments either as ARG ... or with -d, not both")
        text = _read_data(data)
        try:
            args = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"-d is not valid JSON: {exc}") from None
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


@app.command(cls=_Command, context_settings={"ignore_unknown_options": True})
def call(
    func: Annotated[str | None, typer.Argument(help="Function to call.")] = None,
    args: Annotated[list[str] | None, typer.Argument(help="Arguments: JSON literals or name=value.")] = None,
    data: Annotated[
        str | None, typer.Option("-d", "--data", help="All arguments as JSON, @file or @- (stdin).")
    ] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="NDJSON calls from FILE or - (stdin).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Batch calls in flight.")] = 16,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = 10.0,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """Call a function and print its result (or run a batch of calls with --batch)."""
    client = _client(url, token, timeout, jsonrpc, cafile, insecure)
    if batch is not None:
        if func is not None or args or data is not None:
            raise UsageError("--batch takes its calls from the file: no FUNC, ARG or -d")
        raise typer.Exit(_run(_call_batch(client, batch, concurrency)))
    if func is None:
        raise UsageError("missing FUNC (or --batch FILE)")
    if func.startswith("-"):
        raise UsageError(f"no such option: {func}")
    call_args = parse_call_args(args or [], data)
    result = _run(_call_once(client, func, call_args))
    _print_result(result, json_output)


async def _call_once(client: Client, func: str, args: list[Any] | dict[str, Any]) -> Any:
    async with client:
        return await client.request(func, args)


async def _call_batch(client: Client, source: str, concurrency: int) -> int:
    stream = sys.stdin if source == "-" else _open(source)
    failed = False
    async with client:
        async for line in ordered_calls(client, _lines(stream), concurrency=concurrency):
            failed = failed or line["error"] is not None
            render.write_json(line)
    return ExitStatus.ERROR if failed else ExitStatus.OK


def _open(path: str) -> Any:
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115 - read line by line while calls run
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


async def _lines(stream: Any) -> AsyncIterator[str]:
    """Lines of ``stream`` read by a daemon thread: Ctrl-C never waits for a blocked ``readline``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue(maxsize=1024)

    def read() -> None:
        def put(item: str | BaseException | None) -> None:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

        try:
            for line in stream:
                put(line)
            put(None)
        except Exception as exc:  # unreadable input (not UTF-8, an I/O error): reported, not hung on
            put(exc)

    threading.Thread(target=read, name="synapse-batch-reader", daemon=True).start()
    while (item := await queue.get()) is not None:
        if isinstance(item, BaseException):
            raise UsageError(f"cannot read the batch input: {item}")
        yield item


def _print_result(result: Any, json_output: bool) -> None:
    if _wants_json(json_output):
        render.write_json(result)
    else:
        render.console().print(render.pretty_value(result))


# -- list ----------------------------------------------------------------------------------------


@app.command("list", cls=_Command)
def list_functions(
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = 10.0,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """List the server's functions with their signatures."""
    client = _client(url, token, timeout, jsonrpc, cafile, insecure)
    functions = _run(_list(client))
    if _wants_json(json_output):
        render.write_json({"functions": functions})
    else:
        render.console().print(render.functions_table(functions))


async def _list(client: Client) -> list[dict[str, Any]]:
    async with client:
        return await client.list()


# -- bench ---------------------------------------------------------------------------------------


class _DefaultToRun(_Group):
    """``synapse bench [FUNC ARG ...]`` runs a benchmark; ``compare`` and ``merge`` are its siblings."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    cls=_DefaultToRun,
    help="Measure throughput and latency of a WebSocket RPC endpoint (run, compare, merge).",
    rich_markup_mode=None,
)
app.add_typer(bench_app, name="bench")

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h`` or plain seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"cannot read duration {text!r} (e.g. 10s, 500ms, 2m)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@bench_app.command("run", cls=_Command, context_settings={"ignore_unknown_options": True})
def bench_run(
    func: Annotated[str | None, typer.Argument(help="Function to call (default: add_numbers 1 2).")] = None,
    args: Annotated[list[str] | None, typer.Argument(help="Arguments: JSON literals or name=value.")] = None,
    data: Annotated[str | None, typer.Option("-d", "--data", help="All arguments as JSON, @file or @-.")] = None,
    calls: Annotated[int, typer.Option("-n", "--calls", min=1, help="Measured calls.")] = 1000,
    duration: Annotated[str | None, typer.Option("-z", "--duration", help="Measure for this long (10s, 2m).")] = None,
    concurrency: Annotated[int, typer.Option("-c", "--concurrency", min=1, help="Calls in flight.")] = 50,
    connections: Annotated[int | None, typer.Option(min=1, help="Connections (default min(c, 8)).")] = None,
    warmup: Annotated[str, typer.Option(help="Warm-up before measuring (excluded from results).")] = "1s",
    rate: Annotated[float | None, typer.Option(min=0.001, help="Open model: total calls per second.")] = None,
    timeout: TimeoutOption = 10.0,
    procs: Annotated[int, typer.Option(min=1, help="Load processes; histograms merged exactly.")] = 1,
    slo: Annotated[str | None, typer.Option(help='Exit 99 unless met, e.g. "p99<20ms,errors=0".')] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the JSON report here.")] = None,
    url: Annotated[str | None, typer.Option(envvar="SYNAPSE_URL", help="Target (default: an embedded server).")] = None,
    token: TokenOption = None,
    jsonrpc: JsonRpcOption = False,
    json_output: JsonOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """Benchmark a function: closed model (-n/-z, -c) or open model (--rate), with an HDR latency histogram."""
    from synapse_cli import bench, stats

    if func is not None and func.startswith("-"):
        raise UsageError(f"no such option: {func}")
    call_args = parse_call_args(args or [], data) if func is not None else [1, 2]
    rules = _parse_slo(slo)
    config = bench.BenchConfig(
        url=url or "", func=func or "add_numbers", args=call_args, calls=calls,
        duration=parse_duration(duration) if duration else None, concurrency=concurrency, connections=connections,
        warmup=parse_duration(warmup), rate=rate, timeout=timeout, token=token,
        dialect="jsonrpc" if jsonrpc else "native", cafile=str(cafile) if cafile else None, insecure=insecure,
        procs=procs,
    )  # fmt: skip
    report = _bench(config)
    _write_report(report, output, json_output)
    failures = stats.check_slo(report, rules) if rules else []
    for failure in failures:
        sys.stderr.write(render.error_line(f"SLO not met: {failure}") + "\n")
    if rules:
        raise typer.Exit(ExitStatus.SLO_NOT_MET if failures else ExitStatus.OK)
    raise typer.Exit(ExitStatus.ERROR if report["calls"]["errors"] else ExitStatus.OK)


def _parse_slo(text: str | None) -> Any:
    from synapse_cli import stats

    try:
        return stats.parse_slo(text) if text else None
    except ValueError as exc:
        raise UsageError(f"--slo: {exc}") from None


def _bench(config: Any) -> dict[str, Any]:
    from synapse_cli import bench

    stderr = render.console(stderr=True)
    url_given = bool(config.url)
    try:
        with contextlib.ExitStack() as stack:
            if not config.url:
                config = dataclasses.replace(config, url=stack.enter_context(bench.embedded_server()))
                stderr.print(f"no --url: benchmarking an embedded synapse server at {config.url} (stopped afterwards)")
            if config.procs > 1:
                report = bench.run_bench_procs(config)
            else:
                bar = stack.enter_context(render.BenchProgress(stderr)) if stderr.is_terminal else None
                report = bench.run_bench(config, progress=bar.update if bar else None)
            report["config"]["embedded"] = not url_given
            return report
    except SynapseError as exc:
        _fail(*_describe(exc))
    except KeyboardInterrupt:
        _fail("interrupted", ExitStatus.INTERRUPTED)


def _write_report(report: dict[str, Any], output: Path | None, json_output: bool) -> None:
    if output is not None:
        try:
            output.write_text(render.json_line(report), encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}", ExitStatus.ERROR)
    if _wants_json(json_output):
        render.write_json(report)
    else:
        render.console().print(render.bench_report(report))


def _load_reports(paths: list[Path]) -> list[dict[str, Any]]:
    reports = []
    for path in paths:
        try:
            report = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UsageError(f"cannot read report {path}: {getattr(exc, 'strerror', None) or exc}") from None
        if not isinstance(report, dict) or report.get("schema_version") != 1:
            raise UsageError(f"{path} is not a synapse bench report (schema_version 1)")
        reports.append(report)
    return reports


@bench_app.command("compare", cls=_Command)
def bench_compare(
    base: Annotated[Path, typer.Argument(help="The reference report (JSON).")],
    new: Annotated[Path, typer.Argument(help="The report to compare with it.")],
    json_output: JsonOption = False,
) -> None:
    """Per-metric deltas between two saved reports (calls/s, p50, p90, p99, p99.9, errors)."""
    from synapse_cli import stats

    rows, warnings = stats.compare_reports(*_load_reports([base, new]))
    for warning in warnings:
        sys.stderr.write(f"synapse: warning: {warning}\n")
    if _wants_json(json_output):
        render.write_json({"base": str(base), "new": str(new), "metrics": rows, "warnings": warnings})
    else:
        render.console().print(render.comparison_table(rows, str(base), str(new)))


@bench_app.command("merge", cls=_Command)
def bench_merge(
    reports: Annotated[list[Path], typer.Argument(help="Reports of runs made at the same time (JSON).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the merged report here.")] = None,
    json_output: JsonOption = False,
) -> None:
    """Merge reports from several machines into one (histograms merged exactly, rates summed)."""
    from synapse_cli import stats

    try:
        merged = stats.merge_reports(_load_reports(reports))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _write_report(merged, output, json_output)


# -- running and failing -------------------------------------------------------------------------


def _fail(message: str, status: ExitStatus) -> NoReturn:
    sys.stderr.write(render.error_line(message) + "\n")
    sys.stderr.flush()
    raise typer.Exit(int(status))


def _describe(exc: SynapseError) -> tuple[str, ExitStatus]:
    if isinstance(exc, RPCError):
        return _rpc_error_text(exc), ExitStatus.ERROR
    if isinstance(exc, ConnectError):
        return str(exc), ExitStatus.CONNECT
    if isinstance(exc, CallTimeout):
        return str(exc), ExitStatus.TIMEOUT
    if isinstance(exc, ConnectionLost):
        return str(exc), ExitStatus.CONNECT
    return str(exc), ExitStatus.ERROR


def _rpc_error_text(exc: RPCError) -> str:
    text = f"{exc.message} (code {exc.code})"
    if isinstance(exc.data, list) and all(isinstance(d, dict) and "msg" in d for d in exc.data):
        details = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d['msg']}" for d in exc.data)
        return f"{text}: {details}"
    if exc.data is not None:
        return f"{text}: {orjson.dumps(exc.data, default=str).decode()}"
    return text


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run the command's coroutine: Ctrl-C cancels it (calls send ``cancel``) and exits 130."""

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
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.stderr.write(render.error_line("interrupted") + "\n")
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None


def main() -> None:
    """Entry point of the ``synapse`` command: one ``synapse: error:`` line per failure, SPEC §4 exit codes."""
    try:
        status = app(standalone_mode=False, prog_name="synapse")
    except UsageError as exc:
        _exit_with(render.error_line(str(exc)), ExitStatus.USAGE)
    except (typer.Abort, KeyboardInterrupt):
        _exit_with(render.error_line("interrupted"), ExitStatus.INTERRUPTED)
    except Exception as exc:
        # click's exceptions, or the copy of click that newer typer versions vendor: same interface.
        if not hasattr(exc, "format_message"):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `synapse`: the help, as usage text
            _exit_with(exc.format_message().rstrip(), ExitStatus.USAGE)
        command = getattr(getattr(exc, "ctx", None), "command_path", None)
        hint = f" (see '{command} --help')" if command and command != "synapse" else ""
        _exit_with(render.error_line(exc.format_message()) + hint, ExitStatus.USAGE)
    sys.exit(status if isinstance(status, int) else 0)


def _exit_with(line: str, status: ExitStatus) -> NoReturn:
    sys.stderr.write(line + "\n")
    sys.exit(int(status))
