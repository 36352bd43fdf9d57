"""``synapse call``: one call, a stream's items as they arrive, or a ``--batch`` of NDJSON calls."""

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from synapse_cli.cli import render
from synapse_cli.cli.app import (
    CafileOption,
    ExitStatus,
    InsecureTLSOption,
    JsonOption,
    JsonRpcOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    UsageError,
    app,
    make_client,
    run_coroutine,
    wants_json,
)
from synapse_cli.core.settings import DEFAULT_TIMEOUT, DEFAULT_URL

if TYPE_CHECKING:  # imported where used: `synapse --help` starts without asyncio or websockets
    from synapse_cli.client.client import Client
    from synapse_cli.core.registry import Registry

__all__ = ["call_command", "parse_call_args", "with_since"]


_NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)


def _literal(text: str) -> Any:
    """A JSON literal, else the text itself; JSON the protocol refuses (a 65-bit integer) is a usage error."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    from synapse_cli.core.protocol import json_problem

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


def with_since(args: list[Any] | dict[str, Any], since: int | None) -> list[Any] | dict[str, Any]:
    """The arguments with ``since`` (``--since``) added by name; a usage error beside positional ones."""
    if since is None:
        return args
    if isinstance(args, list):
        if args:
            raise UsageError("--since is passed by name: give the other arguments as name=value too")
        return {"since": since}
    if "since" in args:
        raise UsageError("give since either as --since or as since=..., not both")
    return {**args, "since": since}


def _read_data(data: str) -> str:
    if not data.startswith("@"):
        return data
    source = data[1:]
    try:
        return sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None


@app.command("call", context_settings={"ignore_unknown_options": True})
def call_command(
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
    since: Annotated[
        int | None,
        typer.Option("--since", min=0, metavar="POSITION", help="A topic's kept items after POSITION first."),
    ] = None,
    expose: Annotated[
        str | None,
        typer.Option(
            "--expose",
            metavar="APP",
            help="Serve the functions of path/to/file.py (or module:registry) back to the server.",
        ),
    ] = None,
) -> None:
    """Call a function and print its result, or a stream's items as they arrive (or a --batch of calls)."""
    if batch is not None and (func is not None or args or data is not None):
        raise UsageError("--batch takes its calls from the file: no FUNC, ARG or -d")
    if batch is None and (func is None or func.startswith("-")):
        raise UsageError(f"no such option: {func}" if func else "missing FUNC (or --batch FILE)")
    client = make_client(url, token, timeout, jsonrpc, cafile, insecure, _exposed(expose))
    if batch is not None:
        raise typer.Exit(run_coroutine(_call_batch(client, _open(batch), concurrency)))
    assert func is not None
    as_json = wants_json(json_output)

    def show(value: Any) -> None:
        if as_json:
            render.write_json(value)
        else:
            render.console().print(render.pretty_value(value))

    call_args = with_since(parse_call_args(args or [], data), since)
    items, result = run_coroutine(_call_once(client, func, call_args, show, limit))
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
    from synapse_cli.client.batch import ordered_calls, read_lines

    failed = False
    async with client:
        async for answer in ordered_calls(client, read_lines(stream), concurrency=concurrency):
            failed = failed or answer["error"] is not None
            render.write_json(answer)
    return ExitStatus.ERROR if failed else ExitStatus.OK


def _exposed(target: str | None) -> "Registry | None":
    """The registry ``--expose`` names, loaded as ``synapse serve`` loads its app; a usage error if it cannot be."""
    if target is None:
        return None
    from synapse_cli.client.callee import check_exposable
    from synapse_cli.server.runner import LoadError, load_registry

    try:
        registry = load_registry(target)
        check_exposable(registry)
    except (LoadError, ValueError) as exc:
        raise UsageError(f"--expose: {exc}") from None
    return registry


def _open(path: str) -> Any:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8")  # noqa: SIM115 - read line by line while calls run
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
