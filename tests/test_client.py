"""The client library against real servers on 127.0.0.1 (SPEC §3): routing, errors, timeouts, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, clean_env, load_app, synapse_executable
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as websockets_serve
from websockets.exceptions import WebSocketException

import synapse_cli
from synapse_cli import (
    CallTimeout,
    Client,
    ConnectError,
    ConnectionLost,
    Registry,
    RPCError,
    SynapseError,
    SyncClient,
)
from synapse_cli.client.client import backoff_delays

BUILTINS = {"add_numbers", "echo", "sleep", "divide", "fail", "ticks", "events", "publish_event"}


# -- helpers -------------------------------------------------------------------------------------


def pending_calls(running: RunningServer) -> int:
    """Calls in flight on the server, over all its connections."""
    return sum(len(connection.session.calls) for connection in list(running.state.connections))


async def eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stubborn_registry() -> Registry:
    """A registry whose ``stubborn`` call ignores cancellation, so its reply always arrives (late)."""
    registry = Registry()

    @registry.function
    async def stubborn(seconds: float, value: str) -> str:
        """Sleep ``seconds`` even when cancelled, then return ``value``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(left)
        return value

    @registry.function(inline=True)
    def echo(value: Any) -> Any:
        """Return the value."""
        return value

    return registry


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[tuple[str, list[Any]]]:
    """A foreign native-dialect server that records every request id; calling ``drop`` closes the connection."""
    seen: list[Any] = []

    async def handler(ws: ServerConnection) -> None:
        async for text in ws:
            message = json.loads(text)
            if message.get("op") == "cancel":
                continue
            seen.append(message["id"])
            if message["func"] == "drop":
                await ws.close()
                return
            args = message.get("args") or [None]
            await ws.send(json.dumps({"id": message["id"], "result": args[0], "error": None}))

    async with websockets_serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", seen


@contextlib.asynccontextmanager
async def raw_tcp_server(behaviour: str) -> AsyncIterator[int]:
    """A TCP server that is not a WebSocket server: ``close`` hangs up, ``http`` answers 200, ``silent`` waits."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if behaviour == "silent":
            held.append(writer)
            return
        if behaviour == "http":
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def _serve_command(port: int) -> list[str]:
    return [synapse_executable(), "serve", "--port", str(port), "--log-level", "warning"]


@contextlib.contextmanager
def serve_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``synapse serve --port PORT`` as a real process; killed (SIGKILL) at the end if still running."""
    process = subprocess.Popen(
        _serve_command(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
        cwd=Path(__file__).parent,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def listening(port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on port {port} after {timeout} s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            await writer.wait_closed()
            return


# -- calls and routing ---------------------------------------------------------------------------


async def test_call_positional_and_by_name(server: RunningServer) -> None:
    """call() passes positional arguments and keyword arguments (by name) and returns the result."""
    async with Client(server.url) as client:
        assert await client.call("add_numbers", 1, 2) == 3
        assert await client.call("add_numbers", a=1, b=2) == 3
        assert await client.call("add_numbers", 3.5, 4.5) == 8.0
        assert await client.call("echo", value={"nested": [1, "two", None]}) == {"nested": [1, "two", None]}


async def test_thousand_concurrent_calls_share_one_connection_and_are_routed_by_id(make_server: Any) -> None:
    """1,000 concurrent calls over one Client all get their own result, over a single connection."""
    with make_server() as running:
        async with Client(running.url) as client:
            values = [{"n": n, "text": f"call {n}"} for n in range(1000)]
            results = await asyncio.wait_for(asyncio.gather(*(client.call("echo", v) for v in values)), 30)
            assert results == values
            assert len(running.state.connections) == 1


async def test_ids_are_unique_and_never_reused_across_reconnects() -> None:
    """Request ids never repeat on a client, concurrently, sequentially or after a reconnect."""
    async with recording_server() as (url, seen):
        async with Client(url, backoff_base=0.01, backoff_cap=0.05) as client:
            assert await asyncio.gather(*(client.call("echo", n) for n in range(200))) == list(range(200))
            with pytest.raises(ConnectionLost):
                await client.call("drop")
            assert await eventually(lambda: not client.connected)
            assert [await client.call("echo", n) for n in range(50)] == list(range(50))
    assert len(seen) == 251
    assert len(set(seen)) == 251


async def test_list_describes_the_builtin_functions(server: RunningServer) -> None:
    """list() returns one description per function with name, description, params and result schemas."""
    async with Client(server.url) as client:
        functions = await client.list()
    assert {f["name"] for f in functions} == BUILTINS
    add = next(f for f in functions if f["name"] == "add_numbers")
    assert set(add) == {"name", "description", "params", "result"}
    assert add["params"]["required"] == ["a", "b"]


# -- remote errors -------------------------------------------------------------------------------


async def test_rpc_error_carries_code_message_and_data(server: RunningServer) -> None:
    """A remote error raises RPCError with the server's code, message and data."""
    async with Client(server.url) as client:
        with pytest.raises(RPCError) as caught:
            await client.call("divide", 1, 0)
        assert (caught.value.code, caught.value.message, caught.value.data) == (-32000, "division by zero", {"a": 1})
        with pytest.raises(RPCError) as caught:
            await client.call("add_numberz", 1, 2)
        assert (caught.value.code, caught.value.message) == (-32601, "function not found: add_numberz")
        with pytest.raises(RPCError) as caught:
            await client.call("add_numbers", "1", 2)
        assert caught.value.code == -32602
        assert all(set(item) >= {"loc", "msg", "type"} for item in caught.value.data)
        with pytest.raises(RPCError) as caught:
            await client.call("fail")
        assert (caught.value.code, caught.value.message, caught.value.data) == (
            -32603,
            "internal error",
            {"type": "RuntimeError"},
        )
        assert await client.call("echo", "after errors") == "after errors"


async def test_application_error_code_passes_through(make_server: Any) -> None:
    """An RPCError raised with its own code by a user function reaches the caller unchanged."""
    with make_server(load_app("userfuncs")) as running:
        async with Client(running.url) as client:
            with pytest.raises(RPCError) as caught:
                await client.call("withdraw", 5)
    assert (caught.value.code, caught.value.message, caught.value.data) == (
        4002,
        "insufficient funds",
        {"balance": 3, "asked": 5},
    )


# -- timeouts and cancellation -------------------------------------------------------------------


async def test_call_timeout_sends_cancel_and_the_connection_stays_usable(make_server: Any) -> None:
    """Client(timeout=0.2) raises CallTimeout on sleep 2, the server gets cancel, the next call works."""
    with make_server() as running:
        async with Client(running.url, timeout=0.2) as client:
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                await client.call("sleep", 2)
            assert time.monotonic() - started < 1.0
            assert await eventually(lambda: pending_calls(running) == 0, 1.0)
            assert len(running.state.connections) == 1
            assert await client.call("echo", "mine") == "mine"


async def test_late_reply_after_timeout_is_dropped(make_server: Any) -> None:
    """The reply to a timed-out call arrives later and is dropped: the calls around it get their own results."""
    with make_server(stubborn_registry()) as running:
        async with Client(running.url, timeout=0.3) as client:
            with pytest.raises(CallTimeout):
                await client.call("stubborn", 0.6, "late")
            loop = asyncio.get_running_loop()
            until = loop.time() + 0.8  # the late reply lands while these calls are in flight
            count = 0
            while loop.time() < until:
                assert await client.call("echo", count) == count
                count += 1
            assert count > 10
            assert await client.call("stubborn", 0.05, "mine") == "mine"


async def test_wait_for_around_a_call_sends_cancel(make_server: Any) -> None:
    """asyncio.wait_for around a call cancels it and the server receives cancel (its call stops)."""
    with make_server() as running:
        async with Client(running.url, timeout=None) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.call("sleep", 5), 0.2)
            assert await eventually(lambda: pending_calls(running) == 0, 1.0)
            assert len(running.state.connections) == 1
            assert await client.call("add_numbers", 2, 2) == 4


async def test_cancelling_the_awaiting_task_sends_cancel(make_server: Any) -> None:
    """Cancelling the task awaiting a call sends cancel to the server and keeps the connection healthy."""
    with make_server() as running:
        async with Client(running.url) as client:
            task = asyncio.ensure_future(client.call("sleep", 5))
            assert await eventually(lambda: pending_calls(running) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await eventually(lambda: pending_calls(running) == 0, 1.0)
            assert len(running.state.connections) == 1
            assert client.connected
            assert await client.call("echo", "still here") == "still here"


async def test_cancelling_a_gather_sends_cancel_for_every_call(make_server: Any) -> None:
    """Cancelling a gather of 20 calls sends cancel for each: the server stops them all, the connection stays."""
    with make_server() as running:
        async with Client(running.url) as client:
            calls = asyncio.gather(*(client.call("sleep", 5) for _ in range(20)))
            assert await eventually(lambda: pending_calls(running) == 20)
            calls.cancel()
            with pytest.raises(asyncio.CancelledError):
                await calls
            assert await eventually(lambda: pending_calls(running) == 0, 1.0)
            assert len(running.state.connections) == 1
            assert await client.call("echo", "still here") == "still here"


# -- connecting ----------------------------------------------------------------------------------


async def test_refused_port_raises_connect_error() -> None:
    """A port nobody listens on raises ConnectError (no HTTP status) naming the URL."""
    url = f"ws://127.0.0.1:{unused_port()}/ws"
    with pytest.raises(ConnectError) as caught:
        async with Client(url):
            pass
    assert caught.value.status is None
    assert caught.value.url == url
    assert url in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["notaurl", "", "http://127.0.0.1:8000/ws", "ws://127.0.0.1:99999/ws", "ws://127.0.0.1:abc/ws", "ws://[::1/ws"],
)
async def test_bad_url_raises_connect_error(url: str) -> None:
    """A URL that is not a valid ws:// or wss:// URL raises ConnectError, never ValueError."""
    with pytest.raises(SynapseError) as caught:
        async with Client(url):
            pass
    assert type(caught.value) is ConnectError


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_handshake_rejected_with_401_without_the_right_token(make_server: Any, token: str | None) -> None:
    """A server with --token refuses a missing or wrong token: ConnectError with status 401."""
    with make_server(token="s") as running:
        with pytest.raises(ConnectError) as caught:
            async with Client(running.url, token=token):
                pass
    assert caught.value.status == 401
    assert "401" in str(caught.value)


async def test_right_token_is_accepted(make_server: Any) -> None:
    """The right token passes the handshake and calls work."""
    with make_server(token="s") as running:
        async with Client(running.url, token="s") as client:
            assert await client.call("add_numbers", 1, 2) == 3


async def test_handshake_rejected_with_404_and_503(make_server: Any) -> None:
    """A refused handshake carries its HTTP status: 404 for a path that is not /ws, 503 past max connections."""
    with make_server(max_connections=1) as running:
        with pytest.raises(ConnectError) as caught:
            async with Client(running.url.replace("/ws", "/nope")):
                pass
        assert caught.value.status == 404
        async with Client(running.url) as first:
            assert await first.call("echo", 1) == 1
            with pytest.raises(ConnectError) as caught:
                async with Client(running.url):
                    pass
            assert caught.value.status == 503


async def test_tls_with_cafile_or_insecure(make_server: Any, certificate: tuple[str, str]) -> None:
    """wss:// works when the CA is trusted (cafile) or checks are off (insecure); an unknown CA is a ConnectError."""
    cert, key = certificate
    with make_server(certfile=cert, keyfile=key) as running:
        assert running.url.startswith("wss://")
        async with Client(running.url, cafile=cert) as client:
            assert await client.call("add_numbers", 1, 2) == 3
        async with Client(running.url, insecure=True) as client:
            assert await client.call("echo", "tls") == "tls"
        with pytest.raises(ConnectError) as caught:
            async with Client(running.url):
                pass
        assert caught.value.status is None


# -- connection loss and reconnect ---------------------------------------------------------------


async def test_server_death_fails_each_pending_call_once_then_reconnects_or_gives_up() -> None:
    """50 in-flight calls fail once with ConnectionLost when the server dies; the next call reconnects or fails."""
    port = unused_port()
    url = f"ws://127.0.0.1:{port}/ws"
    client = Client(url, timeout=30, reconnect_attempts=3, backoff_base=0.05, backoff_cap=0.2)
    with serve_process(port) as first:
        await listening(port)
        await client.connect()
        assert await client.call("echo", "up") == "up"
        tasks = [asyncio.ensure_future(client.call("sleep", 20)) for _ in range(50)]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in tasks)
        first.kill()
        started = time.monotonic()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert time.monotonic() - started < 3
    assert len(outcomes) == 50
    assert all(type(outcome) is ConnectionLost for outcome in outcomes), outcomes
    assert not client.connected
    with serve_process(port):
        await listening(port)
        assert await asyncio.wait_for(client.call("echo", "back"), 10) == "back"
    assert await eventually(lambda: not client.connected, 5)
    started = time.monotonic()
    with pytest.raises(ConnectError):
        await asyncio.wait_for(client.call("echo", "gone"), 10)
    assert time.monotonic() - started < 3
    await client.close()


def test_backoff_delays_are_exponential_with_full_jitter_and_a_cap() -> None:
    """backoff_delays: attempt n waits uniform(0, min(cap, base * 2**n)), reproducible with a seeded Random."""
    delays = backoff_delays(10, base=0.1, cap=1.0, rng=random.Random(1234))
    reference = random.Random(1234)
    bounds = [min(1.0, 0.1 * 2**n) for n in range(10)]
    assert bounds == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert delays == [reference.uniform(0.0, bound) for bound in bounds]
    expected = [0.096645, 0.088147, 0.002997, 0.728781, 0.939269, 0.582228, 0.671563, 0.083938, 0.766481, 0.23681]
    assert delays == pytest.approx(expected, abs=1e-6)  # Random(1234)'s draws, scaled by each attempt's bound
    assert all(0.0 <= delay <= bound for delay, bound in zip(delays, bounds, strict=True))
    samples = [backoff_delays(4, base=0.1, cap=1.0, rng=random.Random(seed))[3] for seed in range(500)]
    assert min(samples) < 0.08 and max(samples) > 0.72  # full jitter spans [0, 0.8], not [0.4, 0.8]
    assert backoff_delays(3, rng=random.Random(7)) == backoff_delays(3, rng=random.Random(7))


# -- dialects and the blocking facade ------------------------------------------------------------


async def test_jsonrpc_dialect_against_the_synapse_server(server: RunningServer) -> None:
    """dialect="jsonrpc" calls, raises RPCError and lists functions against synapse serve."""
    async with Client(server.url, dialect="jsonrpc") as client:
        assert await client.call("add_numbers", 1, 2) == 3
        assert await client.call("add_numbers", a=-1, b=10) == 9
        with pytest.raises(RPCError) as caught:
            await client.call("add_numberz", 1, 2)
        assert caught.value.code == -32601
        with pytest.raises(RPCError) as caught:
            await client.call("divide", 1, 0)
        assert (caught.value.code, caught.value.message, caught.value.data) == (-32000, "division by zero", {"a": 1})
        assert {f["name"] for f in await client.list()} == BUILTINS


def test_sync_client_and_call_facade(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """SyncClient and synapse_cli.call block and return results; remote errors raise RPCError."""
    monkeypatch.delenv("SYNAPSE_TOKEN", raising=False)
    assert synapse_cli.call(server.url, "add_numbers", 1, 2) == 3
    assert synapse_cli.call(server.url, "add_numbers", a=1, b=2) == 3
    with SyncClient(server.url) as client:
        assert client.call("echo", "sync") == "sync"
        assert {f["name"] for f in client.list()} == BUILTINS
        with pytest.raises(RPCError) as caught:
            client.call("divide", 1, 0)
        assert caught.value.code == -32000
    with pytest.raises(ConnectError):
        synapse_cli.call(f"ws://127.0.0.1:{unused_port()}/ws", "echo", 1)


def test_call_facade_reads_synapse_token(make_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """synapse_cli.call takes the token from SYNAPSE_TOKEN."""
    with make_server(token="s") as running:
        monkeypatch.setenv("SYNAPSE_TOKEN", "s")
        assert synapse_cli.call(running.url, "add_numbers", 20, 22) == 42
        monkeypatch.setenv("SYNAPSE_TOKEN", "wrong")
        with pytest.raises(ConnectError) as caught:
            synapse_cli.call(running.url, "add_numbers", 20, 22)
        assert caught.value.status == 401


# -- every foreign exception is mapped -----------------------------------------------------------


async def _refused(**_: Any) -> None:
    async with Client(f"ws://127.0.0.1:{unused_port()}/ws") as client:
        await client.call("echo", 1)


async def _hang_up(**_: Any) -> None:
    async with raw_tcp_server("close") as port, Client(f"ws://127.0.0.1:{port}/ws") as client:
        await client.call("echo", 1)


async def _plain_http(**_: Any) -> None:
    async with raw_tcp_server("http") as port, Client(f"ws://127.0.0.1:{port}/ws") as client:
        await client.call("echo", 1)


async def _silent_peer(**_: Any) -> None:
    async with raw_tcp_server("silent") as port, Client(f"ws://127.0.0.1:{port}/ws", open_timeout=0.3) as client:
        await client.call("echo", 1)


async def _tls_to_plain(server: RunningServer, **_: Any) -> None:
    async with Client(server.url.replace("ws://", "wss://")) as client:
        await client.call("echo", 1)


async def _untrusted_certificate(make_server: Any, certificate: tuple[str, str], **_: Any) -> None:
    with make_server(certfile=certificate[0], keyfile=certificate[1]) as running:
        async with Client(running.url) as client:
            await client.call("echo", 1)


async def _bad_port(**_: Any) -> None:
    async with Client("ws://127.0.0.1:99999/ws") as client:
        await client.call("echo", 1)


async def _token_refused(make_server: Any, **_: Any) -> None:
    with make_server(token="s") as running:
        async with Client(running.url) as client:
            await client.call("echo", 1)


async def _dropped_mid_call(**_: Any) -> None:
    async with recording_server() as (url, _seen), Client(url) as client:
        await client.call("drop")


async def _reply_too_big(server: RunningServer, **_: Any) -> None:
    async with Client(server.url, max_message_size=1000) as client:
        await client.call("echo", "x" * 5000)


async def _no_reply(server: RunningServer, **_: Any) -> None:
    async with Client(server.url, timeout=0.1) as client:
        await client.call("sleep", 1)


FOREIGN_FAILURES = {
    "refused": (_refused, ConnectError),
    "hang-up-before-handshake": (_hang_up, ConnectError),
    "plain-http-200": (_plain_http, ConnectError),
    "silent-peer-open-timeout": (_silent_peer, ConnectError),
    "tls-to-plain-server": (_tls_to_plain, ConnectError),
    "untrusted-certificate": (_untrusted_certificate, ConnectError),
    "port-out-of-range": (_bad_port, ConnectError),
    "handshake-401": (_token_refused, ConnectError),
    "dropped-mid-call": (_dropped_mid_call, ConnectionLost),
    "reply-over-max-size": (_reply_too_big, ConnectionLost),
    "no-reply-in-time": (_no_reply, CallTimeout),
}


@pytest.mark.parametrize("scenario", list(FOREIGN_FAILURES))
async def test_foreign_exceptions_are_mapped_to_synapse_errors(
    scenario: str, server: RunningServer, make_server: Any, certificate: tuple[str, str]
) -> None:
    """Each failure we can provoke raises the right SynapseError subclass; no websockets/OS/ValueError escapes."""
    provoke, expected = FOREIGN_FAILURES[scenario]
    try:
        await asyncio.wait_for(provoke(server=server, make_server=make_server, certificate=certificate), 15)
    except Exception as exc:  # what escapes is the point of this test
        error: Exception = exc
    else:
        pytest.fail(f"{scenario}: no error raised")
    assert not isinstance(error, (OSError, WebSocketException, ValueError)), f"{type(error).__name__} leaked: {error}"
    assert type(error) is expected, f"{scenario}: {type(error).__name__}: {error}"
    assert str(error)


async def test_arguments_json_cannot_carry_are_refused(server: RunningServer) -> None:
    """NaN in the arguments raises ValueError before anything is sent (never a silent null)."""
    async with Client(server.url) as client:
        with pytest.raises(ValueError, match="cannot be sent as JSON"):
            await client.call("echo", float("nan"))
        assert await client.call("echo", 1.5) == 1.5


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_reconnect_does_not_retry_final_refusals(make_server, status: int) -> None:  # type: ignore[no-untyped-def]
    """After a drop, a handshake refused with 401/403/404 fails at once: one attempt, no backoff."""
    with make_server() as running:
        port = running.port
        client = Client(running.url, timeout=5, reconnect_attempts=5, backoff_base=1.0, backoff_cap=2.0)
        await client.connect()
        assert await client.call("add_numbers", 1, 2) == 3
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status} No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    deadline = asyncio.get_running_loop().time() + 5
    while client.connected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    refuser = await asyncio.start_server(refuse, "127.0.0.1", port, reuse_address=True)
    try:
        start = asyncio.get_running_loop().time()
        with pytest.raises(ConnectError) as info:
            await client.call("add_numbers", 1, 2)
        assert info.value.status == status
        assert attempts == 1
        assert asyncio.get_running_loop().time() - start < 1.0
    finally:
        refuser.close()
        await refuser.wait_closed()
        await client.close()


# -- every asyncio idiom of SPEC §3 ---------------------------------------------------------------


async def test_call_returns_an_honest_coroutine(server: RunningServer) -> None:
    """call() returns a coroutine (not a Future in disguise), awaited like any other."""
    async with Client(server.url, timeout=5) as client:
        pending = client.call("add_numbers", 1, 2)
        assert asyncio.iscoroutine(pending) and not isinstance(pending, asyncio.Future)
        assert await pending == 3


async def test_idiom_gather(server: RunningServer) -> None:
    """asyncio.gather of calls returns their results in order."""
    async with Client(server.url, timeout=5) as client:
        assert await asyncio.gather(*(client.call("echo", i) for i in range(200))) == list(range(200))


async def test_idiom_ensure_future_then_asyncio_wait(make_server: Any) -> None:
    """The issue's snippet: ensure_future on calls, then asyncio.wait on what it returned."""
    with make_server() as running:
        async with Client(running.url, timeout=5) as client:
            tasks = [asyncio.ensure_future(client.call("sleep", 0.02)) for _ in range(100)]
            done, pending = await asyncio.wait(tasks, timeout=5)
            assert len(done) == 100 and not pending
            assert {task.result() for task in done} == {0.02}


async def test_idiom_create_task_then_as_completed(server: RunningServer) -> None:
    """create_task on calls, then as_completed: the fastest reply comes first."""
    async with Client(server.url, timeout=5) as client:
        tasks = [asyncio.create_task(client.call("sleep", delay)) for delay in (0.3, 0.01, 0.15)]
        order = [await next_done for next_done in asyncio.as_completed(tasks)]
        assert order == [0.01, 0.15, 0.3]


async def test_idiom_wait_for_times_out_and_sends_cancel(make_server: Any) -> None:
    """wait_for around a call: asyncio.TimeoutError for the caller, a cancel for the server."""
    with make_server() as running:
        async with Client(running.url, timeout=5) as client:
            assert await asyncio.wait_for(client.call("add_numbers", 2, 2), 5) == 4
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.call("sleep", 5), 0.1)
            assert await eventually(lambda: pending_calls(running) == 0)


async def test_idiom_shield_keeps_the_call_running(server: RunningServer) -> None:
    """shield: cancelling the outer waiter leaves the call running to its result."""
    async with Client(server.url, timeout=5) as client:
        inner = asyncio.ensure_future(client.call("sleep", 0.2))
        outer = asyncio.ensure_future(asyncio.shield(inner))
        await asyncio.sleep(0.05)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert await inner == 0.2


@pytest.mark.skipif(not hasattr(asyncio, "TaskGroup"), reason="asyncio.TaskGroup is Python 3.11+")
async def test_idiom_task_group(server: RunningServer) -> None:
    """TaskGroup.create_task on calls; a failing call cancels its siblings, which send cancel."""
    async with Client(server.url, timeout=5) as client:
        async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
            tasks = [group.create_task(client.call("echo", i)) for i in range(50)]
        assert [task.result() for task in tasks] == list(range(50))
        with pytest.raises(BaseException) as info:  # ExceptionGroup (3.11+)
            async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined]
                group.create_task(client.call("sleep", 5))
                group.create_task(client.call("divide", 1, 0))
        assert [type(e) for e in info.value.exceptions] == [RPCError]  # type: ignore[attr-defined]


def test_idiom_run_coroutine_threadsafe(server: RunningServer) -> None:
    """run_coroutine_threadsafe(client.call(...)) from a thread that is not the loop's."""
    import threading

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        client = Client(server.url, timeout=5)
        asyncio.run_coroutine_threadsafe(client.connect(), loop).result(10)
        assert asyncio.run_coroutine_threadsafe(client.call("add_numbers", 5, 6), loop).result(10) == 11
        futures = [asyncio.run_coroutine_threadsafe(client.call("echo", i), loop) for i in range(20)]
        assert [future.result(10) for future in futures] == list(range(20))
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_idiom_anyio_task_group_and_cancel_scope(make_server: Any) -> None:
    """anyio: calls in a task group; a cancel scope's deadline cancels the call, which tells the server."""
    import anyio

    with make_server() as running:
        async with Client(running.url, timeout=5) as client:
            results: dict[int, Any] = {}

            async def one(i: int) -> None:
                results[i] = await client.call("echo", i)

            async with anyio.create_task_group() as group:
                for i in range(20):
                    group.start_soon(one, i)
            assert results == {i: i for i in range(20)}
            with anyio.move_on_after(0.1) as scope:
                await client.call("sleep", 5)
            assert scope.cancelled_caught
            assert await eventually(lambda: pending_calls(running) == 0)


async def test_send_returns_an_asyncio_future_for_pipelining(server: RunningServer) -> None:
    """send() pipelines: an asyncio.Future per call, no task; before connecting it is a task that connects."""
    client = Client(server.url, timeout=5)
    try:
        first = client.send("add_numbers", 1, 2)  # not connected yet: a task that connects first
        assert isinstance(first, asyncio.Future) and await first == 3
        futures = [client.send("echo", i) for i in range(1000)]
        assert all(isinstance(f, asyncio.Future) and not isinstance(f, asyncio.Task) for f in futures)
        assert await asyncio.gather(*futures) == list(range(1000))
        done, _ = await asyncio.wait([client.send("echo", "w")], timeout=5)
        assert [f.result() for f in done] == ["w"]
    finally:
        await client.close()


async def test_call_errors_surface_where_the_call_is_awaited(server: RunningServer) -> None:
    """Arguments JSON cannot carry, or positional and named together: raised on await, so gather collects them."""
    async with Client(server.url, timeout=5) as client:
        results = await asyncio.gather(
            client.call("echo", float("nan")), client.call("echo", 1, value=2), client.call("echo", "ok"),
            return_exceptions=True,
        )  # fmt: skip
    assert type(results[0]) is ValueError and type(results[1]) is TypeError and results[2] == "ok"


async def test_infinite_timeout_waits_and_nan_is_refused(server: RunningServer) -> None:
    """timeout=math.inf means no limit (as None); NaN or a non-positive timeout is a ValueError at once."""
    import math

    async with Client(server.url, timeout=math.inf) as client:
        assert await client.call("sleep", 0.05) == 0.05
    for bad in (float("nan"), 0, -1):
        with pytest.raises(ValueError):
            Client(server.url, timeout=bad)
