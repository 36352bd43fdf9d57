"""What synapse relies on from its dependencies' public APIs: an upgrade that breaks it fails here, loudly.

Each test names the documented extension point we stand on (STYLE: public APIs only). When one fails
after an upgrade, read the dependency's changelog before touching our code.
"""

from __future__ import annotations

import asyncio
import inspect

import prometheus_client
import uvicorn
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol


def test_uvicorn_config_takes_protocol_classes() -> None:
    """uvicorn.Config(http=<class>, ws=<class>) keeps our classes (transport.py plugs in there)."""

    class Http(asyncio.Protocol):
        pass

    class Ws(asyncio.Protocol):
        pass

    config = uvicorn.Config(lambda scope, receive, send: None, http=Http, ws=Ws, lifespan="off")
    config.load()
    assert config.http_protocol_class is Http
    assert config.ws_protocol_class is Ws


def test_uvicorn_names_its_auto_http_protocol() -> None:
    """The documented `--http auto` choice resolves through uvicorn.config.HTTP_PROTOCOLS (the guard holds it)."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    protocol_class = import_from_string(HTTP_PROTOCOLS["auto"])
    parameters = inspect.signature(protocol_class).parameters
    assert {"config", "server_state", "app_state"} <= parameters.keys()


def test_uvicorn_server_shutdown_contract() -> None:
    """uvicorn.Server has the public flags we read, and its ServerState the sets connections join."""
    server = uvicorn.Server(uvicorn.Config(lambda scope, receive, send: None))
    assert server.should_exit is False and server.force_exit is False and server.started is False
    assert isinstance(server.server_state.connections, set) and isinstance(server.server_state.tasks, set)
    assert inspect.signature(server.run).parameters.keys() >= {"sockets"}


def test_websockets_sans_io_server_protocol() -> None:
    """websockets' ServerProtocol does the handshake and frames we hand it (transport.py)."""
    protocol = ServerProtocol(max_size=1024)
    protocol.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    [request] = protocol.events_received()
    assert isinstance(request, Request) and request.path == "/ws"
    assert ("Host", "x") in list(request.headers.raw_items())
    response = protocol.accept(request)
    protocol.send_response(response)
    assert protocol.state is State.OPEN
    assert protocol.data_to_send()[0].startswith(b"HTTP/1.1 101")
    protocol.receive_data(b"\x89\x80abcd")  # a masked, empty ping
    [ping] = protocol.events_received()
    assert ping.opcode is Opcode.PING  # type: ignore[union-attr]
    assert protocol.data_to_send() == [b"\x8a\x00"]  # the pong it queued
    protocol.fail(1009, "too big")
    assert protocol.data_to_send()[-1] == b""  # end of stream: close the TCP connection
    assert protocol.state is not State.OPEN


def test_websockets_rejects_with_a_response() -> None:
    """reject(status, text) builds the HTTP response we send for 401/403/404/503."""
    protocol = ServerProtocol()
    response = protocol.reject(404, "no endpoint\n")
    assert response.status_code == 404 and response.body == b"no endpoint\n"


def test_prometheus_client_custom_collectors() -> None:
    """The documented custom-collector API: families built at scrape time, and the multiprocess reader."""

    class One(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            family = HistogramMetricFamily("h", "help", labels=["f"])
            family.add_metric(["x"], [("1.0", 2), ("+Inf", 3)], 4.5)
            counter = CounterMetricFamily("c", "help", labels=["f"])
            counter.add_metric(["x"], 7)
            yield from (family, counter)

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(One())
    text = prometheus_client.generate_latest(registry).decode()
    assert 'h_bucket{f="x",le="+Inf"} 3.0' in text and 'c_total{f="x"} 7.0' in text
    assert callable(multiprocess.MultiProcessCollector) and callable(multiprocess.mark_process_dead)
