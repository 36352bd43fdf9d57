"""Logs: JSON lines, per-call fields, rate-limited protocol errors, no tokens or bodies; --reload."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest
from conftest import synapse_executable, wait_for
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from synapse_cli.core.loglines import RateLimitedLog
from synapse_cli.server.builtins import default_registry
from synapse_cli.server.logs import JSONFormatter, SafeLogFilter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(
    args: list[str], env: dict[str, str], cwd: Path | None = None, stdout: list[str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    """Run `synapse serve ARGS --port P`; yield its URL and its stderr lines as they come (stdout's too)."""
    port = free_port()
    process = subprocess.Popen(
        [synapse_executable(), "serve", *args, "--port", str(port)],
        stdout=subprocess.DEVNULL if stdout is None else subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=cwd, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    readers = [threading.Thread(target=collect, args=(process.stderr, lines), daemon=True)]
    if stdout is not None:
        readers.append(threading.Thread(target=collect, args=(process.stdout, stdout), daemon=True))
    for reader in readers:
        reader.start()
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                    f"http://127.0.0.1:{port}/health", timeout=1
                ):
                    break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        yield url, lines
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
        for reader in readers:
            reader.join(10)


def collect(stream: IO[str], lines: list[str]) -> None:
    """Append each line of ``stream`` (without its newline) to ``lines`` until it ends."""
    for line in stream:
        lines.append(line.rstrip("\n"))
    stream.close()


def test_json_formatter_writes_one_object_with_fields() -> None:
    """A record becomes one JSON object with timestamp, level, event and the structured fields given."""
    record = logging.LogRecord("synapse.server", logging.INFO, __file__, 1, "call %s", ("add",), None)
    record.function, record.duration_ms, record.outcome = "add", 0.25, "ok"
    entry = json.loads(JSONFormatter().format(record))
    assert entry["level"] == "info" and entry["event"] == "call add" and entry["logger"] == "synapse.server"
    assert (entry["function"], entry["duration_ms"], entry["outcome"]) == ("add", 0.25, "ok")
    assert entry["timestamp"].endswith("+00:00")


def test_safe_filter_redacts_tokens_and_bodies() -> None:
    """Debug lines with the Authorization header or a frame payload are rewritten."""
    safe = SafeLogFilter()
    header = logging.LogRecord("uvicorn.error", logging.DEBUG, "", 1, "< %s: %s", ("authorization", "Bearer s3"), None)
    frame = logging.LogRecord("uvicorn.error", logging.DEBUG, "", 1, "> TEXT %s [%d bytes]", ("'{\"a\":1}'", 7), None)
    assert safe.filter(header) and header.getMessage() == "< authorization: [redacted]"
    assert safe.filter(frame) and frame.getMessage() == "> TEXT [payload not logged]"


def test_rate_limited_log_counts_what_it_skips(caplog: pytest.LogCaptureFixture) -> None:
    """Within the interval only the first line is written; the next one says how many were skipped."""
    limited = RateLimitedLog(interval=0.2)
    logger = logging.getLogger("synapse.test")
    with caplog.at_level(logging.INFO, logger="synapse.test"):
        for _ in range(5):
            limited(logger, logging.INFO, "bad frame")
        time.sleep(0.25)
        limited(logger, logging.INFO, "bad frame")
    assert [r.getMessage() for r in caplog.records] == ["bad frame", "bad frame (4 similar suppressed)"]


def test_json_logs_of_a_real_server(cli_env: dict[str, str]) -> None:
    """--log-format json: JSON lines with per-call fields, protocol errors rate-limited, no token or body."""
    with serving(["--log-format", "json", "--log-level", "debug", "--token", "SEKRIT-42"], cli_env) as (url, lines):
        headers = {"Authorization": "Bearer SEKRIT-42"}
        with connect(url, additional_headers=headers) as ws:
            ws.send('{"id":7,"func":"echo","args":["BODY-SECRET"]}')
            assert ws.recv(timeout=5) == '{"id":7,"result":"BODY-SECRET","error":null}'
            for _ in range(50):
                ws.send("not json")
                ws.recv(timeout=5)
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    calls = [e for e in entries if e.get("function") == "echo"]
    assert len(calls) == 1
    assert {"connection", "call_id", "function", "duration_ms", "outcome"} <= calls[0].keys()
    assert (calls[0]["call_id"], calls[0]["outcome"]) == (7, "ok")
    protocol_errors = [e for e in entries if e["event"].startswith("protocol error -32700")]
    assert 1 <= len(protocol_errors) <= 3
    text = "\n".join(lines)
    assert "SEKRIT-42" not in text and "BODY-SECRET" not in text


def visit(url: str) -> None:
    """One GET /health (an access line) and one WebSocket connection with one call, closed by the client."""
    health = url.replace("ws://", "http://").removesuffix("/ws") + "/health"
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(health, timeout=5) as response:
        assert response.status == 200
    with connect(url) as ws:
        ws.send('{"id":1,"func":"add_numbers","args":[1,2]}')
        assert ws.recv(timeout=5) == '{"id":1,"result":3,"error":null}'
    time.sleep(0.3)  # the server notices the close


def test_json_mode_writes_only_json_to_stderr_and_nothing_to_stdout(cli_env: dict[str, str]) -> None:
    """--log-format json: every line is JSON (the banner one object), access lines included, stdout empty."""
    stdout: list[str] = []
    with serving(["--log-format", "json", "--log-level", "debug"], cli_env, stdout=stdout) as (url, lines):
        visit(url)
    assert stdout == []
    entries = [json.loads(line) for line in lines]  # every line parses
    (banner,) = [entry for entry in entries if "url" in entry]
    assert banner["url"] == url and banner["event"].endswith(f"serving on {url}") and banner["level"] == "info"
    assert "add_numbers(a: integer | number, b: integer | number) -> integer | number" in banner["functions"]
    assert len(banner["functions"]) == len(default_registry())
    assert [e["logger"] for e in entries if "GET /health" in e["event"]] == [
        "uvicorn.access"
    ] * 2  # serving() polls once
    opened = [e for e in entries if e["event"] == "connection open"]
    closed = [e for e in entries if e["event"] == "connection closed"]
    assert len(opened) == len(closed) == 1  # once each, the WebSocket library's own line dropped
    assert {k: opened[0][k] for k in ("level", "logger", "connection")} == {
        k: closed[0][k] for k in ("level", "logger", "connection")
    }
    assert opened[0]["peer"] == closed[0]["peer"] != ""


def test_human_mode_access_lines_go_to_stderr(cli_env: dict[str, str]) -> None:
    """Human logs: the access line, like every other line, is on stderr; at info no unpaired connection line."""
    stdout: list[str] = []
    with serving([], cli_env, stdout=stdout) as (url, lines):
        visit(url)
    assert stdout == []
    assert len([line for line in lines if '"GET /health HTTP/1.1" 200' in line]) == 2  # serving() polls once
    assert [line for line in lines if line.endswith(("connection open", "connection closed"))] == []  # debug


@pytest.mark.slow
def test_reload_restarts_on_code_change(cli_env: dict[str, str], tmp_path: Path) -> None:
    """serve app.py --reload: editing the file changes what the function returns."""
    app = tmp_path / "app.py"
    app.write_text(
        "from synapse_cli import Registry\nregistry = Registry()\n\n@registry.function\ndef v() -> int:\n    return 1\n"
    )
    with serving([str(app), "--reload", "--log-level", "warning"], cli_env, cwd=tmp_path) as (url, _):
        with connect(url) as ws:
            ws.send('{"id":1,"func":"v"}')
            assert ws.recv(timeout=5) == '{"id":1,"result":1,"error":null}'
        app.write_text(app.read_text().replace("return 1", "return 2"))
        deadline, result = time.monotonic() + 20, None
        while result != 2 and time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                with connect(url, open_timeout=1) as ws:
                    ws.send('{"id":2,"func":"v"}')
                    result = json.loads(ws.recv(timeout=5))["result"]
            except OSError:
                continue
        assert result == 2


@pytest.mark.slow
def test_reload_keeps_serving_through_a_syntax_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    """--reload: saving a syntax error logs one line (file, line), the old code answers, the fix is served."""
    app = tmp_path / "app.py"
    source = "from synapse_cli import Registry\nregistry = Registry()\n\n@registry.function\ndef v() -> int:\n"

    def save(body: str) -> None:  # atomically, as editors do: one change event
        (tmp_path / "app.tmp").write_text(source + body)
        os.replace(tmp_path / "app.tmp", app)

    def call() -> object:
        with connect(url, open_timeout=5) as ws:
            ws.send('{"id":1,"func":"v"}')
            return json.loads(ws.recv(timeout=5))["result"]

    save("    return 1\n")
    with serving([str(app), "--reload"], cli_env, cwd=tmp_path) as (url, lines):
        assert call() == 1
        save("    return 1 +\n")
        assert wait_for(lambda: any("still serving the previous code" in line for line in lines), 30), lines
        assert call() == 1  # at once: the previous code still serves
        save("    return 2\n")
        assert wait_for(lambda: any("changed; restarting" in line for line in lines), 30), lines
        assert wait_for(lambda: answers(call) == 2, 20)
    errors = [line for line in lines if "Error" in line]
    assert errors == [
        "ERROR:    app.py changed; still serving the previous code: "
        f"error while importing {app}: SyntaxError: invalid syntax (app.py, line 6)"
    ]
    assert not [line for line in lines if "Traceback" in line]


def answers(call: Callable[[], object]) -> object:
    """What ``call`` returns, or None while the server restarts (refused, draining: 503 or 1001, too slow)."""
    try:
        return call()
    except (OSError, TimeoutError, WebSocketException):
        return None
