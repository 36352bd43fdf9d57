"""``synapse serve``: its options become one ``Settings``, handed to ``server.runner.run``; nothing else."""

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from synapse_cli import __version__
from synapse_cli.cli import render
from synapse_cli.cli.app import (
    DEFAULTS,
    ExitStatus,
    TokenOption,
    UsageError,
    app,
)
from synapse_cli.core.settings import Settings

__all__ = ["serve"]


@app.command()
def serve(
    target: Annotated[str | None, typer.Argument(metavar="APP", help="module:registry or path/to/file.py.")] = None,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Interface to bind.")] = DEFAULTS.host,
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="Port (0: any free port).")
    ] = DEFAULTS.port,
    token: TokenOption = DEFAULTS.token,
    token_file: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, metavar="FILE", help="More tokens, one TOKEN,IDENTITY per line (ctx.identity)."
        ),
    ] = None,
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
    from synapse_cli.server import runner

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
    if options["token_file"] is not None:
        values["tokens"] = _read_tokens(options["token_file"])
    values.update({name: str(values[name]) for name in ("certfile", "keyfile") if values[name] is not None})
    values.update(log_level=values["log_level"].lower(), log_format=values["log_format"].lower())
    return Settings(**values)


def _read_tokens(path: Path) -> dict[str, str]:
    from synapse_cli.server.tokens import read_token_file

    try:
        return read_token_file(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _print_banner(settings: Settings, functions: list[dict[str, Any]]) -> None:
    render.write_banner(settings, functions, version=__version__)
