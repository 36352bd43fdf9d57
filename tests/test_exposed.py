"""Server-to-client calls with the Python client: what a Client exposes, called by a real server's ctx.call.

The server is tests/apps/context_app.py (its ``ask`` calls the caller back and answers with the result
or the error's name and text); the client is :class:`synapse_cli.Client` with exposed functions.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import RunningServer, clean_env, running_server, serve_process, synapse_executable

from synapse_cli import Client, ConnectionLost, Context, Registry, RPCError, SyncClient

APPS = Path(__file__).parent / "apps"


def _import_app() -> ModuleType:
    """tests/apps/context_app.py under a private name (its records are the ones the served registry writes)."""
    spec = importlib.util.spec_from_file_location("synapse_test_exposed_app", APPS / "context_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


app = _import_app()


@pytest.fixture(scope="module")
def served() -> Iterator[RunningServer]:
    """The context app, without tokens."""
    with running_server(app.registry) as running:
        yield running


class Record:
    """What the client's exposed functions saw."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()


def exposed_registry(record: Record) -> Registry:
    registry = Registry()

    @registry.function(inline=True)
    def echo(value: Any) -> Any:
        """The server's value, back."""
        return value

    @registry.function
    def double(n: int) -> int:
        """A sync function: runs in a thread."""
        return 2 * n

    @registry.function
    async def refuse(reason: str) -> None:
        """An RPCError passes through to the server unchanged."""
        raise RPCError(reason, 4100, {"why": reason})

    @registry.function
    async def crash() -> None:
        """Anything else is -32603 "internal error"."""
        raise KeyError("secret detail")

    @registry.function
    async def hang() -> None:
        """Never answers by itself: only a cancel ends it."""
        record.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            record.cancelled.set()
            raise

    @registry.function(inline=True)
    def progress(step: int, of: int) -> None:
        """Called by the server's notifications (inline: in order, before the call's reply is read)."""
        record.seen.append((step, of))

    return registry


@pytest.fixture
async def client(served: RunningServer, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Client, Record]]:
    """A connected client exposing the functions above, in the dialect the test asks for (native by default)."""
    record = Record()
    dialect = getattr(request, "param", "native")
    async with Client(served.url, dialect=dialect, functions=exposed_registry(record)) as connected:
        yield connected, record


async def ask(client: Client, func: str, *args: Any, timeout: float = 2.0) -> Any:
    return await client.call("ask", func, list(args), timeout)


@pytest.mark.parametrize("client", ["native", "jsonrpc"], indirect=True)
async def test_the_server_calls_what_the_client_exposes(client: tuple[Client, Record]) -> None:
    """ctx.call runs the client's function (inline or in a thread) and returns its result, in both dialects."""
    connected, _ = client
    assert await ask(connected, "echo", {"a": [1, 2]}) == {"result": {"a": [1, 2]}}
    assert await ask(connected, "double", 21) == {"result": 42}
    results = await asyncio.gather(*(ask(connected, "double", n) for n in range(20)))
    assert results == [{"result": 2 * n} for n in range(20)]


@pytest.mark.parametrize("client", ["native", "jsonrpc"], indirect=True)
async def test_the_client_answers_with_the_same_errors_as_a_server(client: tuple[Client, Record]) -> None:
    """Not exposed: -32601; arguments that do not fit: -32602; RPCError passes; other exceptions: -32603."""
    connected, _ = client
    native = connected.dialect == "native"  # JSON-RPC words its standard codes as its specification does
    assert await ask(connected, "missing") == {
        "raised": "RPCError",
        "message": "function not found: missing (code -32601)" if native else "Method not found (code -32601)",
    }
    assert await ask(connected, "double", "two") == {
        "raised": "RPCError",
        "message": "invalid arguments for double (code -32602)" if native else "Invalid params (code -32602)",
    }
    assert await ask(connected, "refuse", "no") == {"raised": "RPCError", "message": "no (code 4100)"}
    assert await ask(connected, "crash") == {"raised": "RPCError", "message": "internal error (code -32603)"}
    assert await connected.call("whoami") is not None  # the connection still serves


async def test_a_client_exposing_nothing_answers_function_not_found(served: RunningServer) -> None:
    """A client with no functions still answers the server's call: -32601, not a timeout."""
    async with Client(served.url) as bare:
        assert await ask(bare, "echo", 1) == {"raised": "RPCError", "message": "function not found: echo (code -32601)"}


async def test_expose_registers_functions_with_or_without_arguments(served: RunningServer) -> None:
    """client.expose works bare, with a name, and as a plain call; keyword calls from the server work too."""
    async with Client(served.url) as connected:

        @connected.expose
        def echo(value: Any) -> Any:
            return ["echoed", value]

        @connected.expose(name="shout")
        def loud(text: str) -> str:
            return text.upper()

        assert await ask(connected, "echo", 1) == {"result": ["echoed", 1]}
        assert await ask(connected, "shout", "hi") == {"result": "HI"}
        assert await connected.call("ask_by_name", 3) == ["echoed", 3]
        assert [function.name for function in connected.functions] == ["echo", "shout"]


async def test_a_server_timeout_cancels_the_clients_running_function(client: tuple[Client, Record]) -> None:
    """The server gives up after its timeout: its cancel reaches the client, whose handler is cancelled."""
    connected, record = client
    assert await ask(connected, "hang", timeout=0.3) == {
        "raised": "CallTimeout",
        "message": "no reply to hang within 0.3 s",
    }
    await asyncio.wait_for(record.cancelled.wait(), 5)


async def test_closing_the_connection_cancels_the_clients_running_functions(served: RunningServer) -> None:
    """The connection ends while the server's call runs on the client: the client cancels it."""
    record = Record()
    connected = Client(served.url, functions=exposed_registry(record))
    await connected.connect()
    outer = asyncio.ensure_future(ask(connected, "hang", timeout=30))
    await asyncio.wait_for(record.started.wait(), 5)
    await connected.close()
    await asyncio.wait_for(record.cancelled.wait(), 5)
    with pytest.raises(ConnectionLost, match="connection closed"):
        await outer


@pytest.mark.parametrize("client", ["native", "jsonrpc"], indirect=True)
async def test_notifications_run_the_exposed_function_of_that_name(client: tuple[Client, Record]) -> None:
    """ctx.notify's notifications call the client's function with their params, before the call's reply."""
    connected, record = client
    assert await connected.call("progress", 3) == "done"
    assert record.seen == [(0, 3), (1, 3), (2, 3)]


def test_the_blocking_client_exposes_functions_too(served: RunningServer) -> None:
    """SyncClient(functions=...) answers the server's calls from its own loop."""
    registry = Registry()

    @registry.function(inline=True)
    def echo(value: Any) -> Any:
        return value

    with SyncClient(served.url, functions=registry) as blocking:
        assert blocking.call("ask", "echo", ["sync"], 2) == {"result": "sync"}


def test_a_client_cannot_expose_streams_or_context_functions() -> None:
    """Streams, Context parameters and checks are the server's: exposing one is a ValueError."""
    client = Client()

    async def ticks() -> AsyncIterator[int]:
        yield 1

    def needs(ctx: Context) -> None:
        return None

    with pytest.raises(ValueError, match="'ticks': a client cannot expose a stream function"):
        client.expose(ticks)
    with pytest.raises(ValueError, match="'needs': a client's functions take no Context and no requires"):
        client.expose(needs)
    registry = Registry()
    registry.add(lambda value: value, name="echo", requires=lambda ctx: True)
    with pytest.raises(ValueError, match="'echo': a client's functions take no Context and no requires"):
        Client(functions=registry)
    assert list(client.functions) == []  # nothing half-registered


# -- synapse call --expose ------------------------------------------------------------------------


def run_call(*args: str) -> subprocess.CompletedProcess[str]:
    """``synapse call ARGS`` as a user runs it, bounded in time."""
    command = [synapse_executable(), "call", *args]
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=60)


@pytest.mark.parametrize("dialect", [[], ["--jsonrpc"]], ids=["native", "jsonrpc"])
def test_synapse_call_expose_serves_functions_back_while_it_waits(served: RunningServer, dialect: list[str]) -> None:
    """``--expose file.py`` loads the file's Registry; the server's ctx.call runs it in the shell client."""
    exposed = str(APPS / "client_functions.py")
    done = run_call("ask", "shout", '["hi"]', "--url", served.url, "--expose", exposed, *dialect)
    assert (done.returncode, done.stdout, done.stderr) == (0, '{"result":"HI"}\n', "")
    bare = run_call("ask", "shout", '["hi"]', "--url", served.url, *dialect)
    message = "function not found: shout" if not dialect else "Method not found"
    assert bare.stdout == f'{{"raised":"RPCError","message":"{message} (code -32601)"}}\n'


@pytest.mark.parametrize(
    "target, message",
    [
        ("no/such/file.py", "synapse: error: --expose: no such file: no/such/file.py\n"),
        (
            str(APPS / "streams.py"),
            "synapse: error: --expose: function 'prices': a client cannot expose a stream function\n",
        ),
    ],
)
def test_synapse_call_expose_refuses_what_it_cannot_serve(served: RunningServer, target: str, message: str) -> None:
    """A file that is not there, or that holds a stream function, is a usage error (exit 2), before connecting."""
    done = run_call("whoami", "--url", served.url, "--expose", target)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message)


def test_the_both_ways_example_runs_as_its_docstring_says(tmp_path: Path) -> None:
    """examples/both_ways.py served with a token file, called by ``synapse call --expose examples/client_functions.py``:
    identity, a call back, notifications on stderr, and a guarded function that asks for confirmation."""
    examples = Path(__file__).parent.parent / "examples"
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("tok-admin,admin\ntok-guest,guest\n")
    with serve_process("--token-file", str(tokens), app=str(examples / "both_ways.py")) as server:

        def call(*args: str, token: str = "tok-admin", stdin: str = "") -> subprocess.CompletedProcess[str]:
            expose = ["--expose", str(examples / "client_functions.py")]
            command = [synapse_executable(), "call", *args, "--url", server.url, "--token", token, *expose]
            return subprocess.run(command, input=stdin, capture_output=True, text=True, env=clean_env(), timeout=60)

        whoami = call("whoami", token="tok-guest")
        assert json.loads(whoami.stdout)["identity"] == "guest"
        asked = call("ask_client", "7")
        assert (asked.returncode, asked.stdout, asked.stderr) == (0, "7\n", "")
        counted = call("countdown", "3")
        assert (counted.returncode, counted.stdout, counted.stderr) == (0, '"liftoff"\n', "3...\n2...\n1...\n")
        refused = call("delete_everything", token="tok-guest")
        assert (refused.returncode, refused.stderr) == (
            1,
            "synapse: error: forbidden: delete_everything (code -32007)\n",
        )
        confirmed = call("delete_everything", stdin="y\n")
        assert (confirmed.returncode, confirmed.stdout) == (0, '"deleted (not really)"\n')
        assert confirmed.stderr == "Delete everything? [y/N] "
        declined = call("delete_everything", stdin="n\n")
        assert (declined.returncode, declined.stderr) == (
            1,
            "Delete everything? [y/N] synapse: error: not confirmed (code 4090)\n",
        )


async def test_calls_waiting_on_the_client_do_not_stop_the_server_reading_its_answers() -> None:
    """With every slot taken by calls waiting on ctx.call (and as many held), the server still reads the answers."""
    record = Record()
    with running_server(app.registry, max_inflight=2) as small:
        async with Client(small.url, functions=exposed_registry(record)) as connected:
            results = await asyncio.wait_for(asyncio.gather(*(ask(connected, "echo", n) for n in range(4))), 10)
    assert results == [{"result": n} for n in range(4)]


# -- the docs' examples, run as written ---------------------------------------------------------------

ROOT = Path(__file__).parent.parent
DOCS_URL = "ws://127.0.0.1:8003/ws"


def docs_section(page: str, heading: str) -> str:
    """The text of ``docs/page`` from ``heading`` to the next heading of its level."""
    text = (ROOT / "docs" / page).read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def fenced(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def test_the_documented_call_context_session_runs_as_shown(tmp_path: Path) -> None:
    """docs/serving.md's console session (token file, refusal, --expose, notifications, a confirmation)
    prints exactly what it shows, stderr and stdout in the order they come."""
    [block] = [b for b in fenced(docs_section("serving.md", "## Who calls"), "console") if "both_ways" in b]
    lines = block.splitlines()
    printf, serve = shlex.split(lines[0][2:]), shlex.split(lines[1][2:])
    assert (
        printf[0] == "printf"
        and printf[2:] == [">", "tokens.csv"]
        and serve[:3] == ["synapse", "serve", "examples/both_ways.py"]
    )
    (tmp_path / "tokens.csv").write_text(printf[1].encode().decode("unicode_escape"))
    options = [str(tmp_path / "tokens.csv") if word == "tokens.csv" else word for word in serve[3:]]
    options[options.index("--port") + 1] = "0"
    calls = [(i, line) for i, line in enumerate(lines) if line.startswith("$ ") and "synapse call" in line]
    assert len(calls) == 5
    with serve_process(*options[2:], app=str(ROOT / serve[2])) as server:
        for index, line in calls:
            shown = "\n".join(itertools.takewhile(lambda text: not text.startswith("$ "), lines[index + 1 :]))
            stdin, _, command = line[2:].rpartition("| ")
            words = [server.url if word == DOCS_URL else word for word in shlex.split(command)]
            feed = shlex.split(stdin)[1] + "\n" if stdin else ""
            done = subprocess.run(
                [synapse_executable(), *words[1:]], input=feed, capture_output=True, text=True, env=clean_env(),
                cwd=ROOT, timeout=60,
            )  # fmt: skip
            assert done.stderr + done.stdout == shown + "\n", line
            assert done.returncode == (1 if "synapse: error:" in shown else 0), line


def test_the_documented_python_client_exposing_functions_prints_what_it_says(tmp_path: Path) -> None:
    """docs/python-client.md's example: the server calls the client's echo and its inline tick."""
    [source] = fenced(docs_section("python-client.md", "## Functions the server calls"), "python")
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("tok-admin,admin\n")
    with serve_process("--token-file", str(tokens), app=str(ROOT / "examples" / "both_ways.py")) as server:
        script = tmp_path / "client.py"
        script.write_text(source.replace(DOCS_URL, server.url))
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env=clean_env(), timeout=60
        )
    assert (done.returncode, done.stdout, done.stderr) == (0, "7\n2...\n1...\nliftoff\n", "")


def test_the_protocol_pages_both_ways_exchange_is_what_goes_over_the_wire() -> None:
    """docs/protocol.md's exchange, sent as shown to examples/both_ways.py, gets exactly the frames shown."""
    from websockets.sync.client import connect

    from synapse_cli.server.runner import load_registry

    [block] = fenced(docs_section("protocol.md", "## Both ways"), "")
    registry = load_registry(str(ROOT / "examples" / "both_ways.py"))
    with running_server(registry) as server, connect(server.url, proxy=None, open_timeout=5) as ws:
        for line in block.splitlines():
            direction, message = line.split(" ", 1)
            if direction == "-->":
                ws.send(message)
            else:
                assert json.loads(ws.recv(timeout=5)) == json.loads(message), line
