"""The examples/ directory: each example runs against a real server, the way the README says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RunningServer, running_server, synapse_executable

from synapse_cli import Client, RPCError
from synapse_cli.runner import load_registry

EXAMPLES = Path(__file__).parent.parent / "examples"


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
