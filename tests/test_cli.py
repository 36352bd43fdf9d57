"""The real ``synapse`` command, run as a subprocess the way a user runs it (SPEC §4): output and exit codes."""

from __future__ import annotations

import contextlib
import importlib.metadata
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
# typer 0.28+ converts options with pydantic and words its help and messages its own way
TYPER_USES_PYDANTIC = tuple(int(part) for part in importlib.metadata.version("typer").split(".")[:2]) >= (0, 28)
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
    """synapse --help lists the commands on stdout, in SPEC §4's order (the bench group too), and exits 0."""
    result = synapse("--help", env=cli_env)
    assert (result.returncode, result.stderr) == (0, "")
    commands = result.stdout.split("Commands:\n", 1)[1]
    names = [line.split()[0] for line in commands.splitlines() if line.startswith("  ")]
    assert names == ["serve", "call", "list", "bench", "stubs"]


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
        (["call", "echo", "--timeout", "nan"], "timeout"),
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


@pytest.mark.skipif(
    TYPER_USES_PYDANTIC, reason="typer 0.28+ converts options with pydantic: pyproject's ceiling keeps users below it"
)
def test_call_does_not_import_pydantic(server: RunningServer, cli_env: dict[str, str]) -> None:
    """`synapse call` starts without pydantic (typer 0.28+ converts options with it: ~0.1 s per call)."""
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


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str, clean: bool = True) -> tuple[int, list[tuple[Any, ...]]]:
    """Run ``synapse ARGS`` in this process with ``runner.run`` replaced by a recorder that returns ``clean``
    (a graceful stop, or a forced one); (exit code, its calls)."""
    from typer.testing import CliRunner

    from synapse_cli.cli import app as cli
    from synapse_cli.server import runner

    calls: list[tuple[Any, ...]] = []

    def record(target: Any, settings: Any, **options: Any) -> bool:
        calls.append((target, settings, options))
        return clean

    monkeypatch.setattr(runner, "run", record)
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, calls


def test_serve_with_no_options_forwards_the_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """`synapse serve` hands runner.run exactly Settings() (the defaults, defined once) and a banner callback."""
    from synapse_cli.core.settings import Settings

    status, calls = invoke(monkeypatch, "serve")
    assert status == 0
    [(target, settings, options)] = calls
    assert (target, settings, options["reload"]) == (None, Settings(), False)
    assert callable(options["on_ready"])


def test_serve_exits_130_when_the_stop_was_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """runner.run reporting a forced stop (a second Ctrl-C) makes `synapse serve` exit 130, not 0."""
    status, calls = invoke(monkeypatch, "serve", clean=False)
    assert (status, len(calls)) == (130, 1)


def test_serve_forwards_every_option_to_runner_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every serve option arrives in the Settings given to runner.run, converted, and nothing else happens."""
    from synapse_cli.core.settings import Settings

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

    from synapse_cli.cli import app as cli
    from synapse_cli.server import runner

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
    """-h works; usage reads [APP] (not [[APP]]); no <str>-style metavars (typer 0.28+ adds its own)."""
    for command in ([], ["serve"], ["call"], ["list"]):
        result = synapse(*command, "-h", env={**cli_env, "COLUMNS": "200"})
        assert result.returncode == 0, result.stderr
        if not TYPER_USES_PYDANTIC:
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

    from synapse_cli.cli import render
    from synapse_cli.client.wire import close_text
    from synapse_cli.core.settings import Settings

    one = [{"name": "f", "description": "", "params": {}, "result": {}}]
    for functions, title in ((one, "1 function "), (one * 2, "2 functions")):
        out = io.StringIO()
        Console(file=out, width=100).print(render.serve_banner(Settings(), functions, version="0"))
        assert title in out.getvalue()
    assert close_text(1009, "message too big") == "close code 1009 (message too big)"
    assert close_text(1012, "restarting") == "close code 1012 (service restart): restarting"


# -- hostile servers: the command stays calm and quick (issues 11 and 17) ----------------------------------

HOSTILE_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A server frame (FIN, unmasked), any length."""
    size = len(payload)
    head = bytes((0x80 | opcode, size)) if size < 126 else bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    if size >= 2**16:
        head = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return head + payload


async def read_client_frame(reader: Any) -> tuple[int, bytes]:
    """The client's next frame: (opcode, unmasked payload)."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size >= 126:
        size = int.from_bytes(await reader.readexactly(2 if size == 126 else 8), "big")
    mask = await reader.readexactly(4)
    payload = await reader.readexactly(size)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@contextlib.contextmanager
def hostile_server(behaviour: Callable[[Any, Any], Any], *, handshake: bool = True) -> Iterator[str]:
    """A hand-written WebSocket server on 127.0.0.1 (own thread and loop): after the handshake, ``behaviour``."""
    import asyncio
    import base64
    import hashlib

    ready: list[str] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()

    async def handle(reader: Any, writer: Any) -> None:
        try:
            if not handshake:
                await asyncio.sleep(60)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            key = re.search(r"(?i)sec-websocket-key: *(\S+)", head)
            assert key is not None
            accept = base64.b64encode(hashlib.sha1(key.group(1).encode() + HOSTILE_GUID).digest()).decode()
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
            )
            await behaviour(reader, writer)
            await asyncio.sleep(60)  # and never close TCP on our side
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        ready.append(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws")
        started.set()
        await stop[0].wait()
        server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(10)
        loop.close()


def answering(*frames: bytes, answer_close: bool = False) -> Callable[[Any, Any], Any]:
    """A behaviour: read the call (id 1: a client's first), write ``frames``, then ignore the close frame."""

    async def behaviour(reader: Any, writer: Any) -> None:
        _, payload = await read_client_frame(reader)
        assert json.loads(payload)["id"] == 1
        for data in frames:
            writer.write(data)
        await writer.drain()
        while True:  # read on, answer nothing (a close frame included, unless asked to)
            opcode, payload = await read_client_frame(reader)
            if opcode == 0x8 and answer_close:
                writer.write(frame(payload, 0x8))
                writer.close()
                return

    return behaviour


def timed(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """``synapse ARGS`` and how many seconds it took, start-up included."""
    start = time.monotonic()
    result = synapse(*args, env=env, timeout=30)
    return result, time.monotonic() - start


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (bytes((0x81, 127)) + (2**63).to_bytes(8, "big"), "the reply is over the client's limit"),
        (bytes((0x81, 127)) + (50 * 2**20).to_bytes(8, "big") + b"x" * 65536, "(close code 1009)"),
        (frame(b'{"id":1,"result":"\xff","error":null}'), "invalid UTF-8 in a text message (close code 1007)"),
        (frame(b"\x03\xf4restarting", 0x8), "connection closed by the server with close code 1012"),
    ],
    ids=["frame-of-2^63-bytes", "50-MiB-reply", "not-utf8", "close-frame-tcp-kept-open"],
)
def test_a_hostile_reply_fails_at_once_with_exit_3(cli_env: dict[str, str], sent: bytes, message: str) -> None:
    """Issue 11's table: each fails at once (not at --timeout 3, not 10 s later), one line, exit 3."""
    with hostile_server(answering(sent)) as url:
        result, seconds = timed("call", "add_numbers", "1", "2", "--timeout", "3", "--url", url, env=cli_env)
    assert_error(result, 3, message)
    assert seconds < 2.5, seconds  # the start-up, the call and at most the 1 s close timeout


def test_no_handshake_is_bounded_by_the_timeout(cli_env: dict[str, str]) -> None:
    """TCP accepted, no handshake ever: exit 3 after --timeout 1, not 10 s."""
    with hostile_server(answering(), handshake=False) as url:
        result, seconds = timed("call", "add_numbers", "1", "2", "--timeout", "1", "--url", url, env=cli_env)
    assert_error(result, 3, "no answer to the opening handshake in time")
    assert 1.0 <= seconds < 2.5, seconds


def test_a_server_that_never_answers_the_close_costs_at_most_the_close_timeout(cli_env: dict[str, str]) -> None:
    """A correct reply, then no closing handshake: `synapse call` still prints 3 and exits 0 within ~1 s."""
    with hostile_server(answering(frame(b'{"id":1,"result":3,"error":null}'))) as url:
        result, seconds = timed("call", "add_numbers", "1", "2", "--url", url, env=cli_env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "3\n", "")
    assert seconds < 2.5, seconds


def test_ctrl_c_against_a_server_that_never_closes_exits_within_a_second(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl-C while the server neither answers the call nor the close: exit 130 within ~1 s."""
    with hostile_server(answering()) as url, background(
        "call", "sleep", "30", "--url", url, env=cli_env, log=tmp_path / "err"
    ) as process:  # fmt: skip
        time.sleep(1.0)  # started, connected, call sent
        start = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(10)
        assert time.monotonic() - start < 1.5
        assert process.returncode == 130


def test_an_error_naming_no_call_fails_the_call(cli_env: dict[str, str]) -> None:
    """`"id": null` with an error, one call in flight: it is that call's error, exit 1 at once."""
    error = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}'
    with hostile_server(answering(frame(error))) as url:
        result, seconds = timed("call", "add_numbers", "1", "2", "--timeout", "3", "--url", url, env=cli_env)
    assert_error(result, 1, "parse error (code -32700)")
    assert seconds < 2.5


def test_a_batch_cut_short_by_a_close_frame_answers_every_line_quietly(cli_env: dict[str, str]) -> None:
    """The server closes mid-batch: each line gets its connection error, exit 1, and no asyncio noise on stderr."""
    lines = "".join(f'["sleep", {i}]\n' for i in range(20))
    with hostile_server(answering(frame(b"\x03\xf4restarting", 0x8))) as url:
        result = synapse("call", "--batch", "-", "--url", url, env=cli_env, input=lines)
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [answer["id"] for answer in answers] == list(range(1, 21))
    # the first calls end with the close frame; later ones reconnect, and meet the same server again
    assert "connection closed by the server with close code 1012" in answers[0]["error"]["message"]
    assert all(answer["error"]["message"].startswith("connection ") for answer in answers), answers
    assert (result.returncode, result.stderr) == (1, "")


def test_junk_frames_give_one_summarised_warning(cli_env: dict[str, str]) -> None:
    """2,000 frames that are not replies, then the reply: the result, and two stderr lines, not 2,001."""
    junk = frame(b"not json") * 1000 + frame(b'{"hello":1}') * 1000
    with hostile_server(answering(junk, frame(b'{"id":1,"result":3,"error":null}'), answer_close=True)) as url:
        result = synapse("call", "add_numbers", "1", "2", "--url", url, env=cli_env)
    assert (result.returncode, result.stdout) == (0, "3\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert "not a reply" in lines[0] and lines[1].endswith("ignored 2000 messages in all that were not replies")


@pytest.mark.parametrize(
    "result",
    [b'{"functions": "nope"}', b'{"functions": [{"name": 1}]}', b'{"functions": [{"name": "f", "params": []}]}', b"3"],
    ids=["not-a-list", "name-not-a-string", "params-not-an-object", "not-an-object"],
)
def test_a_malformed_list_result_is_one_error_line_exit_1(cli_env: dict[str, str], result: bytes) -> None:
    """A list result of the wrong shape: `synapse list` says so in one line and exits 1 (no traceback)."""
    reply = b'{"id":1,"result":' + result + b',"error":null}'
    with hostile_server(answering(frame(reply), answer_close=True)) as url:
        assert_error(synapse("list", "--url", url, env=cli_env), 1, "the server's list result")


def test_remote_text_is_shown_as_text(cli_env: dict[str, str]) -> None:
    """Escape sequences and rich markup in a server's error message reach stderr escaped, never interpreted."""
    message = json.dumps("\x1b[31mred\x1b[0m [bold]x[/bold] \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\").encode()
    reply = b'{"id":1,"result":null,"error":{"code":1,"message":' + message + b"}}"
    with hostile_server(answering(frame(reply), answer_close=True)) as url:
        result = synapse("call", "echo", "1", "--url", url, env=cli_env)
    assert_error(result, 1, "\\x1b[31mred\\x1b[0m [bold]x[/bold] \\x1b]8;;http://evil")
    assert "\x1b" not in result.stderr


def test_function_descriptions_render_as_text_on_a_terminal() -> None:
    """`synapse list`'s table shows a server's markup and escape codes literally (forced terminal)."""
    import io

    from rich.console import Console

    from synapse_cli.cli import render

    hostile = {"name": "f[red]", "description": "[link=http://evil]click[/link] \x1b[2J", "params": {}, "result": {}}
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system=None).print(render.functions_table([hostile]))
    text = out.getvalue()
    assert "[link=http://evil]click[/link] \\x1b[2J" in text and "f[red]" in text
    assert "\x1b" not in text
