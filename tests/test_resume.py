"""Resume after a drop, and the client's side of backpressure (issue 22), against real servers.

A topic with a history numbers its items; a subscriber passing ``since`` gets what it missed, then live
items. The drops are real: the client reaches the servers through a TCP proxy of this test that aborts
both sides of every connection it carries, and sends the next connection to the next server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, RunningServer, running_server, serve_process, synapse_executable, wait_for
from test_streams import free_port, redis_server
from websockets.sync.client import connect

from synapse_cli import Client, RPCError
from synapse_cli.core.registry import Registry


def _build() -> Registry:
    spec = importlib.util.spec_from_file_location("synapse_test_resume_app", APPS / "resume_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.build()  # type: ignore[no-any-return]


@contextlib.contextmanager
def resume_server(**options: Any) -> Iterator[RunningServer]:
    """A server with a fresh copy of tests/apps/resume_app.py (positions start at 1)."""
    with running_server(_build(), **options) as running:
        yield running


class Proxy:
    """A TCP proxy on 127.0.0.1: each connection goes to the next upstream port in turn; ``drop`` aborts all."""

    def __init__(self, upstreams: list[int]) -> None:
        self.upstreams = upstreams
        self.accepted = 0
        self.pipes: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.gate = asyncio.Event()  # cleared: new connections wait (the client is away)
        self.gate.set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.upstreams[self.accepted % len(self.upstreams)]
        self.accepted += 1
        await self.gate.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        self.pipes += [writer, up_writer]
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def drop(self) -> None:
        """Abort every connection carried now, both sides (an RST, as a dead network path looks)."""
        pipes, self.pipes = self.pipes, []
        for writer in pipes:
            writer.transport.abort()

    async def close(self) -> None:
        self.drop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


async def _received_with_drops(url: str, publisher_url: str, subscribed: Any, proxy: Proxy) -> tuple[list[int], int]:
    """Subscribe through the proxy with resume=True, publish 0..9,999 meanwhile, drop 20 times while the
    publisher still runs (asserted at each drop): what came."""
    got: list[int] = []
    drops = {10_000 * k // 21 for k in range(1, 21)}  # every 476 items received, 20 in all
    async with Client(url, reconnect_attempts=10, backoff_base=0.01) as client, Client(publisher_url) as publisher:
        stream = client.stream("counter", resume=True)
        first = asyncio.ensure_future(stream.__anext__())  # subscribes
        assert await asyncio.to_thread(wait_for, subscribed, 5)
        publishing = asyncio.ensure_future(publisher.call("publish_range", 0, 10_000, 20, 0.002))
        got.append(await asyncio.wait_for(first, 10))
        async for item in stream:
            got.append(item)
            if len(got) in drops:
                assert not publishing.done(), f"drop {len(got)}: publishing ended (the drops are made while it runs)"
                proxy.drop()
            if len(got) == 10_000:
                break
        assert await asyncio.wait_for(publishing, 30) == 10_000
        return got, stream.resumes


@pytest.mark.slow
async def test_resume_after_20_drops_receives_exactly_every_item_in_order() -> None:
    """A client whose TCP connection is aborted 20 times while 10,000 items are published receives exactly
    0..9,999 in order, each once (resume=True: since=<last position> after each reconnect)."""
    with resume_server() as running:
        proxy = Proxy([running.port])
        url = await proxy.start()
        topic = running.state.registry.topics["counter"]
        try:
            started = time.monotonic()
            got, resumes = await _received_with_drops(url, running.url, lambda: len(topic.subscribers) == 1, proxy)
        finally:
            await proxy.close()
    print(
        f"\n[resume] 10,000 items, {resumes} resumes, {proxy.accepted} connections, {time.monotonic() - started:.1f} s"
    )
    assert got == list(range(10_000))
    assert resumes == 20 and proxy.accepted == 21


@contextlib.asynccontextmanager
async def _two_servers_through_redis() -> AsyncIterator[tuple[str, Any, Any, list[Any], Proxy]]:
    """Two resume servers sharing a fresh redis-server, behind a proxy that moves each reconnect to the
    other: the proxy's URL, the two servers, their ``counter`` topics and the proxy."""
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    with redis_server(port), resume_server(broker=broker) as one, resume_server(broker=broker) as two:
        proxy = Proxy([one.port, two.port])
        url = await proxy.start()
        try:
            yield url, one, two, [server.state.registry.topics["counter"] for server in (one, two)], proxy
        finally:
            await proxy.close()


@pytest.mark.slow
async def test_resume_moves_to_another_server_through_redis_and_misses_nothing() -> None:
    """Two servers sharing a redis-server: each reconnect lands on the other server, which replays from the
    Redis history: 20 drops, exactly 0..9,999 in order."""
    async with _two_servers_through_redis() as (url, one, _, topics, proxy):
        started = time.monotonic()
        got, resumes = await _received_with_drops(
            url, one.url, lambda: sum(len(t.subscribers) for t in topics) == 1, proxy
        )
    print(f"\n[resume] through Redis: {resumes} resumes over 2 servers, {time.monotonic() - started:.1f} s")
    assert got == list(range(10_000))
    assert resumes == 20 and proxy.accepted == 21


async def _resumed_before_the_first_item(url: str, publisher_url: str, subscribed: Any, proxy: Proxy) -> Any:
    """Subscribe after 0..99 were published; drop before any item came; publish 100..199 while the client is
    kept away; let it back: what it received, its resumes, and the position it was told it started after."""
    async with Client(url, reconnect_attempts=10, backoff_base=0.01) as client, Client(publisher_url) as publisher:
        await publisher.call("publish_range", 0, 100)
        stream = client.stream("counter", resume=True)
        first = asyncio.ensure_future(stream.__anext__())  # subscribes
        assert await asyncio.to_thread(wait_for, lambda: subscribed() and stream.position is not None, 5)
        started = stream.position
        proxy.gate.clear()
        proxy.drop()
        await publisher.call("publish_range", 100, 200)  # while the client is away
        proxy.gate.set()
        got = [await asyncio.wait_for(first, 10)]
        while len(got) < 100:
            got.append(await asyncio.wait_for(stream.__anext__(), 10))
        await stream.aclose()
        return got, stream.resumes, started


async def test_a_drop_before_the_first_item_resumes_from_where_the_subscription_started() -> None:
    """The connection is aborted after the subscription was told it starts after 100 and before any item;
    100..199 are published while the client is away: it resumes and receives exactly 100..199, in order."""
    with resume_server() as running:
        proxy = Proxy([running.port])
        url = await proxy.start()
        topic = running.state.registry.topics["counter"]
        try:
            got, resumes, started = await _resumed_before_the_first_item(
                url, running.url, lambda: len(topic.subscribers) == 1, proxy
            )
        finally:
            await proxy.close()
    assert (started, resumes, proxy.accepted) == (100, 1, 2)
    assert got == list(range(100, 200))


async def test_a_drop_before_the_first_item_resumes_on_another_server_through_redis() -> None:
    """As above, the reconnect landing on a second server sharing the redis-server: the start it was told
    (Redis's latest position, 100) holds there, and it receives exactly 100..199 in order."""
    async with _two_servers_through_redis() as (url, _, two, topics, proxy):
        got, resumes, started = await _resumed_before_the_first_item(
            url, two.url, lambda: len(topics[0].subscribers) == 1, proxy
        )
    assert (started, resumes, proxy.accepted) == (100, 1, 2)
    assert got == list(range(100, 200))


async def _publish_small(url: str, values: range) -> None:
    async with Client(url) as publisher:
        for value in values:
            await publisher.call("publish_small", value)


async def test_since_replays_the_kept_items_then_live_ones_with_their_positions() -> None:
    """history=3 after 5 publishes: since=3 gets 4, 5 (positions 4, 5), then the live 6."""
    with resume_server() as running:
        await _publish_small(running.url, range(1, 6))
        async with Client(running.url) as client:
            stream = client.stream("small", since=3)
            got = [await stream.__anext__(), await stream.__anext__()]
            assert (got, stream.position) == ([4, 5], 5)
            await _publish_small(running.url, range(6, 7))
            assert (await stream.__anext__(), stream.position) == (6, 6)
            await stream.aclose()


async def test_since_the_history_no_longer_holds_is_32006_with_the_oldest_position() -> None:
    """history=3 after 5 publishes: since=1 is RPCError -32006 naming the oldest (3) and latest (5)."""
    with resume_server() as running:
        await _publish_small(running.url, range(1, 6))
        async with Client(running.url) as client:
            with pytest.raises(RPCError) as caught:
                async for _ in client.stream("small", since=1):
                    pass
            assert caught.value.code == -32006
            assert caught.value.message == "history lost: small: position 1 is no longer held (the oldest held is 3)"
            assert caught.value.data == {"oldest": 3, "latest": 5}
            assert await client.call("publish_small", 6) == 0  # the connection goes on; nobody subscribed


def test_items_carry_their_position_on_the_wire_in_both_dialects() -> None:
    """Native {"id", "position"} (where it starts), then {"id", "item", "position"}; JSON-RPC rpc.start, then
    rpc.item params {"subscription", "item", "position"}; since by name or by position; a topic without
    history takes no since (-32602)."""
    with resume_server() as running, connect(running.url) as ws:
        ws.send('{"id": "p", "func": "publish_small", "args": [7]}')
        assert json.loads(ws.recv(timeout=5)) == {"id": "p", "result": 0, "error": None}
        ws.send('{"id": "n", "func": "small", "args": [0]}')
        assert ws.recv(timeout=5) == '{"id":"n","position":0}'  # where it starts, before any item
        assert ws.recv(timeout=5) == '{"id":"n","item":7,"position":1}'
        ws.send('{"jsonrpc": "2.0", "id": 2, "method": "small", "params": {"since": 0}}')
        messages = [json.loads(ws.recv(timeout=5)) for _ in range(3)]
        sid = messages[0]["result"]["subscription"]
        start = {"jsonrpc": "2.0", "method": "rpc.start", "params": {"subscription": sid, "position": 0}}
        item = {"jsonrpc": "2.0", "method": "rpc.item", "params": {"subscription": sid, "item": 7, "position": 1}}
        assert messages == [{"jsonrpc": "2.0", "id": 2, "result": {"subscription": sid}}, start, item]
        ws.send('{"id": "b", "func": "burst", "args": {"since": 0}}')
        reply = json.loads(ws.recv(timeout=5))
        assert reply["id"] == "b" and reply["error"]["code"] == -32602


def test_a_value_json_cannot_carry_fails_its_publisher_not_the_subscribers() -> None:
    """publish(NaN): the publishing call gets -32603; the subscriber gets the next item as usual."""
    with resume_server() as running, connect(running.url) as subscriber, connect(running.url) as publisher:
        subscriber.send('{"id": 1, "func": "small"}')
        assert wait_for(lambda: len(running.state.registry.topics["small"].subscribers) == 1, 5)
        publisher.send('{"id": 1, "func": "publish_nan"}')
        reply = json.loads(publisher.recv(timeout=5))
        assert reply["error"] == {"code": -32603, "message": "internal error", "data": {"type": "ValueError"}}
        publisher.send('{"id": 2, "func": "publish_small", "args": [1]}')
        assert json.loads(publisher.recv(timeout=5))["result"] == 1
        assert subscriber.recv(timeout=5) == '{"id":1,"position":0}'
        assert subscriber.recv(timeout=5) == '{"id":1,"item":1,"position":1}'


def test_a_typed_topic_sends_its_items_as_declared() -> None:
    """registry.topic(item=set[int]): a published set arrives as a JSON array."""
    with resume_server() as running, connect(running.url) as ws:
        ws.send('{"id": 1, "func": "sets"}')
        assert wait_for(lambda: len(running.state.registry.topics["sets"].subscribers) == 1, 5)
        ws.send('{"id": 2, "func": "publish_set", "args": [[5]]}')
        assert sorted(ws.recv(timeout=5) for _ in range(2)) == [
            '{"id":1,"item":[5]}',
            '{"id":2,"result":1,"error":null}',
        ]


async def test_a_reader_that_falls_behind_stops_the_socket_and_the_server_ends_it_with_32004() -> None:
    """Client(stream_queue=50) not reading: the client holds about 50 items (it stops reading the socket), TCP
    pushes back, the server ends the subscriber with -32004 (--subscriber-queue 100); reading then gives
    the items that came, then RPCError -32004, and the connection still answers calls."""
    with resume_server(subscriber_queue=100) as running:
        topic = running.state.registry.topics["burst"]
        async with Client(running.url, stream_queue=50) as client, Client(running.url) as publisher:
            stream = client.stream("burst")
            first = asyncio.ensure_future(stream.__anext__())
            assert await asyncio.to_thread(wait_for, lambda: len(topic.subscribers) == 1, 5)
            assert await publisher.call("publish_burst", 4000, 8192) == 4000  # 32 MiB: more than TCP buffers hold
            assert await asyncio.to_thread(wait_for, lambda: topic.too_slow == 1, 10)
            held = len(stream._items)
            assert 50 <= held <= 50 + 64  # 50, and what was left of the read that reached it
            got = [await first]
            with pytest.raises(RPCError) as caught:
                async for item in stream:
                    got.append(item)
                    assert len(stream._items) <= 50 + 64
            assert caught.value.code == -32004 and 100 < len(got) < 4000
            assert await client.call("publish_small", 1) == 0


def test_synapse_call_since_prints_the_kept_items_and_a_lost_history_is_one_error_line(cli_env: dict[str, str]) -> None:
    """`synapse call small --since 3 --limit 2` prints 4 and 5; --since 0 after history moved on: exit 1, one line."""
    with resume_server() as running:
        asyncio.run(_publish_small(running.url, range(1, 6)))
        command = [synapse_executable(), "call", "--url", running.url, "small"]
        done = subprocess.run(
            [*command, "--since", "3", "--limit", "2"], capture_output=True, text=True, env=cli_env, timeout=30
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "4\n5\n", "")
        lost = subprocess.run([*command, "--since", "0"], capture_output=True, text=True, env=cli_env, timeout=30)
        assert (lost.returncode, lost.stdout) == (1, "")
        assert lost.stderr == (
            "synapse: error: history lost: small: position 0 is no longer held (the oldest held is 3) (code -32006): "
            '{"oldest":3,"latest":5}\n'
        )
        mixed = subprocess.run([*command, "1", "--since", "3"], capture_output=True, text=True, env=cli_env, timeout=30)
        assert mixed.returncode == 2
        assert mixed.stderr.strip().endswith("--since is passed by name: give the other arguments as name=value too")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()  # type: ignore[no-any-return]


@contextlib.contextmanager
def plain_asgi_server() -> Iterator[str]:
    """The plain ASGI app (create_app: what a mounted app or another ASGI server runs) under uvicorn's own
    WebSocket protocol, in a thread on a socket bound here; its /ws URL."""
    import threading

    import uvicorn

    from synapse_cli.server.app import bind_socket, create_app

    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(_build()), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: server.started, 10)
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


async def test_the_plain_asgi_endpoint_replays_and_streams_a_topic_in_order() -> None:
    """Through the plain ASGI endpoint (items written one message each, 16 at a time before it drains):
    since=0 after 2,000 publishes gives all 2,000 in order with their positions, then a live one; /metrics
    counts the 2,001 items."""
    with plain_asgi_server() as url:
        async with Client(url) as client:
            assert await client.call("publish_range", 0, 2000) == 2000
            stream = client.stream("counter", since=0)
            got = [await stream.__anext__() for _ in range(2000)]
            assert got == list(range(2000)) and stream.position == 2000
            assert await client.call("publish_range", 2000, 2001) == 2001
            assert (await stream.__anext__(), stream.position) == (2000, 2001)
            await stream.aclose()
        metrics = await asyncio.to_thread(_get, url.replace("ws://", "http://").replace("/ws", "/metrics"))
        assert "synapse_stream_items_total 2001.0" in metrics.splitlines()  # counted as ours are


def test_the_documented_wire_exchange_of_a_topic_with_history_is_what_the_server_says(tmp_path: Path) -> None:
    """docs/streams.md: prices.py served as written; after one publish, each `-->` line sent gets the `<--` lines
    shown (those after one request compared as a set: subscribers are written to in no fixed order)."""
    from test_examples import doc_blocks

    (source,) = [block for block in doc_blocks("python") if block.startswith("# prices.py")]
    (tmp_path / "prices.py").write_text(source)
    (exchange,) = [block for block in doc_blocks("") if block.startswith('--> {"id": 2, "func": "prices"')]
    steps: list[tuple[str, list[Any]]] = []
    for line in exchange.splitlines():
        if line.startswith("--> "):
            steps.append((line[4:], []))
        else:
            steps[-1][1].append(json.loads(line.removeprefix("<-- ")))
    with serve_process(app=str(tmp_path / "prices.py")) as server, connect(server.url) as ws:
        ws.send('{"id": 1, "func": "set_price", "args": ["ACME", 101.5]}')
        assert json.loads(ws.recv(timeout=5)) == {"id": 1, "result": 0, "error": None}
        for request, replies in steps:
            ws.send(request)
            got = [json.loads(ws.recv(timeout=5)) for _ in replies]
            assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, replies)), request
