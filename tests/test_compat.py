"""What synapse relies on from its dependencies' public APIs: an upgrade that breaks it fails here, loudly.

Each test names the documented extension point we stand on (STYLE: public APIs only). When one fails
after an upgrade, read the dependency's changelog before touching our code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import logging

import prometheus_client
import pytest
import uvicorn
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri


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


# -- the client side: wire.py on websockets' sans-I/O ClientProtocol ---------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept(key: str) -> str:
    """Sec-WebSocket-Accept for ``key`` (RFC 6455 §1.3)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def opened(max_size: int = 2**20) -> ClientProtocol:
    """A ClientProtocol taken through the opening handshake with a hand-written 101 response."""
    client = ClientProtocol(parse_uri("ws://example.test:8000/ws"), max_size=max_size, logger=logging.getLogger("t"))
    request = client.connect()
    assert isinstance(request, Request) and request.path == "/ws"
    request.headers["Authorization"] = "Bearer t"  # we add headers to the request before sending it
    client.send_request(request)
    sent = b"".join(client.data_to_send())
    assert sent.startswith(b"GET /ws HTTP/1.1\r\n") and b"Authorization: Bearer t\r\n" in sent
    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept(request.headers['Sec-WebSocket-Key'])}\r\n\r\n"
    )
    client.receive_data(head.encode())
    events = client.events_received()
    assert [type(event) for event in events] == [Response]
    assert client.state is State.OPEN and client.handshake_exc is None
    return client


def test_parse_uri_gives_host_port_secure_and_refuses_other_schemes() -> None:
    """parse_uri: host, port (defaulted), secure; InvalidURI for what is not ws:// or wss://."""
    uri = parse_uri("wss://example.test/ws")
    assert (uri.host, uri.port, uri.secure, uri.resource_name) == ("example.test", 443, True, "/ws")
    with pytest.raises(InvalidURI):
        parse_uri("http://example.test/ws")
    with pytest.raises((InvalidURI, ValueError)):  # wire.py turns the ValueError into InvalidURI
        parse_uri("ws://example.test:99999/ws")


def test_client_protocol_handshake_then_frames_as_events() -> None:
    """After the 101, frames fed whole come back as events with opcode, data and fin."""
    client = opened()
    client.receive_data(b"\x01\x03abc\x80\x02de")  # a text message in two fragments
    events = client.events_received()
    assert [(e.opcode, e.data, e.fin) for e in events] == [(Opcode.TEXT, b"abc", False), (Opcode.CONT, b"de", True)]  # type: ignore[union-attr]


def test_client_protocol_refusal_is_invalid_status_with_the_body() -> None:
    """A 404 with a body: the Response event, and handshake_exc an InvalidStatus carrying it."""
    client = ClientProtocol(parse_uri("ws://example.test/x"))
    client.send_request(client.connect())
    client.receive_data(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nthe /ws\r\n")
    assert [type(e) for e in client.events_received()] == [Response]
    assert isinstance(client.handshake_exc, InvalidStatus)
    assert client.handshake_exc.response.status_code == 404 and client.handshake_exc.response.body == b"the /ws\r\n"
    assert client.state is not State.OPEN


def test_client_protocol_close_frame_moves_to_closing_and_answers() -> None:
    """A server's close frame: close_rcvd set, state CLOSING, an echoing close frame to send, TCP close expected."""
    client = opened()
    client.receive_data(b"\x88\x0c\x03\xf4restarting")
    assert client.state is State.CLOSING
    assert client.close_rcvd is not None and (client.close_rcvd.code, client.close_rcvd.reason) == (1012, "restarting")
    assert client.data_to_send()[0][:2] == b"\x88\x8c"  # masked close frame, 12 bytes of payload
    assert client.close_expected()


def test_client_protocol_fail_and_send_close() -> None:
    """fail(code, reason) and send_close(code): a masked close frame, close_sent recorded, state CLOSING."""
    for act in (lambda c: c.fail(1009, "too big"), lambda c: c.send_close(1000)):
        client = opened()
        act(client)
        assert client.state is State.CLOSING and client.close_sent is not None
        assert client.data_to_send()[0][0] == 0x88
        assert client.close_expected()


def test_client_protocol_bounds_a_fragmented_message_by_max_size() -> None:
    """Fragments adding up past max_size fail the connection with 1009 (wire.py relies on it)."""
    client = opened(max_size=4)
    client.receive_data(b"\x01\x03abc\x80\x03def")
    assert client.state is State.CLOSING and client.close_sent is not None and client.close_sent.code == 1009


def test_client_protocol_receive_eof_is_idempotent() -> None:
    """receive_eof may be called after the connection closed (eof_received, then connection_lost)."""
    client = opened()
    client.receive_eof()
    client.receive_eof()
    assert client.state is State.CLOSED
