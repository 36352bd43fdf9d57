"""Running a server: load the user's registry, start uvicorn, drain gracefully, spread over workers.

Split from ``server.py`` on purpose: that module is the app and its connection loop (no process
concerns); this one owns processes, signals and imports of user code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import logging.config
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from synapse_cli import __version__, compiled
from synapse_cli.core.registry import Registry
from synapse_cli.server.app import Settings, bind_sockets, create_app
from synapse_cli.server.builtins import default_registry
from synapse_cli.server.connection import CLOSE_GRACE
from synapse_cli.server.http import guarded_http_protocol
from synapse_cli.server.logs import SafeLogFilter, log_config
from synapse_cli.server.transport import CLOSE_TIMEOUT, websocket_protocol

__all__ = ["LoadError", "ServeError", "check_import", "load_registry", "run", "serve", "serve_reload", "serve_workers"]

logger = logging.getLogger("synapse.server")


class ServeError(Exception):
    """``synapse serve`` cannot start: settings that do not work together, a port it cannot listen on."""


class LoadError(ServeError):
    """The application given to ``synapse serve`` could not be loaded."""


def _find_registry(module: ModuleType, attr: str | None, origin: str) -> Registry:
    if attr is not None:
        value: Any = module
        for part in attr.split("."):
            value = getattr(value, part, None)
        if not isinstance(value, Registry):
            raise LoadError(f"{origin}: attribute {attr!r} is not a synapse Registry")
        return value
    found = {name: v for name, v in vars(module).items() if isinstance(v, Registry)}
    if len(found) != 1:
        # Name one the way this target was given: a file as file.py:attr, a module as module:attr.
        what = "no Registry" if not found else f"{len(found)} Registry objects ({', '.join(found)})"
        hint = "" if not found else f"; name one: {', '.join(f'{origin}:{name}' for name in found)}"
        raise LoadError(f"{origin}: found {what}{hint}")
    return next(iter(found.values()))


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise LoadError(f"no such file: {path}")
    sys.path.insert(0, str(path.parent.resolve()))  # sibling imports work, as with `python file.py`
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise LoadError(f"error while importing {path}: {_describe(exc)}") from exc
    return module


def _describe(exc: BaseException) -> str:
    """``Type: message (file.py, line N)``: where the import failed, in one line (no traceback)."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):  # its message already says "(file.py, line N)"
        return text
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if not frame.filename.startswith("<")]
    if frames:
        text += f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"
    return text


def _app_file(target: str) -> tuple[Path, str] | None:
    """``path/to/app.py[:attr]`` or ``app.py[:attr]`` as (path, attr), or None when ``target`` names a module."""
    if Path(target).exists():  # a file whose name holds a colon is still that file
        return Path(target), ""
    path, colon, attr = target.rpartition(":")
    if not colon:
        path, attr = target, ""
    if not (path.endswith(".py") or os.sep in path):
        return None
    return Path(path), attr


def load_registry(target: str | None) -> Registry:
    """The registry named by ``target``: ``module:attr``, ``module``, ``path/to/file.py``, or None (built-ins)."""
    if not target:
        return default_registry()
    app_file = _app_file(target)
    if app_file is not None:
        return _find_registry(_import_file(app_file[0]), app_file[1] or None, target)
    module_name, _, attr = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # uvicorn's rule: modules are found from the working directory
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoadError(f"cannot import module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"error while importing {module_name}: {_describe(exc)}") from exc
    return _find_registry(module, attr or None, target)


def _uvicorn_server(registry: Registry, settings: Settings, version: str) -> Any:
    """A stock ``uvicorn.Server`` for ``registry``, with our protocols plugged into its public ``Config``.

    The drain of SPEC §2 is uvicorn's own graceful shutdown: it stops accepting, calls ``shutdown()``
    on every connection (ours drain their calls for ``--grace`` seconds, then close with 1001) and waits
    for them to close.
    """
    import uvicorn

    app = create_app(registry, settings, version=version)
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, SafeLogFilter) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(SafeLogFilter())
    config = uvicorn.Config(
        app,
        http=guarded_http_protocol(settings.handshake_timeout),
        ws=websocket_protocol(app.state.synapse),
        lifespan="on",  # the app's startup and shutdown: the broker connection
        log_config=log_config(settings.log_level, settings.log_format),
        log_level=settings.log_level,
        ssl_certfile=settings.certfile,
        ssl_keyfile=settings.keyfile,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.grace + CLOSE_GRACE + CLOSE_TIMEOUT + 1),
    )
    logger.debug("request path: %s", compiled.STATUS)  # after Config: it applied the log config
    return uvicorn.Server(config)


@contextlib.contextmanager
def _signals_counted() -> Iterator[list[int]]:
    """Record SIGINT/SIGTERM instead of dying of them once uvicorn hands them back after its shutdown.

    uvicorn re-raises the signals it handled to the handlers it found: ours count them, so a
    graceful stop exits 0 and a forced one (a second Ctrl-C) can say so.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda sig, frame: received.append(sig)) for sig in _STOP_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def serve(registry: Registry, settings: Settings, *, sock: socket.socket, version: str = "0") -> bool:
    """Serve ``registry`` on the bound socket ``sock`` in this process until SIGINT/SIGTERM.

    Returns True after a graceful stop, False when a second signal forced it.
    """
    server = _uvicorn_server(registry, settings, version)
    with _signals_counted():
        server.run(sockets=[sock])
    return not server.force_exit


def _worker(target: str | None, settings: Settings, sock: socket.socket, version: str) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it forwards one SIGTERM
    try:
        registry = load_registry(target)
    except LoadError as exc:  # one line, not multiprocessing's chained tracebacks
        logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
        logger.error("cannot load the application: %s", exc)
        sys.exit(1)
    serve(registry, settings, sock=sock, version=version)


def _check_import(target: str | None, result: Any) -> None:
    """In a fresh process: load the application and send back None, or the one-line error."""
    try:
        load_registry(target)
    except LoadError as exc:
        result.send(str(exc))
    else:
        result.send(None)


def check_import(target: str | None, *, timeout: float = 60.0) -> str | None:
    """Import the application in a fresh process, as a new worker would: None when it loads, else why not."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_check_import, args=(target, sender), daemon=True)
    process.start()
    sender.close()
    try:
        error: str | None = receiver.recv() if receiver.poll(timeout) else f"importing took over {timeout:g} s"
    except EOFError:  # the application ended the process (sys.exit, os._exit, a crash) while importing
        process.join()
        error = f"importing it ended the process (exit code {process.exitcode})"
    finally:
        receiver.close()
    if process.is_alive():
        process.kill()
    process.join()
    return error


def serve_workers(target: str | None, settings: Settings, *, sockets: list[socket.socket], version: str = "0") -> None:
    """Run ``settings.workers`` processes; restart any that dies; forward SIGTERM/SIGINT.

    Worker ``i`` serves ``sockets[i % len(sockets)]`` (``server.bind_sockets``: one each where the kernel
    balances them); a restarted worker gets its predecessor's socket, connections waiting in it included.
    """
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    import tempfile

    from prometheus_client import multiprocess

    from synapse_cli.server.metrics import MULTIPROCESS_ENV

    metrics_dir = tempfile.TemporaryDirectory(prefix="synapse-metrics-")
    os.environ[MULTIPROCESS_ENV] = metrics_dir.name  # the spawned workers inherit it: whole numbers
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start(index: int) -> Any:
        sock = sockets[index % len(sockets)]
        process = context.Process(target=_worker, args=(target, settings, sock, version), daemon=False)
        process.start()
        return process

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)  # a second signal forwarded = stop now

    workers = [start(index) for index in range(settings.workers)]
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while workers:
            for index, process in enumerate(workers):
                if process.exitcode is not None and not stopping:
                    logger.warning("worker %s exited with %s; restarting it", process.pid, process.exitcode)
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                    workers[index] = start(index)
            if stopping:
                for process in workers:
                    process.join()
                break
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        del os.environ[MULTIPROCESS_ENV]
        metrics_dir.cleanup()


def serve_reload(target: str | None, settings: Settings, *, sock: socket.socket, version: str = "0") -> None:
    """Development mode: serve in a child process and restart it whenever a .py file changes.

    Watches the working directory and the application file's directory with ``watchfiles`` (the
    library behind uvicorn's ``--reload``). Before stopping the running worker, the changed code is
    imported in a fresh process (:func:`check_import`): code that does not load (a syntax error, an
    exception at import) is reported in one line naming the file and line, and the previous code keeps
    serving until a later change loads.
    """
    import threading

    import watchfiles

    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    context = multiprocessing.get_context("spawn")
    directories = {Path.cwd()}
    app_file = _app_file(target) if target else None
    if app_file is not None:
        directories.add(app_file[0].resolve().parent)
    stop = threading.Event()

    def start() -> Any:
        process = context.Process(target=_worker, args=(target, settings, sock, version))
        process.start()
        return process

    def finish(process: Any) -> None:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
        process.join(settings.grace + 5)
        if process.is_alive():
            process.kill()
            process.join()

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    process = start()
    logger.info("watching %s for changes", ", ".join(sorted(map(str, directories))))
    try:
        for changes in watchfiles.watch(*directories, watch_filter=watchfiles.PythonFilter(), stop_event=stop):
            names = ", ".join(sorted({Path(path).name for _, path in changes}))
            error = check_import(target)
            if error is not None:
                logger.error("%s changed; still serving the previous code: %s", names, error)
                continue
            logger.warning("%s changed; restarting", names)
            finish(process)
            process = start()
    finally:
        finish(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(
    target: str | None,
    settings: Settings,
    *,
    reload: bool = False,
    on_ready: Callable[[Settings, list[dict[str, Any]]], None] | None = None,
    version: str = __version__,
) -> bool:
    """What ``synapse serve`` does, as uvicorn's ``run()`` does for ``uvicorn``: the CLI only forwards here.

    Checks ``settings``, loads the registry ``target`` names, binds the port, calls ``on_ready`` with the
    settings as bound (port 0 resolved) and the functions served, then serves in this process, under
    ``--reload``, or over ``settings.workers`` processes, until SIGINT/SIGTERM.

    Returns True after a graceful stop, False when a second signal forced it.

    Raises:
        ServeError: bad settings, an application that cannot be loaded (``LoadError``), a port in use.
    """
    try:
        settings.check()
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    if reload and settings.workers > 1:
        raise ServeError("--reload runs one process: it does not combine with --workers")
    registry = load_registry(target)
    try:
        sockets = bind_sockets(settings.host, settings.port, 1 if reload else settings.workers)
    except OSError as exc:
        raise ServeError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}") from None
    settings = dataclasses.replace(settings, port=sockets[0].getsockname()[1])
    if on_ready is not None:
        on_ready(settings, registry.describe())
    if reload:
        serve_reload(target, settings, sock=sockets[0], version=version)
        return True
    if settings.workers > 1:
        serve_workers(target, settings, sockets=sockets, version=version)
        return True
    return serve(registry, settings, sock=sockets[0], version=version)
