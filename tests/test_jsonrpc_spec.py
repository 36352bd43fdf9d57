"""The JSON-RPC 2.0 specification's own examples (section 7), sent verbatim to ``synapse serve``.

Source: https://www.jsonrpc.org/specification, section 7 ("--> data sent to Server, <-- data sent to
Client"). Each request is the spec's exact text; each reply is compared, parsed, to the spec's exact
reply object (a batch reply as a multiset, since its order may differ). "No reply" is proved by sending
a follow-up request and seeing that its reply is the very next frame, and that nothing else follows.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

TIMEOUT = 5.0

# (name, request text exactly as in the spec, expected reply text exactly as in the spec)
REPLIED = [
    (
        "positional-1",
        '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
        '{"jsonrpc": "2.0", "result": 19, "id": 1}',
    ),
    (
        "positional-2",
        '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
        '{"jsonrpc": "2.0", "result": -19, "id": 2}',
    ),
    (
        "named-1",
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
        '{"jsonrpc": "2.0", "result": 19, "id": 3}',
    ),
    (
        "named-2",
        '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}',
        '{"jsonrpc": "2.0", "result": 19, "id": 4}',
    ),
    (
        "non-existent-method",
        '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
        '{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}',
    ),
    (
        "invalid-json",
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}',
    ),
    (
        "invalid-request-object",
        '{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
        '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}',
    ),
    (
        "batch-invalid-json",
        """[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]""",
        '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}',
    ),
    (
        "empty-array",
        "[]",
        '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}',
    ),
    (
        "invalid-batch-not-empty",
        "[1]",
        """[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]""",
    ),
    (
        "invalid-batch",
        "[1,2,3]",
        """[
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
  {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
]""",
    ),
    (
        "batch",
        """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"} 
    ]""",  # noqa: W291 - verbatim: the spec's text has a space after the last member
        """[
        {"jsonrpc": "2.0", "result": 7, "id": "1"},
        {"jsonrpc": "2.0", "result": 19, "id": "2"},
        {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
        {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
    ]""",
    ),
]

# (name, request text exactly as in the spec): the server must send nothing back.
UNANSWERED = [
    ("notification-update", '{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}'),
    ("notification-foobar", '{"jsonrpc": "2.0", "method": "foobar"}'),
    (
        "batch-all-notifications",
        """[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]""",
    ),
]


def open_ws(url: str) -> ClientConnection:
    """A raw WebSocket client (no proxy, no compression)."""
    return connect(url, proxy=None, compression=None, open_timeout=TIMEOUT)


def receive(ws: ClientConnection) -> Any:
    """The next frame, parsed."""
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str)
    return json.loads(frame)


def canonical(value: Any) -> Any:
    """A reply made comparable: a batch becomes a sorted list of canonical JSON strings."""
    if isinstance(value, list):
        return sorted(json.dumps(item, sort_keys=True) for item in value)
    return value


def assert_next_frame_is_follow_up(ws: ClientConnection) -> None:
    """A follow-up request's reply is the next frame, and nothing else arrives after it."""
    ws.send('{"jsonrpc": "2.0", "method": "subtract", "params": [5, 3], "id": "follow-up"}')
    assert receive(ws) == {"jsonrpc": "2.0", "result": 2, "id": "follow-up"}
    with pytest.raises(TimeoutError):
        ws.recv(timeout=0.3)


def wait_for(condition: Any, seconds: float = TIMEOUT) -> bool:
    """Poll ``condition`` until true or ``seconds`` pass; its final value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


@pytest.mark.parametrize(("request_text", "reply_text"), [case[1:] for case in REPLIED], ids=[c[0] for c in REPLIED])
def test_spec_example_reply(spec_server: Any, request_text: str, reply_text: str) -> None:
    """The spec's section 7 example gets exactly the spec's reply; the connection stays usable."""
    with open_ws(spec_server.url) as ws:
        ws.send(request_text)
        reply = receive(ws)
        expected = json.loads(reply_text)
        assert type(reply) is type(expected)
        assert canonical(reply) == canonical(expected)
        assert_next_frame_is_follow_up(ws)


@pytest.mark.parametrize("request_text", [case[1] for case in UNANSWERED], ids=[c[0] for c in UNANSWERED])
def test_spec_example_without_reply(spec_server: Any, request_text: str) -> None:
    """The spec's notification examples (and the all-notification batch) get no reply at all."""
    with open_ws(spec_server.url) as ws:
        ws.send(request_text)
        assert_next_frame_is_follow_up(ws)


def test_notifications_still_run(spec_server: Any) -> None:
    """A notification gets no reply but its function does run (the spec's update and notify_* examples)."""
    received = spec_server.state.registry.get("update").func.__globals__["received"]
    with open_ws(spec_server.url) as ws:
        ws.send('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
        ws.send(UNANSWERED[2][1])
        assert_next_frame_is_follow_up(ws)
    assert wait_for(lambda: ("update", (1, 2, 3, 4, 5)) in received)
    assert wait_for(lambda: ("notify_sum", (1, 2, 4)) in received and ("notify_hello", (7,)) in received)


def test_failing_notification_gets_no_reply(spec_server: Any) -> None:
    """A notification with bad params or an unknown method gets no error reply either."""
    with open_ws(spec_server.url) as ws:
        ws.send('{"jsonrpc": "2.0", "method": "subtract", "params": ["x", 1]}')
        ws.send('{"jsonrpc": "2.0", "method": "subtract", "params": [1, 2, 3]}')
        ws.send('{"jsonrpc": "2.0", "method": "nope", "params": [1]}')
        assert_next_frame_is_follow_up(ws)


@pytest.mark.parametrize(
    ("request_text", "echoed_id"),
    [
        ('{"jsonrpc": "1.0", "method": "subtract", "params": [1, 2], "id": 1}', 1),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": "bar", "id": 2}', 2),
        ('{"jsonrpc": "2.0", "params": [1, 2], "id": 3}', 3),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [1, 2], "id": 4, "extra": 1}', 4),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [1, 2], "id": {"a": 1}}', None),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [1, 2], "id": [1]}', None),
        ('{"jsonrpc": "2.0", "method": "subtract", "params": [1, 2], "id": true}', None),
    ],
    ids=["version-1.0", "params-string", "no-method", "extra-member", "id-object", "id-array", "id-bool"],
)
def test_invalid_request_objects(spec_server: Any, request_text: str, echoed_id: Any) -> None:
    """Invalid JSON-RPC request objects answer -32600 "Invalid Request", the id echoed only when valid."""
    with open_ws(spec_server.url) as ws:
        ws.send(request_text)
        reply = receive(ws)
        assert reply["jsonrpc"] == "2.0"
        assert reply["id"] == echoed_id
        assert type(reply["id"]) is type(echoed_id)
        assert reply["error"]["code"] == -32600
        assert reply["error"]["message"] == "Invalid Request"
        assert "result" not in reply
        assert_next_frame_is_follow_up(ws)


@pytest.mark.parametrize(
    "request_id", ["abc", 0, -7, 2**60, 1.5, None], ids=["str", "zero", "neg", "big", "float", "null"]
)
def test_ids_are_echoed_exactly(spec_server: Any, request_id: Any) -> None:
    """A JSON-RPC id (string, number, even null) is echoed with its exact value and type."""
    with open_ws(spec_server.url) as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": request_id}))
        reply = receive(ws)
    assert reply == {"jsonrpc": "2.0", "result": 19, "id": request_id}
    assert type(reply["id"]) is type(request_id)


def test_invalid_params(spec_server: Any) -> None:
    """Params that do not fit answer -32602 "Invalid params" with data as a list of {loc, msg, type}."""
    with open_ws(spec_server.url) as ws:
        ws.send('{"jsonrpc": "2.0", "method": "subtract", "params": [42], "id": 10}')
        reply = receive(ws)
    assert set(reply) == {"jsonrpc", "error", "id"}
    assert reply["id"] == 10
    assert reply["error"]["code"] == -32602
    assert reply["error"]["message"] == "Invalid params"
    assert isinstance(reply["error"]["data"], list) and reply["error"]["data"]
    for detail in reply["error"]["data"]:
        assert set(detail) == {"loc", "msg", "type"}


def test_rpc_discover_returns_openrpc(spec_server: Any) -> None:
    """rpc.discover answers an OpenRPC 1.x document listing every function with the same schemas as list."""
    with open_ws(spec_server.url) as ws:
        ws.send('{"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}')
        reply = receive(ws)
        ws.send('{"id": 2, "op": "list"}')
        listed = receive(ws)["result"]["functions"]
    assert set(reply) == {"jsonrpc", "result", "id"}
    assert reply["id"] == 1
    document = reply["result"]
    assert document["openrpc"].startswith("1.")
    assert isinstance(document["info"]["title"], str)
    assert isinstance(document["info"]["version"], str)
    names = [method["name"] for method in document["methods"]]
    assert names == [function["name"] for function in listed]
    assert set(names) == {"subtract", "sum", "get_data", "update", "notify_hello", "notify_sum"}
    for method, function in zip(document["methods"], listed, strict=True):
        assert method["result"]["schema"] == function["result"]
        properties = function["params"].get("properties", {})
        assert {param["name"]: param["schema"] for param in method["params"]} == properties
    subtract = document["methods"][names.index("subtract")]
    assert [(param["name"], param["required"]) for param in subtract["params"]] == [
        ("minuend", True),
        ("subtrahend", True),
    ]


def test_native_and_jsonrpc_share_one_connection(spec_server: Any) -> None:
    """Each reply is in the dialect of its request, on the same connection."""
    with open_ws(spec_server.url) as ws:
        ws.send('{"id": "n", "func": "subtract", "args": [42, 23]}')
        assert receive(ws) == {"id": "n", "result": 19, "error": None}
        ws.send('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": "j"}')
        assert receive(ws) == {"jsonrpc": "2.0", "result": 19, "id": "j"}
