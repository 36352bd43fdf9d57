"""Shared fixtures: real servers on 127.0.0.1 (port 0, bound by the test), real WebSocket clients."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from synapse_cli import compiled
from synapse_cli.core.registry import Registry
from synapse_cli.core.stats import new_histogram
from synapse_cli.server import runner
from synapse_cli.server.app import ServerState, Settings, bind_socket
from synapse_cli.server.builtins import default_registry

TESTS = Path(__file__).parent
APPS = TESTS / "apps"


def pytest_configure(config: pytest.Config) -> None:
    if sys.version_info < (3, 11):
        # On Python 3.10, when the client's TLS handshake fails (an untrusted certificate), asyncio closes the
        # socket but leaves its TLS transport object unclosed; freed later by the garbage collector, it warns,
        # which `filterwarnings = error` makes a failure of whichever test is running then (seen in
        # test_client's TLS test, not with a bare loop.create_connection). Python 3.11's sslproto does not.
        config.addinivalue_line(
            "filterwarnings", "ignore:unclosed transport <asyncio.sslproto._SSLProtocolTransport:ResourceWarning"
        )
    if sys.version_info >= (3, 12) and compiled.COMPILED:
        # A mypyc-compiled coroutine passes an exception on to what it awaits with the three-argument throw()
        # (mypyc/mypyc#1214), deprecated since Python 3.12: under `filterwarnings = error` the warning would
        # replace the exception (an app function's RPCError answered as -32603) in the servers of this process.
        config.addinivalue_line(
            "filterwarnings", r"ignore:the \(type, exc, tb\) signature of throw\(\) is deprecated:DeprecationWarning"
        )


@dataclasses.dataclass
class RunningServer:
    """A server running in a thread of this process."""

    url: str
    http: str
    port: int
    state: ServerState
    server: Any


@contextlib.contextmanager
def running_server(registry: Registry | None = None, **options: Any) -> Iterator[RunningServer]:
    """Serve ``registry`` (default: the built-ins) on a free loopback port for the block's duration."""
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    settings = Settings(**{"log_level": "warning", **options, "port": port})
    server = runner._uvicorn_server(registry or default_registry(), settings, "test")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    scheme = "wss" if settings.certfile else "ws"
    http = "https" if settings.certfile else "http"
    try:
        yield RunningServer(
            f"{scheme}://127.0.0.1:{port}/ws",
            f"{http}://127.0.0.1:{port}",
            port,
            server.config.app.state.synapse,
            server,
        )
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="session")
def server() -> Iterator[RunningServer]:
    """One server with the built-in functions, shared by the tests that do not change settings."""
    with running_server() as running:
        yield running


@pytest.fixture
def make_server() -> Callable[..., contextlib.AbstractContextManager[RunningServer]]:
    """A factory for servers with their own registry or settings: ``with make_server(max_inflight=2) as s:``."""
    return running_server


def load_app(name: str) -> Registry:
    """A registry from tests/apps/<name>.py, loaded the way ``synapse serve path.py`` loads it."""
    return runner.load_registry(str(APPS / f"{name}.py"))


@pytest.fixture(scope="session")
def spec_server() -> Iterator[RunningServer]:
    """A server with the JSON-RPC 2.0 specification's example functions (subtract, sum, get_data...)."""
    with running_server(load_app("jsonrpc_examples")) as running:
        yield running


def synapse_executable() -> str:
    """The installed ``synapse`` command of this environment."""
    candidate = Path(sys.executable).parent / "synapse"
    found = str(candidate) if candidate.exists() else shutil.which("synapse")
    assert found, "the synapse command is not installed"
    return found


@pytest.fixture
def cli_env() -> dict[str, str]:
    """Environment for running ``synapse`` as a subprocess: no colours, no inherited URL or token."""
    return clean_env()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files), made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


# -- `synapse serve` as a subprocess ----------------------------------------------------------------


@dataclass
class ServeProcess:
    """A running ``synapse serve`` process, its URL and everything it printed (stdout and stderr)."""

    process: subprocess.Popen[str]
    url: str
    lines: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])

    @property
    def http(self) -> str:
        scheme = "https" if self.url.startswith("wss") else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """The process's resident set size in bytes (VmRSS)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, f"the server exited ({self.process.poll()}):\n{self.output()[-3000:]}"
        return int(match.group(1)) * 1024

    def output(self, since: int = 0) -> str:
        return "".join(self.lines[since:])


def clean_env() -> dict[str, str]:
    """The environment for ``synapse serve``: no inherited URL or token, no colours.

    SYNAPSE_PURE stays: under ``make test-pure`` the subprocesses run the pure-Python modules too.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNAPSE_") or k == "SYNAPSE_PURE"}
    env.update({"NO_COLOR": "1", "COLUMNS": "120", "PYTHONUNBUFFERED": "1"})
    return env


@contextlib.contextmanager
def serve_process(*options: str, app: str | None = None) -> Iterator[ServeProcess]:
    """Run ``synapse serve [app] --port 0 [options]``; yield it once its banner shows the URL."""
    command = [synapse_executable(), "serve", *([app] if app else []), "--port", "0", *options]
    found = threading.Event()
    url: list[str] = []
    lines: list[str] = []

    def drain(stream: Any) -> None:
        for line in stream:
            lines.append(line)
            match = re.search(r"wss?://127\.0\.0\.1:\d+/ws", line)
            if match and not url:
                url.append(match.group())
                found.set()

    # The child inherits this process's RLIMIT_NOFILE (see raise_fd_limit): no preexec_fn, which is not
    # safe while the session's in-process servers run threads.
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_env(),
    )
    reader = threading.Thread(target=drain, args=(process.stdout,), daemon=True)
    reader.start()
    try:
        assert found.wait(20), "no URL in the banner:\n" + "".join(lines)
        yield ServeProcess(process, url[0], lines)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Poll ``condition`` until true or ``seconds`` pass; its final value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def close_code(ws: ClientConnection, timeout: float = 5.0) -> int:
    """The close code the server sent: reading must end with ConnectionClosed."""
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10):
            ws.recv(timeout=timeout)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def histogram_of(values: list[int]) -> HdrHistogram:
    """An HDR histogram of ``values`` (µs), recorded one by one the plain way."""
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    return histogram


def recorded(histogram: HdrHistogram) -> dict[int, int]:
    """Every distinct recorded value (its bucket's highest equivalent) with its count."""
    return {
        histogram.get_highest_equivalent_value(item.value_iterated_to): item.count_added_in_this_iter_step
        for item in histogram.get_recorded_iterator()
    }
