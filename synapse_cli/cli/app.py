"""The Typer app every command hangs on: shared options, exit codes, running a command and failing it.

The commands live one per module (:mod:`.serve`, :mod:`.call`, :mod:`.list`, :mod:`.bench`) and register
on :data:`app` when :mod:`synapse_cli.cli` imports them. Heavy modules (uvicorn, starlette, pydantic,
rich tables) are imported inside the command that needs them, so ``synapse --help`` and ``synapse call``
start fast. Option defaults come from where they are defined once (``core.settings.Settings``,
``client``); error text comes from ``render``.
"""

import enum
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from synapse_cli import __version__
from synapse_cli.cli import render
from synapse_cli.core.errors import CallTimeout, ConnectError, ConnectionLost, RPCError, SynapseError
from synapse_cli.core.settings import Settings

if TYPE_CHECKING:  # imported where used: `synapse --help` starts without asyncio or websockets
    from synapse_cli.client.client import Client
    from synapse_cli.core.registry import Registry

__all__ = [
    "DEFAULTS",
    "ExitStatus",
    "check_writable",
    "UsageError",
    "app",
    "describe",
    "fail",
    "main",
    "make_client",
    "run_coroutine",
    "wants_json",
]

DEFAULTS = Settings()


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


class _Commands(TyperGroup):
    """``synapse --help`` lists the commands in SPEC §4's order, then any other: Typer would put the
    ``bench`` group after every plain command."""

    ORDER = ("serve", "call", "list", "bench", "stubs")

    def list_commands(self, ctx: Any) -> list[str]:  # Any: Typer 0.27 types it with its vendored click
        rank = {name: i for i, name in enumerate(self.ORDER)}
        return sorted(self.commands, key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    name="synapse",
    cls=_Commands,
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


def make_client(
    url: str, token: str | None, timeout: float, jsonrpc: bool, cafile: Path | None, insecure: bool,
    functions: "Registry | None" = None,
) -> "Client":  # fmt: skip
    """The Client the ``call`` and ``list`` options describe (``functions``: what it exposes, ``--expose``);
    a malformed URL is a usage error."""
    from synapse_cli.client.client import Client, check_url

    try:
        check_url(url)
        return Client(url, token=token, timeout=timeout, dialect="jsonrpc" if jsonrpc else "native",
                      cafile=str(cafile) if cafile else None, insecure=insecure, functions=functions)  # fmt: skip
    except ValueError as exc:  # a malformed URL, a timeout that is not a time (NaN)
        raise UsageError(str(exc)) from None


def wants_json(json_output: bool) -> bool:
    """Compact JSON on stdout: asked for, or stdout is not a terminal (SPEC §4)."""
    return json_output or not sys.stdout.isatty()


def check_writable(paths: list[Path | None]) -> None:
    """ValueError, before any work, for an output file that cannot be written (None is skipped)."""
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


# -- running and failing -------------------------------------------------------------------------


def fail(message: str, status: ExitStatus) -> NoReturn:
    sys.stderr.write(render.error_line(message) + "\n")
    sys.stderr.flush()
    raise typer.Exit(int(status))


def describe(exc: SynapseError) -> tuple[str, ExitStatus]:
    if isinstance(exc, RPCError):
        return render.rpc_error_text(exc.message, exc.code, exc.data), ExitStatus.ERROR
    if isinstance(exc, (ConnectError, ConnectionLost)):
        return str(exc), ExitStatus.CONNECT
    if isinstance(exc, CallTimeout):
        return str(exc), ExitStatus.TIMEOUT
    return str(exc), ExitStatus.ERROR  # InvalidReply: the server answered, wrongly


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run the command's coroutine: Ctrl-C cancels it (calls send ``cancel``) and exits 130."""
    import asyncio

    from synapse_cli.client.batch import BatchInputError

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
        fail(*describe(exc))
    except BatchInputError as exc:
        raise UsageError(str(exc)) from None
    except (asyncio.CancelledError, KeyboardInterrupt):
        fail("interrupted", ExitStatus.INTERRUPTED)


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
