"""The call context over a real server: who calls, checks that refuse, notifications and calls back to the caller.

Frames are written and read raw with ``websockets.sync.client``, so what the server sends each way is
checked byte for byte where the protocol fixes it. Every receive has a timeout.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import RunningServer, clean_env, running_server, serve_process, synapse_executable
from websockets.sync.client import ClientConnection, connect

APPS = Path(__file__).parent / "apps"
TIMEOUT = 5.0
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def _import_app() -> ModuleType:
    """tests/apps/context_app.py under a private name: its records are the ones the served registry writes."""
    spec = importlib.util.spec_from_file_location("synapse_test_context_app", APPS / "context_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as `synapse serve file.py` does: its annotations resolve in it
    spec.loader.exec_module(module)
    return module


app = _import_app()


@pytest.fixture(scope="module")
def served() -> Iterator[RunningServer]:
    """The context app, behind two tokens (alice's and bob's)."""
    with running_server(app.registry, tokens=TOKENS) as running:
        yield running


def open_ws(url: str, token: str = "tok-alice", **headers: str) -> ClientConnection:
    """A raw WebSocket client presenting ``token`` (and more headers)."""
    extra = {"Authorization": f"Bearer {token}", **headers}
    return connect(url, proxy=None, compression=None, open_timeout=TIMEOUT, additional_headers=extra)


def send(ws: ClientConnection, message: Any) -> None:
    ws.send(message if isinstance(message, str) else json.dumps(message))


def receive(ws: ClientConnection) -> Any:
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str)
    return json.loads(frame)


def call(ws: ClientConnection, dialect: str, request_id: Any, func: str, args: Any) -> dict[str, Any]:
    """A request in ``dialect``, as the wire carries it."""
    if dialect == "native":
        return {"id": request_id, "func": func, "args": args}
    return {"jsonrpc": "2.0", "id": request_id, "method": func, "params": args}


def result_of(reply: dict[str, Any]) -> Any:
    assert reply.get("error") is None, reply
    return reply["result"]


def error_of(reply: dict[str, Any]) -> dict[str, Any]:
    assert reply.get("result") is None and reply["error"] is not None, reply
    return dict(reply["error"])


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_the_context_tells_the_function_who_calls(served: RunningServer, dialect: str) -> None:
    """connection id, remote address, headers, identity, dialect, call id and function reach the function."""
    with open_ws(served.url, "tok-bob", **{"User-Agent": "context-test/1"}) as ws:
        send(ws, call(ws, dialect, "w1", "whoami", {"tag": "t"}))
        seen = result_of(receive(ws))
        host, port = ws.local_address[:2]
    connection_id = seen.pop("connection_id")
    assert type(connection_id) is int and connection_id > 0
    assert seen == {
        "remote_address": f"{host}:{port}",
        "user_agent": "context-test/1",
        "identity": "bob",
        "dialect": dialect,
        "call_id": "w1",
        "function": "whoami",
        "tag": "t",
    }


def test_each_connection_has_its_own_id(served: RunningServer) -> None:
    """Two connections' calls see two different connection ids; one connection's calls, the same."""
    with open_ws(served.url) as first, open_ws(served.url) as second:
        ids = []
        for ws, request_id in ((first, 1), (first, 2), (second, 3)):
            send(ws, {"id": request_id, "func": "whoami", "args": []})
            ids.append(result_of(receive(ws))["connection_id"])
    assert ids[0] == ids[1] != ids[2]


def test_an_inline_function_gets_its_context_between_its_parameters(served: RunningServer) -> None:
    """The Context may stand anywhere: positional arguments fill the parameters around it."""
    with open_ws(served.url) as ws:
        send(ws, {"id": 1, "func": "add_with_context", "args": [2, 3]})
        assert receive(ws) == {"id": 1, "result": [5, "add_with_context"], "error": None}
        send(ws, {"id": 2, "func": "add_with_context", "args": {"b": 3, "a": 4}})
        assert receive(ws) == {"id": 2, "result": [7, "add_with_context"], "error": None}


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_a_caller_that_sends_the_context_gets_invalid_params(served: RunningServer, dialect: str) -> None:
    """A value for the Context parameter, by name or as one positional argument too many, is -32602."""
    with open_ws(served.url) as ws:
        send(ws, call(ws, dialect, 1, "whoami", {"ctx": {"identity": "root"}}))
        error = error_of(receive(ws))
        assert error["code"] == -32602
        assert error["data"] == [{"loc": ["ctx"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}]
        send(ws, call(ws, dialect, 2, "add_with_context", [1, 2, 3]))
        error = error_of(receive(ws))
        assert error["code"] == -32602
        assert error["data"] == [{"loc": [2], "msg": "takes 2 positional arguments", "type": "too_many"}]
        send(ws, call(ws, dialect, 3, "whoami", []))  # and the connection still serves
        assert result_of(receive(ws))["function"] == "whoami"


def test_the_context_is_absent_from_list_and_discover(served: RunningServer) -> None:
    """``list`` and ``rpc.discover`` describe only what callers send: no Context parameter."""
    with open_ws(served.url) as ws:
        send(ws, {"id": 1, "op": "list"})
        functions = {entry["name"]: entry for entry in result_of(receive(ws))["functions"]}
        send(ws, {"jsonrpc": "2.0", "id": 2, "method": "rpc.discover"})
        methods = {method["name"]: method for method in result_of(receive(ws))["methods"]}
    assert functions["whoami"]["params"] == {
        "type": "object",
        "properties": {"tag": {"default": "", "title": "Tag", "type": "string"}},
    }
    assert list(functions["add_with_context"]["params"]["properties"]) == ["a", "b"]
    assert functions["add_with_context"]["params"]["required"] == ["a", "b"]
    assert [param["name"] for param in methods["whoami"]["params"]] == ["tag"]
    assert [param["name"] for param in methods["add_with_context"]["params"]] == ["a", "b"]
    assert [param["name"] for param in methods["ask"]["params"]] == ["func", "args", "timeout"]


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_two_tokens_one_function_allowed_to_one_of_them(served: RunningServer, dialect: str) -> None:
    """alice's token may call ``secret``; bob's gets -32007 "forbidden: secret" and the body never runs."""
    before = len(app.BODIES)
    with open_ws(served.url, "tok-alice") as alice, open_ws(served.url, "tok-bob") as bob:
        send(bob, call(bob, dialect, 7, "secret", []))
        refused = receive(bob)
        send(alice, call(alice, dialect, 8, "secret", []))
        allowed = receive(alice)
        send(bob, call(bob, dialect, 9, "whoami", []))  # bob may still call the rest
        assert result_of(receive(bob))["identity"] == "bob"
    if dialect == "native":
        assert refused == {"id": 7, "result": None, "error": {"code": -32007, "message": "forbidden: secret"}}
        assert allowed == {"id": 8, "result": "for alice", "error": None}
    else:
        assert refused == {"jsonrpc": "2.0", "error": {"code": -32007, "message": "forbidden: secret"}, "id": 7}
        assert allowed == {"jsonrpc": "2.0", "result": "for alice", "id": 8}
    assert app.BODIES[before:] == ["secret"]


def test_an_unknown_token_is_refused_at_the_handshake(served: RunningServer) -> None:
    """With tokens configured, a token that is none of them is HTTP 401 before the upgrade."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        open_ws(served.url, "tok-mallory")
    assert refused.value.response.status_code == 401


def test_an_async_check_refuses_with_its_own_error_before_the_body(served: RunningServer) -> None:
    """After the sync check passes, an async check raising RPCError answers with its code and data."""
    before = len(app.BODIES)
    with open_ws(served.url, "tok-alice", **{"X-Deny": "yes"}) as denied, open_ws(served.url, "tok-alice") as ok:
        send(denied, {"id": 1, "func": "guarded_twice", "args": [5]})
        assert receive(denied) == {
            "id": 1,
            "result": None,
            "error": {"code": 4031, "message": "denied by header", "data": {"header": "yes"}},
        }
        send(ok, {"id": 2, "func": "guarded_twice", "args": [5]})
        assert receive(ok) == {"id": 2, "result": 5, "error": None}
    with open_ws(served.url, "tok-bob") as bob:  # the sync check comes first: bob never reaches the async one
        send(bob, {"id": 3, "func": "guarded_twice", "args": [5]})
        assert error_of(receive(bob)) == {"code": -32007, "message": "forbidden: guarded_twice"}
    assert app.BODIES[before:] == ["guarded_twice"]


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_notify_reaches_only_that_caller_before_its_reply(served: RunningServer, dialect: str) -> None:
    """ctx.notify sends JSON-RPC notifications to the caller alone, in order, before the call's reply."""
    with open_ws(served.url) as caller, open_ws(served.url) as other:
        send(caller, call(caller, dialect, "p", "progress", [2]))
        frames = [receive(caller) for _ in range(3)]
        send(other, {"id": "o", "func": "whoami", "args": []})
        assert result_of(receive(other))["call_id"] == "o"  # the first frame the other connection gets
    assert frames[:2] == [
        {"jsonrpc": "2.0", "method": "progress", "params": {"step": 0, "of": 2}},
        {"jsonrpc": "2.0", "method": "progress", "params": {"step": 1, "of": 2}},
    ]
    assert result_of(frames[2]) == "done"


# -- server-to-client calls, answered by hand -------------------------------------------------------


def ask(dialect: str, request_id: Any, func: str, args: list[Any], timeout: float = 2.0) -> dict[str, Any]:
    return call(None, dialect, request_id, "ask", {"func": func, "args": args, "timeout": timeout})  # type: ignore[arg-type]


def receive_text(ws: ClientConnection) -> str:
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str)
    return frame


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_a_server_call_goes_to_its_caller_and_the_answer_comes_back(served: RunningServer, dialect: str) -> None:
    """ctx.call sends a request with a server id ("s:1", "s:2"... per connection) in the call's dialect."""
    with open_ws(served.url) as ws:
        for number, value in ((1, 5), (2, {"x": [1]})):
            send(ws, ask(dialect, f"a{number}", "echo", [value]))
            request = receive_text(ws)
            args = json.dumps([value], separators=(",", ":"))
            if dialect == "native":
                assert request == f'{{"id":"s:{number}","func":"echo","args":{args}}}'
                send(ws, {"id": f"s:{number}", "result": value, "error": None})
            else:
                assert request == f'{{"jsonrpc":"2.0","method":"echo","params":{args},"id":"s:{number}"}}'
                send(ws, {"jsonrpc": "2.0", "result": value, "id": f"s:{number}"})
            assert result_of(receive(ws)) == {"result": value}


def test_a_server_call_by_name_sends_an_object(served: RunningServer) -> None:
    """ctx.call with keyword arguments sends them as an object; a batch of replies is read too."""
    with open_ws(served.url) as ws:
        send(ws, {"id": 1, "func": "ask_by_name", "args": [3]})
        assert receive_text(ws) == '{"id":"s:1","func":"echo","args":{"value":3}}'
        send(ws, [{"id": "s:1", "result": 4, "error": None}])
        assert receive(ws) == {"id": 1, "result": 4, "error": None}


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_the_callers_error_reaches_the_server_function(served: RunningServer, dialect: str) -> None:
    """An error answer (-32601: the caller exposes no such function) raises RPCError in ctx.call."""
    with open_ws(served.url) as ws:
        send(ws, ask(dialect, 1, "nothing_here", []))
        request = receive(ws)
        error = {"code": -32601, "message": "function not found: nothing_here"}
        if dialect == "native":
            send(ws, {"id": request["id"], "result": None, "error": error})
        else:
            send(ws, {"jsonrpc": "2.0", "error": error, "id": request["id"]})
        assert result_of(receive(ws)) == {
            "raised": "RPCError",
            "message": "function not found: nothing_here (code -32601)",
        }


def test_a_caller_that_never_answers_times_out_and_is_told_to_cancel(served: RunningServer) -> None:
    """Past the timeout, ctx.call raises CallTimeout and the caller gets a cancel; a late answer is ignored."""
    with open_ws(served.url) as ws:
        send(ws, ask("native", 1, "echo", [1], timeout=0.2))
        assert receive(ws) == {"id": "s:1", "func": "echo", "args": [1]}
        assert receive_text(ws) == '{"op":"cancel","id":"s:1"}'
        assert receive(ws) == {
            "id": 1,
            "result": {"raised": "CallTimeout", "message": "no reply to echo within 0.2 s"},
            "error": None,
        }
        send(ws, {"id": "s:1", "result": 1, "error": None})  # too late: nobody waits for it
        send(ws, {"id": 2, "func": "whoami", "args": []})
        assert result_of(receive(ws))["call_id"] == 2


def test_a_reply_to_an_id_the_server_never_sent_is_ignored_and_logged(
    served: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A stray reply gets no answer and costs nothing; it is logged at debug level."""
    caplog.set_level(logging.DEBUG, logger="synapse.calls")
    with open_ws(served.url) as ws:
        send(ws, {"id": "s:999", "result": 1, "error": None})
        send(ws, {"jsonrpc": "2.0", "result": 1, "id": 42})
        send(ws, {"id": 1, "func": "whoami", "args": []})
        assert result_of(receive(ws))["call_id"] == 1  # the first frame back: the strays got none
    assert "ignoring a reply to 's:999': no call of ours waits on that id" in caplog.text


def test_a_malformed_answer_raises_invalid_reply(served: RunningServer) -> None:
    """An answer to a waiting call that is not a valid reply raises InvalidReply instead of waiting on."""
    with open_ws(served.url) as ws:
        send(ws, ask("native", 1, "echo", [1]))
        assert receive(ws)["id"] == "s:1"
        send(ws, {"id": "s:1", "result": None, "error": "no"})
        assert result_of(receive(ws)) == {
            "raised": "InvalidReply",
            "message": "invalid reply: error must be null or an object with an integer code and a string message",
        }


def test_cancelling_the_outer_call_cancels_the_server_call(served: RunningServer) -> None:
    """The caller cancels its call while the server waits on ctx.call: the caller is told to cancel that too."""
    with open_ws(served.url) as ws:
        send(ws, ask("native", "outer", "echo", [1], timeout=5))
        assert receive(ws)["id"] == "s:1"
        send(ws, {"op": "cancel", "id": "outer"})
        assert receive_text(ws) == '{"op":"cancel","id":"s:1"}'
        assert receive(ws) == {"id": "outer", "result": None, "error": {"code": -32002, "message": "call cancelled"}}
    assert app.ENDINGS[-1] == "cancelled"


def test_the_connection_ending_ends_the_server_call(served: RunningServer) -> None:
    """A caller that closes while the server waits on its answer: the server's call is cancelled at once."""
    before = len(app.ENDINGS)
    with open_ws(served.url) as ws:
        send(ws, ask("native", 1, "echo", [1], timeout=30))
        assert receive(ws)["id"] == "s:1"
    deadline = time.monotonic() + TIMEOUT
    while len(app.ENDINGS) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.ENDINGS[before:] == ["cancelled"]


def test_serve_token_file_gives_each_token_its_identity(tmp_path: Path) -> None:
    """``synapse serve --token-file`` takes TOKEN,IDENTITY lines: alice's token may call secret, bob's is refused."""
    tokens = tmp_path / "tokens.csv"
    tokens.write_text("# token,identity\ntok-alice,alice\ntok-bob,bob\n")
    with serve_process("--token-file", str(tokens), app=str(APPS / "context_app.py")) as served:
        base = [synapse_executable(), "call", "secret", "--url", served.url, "--token"]
        alice = subprocess.run([*base, "tok-alice"], capture_output=True, text=True, env=clean_env(), timeout=30)
        bob = subprocess.run([*base, "tok-bob"], capture_output=True, text=True, env=clean_env(), timeout=30)
    assert (alice.returncode, alice.stdout, alice.stderr) == (0, '"for alice"\n', "")
    assert (bob.returncode, bob.stdout) == (1, "")
    assert bob.stderr == "synapse: error: forbidden: secret (code -32007)\n"
