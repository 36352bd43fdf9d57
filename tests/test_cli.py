"""The real ``synapse`` command, run as a subprocess the way a user runs it (SPEC §4): output and exit codes."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, RunningServer, synapse_executable
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as websockets_serve

from synapse_cli import __version__

BUILTINS = {"add_numbers", "echo", "sleep", "divide", "fail", "ticks", "events", "publish_event"}
ISSUE_BATCH = '["add_numbers",1,2]\n{"func":"echo","args":["hi"]}\n'


# -- helpers -------------------------------------------------------------------------------------


def synapse(
    *args: str, env: dict[str, str], input: str | None = None, cwd: Path | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``synapse`` with ``args``; stdout and stderr are pipes (not terminals)."""
    return subprocess.run(
        [synapse_executable(), *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def assert_error(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> str:
    """The command exited with ``status`` and printed exactly one ``synapse: error:`` line, nothing on stdout."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("synapse: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    return result.stderr


def pending_calls(running: RunningServer) -> int:
    """Calls in flight on the server, over all its connections."""
    return sum(len(connection.session.calls) for connection in list(running.state.connections))


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    """True when something accepts TCP connections on ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def background(
    *args: str, env: dict[str, str], log: Path, cwd: Path | None = None, stdin: str | None = None
) -> Iterator[subprocess.Popen[str]]:
    """``synapse ARGS`` in the background (``stdin`` written, then closed), stderr to ``log``; killed at the end."""
    source = log.with_suffix(".stdin")
    source.write_text(stdin or "", encoding="utf-8")
    with log.open("w") as stderr, source.open() as stdin_file:
        process = subprocess.Popen(
            [synapse_executable(), *args],
            stdin=subprocess.DEVNULL if stdin is None else stdin_file,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=cwd,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


@contextlib.contextmanager
def recording_server() -> Iterator[tuple[str, list[Any]]]:
    """A foreign WebSocket server that records every message it receives and never answers."""
    received: list[Any] = []

    def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client may go away without a closing handshake
            for text in ws:
                received.append(json.loads(text))

    with websockets_serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/ws", received
        finally:
            server.shutdown()
            thread.join(10)


# -- synapse call --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdout"),
    [
        (["add_numbers", "1", "2"], "3\n"),
        (["add_numbers", "3.5", "4.5"], "8.0\n"),
        (["add_numbers", "a=-1", "b=10"], "9\n"),
        (["add_numbers", "-1", "10"], "9\n"),
        (["add_numbers", "1", "2", "--json"], "3\n"),
        (["echo", "hello"], '"hello"\n'),
        (["echo", "[1, 2]"], "[1,2]\n"),
        (["echo", "true"], "true\n"),
        (["echo", "null"], "null\n"),
        (["echo", 'value={"a": [1, "x"]}'], '{"a":[1,"x"]}\n'),
    ],
)
def test_call_prints_the_bare_result_when_piped(
    server: RunningServer, cli_env: dict[str, str], args: list[str], stdout: str
) -> None:
    """synapse call prints just the compact JSON result on stdout when piped, nothing on stderr, exit 0."""
    result = synapse("call", *args, "--url", server.url, env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, stdout, "")


@pytest.mark.parametrize("data", ["[20, 22]", '{"a": 20, "b": 22}'])
def test_call_with_data_json(server: RunningServer, cli_env: dict[str, str], data: str) -> None:
    """-d JSON gives the whole args value: an array (positional) or an object (by name)."""
    result = synapse("call", "add_numbers", "-d", data, "--url", server.url, env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "42\n", "")


def test_call_with_data_from_file(server: RunningServer, cli_env: dict[str, str], tmp_path: Path) -> None:
    """-d @file.json reads the args value from a file."""
    path = tmp_path / "args.json"
    path.write_text('{"a": 40, "b": 2}\n', encoding="utf-8")
    result = synapse("call", "add_numbers", "-d", f"@{path}", "--url", server.url, env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "42\n", "")


def test_call_with_data_from_stdin(server: RunningServer, cli_env: dict[str, str]) -> None:
    """echo '[20, 22]' | synapse call add_numbers -d @- prints 42."""
    result = synapse("call", "add_numbers", "-d", "@-", "--url", server.url, env=cli_env, input="[20, 22]\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "42\n", "")


def test_synapse_url_environment_variable(server: RunningServer, cli_env: dict[str, str]) -> None:
    """SYNAPSE_URL sets the server URL when --url is not given."""
    result = synapse("call", "add_numbers", "1", "2", env={**cli_env, "SYNAPSE_URL": server.url})
    assert (result.returncode, result.stdout, result.stderr) == (0, "3\n", "")


def test_jsonrpc_flag_against_the_synapse_server(server: RunningServer, cli_env: dict[str, str]) -> None:
    """--jsonrpc speaks JSON-RPC 2.0 for call and list; remote errors still exit 1."""
    result = synapse("call", "add_numbers", "1", "2", "--jsonrpc", "--url", server.url, env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "3\n", "")
    listed = synapse("list", "--jsonrpc", "--url", server.url, env=cli_env)
    assert listed.returncode == 0, listed.stderr
    assert {f["name"] for f in json.loads(listed.stdout)["functions"]} == BUILTINS
    missing = synapse("call", "add_numberz", "--jsonrpc", "--url", server.url, env=cli_env)
    assert_error(missing, 1, "-32601")


def test_token_from_flag_and_environment(make_server: Any, cli_env: dict[str, str]) -> None:
    """--token and SYNAPSE_TOKEN both pass a token-protected handshake."""
    with make_server(token="s3cret") as running:
        by_flag = synapse("call", "add_numbers", "1", "2", "--token", "s3cret", "--url", running.url, env=cli_env)
        by_env = synapse(
            "call", "add_numbers", "1", "2", "--url", running.url, env={**cli_env, "SYNAPSE_TOKEN": "s3cret"}
        )
    assert (by_flag.returncode, by_flag.stdout, by_flag.stderr) == (0, "3\n", "")
    assert (by_env.returncode, by_env.stdout, by_env.stderr) == (0, "3\n", "")


def test_tls_with_cafile(make_server: Any, cli_env: dict[str, str], certificate: tuple[str, str]) -> None:
    """wss:// works with --cafile or --insecure; an untrusted certificate exits 3."""
    cert, key = certificate
    with make_server(certfile=cert, keyfile=key) as running:
        trusted = synapse("call", "echo", "tls", "--cafile", cert, "--url", running.url, env=cli_env)
        insecure = synapse("call", "echo", "tls", "--insecure", "--url", running.url, env=cli_env)
        untrusted = synapse("call", "echo", "tls", "--url", running.url, env=cli_env)
    assert (trusted.returncode, trusted.stdout, trusted.stderr) == (0, '"tls"\n', "")
    assert (insecure.returncode, insecure.stdout, insecure.stderr) == (0, '"tls"\n', "")
    assert_error(untrusted, 3)


# -- synapse call --batch ------------------------------------------------------------------------


def test_batch_from_stdin_prints_one_ndjson_line_per_call(server: RunningServer, cli_env: dict[str, str]) -> None:
    """--batch - with the issue's two lines prints exactly two NDJSON result lines, exit 0."""
    result = synapse("call", "--batch", "-", "--url", server.url, env=cli_env, input=ISSUE_BATCH)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == '{"id":1,"result":3,"error":null}\n{"id":2,"result":"hi","error":null}\n'


def test_batch_from_file(server: RunningServer, cli_env: dict[str, str], tmp_path: Path) -> None:
    """--batch FILE reads the NDJSON calls from a file."""
    path = tmp_path / "calls.ndjson"
    path.write_text(ISSUE_BATCH, encoding="utf-8")
    result = synapse("call", "--batch", str(path), "--url", server.url, env=cli_env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == '{"id":1,"result":3,"error":null}\n{"id":2,"result":"hi","error":null}\n'


def test_batch_keeps_input_order_and_runs_calls_concurrently(server: RunningServer, cli_env: dict[str, str]) -> None:
    """A slow first line does not reorder the output, and the slow calls overlap (sent concurrently)."""
    lines = ['["sleep", 0.6]', '["add_numbers", 1, 2]', '["echo", "fast"]', '["sleep", 0.6]', '["sleep", 0.6]']
    started = time.monotonic()
    result = synapse("call", "--batch", "-", "--url", server.url, env=cli_env, input="\n".join(lines) + "\n")
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        '{"id":1,"result":0.6,"error":null}\n'
        '{"id":2,"result":3,"error":null}\n'
        '{"id":3,"result":"fast","error":null}\n'
        '{"id":4,"result":0.6,"error":null}\n'
        '{"id":5,"result":0.6,"error":null}\n'
    )
    assert elapsed < 1.7  # one after the other would take 1.8 s of sleeping alone


def test_batch_failing_line_gives_its_error_and_exit_1(server: RunningServer, cli_env: dict[str, str]) -> None:
    """A call that fails in a batch gets its error on its own line; the others succeed; exit 1."""
    lines = '["add_numbers", 1, 2]\n["divide", 1, 0]\n{"func": "echo", "args": {"value": "ok"}}\n'
    result = synapse("call", "--batch", "-", "--url", server.url, env=cli_env, input=lines)
    assert result.returncode == 1
    assert result.stdout == (
        '{"id":1,"result":3,"error":null}\n'
        '{"id":2,"result":null,"error":{"code":-32000,"message":"division by zero","data":{"a":1}}}\n'
        '{"id":3,"result":"ok","error":null}\n'
    )


def test_batch_malformed_line_gives_invalid_request(server: RunningServer, cli_env: dict[str, str]) -> None:
    """A line that is not a call gives a -32600 line in its place; the others still run; exit 1."""
    lines = '["add_numbers", 1, 2]\nthis is not json\n{"args": [1]}\n["echo", "last"]\n'
    result = synapse("call", "--batch", "-", "--url", server.url, env=cli_env, input=lines)
    assert result.returncode == 1
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert [reply["id"] for reply in replies] == [1, 2, 3, 4]
    assert replies[0] == {"id": 1, "result": 3, "error": None}
    assert replies[3] == {"id": 4, "result": "last", "error": None}
    for reply in replies[1:3]:
        assert set(reply) == {"id", "result", "error"}
        assert reply["result"] is None
        assert reply["error"]["code"] == -32600


# -- synapse list --------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_list_prints_the_list_result_as_json(server: RunningServer, cli_env: dict[str, str], flags: list[str]) -> None:
    """synapse list piped (or --json) prints {"functions": [...]} on one line with the built-ins."""
    result = synapse("list", *flags, "--url", server.url, env=cli_env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1
    document = json.loads(result.stdout)
    assert set(document) == {"functions"}
    assert {f["name"] for f in document["functions"]} == BUILTINS
    assert all(set(f) - {"stream"} == {"name", "description", "params", "result"} for f in document["functions"])
    assert {f["name"] for f in document["functions"] if f.get("stream")} == {"ticks", "events"}


# -- exit codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["add_numberz", "1", "2"], ["function not found: add_numberz", "-32601"]),
        (["add_numbers", "x", "y"], ["-32602"]),
        (["add_numbers", "1"], ["-32602"]),
        (["fail"], ["internal error", "-32603"]),
        (["divide", "1", "0"], ["division by zero", "-32000"]),
    ],
)
def test_remote_error_exits_1(
    server: RunningServer, cli_env: dict[str, str], args: list[str], fragments: list[str]
) -> None:
    """An error answered by the server prints one error line with its code and exits 1."""
    line = assert_error(synapse("call", *args, "--url", server.url, env=cli_env), 1, *fragments)
    assert "boom" not in line  # the exception text stays on the server


@pytest.mark.parametrize(
    "args",
    [
        ["call", "add_numbers", "1", "2", "--bogus"],
        ["call", "--bogus", "add_numbers", "1", "2"],
        ["call", "--timeout", "abc", "add_numbers", "1", "2"],
        ["call", "add_numbers", "1", "b=2"],
        ["call", "add_numbers", "-d", "[1, 2"],
        ["call", "add_numbers", "-d", "@/nonexistent/args.json"],
        ["call"],
        ["list", "--bogus"],
        ["nosuchcommand"],
    ],
    ids=[
        "unknown-flag-after",
        "unknown-flag-before",
        "bad-flag-value",
        "mixed-args",
        "invalid-json-data",
        "missing-data-file",
        "missing-func",
        "list-unknown-flag",
        "unknown-command",
    ],
)
def test_usage_errors_exit_2(server: RunningServer, cli_env: dict[str, str], args: list[str]) -> None:
    """Bad flags or arguments print one error line and exit 2, without calling anything."""
    assert_error(synapse(*args, "--url", server.url, env=cli_env), 2)


def test_refused_port_exits_3(cli_env: dict[str, str]) -> None:
    """Nothing listening on the port: one error line, exit 3."""
    url = f"ws://127.0.0.1:{unused_port()}/ws"
    assert_error(synapse("call", "add_numbers", "1", "2", "--url", url, env=cli_env), 3, url)
    assert_error(synapse("list", "--url", url, env=cli_env), 3, url)


@pytest.mark.parametrize("url", ["notaurl", "ws://127.0.0.1:99999/ws", "ws://[::1/ws", "http://127.0.0.1:8000/ws"])
def test_malformed_url_is_a_usage_error(cli_env: dict[str, str], url: str) -> None:
    """A malformed --url is a usage error: one line naming it, exit 2, nothing attempted."""
    assert_error(synapse("call", "add_numbers", "1", "2", "--url", url, env=cli_env), 2, f"invalid URL {url!r}")
    assert_error(synapse("list", "--url", url, env=cli_env), 2, "invalid URL")


@pytest.mark.parametrize("token", [None, "wrong"])
def test_rejected_handshake_exits_3_and_shows_401(make_server: Any, cli_env: dict[str, str], token: str | None) -> None:
    """A token-protected server without the right --token: the error line shows HTTP 401, exit 3."""
    flags = ["--token", token] if token else []
    with make_server(token="s3cret") as running:
        result = synapse("call", "add_numbers", "1", "2", *flags, "--url", running.url, env=cli_env)
    line = assert_error(result, 3, "401")
    assert "s3cret" not in line


def test_timeout_exits_4(server: RunningServer, cli_env: dict[str, str]) -> None:
    """No reply within --timeout: one error line, exit 4, promptly."""
    started = time.monotonic()
    result = synapse("call", "sleep", "5", "--timeout", "0.3", "--url", server.url, env=cli_env)
    assert time.monotonic() - started < 4
    assert_error(result, 4)


def test_ctrl_c_cancels_the_call_and_exits_130(make_server: Any, cli_env: dict[str, str], tmp_path: Path) -> None:
    """SIGINT during a call: exit 130 with one error line, and the server's call stops."""
    with make_server() as running:
        with background("call", "sleep", "5", "--url", running.url, env=cli_env, log=tmp_path / "err") as process:
            assert eventually(lambda: pending_calls(running) == 1)
            process.send_signal(signal.SIGINT)
            stdout, _ = process.communicate(timeout=10)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, (tmp_path / "err").read_text())
        assert_error(result, 130)
        assert eventually(lambda: pending_calls(running) == 0, 1.0)


def test_ctrl_c_sends_cancel_for_the_call_in_flight(cli_env: dict[str, str], tmp_path: Path) -> None:
    """SIGINT during a call writes {"op": "cancel", "id": <the call's id>} to the server before exiting 130."""
    with recording_server() as (url, received):
        with background("call", "sleep", "5", "--url", url, env=cli_env, log=tmp_path / "err") as process:
            assert eventually(lambda: len(received) == 1)
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=10)
        assert process.returncode == 130
        call = received[0]
        assert (call.get("op", "call"), call["func"], call["args"]) == ("call", "sleep", [5])
        assert eventually(lambda: len(received) == 2, 2.0)
        assert received[1] == {"op": "cancel", "id": call["id"]}


def test_ctrl_c_during_a_batch_sends_cancel_for_every_call_in_flight(cli_env: dict[str, str], tmp_path: Path) -> None:
    """SIGINT during --batch sends one cancel per in-flight call and exits 130."""
    lines = '["sleep", 5]\n["sleep", 5]\n["sleep", 5]\n'
    with recording_server() as (url, received):
        with background(
            "call", "--batch", "-", "--url", url, env=cli_env, log=tmp_path / "err", stdin=lines
        ) as process:
            assert eventually(lambda: len(received) == 3)
            process.send_signal(signal.SIGINT)
            stdout, _ = process.communicate(timeout=10)
        assert (process.returncode, stdout) == (130, "")
        eventually(lambda: len(received) == 6, 2.0)  # the assertion below shows what did arrive
        calls = {message["id"] for message in received[:3]}
        cancels = list(received[3:])
        assert sorted(cancels, key=lambda message: message["id"]) == [
            {"op": "cancel", "id": request_id} for request_id in sorted(calls)
        ]


# -- synapse serve -------------------------------------------------------------------------------


def _serve_and_call(args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
    """Start ``synapse serve ARGS --port P``, call greet through the CLI, SIGTERM it: exit 0."""
    port = unused_port()
    url = f"ws://127.0.0.1:{port}/ws"
    with background("serve", *args, "--port", str(port), env=env, log=log, cwd=cwd) as process:
        assert eventually(lambda: listening(port) or process.poll() is not None, 15), log.read_text()
        assert process.poll() is None, log.read_text()
        result = synapse("call", "greet", "World", "--url", url, env=env)
        assert (result.returncode, result.stdout, result.stderr) == (0, '"hello World"\n', "")
        listed = synapse("list", "--url", url, env=env)
        assert [f["name"] for f in json.loads(listed.stdout)["functions"]] == ["greet", "withdraw"]
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=15)
    assert process.returncode == 0, log.read_text()
    assert stdout == ""
    banner = log.read_text()
    assert url in banner and "greet" in banner


def test_serve_a_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    """synapse serve path/to/userfuncs.py serves the file's registry; SIGTERM exits 0."""
    _serve_and_call([str(APPS / "userfuncs.py")], cli_env, tmp_path / "serve.log")


def test_serve_module_attr(cli_env: dict[str, str], tmp_path: Path) -> None:
    """synapse serve userfuncs:registry (cwd tests/apps) imports the module like uvicorn; SIGTERM exits 0."""
    _serve_and_call(["userfuncs:registry"], cli_env, tmp_path / "serve.log", cwd=APPS)


@pytest.mark.parametrize("target", ["missing.py", "nosuchmodule:registry", "userfuncs:nope"])
def test_serve_missing_app_exits_2(cli_env: dict[str, str], target: str) -> None:
    """synapse serve with an app that cannot be loaded prints one error line and exits 2."""
    result = synapse("serve", target, "--port", str(unused_port()), env=cli_env, cwd=APPS, timeout=30)
    assert_error(result, 2)


def test_serve_refuses_a_public_host_without_token(cli_env: dict[str, str]) -> None:
    """synapse serve --host 0.0.0.0 without --token refuses to start: one error line, exit 2."""
    result = synapse("serve", "--host", "0.0.0.0", "--port", str(unused_port()), env=cli_env, timeout=30)
    assert_error(result, 2, "--token")


# -- version and help ----------------------------------------------------------------------------


def test_version(cli_env: dict[str, str]) -> None:
    """synapse --version prints the package version on stdout and exits 0."""
    result = synapse("--version", env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"synapse {__version__}\n", "")


def test_help(cli_env: dict[str, str]) -> None:
    """synapse --help lists the commands on stdout and exits 0."""
    result = synapse("--help", env=cli_env)
    assert (result.returncode, result.stderr) == (0, "")
    for command in ("serve", "call", "list"):
        assert command in result.stdout


def test_batch_input_that_is_not_utf8_ends_with_one_error(
    server: RunningServer, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A batch file with invalid UTF-8 ends with exit 2 and one error line instead of hanging."""
    batch = tmp_path / "bad.ndjson"
    batch.write_bytes(b'["add_numbers",1,2]\n\xff\xfe\n')
    result = synapse("call", "--batch", str(batch), "--url", server.url, env=cli_env, timeout=20)
    assert result.returncode == 2, result
    assert result.stderr.startswith("synapse: error: cannot read the batch input")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["call", "echo", "1", "--cafile", "/nonexistent.pem"],
        ["serve", "--certfile", "/nope.pem", "--keyfile", "/nope.key"],
    ],
)
def test_missing_tls_files_are_usage_errors(cli_env: dict[str, str], args: list[str]) -> None:
    """A TLS file that does not exist is a usage error (exit 2, one line), not a traceback."""
    result = synapse(*args, env=cli_env, timeout=20)
    assert_error(result, 2, "does not exist")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--calls", "abc"], "Invalid value for '-n' / '--calls': "),
        (["bench", "-n", "0"], "Invalid value for '-n' / '--calls': "),
        (["call", "echo", "--timeout", "x"], "Invalid value for '--timeout': "),
        (["call", "echo", "--timeout", "0"], "Invalid value for '--timeout': "),
        (["call", "echo", "--timeout", "nan"], "timeout must be a positive number of seconds"),
        (["serve", "--port", "70000"], "Invalid value for '--port': "),
        (["call", "echo", "--cafile", "/nonexistent/ca.pem"], "'/nonexistent/ca.pem' does not exist."),
        (["call", "echo", "--cafile", "/"], "'/' is a directory."),
    ],
    ids=[
        "int-not-a-number",
        "int-below-min",
        "float-not-a-number",
        "float-below-min",
        "float-nan",
        "above-max",
        "no-file",
        "dir",
    ],  # fmt: skip
)
def test_option_values_are_checked(cli_env: dict[str, str], args: list[str], message: str) -> None:
    """Numbers, ranges and files given to options are checked before anything runs: one line, exit 2.

    The wording after "Invalid value for ..." is typer's (click's or pydantic's, by typer version).
    """
    assert_error(synapse(*args, env=cli_env), 2, message)


def test_option_values_are_converted(server: RunningServer, cli_env: dict[str, str]) -> None:
    """Valid values arrive converted: a float timeout, an int count, repeated headers as a list."""
    result = synapse("call", "echo", "7", "--timeout", "2.5", "--url", server.url, env=cli_env)
    assert (result.returncode, result.stdout) == (0, "7\n")
    result = synapse("bench", "-n", "3", "-c", "1", "--warmup", "0", "--json", "--url", server.url, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["calls"]["ok"] == 3


def test_call_does_not_import_pydantic(server: RunningServer, cli_env: dict[str, str]) -> None:
    """`synapse call` starts without pydantic (newer typer converts options with it: ~0.1 s per call)."""
    script = (
        "import sys\n"
        "from synapse_cli.cli import main\n"
        f"sys.argv = ['synapse', 'call', 'add_numbers', '1', '2', '--url', {server.url!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
        "print('pydantic' in sys.modules)\n"
    )
    import sys

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=cli_env, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["3", "False"]


# -- serve only forwards to runner.run -------------------------------------------------------------


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, list[tuple[Any, ...]]]:
    """Run ``synapse ARGS`` in this process with ``runner.run`` replaced by a recorder; (exit code, its calls)."""
    from typer.testing import CliRunner

    from synapse_cli import cli, runner

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "run", lambda target, settings, **options: calls.append((target, settings, options)))
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, calls


def test_serve_with_no_options_forwards_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`synapse serve` hands runner.run exactly Settings() (the defaults, defined once) and a banner callback."""
    from synapse_cli.settings import Settings

    status, calls = invoke(monkeypatch, "serve")
    assert status == 0
    [(target, settings, options)] = calls
    assert (target, settings, options["reload"]) == (None, Settings(), False)
    assert callable(options["on_ready"])


def test_serve_forwards_every_option_to_runner_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every serve option arrives in the Settings given to runner.run, converted, and nothing else happens."""
    from synapse_cli.settings import Settings

    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("c")
    key.write_text("k")
    status, calls = invoke(
        monkeypatch, "serve", "app.py", "--host", "0.0.0.0", "--port", "9001", "--token", "t",
        "--allow-origin", "http://a", "--allow-origin", "http://b", "--insecure", "--certfile", str(cert),
        "--keyfile", str(key), "--max-message-size", "10", "--max-connections", "11", "--max-inflight", "12",
        "--max-batch", "13", "--call-timeout", "1.5", "--grace", "2.5", "--ping-interval", "3.5",
        "--ping-timeout", "4.5", "--threads", "14", "--workers", "3", "--reload", "--debug",
        "--log-level", "DEBUG", "--log-format", "JSON",
    )  # fmt: skip
    assert status == 0
    [(target, settings, options)] = calls
    assert target == "app.py" and options["reload"] is True
    assert settings == Settings(
        host="0.0.0.0", port=9001, token="t", allow_origins=("http://a", "http://b"), insecure=True,
        certfile=str(cert), keyfile=str(key), max_message_size=10, max_connections=11, max_inflight=12,
        max_batch=13, call_timeout=1.5, grace=2.5, ping_interval=3.5, ping_timeout=4.5, threads=14, workers=3,
        debug=True, log_level="debug", log_format="json",
    )  # fmt: skip


def test_serve_reports_a_serve_error_as_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """runner.ServeError (bad settings, app not found, port in use) is one error line, exit 2."""
    from typer.testing import CliRunner

    from synapse_cli import cli, runner

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise runner.ServeError("cannot listen on 127.0.0.1:8000: Address already in use")

    monkeypatch.setattr(runner, "run", refuse)
    with pytest.raises(cli.UsageError, match="Address already in use"):
        CliRunner().invoke(cli.app, ["serve"], catch_exceptions=False)


def test_serve_on_a_port_in_use_exits_2(cli_env: dict[str, str]) -> None:
    """A port something else listens on: one line saying so, exit 2 (a usage error, not an RPC error)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert_error(synapse("serve", "--port", port, env=cli_env), 2, f"cannot listen on 127.0.0.1:{port}")


# -- rough edges a new user hit --------------------------------------------------------------------


def test_an_integer_beyond_64_bits_is_refused_with_exit_2(server: RunningServer, cli_env: dict[str, str]) -> None:
    """`synapse call echo 18446744073709551616` is refused as the server would (never printed as a float)."""
    for args in (
        ["echo", "18446744073709551616"],
        ["echo", "[1, 18446744073709551616]"],
        ["echo", "-d", "[-9223372036854775809]"],
    ):
        result = synapse("call", *args, "--url", server.url, env=cli_env)
        assert_error(result, 2, "integer does not fit in 64 bits")
    ok = synapse("call", "echo", "18446744073709551615", "--url", server.url, env=cli_env)
    assert (ok.returncode, ok.stdout) == (0, "18446744073709551615\n")


@contextlib.contextmanager
def plain_http_server() -> Iterator[int]:
    """`python -m http.server` on a loopback port: answers 404 (HTTP/1.0) to the WebSocket handshake."""
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_a_plain_http_server_shows_its_status(cli_env: dict[str, str]) -> None:
    """Against http.server, call and list say HTTP 404 (not "did not receive a valid HTTP response"), exit 3."""
    with plain_http_server() as port:
        url = f"ws://127.0.0.1:{port}/ws"
        for args in (["call", "echo", "1"], ["list"]):
            assert_error(synapse(*args, "--url", url, env=cli_env), 3, "handshake rejected: HTTP 404")


def test_a_wrong_path_names_the_endpoint(server: RunningServer, cli_env: dict[str, str]) -> None:
    """A synapse server at the wrong path: HTTP 404 and the text saying the endpoint is /ws."""
    url = server.url.replace("/ws", "/x")
    assert_error(synapse("call", "echo", "1", "--url", url, env=cli_env), 3, "HTTP 404", "the endpoint is /ws")


def test_batch_ids_count_every_line_blank_ones_included(server: RunningServer, cli_env: dict[str, str]) -> None:
    """A bad third line after two blank lines is reported as line 3 (its number in the file)."""
    result = synapse("call", "--batch", "-", "--url", server.url, env=cli_env, input='\n\n["nope"\n["echo",4]\n')
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == [3, 4]
    assert lines[0]["error"]["message"].startswith("line 3: not JSON")
    assert lines[1] == {"id": 4, "result": 4, "error": None}
    assert result.returncode == 1


def test_an_ascii_only_stdout_gets_json_escapes(server: RunningServer, cli_env: dict[str, str]) -> None:
    """PYTHONIOENCODING=ascii: the result is printed as JSON with \\u escapes, never a traceback."""
    env = {**cli_env, "PYTHONIOENCODING": "ascii"}
    result = synapse("call", "echo", "héllo ✓ 🎉", "--url", server.url, env=env)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == '"h\\u00e9llo \\u2713 \\ud83c\\udf89"\n'
    assert json.loads(result.stdout) == "héllo ✓ 🎉"


def test_short_help_and_plain_metavars(cli_env: dict[str, str]) -> None:
    """-h works; usage reads [APP] (not [[APP]]); no <str>-style metavars anywhere."""
    for command in ([], ["serve"], ["call"], ["list"]):
        result = synapse(*command, "-h", env={**cli_env, "COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        assert "[[" not in result.stdout and not re.search(r"<[a-z]", result.stdout), result.stdout
    assert "Usage: synapse serve [OPTIONS] [APP]" in synapse("serve", "-h", env=cli_env).stdout


def test_a_bare_synapse_prints_its_help_and_exits_2(cli_env: dict[str, str]) -> None:
    """`synapse` alone: the help on stderr, exit 2 (a usage error)."""
    result = synapse(env=cli_env)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("Usage: synapse [OPTIONS] COMMAND [ARGS]...")


def test_counts_agree_with_their_nouns() -> None:
    """The banner says "1 function", "2 functions"; close codes are explained once."""
    import io

    from rich.console import Console

    from synapse_cli import render
    from synapse_cli.settings import Settings
    from synapse_cli.wire import close_text

    one = [{"name": "f", "description": "", "params": {}, "result": {}}]
    for functions, title in ((one, "1 function "), (one * 2, "2 functions")):
        out = io.StringIO()
        Console(file=out, width=100).print(render.serve_banner(Settings(), functions, version="0"))
        assert title in out.getvalue()
    assert close_text(1009, "message too big") == "close code 1009 (message too big)"
    assert close_text(1012, "restarting") == "close code 1012 (service restart): restarting"
