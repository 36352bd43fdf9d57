"""runner: loading user registries, the handshake deadline, workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import APPS, running_server, synapse_executable
from websockets.sync.client import connect

from synapse_cli.core.registry import Registry
from synapse_cli.server.app import Settings, bind_socket, is_loopback
from synapse_cli.server.runner import LoadError, check_import, load_registry


def test_no_target_gives_the_builtins() -> None:
    """Without an application, the built-in functions are served."""
    names = [f["name"] for f in load_registry(None).describe()]
    assert names == ["events", "add_numbers", "echo", "sleep", "divide", "fail", "ticks", "publish_event"]


def test_load_from_file_path() -> None:
    """A path to a .py file finds the one Registry in it."""
    registry = load_registry(str(APPS / "pids.py"))
    assert isinstance(registry, Registry)
    assert "pid" in registry


def test_load_module_attr(monkeypatch: pytest.MonkeyPatch) -> None:
    """module:attr is imported from the working directory, as uvicorn does."""
    monkeypatch.chdir(APPS)
    monkeypatch.syspath_prepend(str(APPS))
    registry = load_registry("pkg.rpc:registry")
    assert [f["name"] for f in registry.describe()] == ["greet"]


@pytest.mark.parametrize("target", ["two.py:r2", "./two.py:r2", "two:r2", str(APPS / "two.py") + ":r2"])
def test_file_colon_attr_names_one_of_several_registries(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """file.py:attr, ./file.py:attr, module:attr and /abs/file.py:attr all pick the registry named."""
    monkeypatch.chdir(APPS)
    monkeypatch.syspath_prepend(str(APPS))
    assert [f["name"] for f in load_registry(target).describe()] == ["second"]


def test_several_registries_suggest_the_targets_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file with two registries suggests file.py:attr; a module with two suggests module:attr."""
    monkeypatch.chdir(APPS)
    monkeypatch.syspath_prepend(str(APPS))
    with pytest.raises(LoadError) as from_file:
        load_registry("two.py")
    assert str(from_file.value) == "two.py: found 2 Registry objects (r1, r2); name one: two.py:r1, two.py:r2"
    with pytest.raises(LoadError) as from_module:
        load_registry("pkg.rpc")
    message = "pkg.rpc: found 2 Registry objects (registry, other); name one: pkg.rpc:registry, pkg.rpc:other"
    assert str(from_module.value) == message


def test_serve_file_colon_attr_from_the_command_line(cli_env: dict[str, str]) -> None:
    """`synapse serve two.py:r2` (a file in the working directory) serves r2."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [synapse_executable(), "serve", "two.py:r2", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env, cwd=APPS, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2) as ws:
                    ws.send('{"id":1,"func":"second"}')
                    assert ws.recv(timeout=5) == '{"id":1,"result":2,"error":null}'
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1].decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=20)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing_file.py", "no such file"),
        (str(APPS / "broken.py"), "RuntimeError: this module is broken on purpose (broken.py, line 3)"),
        (str(APPS / "no_registry.py"), "found no Registry"),
        ("pkg.rpc", "found 2 Registry objects"),
        ("pkg.rpc:nothing", "attribute 'nothing' is not a synapse Registry"),
        ("no_such_module_xyz:registry", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_load_errors_are_clear(monkeypatch: pytest.MonkeyPatch, target: str, message: str) -> None:
    """Every way of naming a wrong application raises LoadError with a clear message."""
    monkeypatch.chdir(APPS)
    monkeypatch.syspath_prepend(str(APPS))
    with pytest.raises(LoadError, match=re.escape(message)):
        load_registry(target)


def test_check_import_loads_the_application_in_a_fresh_process(tmp_path: Path) -> None:
    """check_import: None for code that loads; one line naming the file and line for code that does not."""
    assert check_import(str(APPS / "pids.py")) is None
    broken = tmp_path / "typo.py"
    broken.write_text("from synapse_cli import Registry\n\nregistry = Registry(\n")
    assert check_import(str(broken)) == (
        f"error while importing {broken}: SyntaxError: '(' was never closed (typo.py, line 3)"
    )
    assert check_import(str(APPS / "broken.py")) == (
        f"error while importing {APPS / 'broken.py'}: "
        "RuntimeError: this module is broken on purpose (broken.py, line 3)"
    )


def test_loopback_detection() -> None:
    """Loopback hosts are recognised; anything else is public."""
    assert is_loopback("127.0.0.1") and is_loopback("127.3.2.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("example.com")


def test_settings_url() -> None:
    """The URL reflects scheme, host and port."""
    assert Settings(port=9).url == "ws://127.0.0.1:9/ws"
    assert Settings(host="::1", port=9, certfile="c").url == "wss://[::1]:9/ws"


def test_bind_socket_port_zero() -> None:
    """Binding port 0 yields a real free port before serving starts."""
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_silent_peer_is_dropped_after_the_handshake_deadline() -> None:
    """A socket that sends nothing (or trickles headers) is closed; real clients connect meanwhile."""
    with running_server(handshake_timeout=0.5) as server:
        silent = socket.create_connection(("127.0.0.1", server.port))
        trickle = socket.create_connection(("127.0.0.1", server.port))
        trickle.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        silent.settimeout(5)
        trickle.settimeout(5)
        with connect(server.url) as ws:
            ws.send('{"id":1,"func":"add_numbers","args":[1,2]}')
            assert ws.recv(timeout=5) == '{"id":1,"result":3,"error":null}'
        start = time.monotonic()
        assert silent.recv(10) == b""
        assert trickle.recv(10) == b""
        assert time.monotonic() - start < 3
        silent.close()
        trickle.close()


def two_workers(cli_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Callable[[], int]]:
    """`synapse serve tests/apps/pids.py --workers 2` on a free port, and a function asking one worker its pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [synapse_executable(), "serve", str(APPS / "pids.py"), "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env,
        start_new_session=True,
    )

    def pid() -> int:
        with connect(f"ws://127.0.0.1:{port}/ws", open_timeout=2) as ws:
            ws.send('{"id":1,"func":"pid"}')
            return int(ws.recv(timeout=5).split('"result":')[1].split(",")[0])

    return process, pid


def both_started(pid: Callable[[], int]) -> set[int]:
    """The two workers' pids, once both answer (within 20 s)."""
    deadline, started = time.monotonic() + 20, set()
    while len(started) < 2:
        assert time.monotonic() < deadline, "the workers did not both start"
        try:
            started.add(pid())
        except OSError:
            time.sleep(0.2)  # still starting
    return started


@pytest.mark.slow
def test_workers_share_the_port_and_stop_on_sigterm(cli_env: dict[str, str]) -> None:
    """--workers 2 answers from two processes on one port; SIGTERM stops them all with exit 0."""
    process, pid = two_workers(cli_env)
    try:
        assert process.pid not in both_started(pid)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
        assert process.returncode == 0
        assert b"Traceback" not in stderr
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def test_python_dash_m_runs_the_cli() -> None:
    """`python -m synapse_cli --version` is the same command."""
    out = subprocess.run([sys.executable, "-m", "synapse_cli", "--version"], capture_output=True, timeout=30)
    assert out.returncode == 0
    assert out.stdout.decode().startswith("synapse ")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_workers_get_a_fair_share_of_connections(cli_env: dict[str, str]) -> None:
    """Each worker listens on the port itself (SO_REUSEPORT): 40 connections land on both, every one answered."""
    process, pid = two_workers(cli_env)
    try:
        both_started(pid)
        answered = [pid() for _ in range(40)]  # every connection lands on a listening worker
        counts = sorted(answered.count(worker) for worker in set(answered))
        assert len(counts) == 2 and process.pid not in answered
        assert counts[0] >= 8, counts  # binomial(40, 1/2) gives fewer than 8 once in ~100,000 runs
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=20)


@pytest.mark.slow
def test_a_second_server_on_a_port_with_workers_fails(cli_env: dict[str, str]) -> None:
    """Workers listen with SO_REUSEPORT, yet a second `serve --workers 2` on their port fails as usual."""
    process, pid = two_workers(cli_env)
    try:
        both_started(pid)
        port = process.args[process.args.index("--port") + 1]  # type: ignore[union-attr]
        second = subprocess.run(
            [synapse_executable(), "serve", "--port", str(port), "--workers", "2"],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=30,
        )
        assert second.returncode == 2  # a usage error (docs/shell-client.md, exit codes): the port is taken
        assert second.stderr.strip().startswith(f"synapse: error: cannot listen on 127.0.0.1:{port}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=20)
