"""synapse mounted in a FastAPI app (``synapse_cli.asgi``), under uvicorn and hypercorn as users run them.

tests/apps/fastapi_app.py mounts ``asgi(registry, settings)`` at ``/rpc`` beside a route of its own; each
test starts ``uvicorn`` or ``hypercorn`` (the installed servers, as subprocesses, on a socket the test
binds) and calls it with ``synapse call`` and the Python client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, clean_env, close_code, synapse_executable, wait_for
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

import synapse_cli
from synapse_cli.server.app import bind_socket

SERVERS = ["uvicorn", "hypercorn"]
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Mounted:
    """A host app running under an ASGI server: its process, port and what it printed."""

    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc/ws"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """GET ``path`` of the host app: status and body."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()


def server_command(server: str, fd: int) -> list[str]:
    """The command line that serves tests/apps/fastapi_app.py on the listening socket ``fd``."""
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "fastapi_app:app", "--fd", str(fd), "--log-level", "warning"]
    # --workers 0: hypercorn serves in this process, where SIGTERM reaches synapse's lifespan (see asgi()).
    return [sys.executable, "-m", "hypercorn", "fastapi_app:app", "--bind", f"fd://{fd}", "--workers", "0",
            "--graceful-timeout", "10"]  # fmt: skip


@contextlib.contextmanager
def mounted(server: str, **settings: Any) -> Iterator[Mounted]:
    """Run the host app under ``server`` with synapse ``settings`` (a token by default) until the block ends."""
    sock = bind_socket("127.0.0.1", 0)
    variables = {f"MOUNTED_{name.upper()}": json.dumps(value) for name, value in {"token": TOKEN, **settings}.items()}
    process = subprocess.Popen(
        server_command(server, sock.fileno()), cwd=APPS, env={**clean_env(), **variables}, pass_fds=(sock.fileno(),),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    running = Mounted(process, sock.getsockname()[1])
    reader = threading.Thread(target=lambda: running.lines.extend(iter(process.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        assert wait_for(lambda: _answers(running), 20), f"{server} did not start:\n{''.join(running.lines)}"
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(15)
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()
        sock.close()


def _answers(running: Mounted) -> bool:
    try:
        return running.get("/rpc/health")[0] == 200
    except OSError:
        return running.process.poll() is not None  # exited: stop waiting (the assert says why)


def synapse(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``synapse`` command."""
    return subprocess.run([synapse_executable(), *args], capture_output=True, text=True, timeout=60, env=clean_env())


def open_ws(url: str, **options: Any) -> ClientConnection:
    """A raw WebSocket client to ``url``."""
    return connect(url, proxy=None, compression=None, open_timeout=10, **options)


def exchange(ws: ClientConnection, message: dict[str, Any]) -> Any:
    """Send one message, return the next one parsed."""
    ws.send(json.dumps(message))
    return json.loads(ws.recv(timeout=10))


@pytest.mark.parametrize("server", SERVERS)
def test_mounted_app_answers_synapse_call_the_client_and_its_own_routes(server: str) -> None:
    """Under uvicorn/hypercorn: synapse call and the Python client (both dialects) reach /rpc/ws; /rpc/health,
    /rpc/docs and the host's own /hello answer beside it."""
    with mounted(server) as app:
        health = {"status": "ok", "version": synapse_cli.__version__, "functions": 3, "connections": 0}
        assert app.get("/rpc/health") == (200, json.dumps(health, separators=(",", ":")))
        assert app.get("/hello") == (200, '{"hello":"world"}')
        status, page = app.get("/rpc/docs")
        assert status == 200 and page.startswith("<!doctype html>")
        called = synapse("call", "add_numbers", "1", "2", "--url", app.url, "--token", TOKEN, "--jsonrpc")
        assert (called.returncode, called.stdout, called.stderr) == (0, "3\n", "")
        streamed = synapse("call", "ticks", "3", "--url", app.url, "--token", TOKEN)
        assert (streamed.returncode, streamed.stdout, streamed.stderr) == (0, "0\n1\n2\n", "")
        assert asyncio.run(_client_calls(app.url)) == {
            "native": [3, [0, 1, 2], ["add_numbers", "sleep", "ticks"]],
            "jsonrpc": [3, [0, 1, 2], ["add_numbers", "sleep", "ticks"]],
        }


async def _client_calls(url: str) -> dict[str, list[Any]]:
    results = {}
    for dialect in ("native", "jsonrpc"):
        async with synapse_cli.Client(url, token=TOKEN, dialect=dialect) as client:  # type: ignore[arg-type]
            summed = await client.call("add_numbers", 1, 2)
            items = [item async for item in client.stream("ticks", 3)]
            names = [function["name"] for function in await client.list()]
        results[dialect] = [summed, items, names]
    return results


@pytest.mark.parametrize("server", SERVERS)
def test_mounted_app_checks_the_token_and_the_origin_and_guards_its_metrics(server: str) -> None:
    """No token: 401 before the upgrade (synapse call exits 3); a foreign Origin: 403; an allowed or the
    app's own origin passes; /rpc/metrics wants the token and counts the calls."""
    with mounted(server, allow_origins=["https://app.example"]) as app:
        refused = synapse("call", "add_numbers", "1", "2", "--url", app.url)
        assert (refused.returncode, refused.stdout) == (3, "")
        why = "handshake rejected: HTTP 401 (missing or wrong bearer token)"
        assert refused.stderr == f"synapse: error: {app.url}: {why}\n"
        with pytest.raises(InvalidStatus) as foreign:
            open_ws(app.url, additional_headers=AUTH, origin="https://evil.example")  # type: ignore[arg-type]
        assert foreign.value.response.status_code == 403
        for origin in ("https://app.example", f"http://127.0.0.1:{app.port}"):
            with open_ws(app.url, additional_headers=AUTH, origin=origin) as ws:  # type: ignore[arg-type]
                reply = exchange(ws, {"id": 1, "func": "add_numbers", "args": [2, 3]})
                assert reply == {"id": 1, "result": 5, "error": None}
        assert app.get("/rpc/metrics")[0] == 401
        status, metrics = app.get("/rpc/metrics", AUTH)
        assert status == 200
        assert re.search(r'^synapse_calls_total\{function="add_numbers",outcome="ok"\} 2\.0$', metrics, re.MULTILINE)


@pytest.mark.parametrize("server", SERVERS)
def test_mounted_app_keeps_its_limits(server: str) -> None:
    """--max-message-size closes with 1009 (the server goes on), --max-connections refuses the next with 503,
    --max-inflight runs one call at a time on a connection."""
    with mounted(server, max_message_size=1000, max_connections=2, max_inflight=1) as app:
        with open_ws(app.url, additional_headers=AUTH) as ws:
            ws.send(json.dumps({"id": 1, "func": "echo", "args": ["x" * 2000]}))
            assert close_code(ws) == 1009
        with open_ws(app.url, additional_headers=AUTH) as first, open_ws(app.url, additional_headers=AUTH) as second:
            assert wait_for(lambda: json.loads(app.get("/rpc/health")[1])["connections"] == 2)
            with pytest.raises(InvalidStatus) as full:
                open_ws(app.url, additional_headers=AUTH)
            assert full.value.response.status_code == 503
            start = time.monotonic()
            for n in range(3):
                first.send(json.dumps({"id": n, "func": "sleep", "args": [0.2]}))
            replies = [json.loads(first.recv(timeout=10)) for _ in range(3)]
            assert time.monotonic() - start >= 0.6  # one at a time
            assert replies == [{"id": n, "result": 0.2, "error": None} for n in range(3)]
            assert exchange(second, {"id": 9, "func": "add_numbers", "args": [1, 1]})["result"] == 2


@pytest.mark.parametrize("server", SERVERS)
def test_mounted_app_drains_on_sigterm_inside_the_host_lifespan(server: str) -> None:
    """SIGTERM: a call in flight still gets its result, a new one -32003, then the close is 1001; the host's own
    lifespan started before synapse's and ends after it; the server exits as it does on SIGTERM."""
    with mounted(server, grace=5.0) as app:
        with open_ws(app.url, additional_headers=AUTH) as ws:
            ws.send(json.dumps({"id": 1, "func": "sleep", "args": [1.0]}))
            time.sleep(0.2)
            app.process.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            late = exchange(ws, {"id": 2, "func": "add_numbers", "args": [1, 2]})
            assert late == {"id": 2, "result": None, "error": {"code": -32003, "message": "server is shutting down"}}
            if server == "uvicorn":  # still taking HTTP while synapse drains (hypercorn stopped accepting)
                assert app.get("/rpc/health")[0] == 503
            assert json.loads(ws.recv(timeout=10)) == {"id": 1, "result": 1.0, "error": None}
            assert close_code(ws) == 1001
        # uvicorn re-raises the SIGTERM it handled once it is done (-15); hypercorn exits 0.
        assert app.process.wait(15) == (-signal.SIGTERM if server == "uvicorn" else 0)
    output = "".join(app.lines)
    assert "host: startup" in output and output.index("host: startup") < output.index("host: shutdown"), output


def test_the_endpoint_alone_serves_without_the_lifespan_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """``app.router.add_websocket_route("/ws", rpc.websocket)`` in a FastAPI app that never runs synapse's lifespan:
    calls work, and a warning says to pass ``lifespan=rpc.lifespan``."""
    import uvicorn
    from fastapi import FastAPI

    registry = synapse_cli.Registry()
    registry.function(lambda a, b: a + b, name="add")
    rpc = synapse_cli.asgi(registry, synapse_cli.Settings(max_connections=5))
    host = FastAPI()
    host.router.add_websocket_route("/socket", rpc.websocket)
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(host, ws="websockets-sansio", log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 10)
        with open_ws(f"ws://127.0.0.1:{sock.getsockname()[1]}/socket") as ws:
            assert exchange(ws, {"id": 1, "func": "add", "args": [2, 2]}) == {"id": 1, "result": 4, "error": None}
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "synapse.server" and r.levelname == "WARNING"]
    assert warnings == ["synapse's lifespan is not running: pass lifespan=rpc.lifespan to your app (see asgi())"]


def test_mounted_docs_page_calls_through_the_endpoint_beside_it() -> None:
    """/rpc/docs in headless Chromium connects to /rpc/ws (the endpoint beside the page), with the token."""
    from playwright.sync_api import expect, sync_playwright
    from test_docs import CHROMIUM_ARGS, chromium_executable

    executable = chromium_executable()
    if executable is None:
        pytest.skip("no chromium binary: apt-get install chromium (or set SYNAPSE_CHROMIUM)")
    with mounted("uvicorn") as app, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{app.port}/rpc/docs")
            page.locator("#token").fill(TOKEN)
            page.get_by_role("button", name="Connect").click()
            expect(page.locator("#status")).to_have_text("Connected: 3 functions (with a token).", timeout=10_000)
            card = page.locator('details.fn[data-name="add_numbers"]')
            card.locator("summary").click()
            card.locator('[name="a"]').fill("2")
            card.locator('[name="b"]').fill("3")
            card.get_by_role("button", name="Call").click()
            expect(card.locator("pre.value")).to_have_text("5", timeout=10_000)
            command = f'synapse call add_numbers a=2 b=3 --url {app.url} --token "$SYNAPSE_TOKEN"'
            expect(card.locator(".cli code")).to_have_text(command)
        finally:
            browser.close()


def test_documented_fastapi_app_runs_as_shown(tmp_path: Path) -> None:
    """docs/serving.md's main.py, run with the uvicorn command it shows, answers the synapse call shown, as shown."""
    from test_examples import doc_blocks

    (source,) = [block for block in doc_blocks("python") if block.startswith("# main.py")]
    (tmp_path / "main.py").write_text(source)
    block = next(block for block in doc_blocks("console") if "$ uvicorn main:app" in block)
    lines = block.splitlines()
    run, call, shown = shlex.split(lines[0][2:]), shlex.split(lines[1][2:]), lines[2]
    assert run[:2] == ["uvicorn", "main:app"] and call[:2] == ["synapse", "call"]
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    command = [sys.executable, "-m", *run[:2], "--fd", str(sock.fileno()), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=tmp_path, env=clean_env(), pass_fds=(sock.fileno(),))
    try:
        url = call[call.index("--url") + 1]
        assert url == f"ws://127.0.0.1:{option(run, '--port')}/rpc/ws"
        call[call.index("--url") + 1] = f"ws://127.0.0.1:{port}/rpc/ws"  # the docs' port, as this test's free one
        status = Mounted(process, port)
        assert wait_for(lambda: _answers(status), 20)
        done = synapse(*call[1:])
        assert (done.returncode, done.stdout, done.stderr) == (0, shown + "\n", "")
    finally:
        process.kill()
        process.wait(15)
        sock.close()


def option(command: list[str], name: str) -> str | None:
    """The value of ``name`` in a command line, or None."""
    return command[command.index(name) + 1] if name in command else None
