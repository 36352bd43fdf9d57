"""``synapse stubs``: typed clients (Python, TypeScript) from a server's ``rpc.discover`` or an app file."""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from synapse_cli import __version__
from synapse_cli.cli.app import (
    CafileOption,
    ExitStatus,
    InsecureTLSOption,
    JsonRpcOption,
    TimeoutOption,
    TokenOption,
    UrlOption,
    UsageError,
    app,
    check_writable,
    fail,
    make_client,
    run_coroutine,
)
from synapse_cli.core.settings import DEFAULT_TIMEOUT, DEFAULT_URL

if TYPE_CHECKING:  # imported where used: `synapse --help` starts without asyncio or websockets
    from synapse_cli.client.client import Client

__all__ = ["stubs"]

STDOUT = Path("-")
OutputOption = Annotated[Path | None, typer.Option(metavar="FILE", help="Write it here (- for stdout).")]


@app.command()
def stubs(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Argument(metavar="[APP]", help="Read this app (module:registry, file.py), not a server.")
    ] = None,
    python: OutputOption = None,
    typescript: OutputOption = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
    timeout: TimeoutOption = DEFAULT_TIMEOUT,
    jsonrpc: JsonRpcOption = False,
    cafile: CafileOption = None,
    insecure: InsecureTLSOption = False,
) -> None:
    """Generate typed clients from a server's rpc.discover (or an app file): --python FILE, --typescript FILE."""
    from synapse_cli.client.python_stub import python_stub
    from synapse_cli.client.typescript_stub import typescript_stub

    outputs = [(path, render) for path, render in ((python, python_stub), (typescript, typescript_stub)) if path]
    _check_outputs([path for path, _ in outputs])
    source = ctx.get_parameter_source("url")
    if target is not None and source is not None and source.name == "COMMANDLINE":
        raise UsageError("give an APP or --url, not both")
    if target is not None:
        document, origin = _from_app(target), target
    else:
        client = make_client(url, token, timeout, jsonrpc, cafile, insecure)
        document, origin = run_coroutine(_discover(client)), f"the rpc.discover document of {url}"
    for path, render in outputs:
        try:
            text = render(document, module=path.stem if path != STDOUT else "stubs")
        except ValueError as exc:
            fail(f"cannot make stubs from {origin}: {exc}", ExitStatus.ERROR)
        _write(path, text)


def _check_outputs(paths: list[Path]) -> None:
    """Refuse, before any work, no output, two outputs to stdout, or a file that cannot be written."""
    if not paths:
        raise UsageError("say what to write: --python FILE and/or --typescript FILE")
    if paths.count(STDOUT) > 1:
        raise UsageError("only one of --python and --typescript can write to stdout (-)")
    try:
        check_writable([None if path == STDOUT else path for path in paths])
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _from_app(target: str) -> Any:
    from synapse_cli.server.runner import LoadError, load_registry

    try:
        return load_registry(target).openrpc(version=__version__)
    except LoadError as exc:
        raise UsageError(str(exc)) from None


async def _discover(client: "Client") -> Any:
    from synapse_cli.core.errors import RPCError
    from synapse_cli.core.protocol import METHOD_NOT_FOUND

    async with client:
        try:
            return await client.request("rpc.discover", [])
        except RPCError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise
            message = f"the server at {client.url} does not describe its functions (no rpc.discover: {exc.message})"
            raise RPCError(message, exc.code) from None


def _write(path: Path, text: str) -> None:
    if path == STDOUT:
        sys.stdout.write(text)
        return
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
