"""End-to-end tests of the server (SPEC §1, §2) over real WebSockets on 127.0.0.1.

Frames are written and read raw with ``websockets.sync.client`` so that every byte the server sends is
checked, not what a friendly client makes of it. Every receive has a timeout and every loop a bound.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import close_code, serve_process, wait_for
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from synapse_cli.server.builtins import default_registry

APPS = Path(__file__).parent / "apps"
TIMEOUT = 5.0
MakeServer = Callable[..., AbstractContextManager[Any]]


def _import_slow_app() -> ModuleType:
    """tests/apps/slow.py under a private name, so its records are the ones the served registry writes."""
    spec = importlib.util.spec_from_file_location("synapse_test_server_slow_app", APPS / "slow.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


slow = _import_slow_app()


def open_ws(url: str, **options: Any) -> ClientConnection:
    """A raw WebSocket client (no proxy, no compression) to ``url``."""
    return connect(url, proxy=None, compression=None, open_timeout=TIMEOUT, **options)


def send(ws: ClientConnection, message: Any) -> None:
    """Send a message: text as is, anything else encoded as JSON."""
    ws.send(message if isinstance(message, str) else json.dumps(message))


def receive(ws: ClientConnection) -> Any:
    """The next frame, parsed (a text frame is required)."""
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str)
    return json.loads(frame)


def exchange(ws: ClientConnection, message: Any) -> Any:
    """Send one message and return the parsed next frame."""
    send(ws, message)
    return receive(ws)


def assert_usable(ws: ClientConnection) -> None:
    """The connection still answers a good call (sent after a bad one)."""
    request_id = f"ok-{uuid.uuid4().hex[:8]}"
    reply = exchange(ws, {"id": request_id, "func": "add_numbers", "args": [1, 2]})
    assert reply == {"id": request_id, "result": 3, "error": None}


def assert_no_frame(ws: ClientConnection, seconds: float = 0.3) -> None:
    """Nothing more arrives within ``seconds``."""
    with pytest.raises(TimeoutError):
        ws.recv(timeout=seconds)


def receive_by_id(ws: ClientConnection, count: int) -> dict[Any, Any]:
    """Read ``count`` native replies and index them by id (each id must come once)."""
    replies: dict[Any, Any] = {}
    for _ in range(count):
        reply = receive(ws)
        assert reply["id"] not in replies, f"id {reply['id']!r} answered twice"
        replies[reply["id"]] = reply
    return replies


def get_health(http: str) -> tuple[int, str, Any]:
    """GET /health: status, content type and parsed body."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{http}/health", timeout=TIMEOUT) as response:
        return response.status, response.headers["content-type"], json.loads(response.read())


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    """The error object of a native error reply (result must be null)."""
    assert reply["result"] is None
    assert isinstance(reply["error"], dict)
    return reply["error"]


# -- the seed's examples ---------------------------------------------------------------------------


def test_add_numbers_int_plus_int_is_int(server: Any) -> None:
    """add_numbers [1, 2] answers the integer 3, written without a fraction."""
    with open_ws(server.url) as ws:
        send(ws, {"id": "1234", "op": "call", "func": "add_numbers", "args": [1, 2]})
        frame = ws.recv(timeout=TIMEOUT)
    reply = json.loads(frame)
    assert reply == {"id": "1234", "result": 3, "error": None}
    assert type(reply["result"]) is int
    assert '"result":3,' in frame.replace(" ", "")


def test_add_numbers_floats_give_float(server: Any) -> None:
    """add_numbers [3.5, 4.5] answers the float 8.0."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"id": 1, "func": "add_numbers", "args": [3.5, 4.5]})
    assert reply == {"id": 1, "result": 8.0, "error": None}
    assert type(reply["result"]) is float


def test_add_numbers_by_name(server: Any) -> None:
    """add_numbers {"a": -1, "b": 10} answers the integer 9."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"id": 2, "func": "add_numbers", "args": {"a": -1, "b": 10}})
    assert reply == {"id": 2, "result": 9, "error": None}
    assert type(reply["result"]) is int


@pytest.mark.parametrize(
    "args",
    [[True, 2], ["1", 2], [1, False], {"a": True, "b": 1}, {"a": "1", "b": 2}],
    ids=["true-first", "string-first", "false-second", "named-true", "named-string"],
)
def test_add_numbers_refuses_bools_and_strings(server: Any, args: Any) -> None:
    """Booleans and numeric strings are not numbers: -32602, and the connection stays usable."""
    with open_ws(server.url) as ws:
        error = error_of(exchange(ws, {"id": 3, "func": "add_numbers", "args": args}))
        assert error["code"] == -32602
        assert_usable(ws)


# -- SPEC §1.3, code by code -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"id": 1, "func": "echo", "args": [1]',
        '{"id": 1, "func": "echo", "args": [NaN]}',
        '{"id": 1, "func": "echo", "args": [Infinity]}',
        '{"id": 1, "func": "echo", "args": [-Infinity]}',
        '{"id": 1, "func": "echo", "args": ["\\ud800"]}',
        '{"id": 1, "func": "echo", "args": [18446744073709551616]}',
        '{"id": 1, "func": "echo", "args": [-9223372036854775809]}',
        '{"id": 1, "func": "echo", "args": [100000000000000000000000000000]}',
        '{"id": 1, "func": "echo", "args": [' + "[" * 63 + "]" * 63 + "]}",  # 65 levels
        "",
        "{'id': 1}",
    ],
    ids=[
        "garbage",
        "truncated",
        "nan",
        "infinity",
        "minus-infinity",
        "lone-surrogate",
        "uint64-overflow",
        "int64-underflow",
        "huge-integer",
        "nesting-65",
        "empty",
        "single-quotes",
    ],
)
def test_parse_error_has_null_id_and_keeps_the_connection(server: Any, text: str) -> None:
    """Unparseable text answers -32700 with id null in the JSON-RPC form; the connection stays usable."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, text)
        assert reply["jsonrpc"] == "2.0"
        assert reply["id"] is None
        assert reply["error"]["code"] == -32700
        assert "result" not in reply
        assert_usable(ws)


def test_nesting_of_64_levels_parses(server: Any) -> None:
    """An argument nested so the message is exactly 64 levels deep is accepted and echoed back."""
    value: Any = []
    for _ in range(61):  # message object, args array, then 62 nested lists: 64 levels
        value = [value]
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"id": 1, "func": "echo", "args": [value]})
    assert reply == {"id": 1, "result": value, "error": None}


def test_invalid_utf8_text_closes_with_1007(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A text frame that is not UTF-8 closes that connection with 1007 (RFC 6455), logged without a traceback."""
    with open_ws(server.url) as other, open_ws(server.url) as ws:
        ws.send(b'{"id": 1, "func": "echo", "args": ["\xff"]}', text=True)
        assert close_code(ws) == 1007
        assert_usable(other)
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize(
    ("message", "echoed_id"),
    [
        ({"id": 1, "op": "call"}, 1),
        ({"id": 2, "op": "frobnicate"}, 2),
        ({"id": 3, "op": 7, "func": "echo"}, 3),
        ({"id": 4, "func": "echo", "args": [1], "extra": True}, 4),
        ({"id": 5, "func": 5}, 5),
        ({"id": 6, "func": "echo", "args": "x"}, 6),
        ({"id": 7, "func": "x" * 129}, 7),
        ({"id": True, "func": "echo", "args": [1]}, None),
        ({"id": 1.5, "func": "echo", "args": [1]}, None),
        ({"id": None, "func": "echo", "args": [1]}, None),
        ({"id": -1, "func": "echo", "args": [1]}, None),
        ({"id": 2**53, "func": "echo", "args": [1]}, None),
        ({"id": "x" * 129, "func": "echo", "args": [1]}, None),
        ({"id": [1], "func": "echo", "args": [1]}, None),
        ({"func": "echo", "args": [1]}, None),
    ],
    ids=[
        "missing-func",
        "unknown-op",
        "op-not-string",
        "extra-field",
        "func-not-string",
        "args-string",
        "func-too-long",
        "id-bool",
        "id-float",
        "id-null",
        "id-negative",
        "id-2-53",
        "id-too-long",
        "id-array",
        "id-missing",
    ],
)
def test_invalid_native_request(server: Any, message: dict[str, Any], echoed_id: Any) -> None:
    """A native message that is JSON but not a valid request answers -32600 natively, id echoed only when valid."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, message)
        assert set(reply) == {"id", "result", "error"}
        assert reply["id"] == echoed_id
        assert type(reply["id"]) is type(echoed_id)
        assert error_of(reply)["code"] == -32600
        assert_usable(ws)


def test_longest_valid_ids_are_accepted(server: Any) -> None:
    """A 128-character string id and the integer id 2^53 - 1 are valid and echoed exactly."""
    with open_ws(server.url) as ws:
        for request_id in ["x" * 128, 2**53 - 1, 0, ""]:
            reply = exchange(ws, {"id": request_id, "func": "echo", "args": ["v"]})
            assert reply == {"id": request_id, "result": "v", "error": None}


@pytest.mark.parametrize(
    ("message", "echoed_id"),
    [({"id": 7}, 7), ({"id": "x", "args": [1]}, "x"), ({}, None), ({"id": True}, None)],
    ids=["only-id", "no-func", "empty-object", "bad-id"],
)
def test_dialectless_object_answers_in_jsonrpc_form(server: Any, message: Any, echoed_id: Any) -> None:
    """An object with neither jsonrpc, op nor func answers -32600 in the JSON-RPC form, id echoed when valid."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, message)
        assert reply == {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": echoed_id}
        assert_usable(ws)


@pytest.mark.parametrize("text", ["1", '"call"', "null", "true"], ids=["number", "string", "null", "bool"])
def test_non_object_answers_invalid_request(server: Any, text: str) -> None:
    """A JSON value that is not an object or array answers -32600 in the JSON-RPC form with id null."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, text)
        assert reply == {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}
        assert_usable(ws)


def test_duplicate_id_while_in_flight(server: Any) -> None:
    """A second call reusing an in-flight id gets -32600 "duplicate id"; the first call still answers."""
    with open_ws(server.url) as ws:
        send(ws, {"id": "dup", "func": "sleep", "args": [0.5]})
        reply = exchange(ws, {"id": "dup", "func": "add_numbers", "args": [1, 2]})
        error = error_of(reply)
        assert reply["id"] == "dup"
        assert error["code"] == -32600
        assert error["message"].startswith("duplicate id")
        assert receive(ws) == {"id": "dup", "result": 0.5, "error": None}
        # Once answered, the id is free again.
        assert exchange(ws, {"id": "dup", "func": "add_numbers", "args": [1, 2]}) == {
            "id": "dup",
            "result": 3,
            "error": None,
        }


def test_integer_and_string_ids_are_distinct(server: Any) -> None:
    """Ids 5 and "5" in flight together are two calls, each answered with its own id and type."""
    with open_ws(server.url) as ws:
        send(ws, {"id": 5, "func": "sleep", "args": [0.2]})
        send(ws, {"id": "5", "func": "sleep", "args": [0.1]})
        first, second = receive(ws), receive(ws)
    assert first == {"id": "5", "result": 0.1, "error": None}
    assert second == {"id": 5, "result": 0.2, "error": None}


def test_method_not_found(server: Any) -> None:
    """An unknown function answers -32601 "function not found: NAME"; the connection stays usable."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"id": "1234", "op": "call", "func": "add_numberz", "args": [5, 10]})
        assert reply == {
            "id": "1234",
            "result": None,
            "error": {"code": -32601, "message": "function not found: add_numberz"},
        }
        assert_usable(ws)


@pytest.mark.parametrize(
    "args",
    [[1], [1, 2, 3], {"a": 1}, {"a": 1, "b": 2, "c": 3}, ["x", "y"]],
    ids=["too-few", "too-many", "named-missing", "named-extra", "wrong-types"],
)
def test_invalid_params_lists_each_problem(server: Any, args: Any) -> None:
    """Arguments that do not fit answer -32602 whose data is a list of {loc, msg, type} objects."""
    with open_ws(server.url) as ws:
        error = error_of(exchange(ws, {"id": 9, "func": "add_numbers", "args": args}))
        assert error["code"] == -32602
        assert isinstance(error["message"], str)
        assert isinstance(error["data"], list)
        assert len(error["data"]) >= 1
        for detail in error["data"]:
            assert set(detail) == {"loc", "msg", "type"}
            assert isinstance(detail["loc"], list)
            assert isinstance(detail["msg"], str)
            assert isinstance(detail["type"], str)
        assert_usable(ws)


def test_internal_error_hides_the_exception(server: Any) -> None:
    """An unexpected exception answers -32603 "internal error" with only its type: no text, no traceback."""
    with open_ws(server.url) as ws:
        send(ws, {"id": 1, "func": "fail", "args": ["secret-detail-0815"]})
        frame = ws.recv(timeout=TIMEOUT)
        assert isinstance(frame, str)
        assert json.loads(frame) == {
            "id": 1,
            "result": None,
            "error": {"code": -32603, "message": "internal error", "data": {"type": "RuntimeError"}},
        }
        assert "secret-detail-0815" not in frame
        assert "Traceback" not in frame
        assert_usable(ws)


def test_internal_error_of_app_function_in_thread(make_server: MakeServer) -> None:
    """An exception in a sync function run in a thread is hidden the same way (only its type)."""
    with make_server(slow.registry) as running, open_ws(running.url) as ws:
        send(ws, {"id": 1, "func": "secret_failure"})
        frame = ws.recv(timeout=TIMEOUT)
        assert isinstance(frame, str)
        assert json.loads(frame)["error"] == {
            "code": -32603,
            "message": "internal error",
            "data": {"type": "ValueError"},
        }
        assert "secret-detail-4711" not in frame
        assert "Traceback" not in frame


def test_debug_sends_the_exception_text(make_server: MakeServer) -> None:
    """With debug=True the -32603 data carries the exception's message (and type)."""
    with make_server(debug=True) as running, open_ws(running.url) as ws:
        error = error_of(exchange(ws, {"id": 1, "func": "fail", "args": ["kaboom"]}))
        assert error["code"] == -32603
        assert error["message"] == "internal error"
        assert error["data"]["type"] == "RuntimeError"
        assert error["data"]["message"] == "kaboom"
        assert_usable(ws)


@pytest.mark.parametrize(
    ("func", "args"),
    [("not_a_number", []), ("infinity", []), ("a_set", []), ("huge_integer", []), ("deep_list", [65])],
    ids=["nan", "infinity", "set", "int-beyond-64-bits", "nesting-65"],
)
def test_result_not_serializable(make_server: MakeServer, func: str, args: list[Any]) -> None:
    """A result JSON cannot carry answers -32603 "result not serializable"; the connection stays usable."""
    with make_server(slow.registry) as running, open_ws(running.url) as ws:
        reply = exchange(ws, {"id": "r", "func": func, "args": args})
        assert reply["id"] == "r"
        error = error_of(reply)
        assert error["code"] == -32603
        assert error["message"] == "result not serializable"
        reply = exchange(ws, {"id": "ok", "func": "deep_list", "args": [64]})
        assert reply["error"] is None
        depth, value = 0, reply["result"]
        while isinstance(value, list):
            depth, value = depth + 1, (value[0] if value else None)
        assert depth == 64


def test_rpc_error_default_code(server: Any) -> None:
    """RPCError without a code answers -32000 with its message and data (builtin divide by zero)."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"id": 1, "func": "divide", "args": [1, 0]})
        assert reply == {
            "id": 1,
            "result": None,
            "error": {"code": -32000, "message": "division by zero", "data": {"a": 1}},
        }
        assert_usable(ws)


def test_rpc_error_custom_code_passes_through(make_server: MakeServer) -> None:
    """RPCError with its own code passes code, message and data through unchanged, in both dialects."""
    error = {"code": 4002, "message": "insufficient funds", "data": {"balance": 3}}
    with make_server(slow.registry) as running, open_ws(running.url) as ws:
        assert exchange(ws, {"id": 1, "func": "insufficient_funds"}) == {"id": 1, "result": None, "error": error}
        reply = exchange(ws, {"jsonrpc": "2.0", "method": "insufficient_funds", "id": 2})
        assert reply == {"jsonrpc": "2.0", "error": error, "id": 2}


def test_call_timeout(make_server: MakeServer) -> None:
    """A call running past call_timeout answers -32001; quicker calls and later calls are unaffected."""
    with make_server(call_timeout=0.3) as running, open_ws(running.url) as ws:
        started = time.monotonic()
        error = error_of(exchange(ws, {"id": "t", "func": "sleep", "args": [5]}))
        elapsed = time.monotonic() - started
        assert error["code"] == -32001
        assert 0.25 <= elapsed < 3.0
        assert exchange(ws, {"id": "q", "func": "sleep", "args": [0.05]}) == {"id": "q", "result": 0.05, "error": None}
        assert_usable(ws)


def test_cancel_answers_minus_32002_and_gets_no_reply(server: Any) -> None:
    """{"op": "cancel", "id": X} ends running call X with -32002; the cancel itself is never answered."""
    with open_ws(server.url) as ws:
        send(ws, {"id": "c", "func": "sleep", "args": [10]})
        time.sleep(0.1)  # the call is running
        started = time.monotonic()
        send(ws, {"op": "cancel", "id": "c"})
        reply = receive(ws)
        assert time.monotonic() - started < 3.0
        assert reply["id"] == "c"
        assert error_of(reply)["code"] == -32002
        assert_usable(ws)  # the next frame is the good call's reply: nothing came for the cancel
        assert_no_frame(ws)


def test_cancel_right_after_the_call_is_answered(server: Any) -> None:
    """A cancel sent immediately behind its call still answers the call with -32002 (five tries at the race)."""
    with open_ws(server.url) as ws:
        for attempt in range(5):
            request_id = f"c{attempt}"
            send(ws, {"id": request_id, "func": "sleep", "args": [10]})
            send(ws, {"op": "cancel", "id": request_id})
            reply = json.loads(ws.recv(timeout=2.0))
            assert reply["id"] == request_id
            assert error_of(reply)["code"] == -32002
        assert_usable(ws)
        assert_no_frame(ws)


def test_cancel_in_the_same_batch_answers_the_call(server: Any) -> None:
    """A batch holding a call and a cancel of it answers with the call's -32002 (the cancel adds nothing)."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, [{"id": "b", "func": "sleep", "args": [10]}, {"op": "cancel", "id": "b"}])
        assert isinstance(reply, list)
        assert len(reply) == 1
        assert reply[0]["id"] == "b"
        assert error_of(reply[0])["code"] == -32002
        assert_usable(ws)


def test_cancel_in_a_batch_cancels_a_running_call(server: Any) -> None:
    """A cancel inside a batch ends an earlier running call with -32002; the batch answers its other members."""
    with open_ws(server.url) as ws:
        send(ws, {"id": "r", "func": "sleep", "args": [10]})
        time.sleep(0.1)
        send(ws, [{"op": "cancel", "id": "r"}, {"id": "g", "func": "echo", "args": [1]}])
        replies = [receive(ws), receive(ws)]
        assert [{"id": "g", "result": 1, "error": None}] in replies
        cancelled = next(reply for reply in replies if isinstance(reply, dict))
        assert cancelled["id"] == "r"
        assert error_of(cancelled)["code"] == -32002
        assert_no_frame(ws)


def test_cancel_of_unknown_id_is_ignored(server: Any) -> None:
    """Cancelling an id that is not in flight produces no reply and harms nothing."""
    with open_ws(server.url) as ws:
        send(ws, {"id": 7, "func": "sleep", "args": [0.3]})
        send(ws, {"op": "cancel", "id": "nope"})
        send(ws, {"op": "cancel", "id": "7"})  # a string is not the integer id 7
        assert receive(ws) == {"id": 7, "result": 0.3, "error": None}
        assert_usable(ws)
        assert_no_frame(ws)


def test_cancel_with_a_finished_call_is_ignored(server: Any) -> None:
    """Cancelling a call that already answered produces no second reply."""
    with open_ws(server.url) as ws:
        assert exchange(ws, {"id": "done", "func": "sleep", "args": [0]}) == {"id": "done", "result": 0, "error": None}
        send(ws, {"op": "cancel", "id": "done"})
        assert_usable(ws)
        assert_no_frame(ws)


# -- list, batches ---------------------------------------------------------------------------------


def test_list_describes_every_function(server: Any) -> None:
    """op "list" answers {"functions": [{name, description, params, result}]} for every built-in."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"id": "l", "op": "list"})
    assert set(reply) == {"id", "result", "error"}
    assert reply["id"] == "l"
    assert reply["error"] is None
    assert set(reply["result"]) == {"functions"}
    functions = reply["result"]["functions"]
    assert [f["name"] for f in functions] == [f.name for f in default_registry()]
    assert {"add_numbers", "echo", "sleep"} <= {f["name"] for f in functions}
    for function in functions:
        assert set(function) - {"stream"} == {"name", "description", "params", "result"}
        assert function.get("stream", False) is (function["name"] in {"ticks", "events"})
        assert isinstance(function["description"], str) and function["description"]
        assert function["params"]["type"] == "object"
    add = next(f for f in functions if f["name"] == "add_numbers")
    assert add["params"]["required"] == ["a", "b"]
    assert set(add["params"]["properties"]) == {"a", "b"}
    assert add["result"] == {"anyOf": [{"type": "integer"}, {"type": "number"}]}


def test_native_batch(server: Any) -> None:
    """A native batch answers one array of native replies, one per call, including errors and invalid items."""
    batch = [
        {"id": 1, "func": "add_numbers", "args": [1, 2]},
        {"id": 2, "func": "sleep", "args": [0.1]},
        {"id": 3, "func": "nope"},
        {"id": 4, "op": "bogus"},
        {"id": 5},
        {"id": 6, "op": "list"},
    ]
    with open_ws(server.url) as ws:
        reply = exchange(ws, batch)
        assert isinstance(reply, list)
        by_id = {item["id"]: item for item in reply}
        assert len(reply) == 6 == len(by_id)
        assert by_id[1] == {"id": 1, "result": 3, "error": None}
        assert by_id[2] == {"id": 2, "result": 0.1, "error": None}
        assert error_of(by_id[3])["code"] == -32601
        assert error_of(by_id[4])["code"] == -32600
        assert set(by_id[5]) == {"id", "result", "error"}  # dialect taken from the batch's other members
        assert error_of(by_id[5])["code"] == -32600
        assert by_id[6]["error"] is None
        assert {f["name"] for f in by_id[6]["result"]["functions"]} >= {"add_numbers", "echo"}
        assert_usable(ws)


def test_jsonrpc_batch_mixing_valid_and_invalid(server: Any) -> None:
    """A JSON-RPC batch answers each valid and invalid member, skips notifications, in JSON-RPC form."""
    batch = [
        {"jsonrpc": "2.0", "method": "add_numbers", "params": [1, 2], "id": "a"},
        {"jsonrpc": "2.0", "method": "add_numbers", "params": {"a": 1}, "id": "b"},
        {"jsonrpc": "2.0", "method": "echo", "params": ["note"]},
        {"jsonrpc": "2.0", "method": 5, "id": "c"},
        {"jsonrpc": "2.0", "method": "missing", "id": 4},
        7,
    ]
    with open_ws(server.url) as ws:
        reply = exchange(ws, batch)
        assert isinstance(reply, list)
        assert len(reply) == 5
        for item in reply:
            assert item["jsonrpc"] == "2.0"
            assert ("result" in item) != ("error" in item)
        by_id = {item["id"]: item for item in reply if item["id"] is not None}
        assert by_id["a"] == {"jsonrpc": "2.0", "result": 3, "id": "a"}
        assert by_id["b"]["error"]["code"] == -32602
        assert by_id["c"]["error"] == {"code": -32600, "message": "Invalid Request"}
        assert by_id[4] == {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": 4}
        nulls = [item for item in reply if item["id"] is None]
        assert nulls == [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]
        assert_usable(ws)


def test_batch_over_max_batch(make_server: MakeServer) -> None:
    """A batch longer than max_batch answers one -32600 with id null; a batch of exactly max_batch runs."""
    with make_server(max_batch=3) as running, open_ws(running.url) as ws:
        calls = [{"id": i, "func": "echo", "args": [i]} for i in range(4)]
        reply = exchange(ws, calls)
        assert isinstance(reply, dict)
        assert reply["id"] is None
        assert reply["error"]["code"] == -32600
        reply = exchange(ws, calls[:3])
        assert sorted(reply, key=lambda item: item["id"]) == [{"id": i, "result": i, "error": None} for i in range(3)]
        rpc = [{"jsonrpc": "2.0", "method": "echo", "params": [i], "id": i} for i in range(4)]
        reply = exchange(ws, rpc)
        assert reply["jsonrpc"] == "2.0"
        assert reply["id"] is None
        assert reply["error"]["code"] == -32600
        assert_usable(ws)


# -- concurrency -----------------------------------------------------------------------------------


def test_thousand_concurrent_calls_routed_by_id(server: Any) -> None:
    """1,000 echo calls sent before reading any reply are each answered exactly once under their own id."""
    count = 1000
    with open_ws(server.url, max_queue=None) as ws:
        for i in range(count):
            request_id: int | str = i if i % 2 else f"s{i}"
            send(ws, {"id": request_id, "func": "echo", "args": [{"n": i}]})
        replies = [receive(ws) for _ in range(count)]
        assert_no_frame(ws, 0.1)
    ids = Counter(json.dumps(reply["id"]) for reply in replies)
    assert len(ids) == count
    assert set(ids.values()) == {1}
    for reply in replies:
        n = reply["id"] if type(reply["id"]) is int else int(reply["id"][1:])
        assert reply == {"id": reply["id"], "result": {"n": n}, "error": None}


def test_thousand_concurrent_async_calls_routed_by_id(server: Any) -> None:
    """1,000 sleep calls of mixed lengths on one connection all answer once, with their own result."""
    count = 1000
    with open_ws(server.url, max_queue=None) as ws:
        for i in range(count):
            send(ws, {"id": i, "func": "sleep", "args": [(i % 4) * 0.01]})
        replies = receive_by_id(ws, count)
    assert sorted(replies) == list(range(count))
    for i, reply in replies.items():
        assert reply == {"id": i, "result": (i % 4) * 0.01, "error": None}


def test_slow_call_does_not_hold_back_fast_ones(server: Any) -> None:
    """Fast calls sent after a slow one on the same connection are answered first (out of order)."""
    with open_ws(server.url) as ws:
        started = time.monotonic()
        send(ws, {"id": "slow", "func": "sleep", "args": [1.0]})
        for i in range(10):
            send(ws, {"id": i, "func": "sleep", "args": [0]} if i % 2 else {"id": i, "func": "echo", "args": [i]})
        fast = [receive(ws) for _ in range(10)]
        fast_elapsed = time.monotonic() - started
        last = receive(ws)
    assert sorted(reply["id"] for reply in fast) == list(range(10))
    assert fast_elapsed < 0.9
    assert last == {"id": "slow", "result": 1.0, "error": None}


def test_blocking_sync_function_does_not_stall_other_connections(make_server: MakeServer) -> None:
    """A sync function blocking its thread for 1 s does not delay calls on another connection (or its own)."""
    with make_server(slow.registry) as running, open_ws(running.url) as busy, open_ws(running.url) as other:
        started = time.monotonic()
        send(busy, {"id": "block", "func": "blocking_sleep", "args": [1.0]})
        time.sleep(0.1)
        for i in range(5):
            reply = exchange(other, {"id": i, "func": "deep_list", "args": [1]})
            assert reply == {"id": i, "result": [], "error": None}
        reply = exchange(busy, {"id": "own", "func": "deep_list", "args": [2]})
        assert reply == {"id": "own", "result": [[]], "error": None}
        assert time.monotonic() - started < 0.8
        assert receive(busy) == {"id": "block", "result": 1.0, "error": None}


def test_two_blocking_calls_run_in_parallel_threads(make_server: MakeServer) -> None:
    """Two 0.6 s blocking sync calls on two connections finish in well under their 1.2 s sum."""
    with make_server(slow.registry) as running, open_ws(running.url) as one, open_ws(running.url) as two:
        started = time.monotonic()
        send(one, {"id": 1, "func": "blocking_sleep", "args": [0.6]})
        send(two, {"id": 2, "func": "blocking_sleep", "args": [0.6]})
        assert receive(one) == {"id": 1, "result": 0.6, "error": None}
        assert receive(two) == {"id": 2, "result": 0.6, "error": None}
        assert time.monotonic() - started < 1.1


def test_max_inflight_bounds_running_calls(make_server: MakeServer) -> None:
    """With max_inflight=2, ten calls run at most two at a time, and all ten are answered."""
    tag = f"bp-{uuid.uuid4().hex}"
    with make_server(slow.registry, max_inflight=2) as running, open_ws(running.url) as ws:
        started = time.monotonic()
        for i in range(10):
            send(ws, {"id": i, "func": "tracked", "args": [tag, 0.15]})
        time.sleep(0.05)
        connection = next(iter(running.state.connections))
        assert connection.session.running == 2
        replies = receive_by_id(ws, 10)
        elapsed = time.monotonic() - started
    assert sorted(replies) == list(range(10))
    assert all(reply["error"] is None and reply["result"] in (1, 2) for reply in replies.values())
    assert slow.peak[tag] == 2
    assert elapsed >= 5 * 0.15 * 0.9  # five waves of two
    assert elapsed < 5.0


def test_max_inflight_bounds_calls_inside_a_batch(make_server: MakeServer) -> None:
    """With max_inflight=2, a batch of ten calls also runs at most two at a time, and answers all ten."""
    tag = f"bpb-{uuid.uuid4().hex}"
    with make_server(slow.registry, max_inflight=2) as running, open_ws(running.url) as ws:
        reply = exchange(ws, [{"id": i, "func": "tracked", "args": [tag, 0.1]} for i in range(10)])
    assert sorted(item["id"] for item in reply) == list(range(10))
    assert all(item["error"] is None for item in reply)
    assert slow.peak[tag] <= 2


def test_disconnect_cancels_in_flight_calls(make_server: MakeServer) -> None:
    """Closing the connection cancels its in-flight calls on the server."""
    tags = [f"dc-{uuid.uuid4().hex}-{i}" for i in range(3)]
    with make_server(slow.registry) as running:
        with open_ws(running.url) as ws:
            for i, tag in enumerate(tags):
                send(ws, {"id": i, "func": "watched", "args": [tag, 30]})
            assert wait_for(lambda: set(tags) <= set(slow.started))
        assert wait_for(lambda: set(tags) <= set(slow.cancelled))
        assert not set(tags) & set(slow.finished)
        assert wait_for(lambda: not running.state.connections)


# -- close codes -----------------------------------------------------------------------------------


def test_binary_frame_closes_with_1003(server: Any) -> None:
    """A binary frame closes that connection with 1003; other connections are unaffected."""
    with open_ws(server.url) as other, open_ws(server.url) as ws:
        ws.send(b'{"id": 1, "func": "echo", "args": [1]}')
        assert close_code(ws) == 1003
        assert_usable(other)


def test_message_size_limit(make_server: MakeServer) -> None:
    """A message of exactly max_message_size bytes is processed; one byte more closes with 1009."""
    limit = 1024
    prefix, suffix = '{"id":1,"func":"echo","args":["', '"]}'
    padding = "x" * (limit - len(prefix) - len(suffix))
    exact = prefix + padding + suffix
    assert len(exact.encode()) == limit
    with make_server(max_message_size=limit) as running:
        with open_ws(running.url) as other, open_ws(running.url) as ws:
            assert exchange(ws, exact) == {"id": 1, "result": padding, "error": None}
            send(ws, prefix + padding + "x" + suffix)
            assert close_code(ws) == 1009
            assert_usable(other)


# -- handshake -------------------------------------------------------------------------------------


def handshake_status(url: str, **options: Any) -> int:
    """The HTTP status of a refused handshake."""
    with pytest.raises(InvalidStatus) as info:
        with open_ws(url, **options):
            pass
    return info.value.response.status_code


def test_token_required(make_server: MakeServer) -> None:
    """With a token, a handshake without or with a wrong bearer token gets HTTP 401; the right one works."""
    with make_server(token="s3cret-token") as running:
        assert handshake_status(running.url) == 401
        assert handshake_status(running.url, additional_headers={"Authorization": "Bearer wrong"}) == 401
        assert handshake_status(running.url, additional_headers={"Authorization": "s3cret-token"}) == 401
        assert handshake_status(running.url, additional_headers={"Authorization": "Bearer s3cret-token2"}) == 401
        with open_ws(running.url, additional_headers={"Authorization": "Bearer s3cret-token"}) as ws:
            assert_usable(ws)


def test_origin_checked(make_server: MakeServer) -> None:
    """An Origin not in allow_origins gets HTTP 403; an allowed Origin and no Origin both work."""
    with make_server(allow_origins=("https://app.example",)) as running:
        assert handshake_status(running.url, origin="https://evil.example") == 403
        assert handshake_status(running.url, origin="https://app.example.evil") == 403
        with open_ws(running.url, origin="https://app.example") as ws:
            assert_usable(ws)
        with open_ws(running.url) as ws:
            assert_usable(ws)


def test_any_origin_refused_by_default(server: Any) -> None:
    """Without allow_origins, a handshake carrying any Origin gets HTTP 403."""
    assert handshake_status(server.url, origin="http://127.0.0.1") == 403


def test_max_connections(make_server: MakeServer) -> None:
    """With max_connections=2 a third handshake gets HTTP 503; after one closes, a new one is accepted."""
    with make_server(max_connections=2) as running:
        with open_ws(running.url) as first, open_ws(running.url) as second:
            assert handshake_status(running.url) == 503
            assert_usable(first)
            assert_usable(second)
        assert wait_for(lambda: not running.state.connections)
        with open_ws(running.url) as third:
            assert_usable(third)


def test_health_counts(make_server: MakeServer) -> None:
    """GET /health answers 200 JSON with status, version, function count and open connections."""
    with make_server() as running:
        expected = {"status": "ok", "version": running.state.version, "functions": len(default_registry())}
        status, content_type, body = get_health(running.http)
        assert status == 200
        assert content_type.startswith("application/json")
        assert body == {**expected, "connections": 0}
        with open_ws(running.url) as one, open_ws(running.url) as two:
            assert_usable(one)
            assert_usable(two)
            assert wait_for(lambda: get_health(running.http)[2]["connections"] == 2)
            assert get_health(running.http) == (200, content_type, {**expected, "connections": 2})
        assert wait_for(lambda: get_health(running.http)[2]["connections"] == 0)


def test_health_counts_app_functions(make_server: MakeServer) -> None:
    """/health counts the functions of the served registry."""
    with make_server(slow.registry) as running:
        assert get_health(running.http)[2]["functions"] == len(slow.registry)


def test_metrics_are_prometheus_text(server: Any) -> None:
    """GET /metrics answers 200 Prometheus text that mentions the functions called."""
    with open_ws(server.url) as ws:
        assert_usable(ws)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{server.http}/metrics", timeout=TIMEOUT) as response:
        status, content_type, body = response.status, response.headers["content-type"], response.read().decode()
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "# TYPE " in body
    assert " histogram" in body
    assert "add_numbers" in body


# -- graceful shutdown (the real `synapse serve` process) ------------------------------------------


@contextmanager
def synapse_serve(cli_env: dict[str, str], *options: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """Run ``synapse serve --port 0``; yield (process, ws URL parsed from the banner, its output lines)."""
    with serve_process("--log-level", "warning", *options) as server:
        yield server.process, server.url, server.lines


def wait_until_draining(ws: ClientConnection, stash: dict[Any, Any]) -> dict[str, Any]:
    """Send probe calls until one is refused because the server is draining; return that reply.

    Probes answered before the drain began must have succeeded; other replies are kept in ``stash``.
    """
    for attempt in range(100):
        probe = f"probe-{attempt}"
        send(ws, {"id": probe, "func": "add_numbers", "args": [1, 2]})
        for _ in range(5):
            reply = receive(ws)
            if reply["id"] == probe:
                break
            stash[reply["id"]] = reply
        assert reply["id"] == probe
        if reply["error"] is not None:
            return reply
        assert reply == {"id": probe, "result": 3, "error": None}
        time.sleep(0.02)
    raise AssertionError("the server never started draining")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown(cli_env: dict[str, str], signum: int) -> None:
    """On a stop signal: new calls get -32003, the in-flight call finishes, close 1001, exit 0, no traceback."""
    with synapse_serve(cli_env, "--grace", "5") as (process, url, lines), open_ws(url) as ws:
        assert_usable(ws)
        send(ws, {"id": "inflight", "func": "sleep", "args": [1.0]})
        time.sleep(0.1)
        process.send_signal(signum)
        stash: dict[Any, Any] = {}
        refused = wait_until_draining(ws, stash)
        assert error_of(refused) == {"code": -32003, "message": refused["error"]["message"]}
        with pytest.raises(ConnectionRefusedError):
            with open_ws(url):
                pass
        inflight = stash.pop("inflight", None) or receive(ws)
        assert inflight == {"id": "inflight", "result": 1.0, "error": None}
        assert stash == {}
        assert close_code(ws) == 1001
        assert process.wait(10) == 0
    assert "Traceback" not in "".join(lines)


def test_calls_past_grace_get_minus_32003(cli_env: dict[str, str]) -> None:
    """A call still running when --grace expires is answered -32003, then close 1001 and exit 0."""
    with synapse_serve(cli_env, "--grace", "0.5") as (process, url, lines), open_ws(url) as ws:
        send(ws, {"id": "long", "func": "sleep", "args": [10]})
        assert_usable(ws)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        reply = receive(ws)
        elapsed = time.monotonic() - signalled
        assert reply["id"] == "long"
        assert error_of(reply)["code"] == -32003
        assert 0.4 <= elapsed < 4.0
        assert close_code(ws) == 1001
        assert process.wait(10) == 0
    assert "Traceback" not in "".join(lines)


# -- fixes from review ----------------------------------------------------------------------------


def test_call_timeout_does_not_count_the_wait_for_a_slot(make_server: MakeServer) -> None:
    """A batch of 6 calls of 0.6 s with max_inflight=2 and call_timeout=1 all succeed (the wait is not run time)."""
    with make_server(max_inflight=2, call_timeout=1.0) as running, open_ws(running.url) as ws:
        send(ws, [{"id": i, "func": "sleep", "args": [0.6]} for i in range(6)])
        frame = ws.recv(timeout=10)
        assert isinstance(frame, str)
        assert sorted(json.loads(frame), key=lambda r: r["id"]) == [
            {"id": i, "result": 0.6, "error": None} for i in range(6)
        ]


def test_slow_sync_calls_of_one_connection_leave_threads_for_others(make_server: MakeServer) -> None:
    """Twelve blocking 1 s sync calls on one connection do not delay another connection's sync call."""
    with make_server(slow.registry) as running, open_ws(running.url) as busy, open_ws(running.url) as other:
        for i in range(12):
            send(busy, {"id": i, "func": "blocking_sleep", "args": [1.0]})
        time.sleep(0.2)
        start = time.monotonic()
        reply = exchange(other, {"id": "quick", "func": "blocking_sleep", "args": [0.0]})
        assert reply["error"] is None
        assert time.monotonic() - start < 0.5
        assert len(receive_by_id(busy, 12)) == 12


def test_jsonrpc_keeps_a_functions_own_message_for_standard_codes(server: Any) -> None:
    """sleep(-1) raises RPCError(-32602, its own message): JSON-RPC replies keep that message."""
    with open_ws(server.url) as ws:
        reply = exchange(ws, {"jsonrpc": "2.0", "id": 1, "method": "sleep", "params": [-1]})
    assert reply["error"]["code"] == -32602
    assert reply["error"]["message"] == "seconds must be between 0 and 60"


def test_the_app_is_asgi3_for_any_server() -> None:
    """uvicorn (and others) detect the app's interface from `async def __call__`: ASGI 3, not 2."""
    import uvicorn

    from synapse_cli.server.app import create_app
    from synapse_cli.server.builtins import default_registry

    config = uvicorn.Config(create_app(default_registry()), log_level="warning")
    config.load()
    assert config.interface == "asgi3"


def _bearer(token: str) -> str:
    import base64

    return "bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def test_browser_token_in_the_subprotocol_list_is_accepted_and_never_echoed(make_server: MakeServer) -> None:
    """`Sec-WebSocket-Protocol: synapse.v1, bearer.<base64url(token)>` passes; the answer is synapse.v1 only."""
    with make_server(token="s3cret/+?") as running:
        with open_ws(running.url, subprotocols=["synapse.v1", _bearer("s3cret/+?")]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "synapse.v1"
            assert exchange(ws, {"id": 1, "func": "add_numbers", "args": [1, 2]})["result"] == 3
            assert "bearer" not in str(ws.response.headers).lower()
        with pytest.raises(InvalidStatus) as refused:
            open_ws(running.url, subprotocols=["synapse.v1", _bearer("wrong")])  # type: ignore[list-item]
        assert refused.value.response.status_code == 401


def test_authorization_scheme_is_case_insensitive_and_two_headers_are_refused(make_server: MakeServer) -> None:
    """`bearer TOKEN` works like `Bearer TOKEN` (RFC 7235); two Authorization headers get 401."""
    with make_server(token="t") as running:
        with open_ws(running.url, additional_headers={"Authorization": "bearer t"}) as ws:
            assert_usable(ws)
        with pytest.raises(InvalidStatus) as refused:
            open_ws(running.url, additional_headers=[("Authorization", "Bearer t"), ("Authorization", "Bearer t")])
        assert refused.value.response.status_code == 401


def test_the_servers_own_origin_is_allowed_and_others_still_refused(make_server: MakeServer) -> None:
    """Origin equal to the server's own (its /docs page) is accepted without --allow-origin; another is 403."""
    with make_server() as running:
        own = f"http://127.0.0.1:{running.port}"
        with open_ws(running.url, origin=own) as ws:  # type: ignore[arg-type]
            assert_usable(ws)
        with pytest.raises(InvalidStatus) as refused:
            open_ws(running.url, origin="http://127.0.0.1:1")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403


def test_a_path_other_than_ws_is_404_naming_the_endpoint(server: Any) -> None:
    """A WebSocket handshake on /wrong (or /) is refused with 404, and the body says the endpoint is /ws."""
    for path in ("/wrong", "/"):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(server.url.replace("/ws", path))
        assert refused.value.response.status_code == 404
        assert b"the endpoint is /ws" in refused.value.response.body


# -- results sent as their declared type -----------------------------------------------------------


def test_results_go_out_as_declared_and_misfits_are_errors(make_server: Any) -> None:
    """bytes/set/Decimal/datetime/dataclass/model results are sent as declared; a misfit is -32603, logged."""
    from conftest import load_app

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    calls = ["abytes", "aset", "adecimal", "adatetime", "areading", "apoint", "wrong_bytes", "wrong_list", "anything"]
    with make_server(load_app("results")) as running, open_ws(running.url) as ws:
        logging.getLogger("synapse.calls").addHandler(handler)  # once the server has configured logging
        try:
            replies = [exchange(ws, {"id": i, "func": func}) for i, func in enumerate(calls)]
        finally:
            logging.getLogger("synapse.calls").removeHandler(handler)
    assert [reply["result"] for reply in replies[:6]] == [
        "ab", [1, 2, 3], "1.50", "2026-12-01T04:05:06Z", {"name": "t", "tags": ["x"]}, {"x": 1.0, "y": 2.5}
    ]  # fmt: skip
    assert [error_of(reply) for reply in replies[6:]] == [
        {"code": -32603, "message": "result not serializable", "data": {"type": "set", "declared": declared}}
        for declared in ("bytes", "list[int]", "Any")
    ]
    assert [record.getMessage().split(",")[0] for record in records] == [
        "function wrong_bytes returned set",
        "function wrong_list returned set",
        "function anything returned set",
    ]
    assert all(record.levelno == logging.ERROR for record in records)
