"""The examples/ directory and the README's own flow: each runs against a real server, the way the README says."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningServer, clean_env, running_server, serve_process, synapse_executable

from synapse_cli import Client, RPCError
from synapse_cli.server.runner import load_registry

EXAMPLES = Path(__file__).parent.parent / "examples"
README = Path(__file__).parent.parent / "README.md"
MAKE_SERVE_PORT = 8000  # the Makefile's PORT: `make serve`, the quick start's first step, keeps it


def readme_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)


def readme_commands(prefix: str) -> list[list[str]]:
    """The ``$ synapse ...`` commands of the README's console blocks that start with ``prefix``, split."""
    lines = [line for block in readme_blocks("console") for line in block.splitlines()]
    return [shlex.split(line[2:], comments=True) for line in lines if line.startswith(f"$ {prefix}")]


def option(command: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` in a split command line, or None."""
    return command[command.index(name) + 1] if name in command else None


@pytest.fixture(scope="module")
def functions_server() -> RunningServer:
    """A server running examples/functions.py."""
    with running_server(load_registry(str(EXAMPLES / "functions.py"))) as running:
        yield running  # type: ignore[misc]


async def test_functions_example_serves_every_kind(functions_server: RunningServer) -> None:
    """Sync, async, inline, typed-model and error-raising functions all answer as documented."""
    async with Client(functions_server.url) as client:
        assert await client.call("greet", "Ada") == "hello, Ada"
        assert await client.call("slow_square", 7) == 49
        assert await client.call("fetch_user", 42) == {"id": 42, "name": "user-42"}
        assert await client.call("area", {"width": 3, "height": 4.5}) == 13.5
        with pytest.raises(RPCError) as info:
            await client.call("withdraw", 500)
        assert (info.value.code, info.value.message) == (4002, "insufficient funds")
        assert info.value.data == {"balance": 100, "requested": 500}
        with pytest.raises(RPCError) as invalid:
            await client.call("area", {"width": -1, "height": 2})
        assert invalid.value.code == -32602


def test_demo_client_prints_the_seed_examples(server: RunningServer) -> None:
    """examples/demo_client.py prints the three add_numbers results with their exact types."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo_client.py"), server.url], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "add_numbers(1, 2) -> 3\nadd_numbers(3.5, 4.5) -> 8.0\nadd_numbers(-1, 10) -> 9\n"


@pytest.mark.skipif(shutil.which("jq") is None, reason="examples/pipeline.sh needs jq (apt-get install jq)")
def test_pipeline_example(server: RunningServer, cli_env: dict[str, str], tmp_path: Path) -> None:
    """examples/pipeline.sh sums 100 batch results with jq and reports the one failure."""
    env = {**cli_env, "SYNAPSE_URL": server.url, "SYNAPSE": synapse_executable()}
    env["PATH"] = f"{Path(synapse_executable()).parent}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(
        ["bash", str(EXAMPLES / "pipeline.sh")], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        'sum of results: 10100\nfailed calls:   {"id":101,"code":-32000,"message":"division by zero"}\n'
    )


def test_readme_servers_do_not_clash_with_make_serve() -> None:
    """Every `synapse serve` the README shows after `make serve` takes a port of its own."""
    serves = readme_commands("synapse serve")
    assert len(serves) >= 4
    assert [command for command in serves if option(command, "--port") in (None, str(MAKE_SERVE_PORT))] == []


def test_readme_own_functions_flow(tmp_path: Path) -> None:
    """The README's myfuncs.py, served as it says next to `make serve`, answers the calls it shows, as shown."""
    (source,) = [block for block in readme_blocks("python") if block.startswith("# myfuncs.py")]
    (tmp_path / "myfuncs.py").write_text(source)
    block = next(block for block in readme_blocks("console") if "$ synapse call norm" in block)
    lines = block.splitlines()
    calls = [(shlex.split(line[2:]), lines[i + 1]) for i, line in enumerate(lines) if line.startswith("$ ")]
    serve = next(command for command in readme_commands("synapse serve") if command[2] == "myfuncs.py")
    readme_url = f"ws://127.0.0.1:{option(serve, '--port')}/ws"
    assert all(option(command, "--url") == readme_url for command, _ in calls)
    with serve_process(app=str(tmp_path / "myfuncs.py")) as server:
        for command, shown in calls:
            command[command.index("--url") + 1] = server.url  # the README's port, as this test's free one
            done = subprocess.run(
                [synapse_executable(), *command[1:]], capture_output=True, text=True, timeout=30, env=clean_env()
            )
            error = shown.startswith("synapse: error:")
            assert (done.returncode, done.stderr if error else done.stdout) == (1 if error else 0, shown + "\n")
