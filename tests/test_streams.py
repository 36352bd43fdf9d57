"""Streams and topics (SPEC §5) against real servers: raw WebSocket clients, and a real redis-server."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from conftest import APPS, running_server, serve_process, wait_for
from websockets.sync.client import ClientConnection, connect


def _import_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("synapse_test_streams_app", APPS / "streams.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # annotations are resolved in the module's globals
    spec.loader.exec_module(module)
    return module


app = _import_app()


def tag() -> str:
    return uuid.uuid4().hex[:12]


def send(ws: ClientConnection, message: Any) -> None:
    ws.send(json.dumps(message))


def receive(ws: ClientConnection) -> Any:
    return json.loads(ws.recv(timeout=5))


@pytest.fixture(scope="module")
def streams() -> Iterator[Any]:
    """One in-process server with the streams app."""
    with running_server(app.registry) as running:
        yield running


def test_native_stream_sends_items_then_the_ordinary_reply(server: Any) -> None:
    """ticks 3: three {"id", "item"} messages in order, then {"id", "result": null, "error": null}."""
    with connect(server.url) as ws:
        ws.send('{"id": "t", "func": "ticks", "args": [3, 0.01]}')
        assert [ws.recv(timeout=5) for _ in range(4)] == [
            '{"id":"t","item":0}',
            '{"id":"t","item":1}',
            '{"id":"t","item":2}',
            '{"id":"t","result":null,"error":null}',
        ]


def test_jsonrpc_stream_is_a_subscription_with_item_and_end_notifications(server: Any) -> None:
    """JSON-RPC: the reply names a subscription; rpc.item per item; rpc.end with error null."""
    with connect(server.url) as ws:
        send(ws, {"jsonrpc": "2.0", "id": 1, "method": "ticks", "params": {"n": 2, "interval": 0}})
        reply = receive(ws)
        sid = reply["result"]["subscription"]
        assert reply == {"jsonrpc": "2.0", "id": 1, "result": {"subscription": sid}} and isinstance(sid, str)
        assert [receive(ws) for _ in range(3)] == [
            {"jsonrpc": "2.0", "method": "rpc.item", "params": {"subscription": sid, "item": 0}},
            {"jsonrpc": "2.0", "method": "rpc.item", "params": {"subscription": sid, "item": 1}},
            {"jsonrpc": "2.0", "method": "rpc.end", "params": {"subscription": sid, "error": None}},
        ]


def test_unsubscribe_stops_the_generator_and_ends_with_cancelled(streams: Any) -> None:
    """rpc.unsubscribe [sid] answers true, ends with -32002, and the generator's finally runs."""
    name = tag()
    with connect(streams.url) as ws:
        send(ws, {"jsonrpc": "2.0", "id": 1, "method": "count", "params": [name, 10_000, 0.01]})
        sid = receive(ws)["result"]["subscription"]
        assert receive(ws)["params"]["item"] == 0
        send(ws, {"jsonrpc": "2.0", "id": 2, "method": "rpc.unsubscribe", "params": [sid]})
        messages = [receive(ws) for _ in range(2)]
        while messages[-1].get("method") == "rpc.item" or messages[0].get("method") == "rpc.item":
            messages = [m for m in messages if m.get("method") != "rpc.item"] + [receive(ws)]
        assert {"jsonrpc": "2.0", "id": 2, "result": True} in messages
        end = {"subscription": sid, "error": {"code": -32002, "message": "call cancelled"}}
        assert {"jsonrpc": "2.0", "method": "rpc.end", "params": end} in messages
        send(ws, {"jsonrpc": "2.0", "id": 3, "method": "rpc.unsubscribe", "params": [sid]})
        assert receive(ws) == {"jsonrpc": "2.0", "id": 3, "result": False}
    assert wait_for(lambda: name in app.closed, 2)


@pytest.mark.parametrize("function", ["count", "sync_count"])
def test_cancel_closes_the_generator_promptly(streams: Any, function: str) -> None:
    """cancel: the call ends with -32002 and the generator's finally runs (async and sync generators)."""
    name = tag()
    with connect(streams.url) as ws:
        send(ws, {"id": 5, "func": function, "args": [name, 100_000, 0.02]})
        receive(ws)
        started = time.monotonic()
        send(ws, {"id": 5, "op": "cancel"})
        reply = receive(ws)
        while "item" in reply:
            reply = receive(ws)
        assert reply == {"id": 5, "result": None, "error": {"code": -32002, "message": "call cancelled"}}
    assert wait_for(lambda: name in app.closed, 2)
    assert time.monotonic() - started < 2
    assert app.produced[name] < 100


def test_disconnect_closes_the_generator(streams: Any) -> None:
    """A client that goes away mid-stream: the generator is closed (its finally runs) within a second."""
    name = tag()
    with connect(streams.url) as ws:
        send(ws, {"id": 1, "func": "count", "args": [name, 100_000, 0.01]})
        receive(ws)
    assert wait_for(lambda: name in app.closed, 2)


def test_sync_generator_streams_from_the_thread_pool(streams: Any) -> None:
    """A plain generator is a stream too: its items arrive in order, then the reply."""
    with connect(streams.url) as ws:
        send(ws, {"id": 2, "func": "sync_count", "args": [tag(), 3]})
        assert [receive(ws) for _ in range(4)] == [
            {"id": 2, "item": "0"},
            {"id": 2, "item": "1"},
            {"id": 2, "item": "2"},
            {"id": 2, "result": None, "error": None},
        ]


def test_a_generator_that_raises_ends_the_stream_with_its_error(streams: Any) -> None:
    """An RPCError raised mid-stream ends it: the native reply carries it; JSON-RPC's rpc.end does."""
    with connect(streams.url) as ws:
        send(ws, {"id": 1, "func": "breaks", "args": [1]})
        assert receive(ws) == {"id": 1, "item": 0}
        error = {"code": 4001, "message": "broke", "data": {"after": 1}}
        assert receive(ws) == {"id": 1, "result": None, "error": error}
        send(ws, {"jsonrpc": "2.0", "id": 2, "method": "breaks", "params": [0]})
        sid = receive(ws)["result"]["subscription"]
        error["data"] = {"after": 0}
        assert receive(ws) == {"jsonrpc": "2.0", "method": "rpc.end", "params": {"subscription": sid, "error": error}}


def test_list_and_discover_mark_stream_functions(server: Any) -> None:
    """list: "stream": true with the item's schema; rpc.discover: "x-stream": true."""
    with connect(server.url) as ws:
        send(ws, {"id": 1, "op": "list"})
        functions = {f["name"]: f for f in receive(ws)["result"]["functions"]}
        assert functions["ticks"]["stream"] is True and functions["ticks"]["result"] == {"type": "integer"}
        assert "stream" not in functions["add_numbers"]
        send(ws, {"jsonrpc": "2.0", "id": 2, "method": "rpc.discover"})
        methods = {m["name"]: m for m in receive(ws)["result"]["methods"]}
        assert methods["ticks"]["x-stream"] is True and "x-stream" not in methods["echo"]


def test_a_reader_that_stops_reading_stalls_only_its_own_stream() -> None:
    """A client that never reads: the generator stops producing (backpressure), server memory stays
    flat, and another connection is answered at once."""
    name = tag()
    with serve_process(app=str(APPS / "streams.py")) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        body = json.dumps({"id": 1, "func": "firehose", "args": [name]}).encode()
        mask = b"\x00\x00\x00\x00"
        sock.sendall(bytes((0x81, 0x80 | len(body))) + mask + body)  # never read again
        with connect(server.url) as probe:
            time.sleep(1.0)
            before_rss = server.rss()
            send(probe, {"id": 1, "func": "state", "args": [name]})
            first = receive(probe)["result"]["produced"]
            time.sleep(1.5)
            started = time.monotonic()
            send(probe, {"id": 2, "func": "state", "args": [name]})
            second = receive(probe)["result"]["produced"]
            latency = time.monotonic() - started
            growth = server.rss() - before_rss
        sock.close()
    print(f"\n[streams] unread firehose: {first} items produced, then {second - first} more; RSS +{growth} B")
    assert 0 < first < 20_000  # 1 KiB items: bounded by socket buffers and the transport's high-water mark
    assert second == first  # stalled: no item is taken from the generator while the peer does not read
    assert growth < 5 * 2**20
    assert latency < 0.5


def test_topic_fans_out_to_every_subscriber_in_order(streams: Any) -> None:
    """Two subscribers of a topic each get every published value, in order; publish counts them."""
    with connect(streams.url) as first, connect(streams.url) as second, connect(streams.url) as publisher:
        send(first, {"id": "a", "func": "prices"})
        send(second, {"jsonrpc": "2.0", "id": "b", "method": "prices"})
        sid = receive(second)["result"]["subscription"]
        assert wait_for(lambda: len(app.prices.subscribers) == 2, 2)
        for price in (1.5, 2.5):
            send(publisher, {"id": str(price), "func": "publish_price", "args": ["X", price]})
            assert receive(publisher)["result"] == 2
        assert [receive(first)["item"]["price"] for _ in range(2)] == [1.5, 2.5]
        assert [receive(second)["params"] for _ in range(2)] == [
            {"subscription": sid, "item": {"symbol": "X", "price": 1.5}},
            {"subscription": sid, "item": {"symbol": "X", "price": 2.5}},
        ]
    assert wait_for(lambda: not app.prices.subscribers, 2)


def test_a_subscriber_too_far_behind_is_ended_with_32004() -> None:
    """--subscriber-queue 5: a subscriber that does not read is ended with -32004 and counted in
    /metrics; the publisher and a reading subscriber go on unharmed."""
    with running_server(app.registry, subscriber_queue=5) as running, connect(running.url, max_queue=1) as slow:
        with connect(running.url) as reader, connect(running.url) as publisher:
            send(slow, {"id": "slow", "func": "prices"})
            send(reader, {"id": "fast", "func": "prices"})
            assert wait_for(lambda: len(app.prices.subscribers) == 2, 2)
            big = "y" * 16384
            for i in range(600):  # ~10 MiB: more than the socket buffers hold for the slow one
                send(publisher, {"id": i, "func": "publish_price", "args": [big, i]})
                assert receive(publisher)["error"] is None
                assert receive(reader)["item"]["price"] == i
            assert wait_for(lambda: app.prices.too_slow == 1, 5)
            metrics = urllib.request.urlopen(f"{running.http}/metrics", timeout=5).read().decode()
            assert 'synapse_subscribers_too_slow_total{topic="prices"} 1.0' in metrics
        last = None
        with contextlib.suppress(TimeoutError):
            while True:
                last = json.loads(slow.recv(timeout=2))
                if "item" not in last:
                    break
        assert last == {
            "id": "slow",
            "result": None,
            "error": {"code": -32004, "message": "subscriber too slow: 5 items behind"},
        }
    app.prices.too_slow = 0


def test_metrics_count_streams_items_and_subscribers(server: Any) -> None:
    """/metrics: open streams, items sent and subscribers per topic."""
    with connect(server.url) as ws:
        send(ws, {"id": 1, "func": "events"})
        send(ws, {"id": 2, "func": "ticks", "args": [2, 0]})
        assert [receive(ws) for _ in range(3)][-1] == {"id": 2, "result": None, "error": None}
        text = urllib.request.urlopen(f"{server.http}/metrics", timeout=5).read().decode()
        assert "synapse_open_streams 1.0" in text
        assert 'synapse_topic_subscribers{topic="events"} 1.0' in text
        items = next(line for line in text.splitlines() if line.startswith("synapse_stream_items_total"))
        assert float(items.split()[-1]) >= 2


# -- across processes: a real redis-server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real redis-server on a loopback port, no persistence, for the block's duration."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (.ci/run installs Debian's)")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _answers(port), 10), "redis-server did not start"
        yield process
    finally:
        process.terminate()
        process.wait(10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_a_publish_reaches_subscribers_on_another_server_through_redis() -> None:
    """Two servers sharing a redis-server: a publish on one reaches the subscriber on the other."""
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    with redis_server(port), running_server(broker=broker) as one, running_server(broker=broker) as two:
        with connect(one.url) as subscriber, connect(two.url) as publisher:
            send(subscriber, {"jsonrpc": "2.0", "id": 1, "method": "events"})
            sid = receive(subscriber)["result"]["subscription"]
            send(publisher, {"id": 1, "func": "publish_event", "args": [{"n": 1}]})
            assert receive(publisher) == {"id": 1, "result": 2, "error": None}  # both servers listen
            item = {"jsonrpc": "2.0", "method": "rpc.item", "params": {"subscription": sid, "item": {"n": 1}}}
            assert receive(subscriber) == item


def test_redis_going_away_ends_subscriptions_with_an_error_and_they_resume_after() -> None:
    """Redis stops: subscribers get -32005 (never a silent stop), publish answers -32005; once Redis is
    back, a new subscription receives publishes again."""
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(port))
        running = stack.enter_context(running_server(broker=broker))
        ws = stack.enter_context(connect(running.url))
        send(ws, {"id": "sub", "func": "events"})
        assert wait_for(lambda: len(running.state.registry.topics["events"].subscribers) == 1, 5)
        send(ws, {"id": "pub", "func": "publish_event", "args": ["before"]})
        got = {message["id"]: message for message in (receive(ws), receive(ws))}  # the item may come first
        assert got["pub"] == {"id": "pub", "result": 1, "error": None}
        assert got["sub"] == {"id": "sub", "item": "before"}
        redis.terminate()
        redis.wait(10)
        reply = receive(ws)
        assert reply["id"] == "sub" and reply["error"]["code"] == -32005
        send(ws, {"id": "pub2", "func": "publish_event", "args": ["lost"]})
        reply = receive(ws)
        assert reply["id"] == "pub2" and reply["error"]["code"] == -32005
        with redis_server(port):
            assert wait_for(lambda: _publish_reaches(ws), 15)


def _publish_reaches(ws: ClientConnection) -> bool:
    """Subscribe, publish once; True when the item arrives (False while the broker refuses either)."""
    ident = tag()
    send(ws, {"id": ident, "func": "events"})
    send(ws, {"id": "p" + ident, "func": "publish_event", "args": [ident]})
    got: dict[str, Any] = {}
    while "p" + ident not in got or ident not in got:
        message = receive(ws)
        got[message["id"]] = message
        if message["id"] == "p" + ident and message["error"] and ident not in got:
            send(ws, {"id": ident, "op": "cancel"})  # subscribed, but the publish failed: try again
    if got[ident] != {"id": ident, "item": ident}:
        return False
    send(ws, {"id": ident, "op": "cancel"})
    assert receive(ws)["error"]["code"] == -32002
    return True


# -- the client and the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
async def test_client_stream_yields_items_and_breaking_stops_it_on_the_server(streams: Any, dialect: str) -> None:
    """async for over client.stream(): every item in order; leaving the loop early closes the generator."""
    from synapse_cli import Client

    name = tag()
    async with Client(streams.url, dialect=dialect) as client:  # type: ignore[arg-type]
        everything = client.stream("count", tag(), 3)
        assert [item async for item in everything] == [0, 1, 2]
        assert everything.result is None
        seen = []
        async for item in client.stream("count", name, 100_000, 0.01):
            seen.append(item)
            if len(seen) == 3:
                break
        assert seen == [0, 1, 2]
        assert (await client.call("state", "nobody"))["produced"] == 0  # the connection goes on
    assert wait_for(lambda: name in app.closed, 2)


async def test_client_stream_raises_the_streams_error_and_plain_functions_give_their_result(streams: Any) -> None:
    """An error that ends a stream is raised after its items; a plain function streams no item, only a result."""
    from synapse_cli import Client, RPCError

    async with Client(streams.url) as client:
        got = []
        with pytest.raises(RPCError) as caught:
            async for item in client.stream("breaks", 2):
                got.append(item)
        assert got == [0, 1] and caught.value.code == 4001
        plain = client.stream("state", "x")
        assert [item async for item in plain] == []
        assert plain.result == {"produced": 0, "closed": False}


def test_sync_client_stream(streams: Any) -> None:
    """SyncClient.stream iterates the same way; breaking out stops the stream."""
    from synapse_cli import SyncClient

    name = tag()
    with SyncClient(streams.url) as client:
        assert list(client.stream("sync_count", tag(), 2)) == ["0", "1"]
        for item in client.stream("count", name, 100_000, 0.01):
            if item == 2:
                break
    assert wait_for(lambda: name in app.closed, 2)


def test_synapse_call_prints_items_as_ndjson_and_limit_stops_the_stream(server: Any, cli_env: dict[str, str]) -> None:
    """`synapse call ticks 3 0` piped: one JSON value per line, exit 0; --limit 2 stops after two items."""
    from conftest import synapse_executable

    command = [synapse_executable(), "call", "--url", server.url]
    done = subprocess.run([*command, "ticks", "3", "0"], capture_output=True, text=True, env=cli_env, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n1\n2\n", "")
    limited = subprocess.run(
        [*command, "ticks", "1000", "0.01", "--limit", "2"], capture_output=True, text=True, env=cli_env, timeout=30
    )
    assert (limited.returncode, limited.stdout, limited.stderr) == (0, "0\n1\n", "")
    assert wait_for(lambda: sum(c.streams for c in list(server.state.connections)) == 0, 3)


def test_synapse_call_streams_live_through_a_pipe(server: Any, cli_env: dict[str, str]) -> None:
    """Items are flushed line by line: the first arrives long before the stream ends (`| head -1` works live)."""
    from conftest import synapse_executable

    process = subprocess.Popen(
        [synapse_executable(), "call", "--url", server.url, "ticks", "20", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        assert process.stdout is not None
        started = time.monotonic()
        assert process.stdout.readline() == "0\n"
        assert time.monotonic() - started < 3  # the whole stream takes 4 s
    finally:
        process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


def test_synapse_call_jsonrpc_prints_a_streams_items_and_limit_unsubscribes(
    server: Any, cli_env: dict[str, str]
) -> None:
    """`synapse call --jsonrpc ticks 3 0` prints the items (not the subscription reply); --limit 2 on a long
    stream prints two and rpc.unsubscribe stops it on the server."""
    from conftest import synapse_executable

    command = [synapse_executable(), "call", "--jsonrpc", "--url", server.url]
    done = subprocess.run([*command, "ticks", "3", "0"], capture_output=True, text=True, env=cli_env, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n1\n2\n", "")
    limited = subprocess.run(
        [*command, "ticks", "1000", "0.01", "--limit", "2"], capture_output=True, text=True, env=cli_env, timeout=30
    )
    assert (limited.returncode, limited.stdout, limited.stderr) == (0, "0\n1\n", "")
    plain = subprocess.run([*command, "add_numbers", "1", "2"], capture_output=True, text=True, env=cli_env, timeout=30)
    assert (plain.returncode, plain.stdout) == (0, "3\n")
    failing = subprocess.run([*command, "ticks", "-1"], capture_output=True, text=True, env=cli_env, timeout=30)
    assert failing.returncode == 1 and failing.stderr.startswith("synapse: error: ")
    assert wait_for(lambda: sum(c.streams for c in list(server.state.connections)) == 0, 3)
