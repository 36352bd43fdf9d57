"""session: a connection's decisions, tested with strings in and actions out (no server, no event loop)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from synapse_cli import Context, Registry, RPCError
from synapse_cli.core.context import Caller, Headers
from synapse_cli.core.protocol import ErrorInfo
from synapse_cli.core.session import Answered, Reply, Session, Start, Stop


def make_registry() -> Registry:
    registry = Registry()

    @registry.function(inline=True)
    def add(a: int, b: int) -> int:
        """Inline: answered by the session itself."""
        return a + b

    @registry.function
    async def wait(seconds: float) -> float:
        """Runs in the driver: the session only says Start."""
        return seconds

    @registry.function(inline=True)
    def refuse() -> None:
        """Raises an RPCError."""
        raise RPCError("no", 4000, {"why": "because"})

    return registry


class Recorder:
    """An observer that keeps what the session reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.errors: list[int] = []

    def record(self, function: str, outcome: str, seconds: float, call_id: Any) -> None:
        self.calls.append((function, outcome, call_id))

    def protocol_error(self, code: int, message: str) -> None:
        self.errors.append(code)


def session(**options: Any) -> Session:
    return Session(make_registry(), clock=lambda: 0.0, **options)


def replies(actions: list[Any]) -> list[Any]:
    return [orjson.loads(action.data) for action in actions if type(action) is Reply]


def test_inline_call_is_answered_at_once() -> None:
    """An inline function's reply is the only action: no task, in the request's dialect and id."""
    actions = session().receive('{"id": "17", "op": "call", "func": "add", "args": [1, 2]}')
    assert actions == [Reply(b'{"id":"17","result":3,"error":null}')]
    actions = session().receive('{"jsonrpc": "2.0", "id": 5, "method": "add", "params": {"a": 1, "b": 2}}')
    assert actions == [Reply(b'{"jsonrpc":"2.0","result":3,"id":5}')]


def test_other_calls_start_and_answer_when_finished() -> None:
    """A coroutine function is a Start; its end (finish) gives the reply."""
    s = session()
    [start] = s.receive('{"id": 1, "func": "wait", "args": [0.5]}')
    assert type(start) is Start and start.function.name == "wait" and start.args == (0.5,)
    assert s.finish(start.key, 0.5) == [Reply(b'{"id":1,"result":0.5,"error":null}')]
    assert s.calls == {} and s.running == 0


def test_duplicate_id_in_flight_is_refused_and_ids_differ_by_type() -> None:
    """A second call with an id in flight gets -32600; "1" and 1 are different ids."""
    s = session()
    s.receive('{"id": 1, "func": "wait", "args": [1]}')
    [reply] = replies(s.receive('{"id": 1, "func": "wait", "args": [1]}'))
    assert reply["error"]["code"] == -32600 and "duplicate id" in reply["error"]["message"]
    [start] = s.receive('{"id": "1", "func": "wait", "args": [1]}')
    assert type(start) is Start


def test_cancel_stops_a_running_call_and_words_its_reply() -> None:
    """cancel → Stop; the cancelled task's end replies -32002; an unknown id does nothing."""
    s = session()
    [start] = s.receive('{"id": 9, "func": "wait", "args": [5]}')
    assert s.receive('{"id": 9, "op": "cancel"}') == [Stop(start.key)]
    assert s.receive('{"id": 99, "op": "cancel"}') == []
    [reply] = replies(s.finish(start.key, error=asyncio.CancelledError()))
    assert reply == {"id": 9, "result": None, "error": {"code": -32002, "message": "call cancelled"}}


def test_timeout_words_the_reply_and_the_first_reason_wins() -> None:
    """expire → Stop with -32001; a cancel after it does not change the reply."""
    s = session()
    [start] = s.receive('{"id": 3, "func": "wait", "args": [5]}')
    assert s.expire(start.key) == [Stop(start.key)]
    assert s.receive('{"id": 3, "op": "cancel"}') == []
    [reply] = replies(s.finish(start.key, error=asyncio.CancelledError()))
    assert reply["error"]["code"] == -32001


def test_peer_gone_stops_everything_without_replies() -> None:
    """stop_all(None): every running call is stopped, and none is answered."""
    s = session()
    starts = [s.receive(f'{{"id": {i}, "func": "wait", "args": [1]}}')[0] for i in range(3)]
    assert s.stop_all(None) == [Stop(start.key) for start in starts]
    assert all(s.finish(start.key, error=asyncio.CancelledError()) == [] for start in starts)


def test_calls_past_max_inflight_are_held_then_started_in_order() -> None:
    """With max_inflight=2, a third call waits (saturated) and starts when a slot frees."""
    s = session(max_inflight=2)
    first = s.receive('{"id": 1, "func": "wait", "args": [1]}')[0]
    s.receive('{"id": 2, "func": "wait", "args": [1]}')
    assert s.receive('{"id": 3, "func": "wait", "args": [3]}') == []
    assert s.saturated and s.running == 2
    actions = s.finish(first.key, 1)
    assert [type(a) for a in actions] == [Reply, Start]
    assert actions[1].args == (3,)  # type: ignore[union-attr]
    assert s.running == 2 and s.saturated


def test_batch_counts_against_max_inflight_and_replies_once_in_order() -> None:
    """A batch of five async calls with max_inflight=2 starts two; one reply when all five end."""
    s = session(max_inflight=2)
    batch = [{"id": i, "func": "wait", "args": [i]} for i in range(5)] + [{"id": "x", "func": "add", "args": [1, 1]}]
    actions = s.receive(orjson.dumps(batch))
    assert [type(a) for a in actions] == [Start, Start]
    pending = list(actions)
    answered: list[Any] = []
    while pending:
        start = pending.pop(0)
        out = s.finish(start.key, start.args[0])
        pending += [a for a in out if type(a) is Start]
        answered += replies(out)
    assert len(answered) == 1
    assert [item["id"] for item in answered[0]] == [0, 1, 2, 3, 4, "x"]
    assert [item["result"] for item in answered[0]] == [0, 1, 2, 3, 4, 2]


def test_held_call_cancelled_before_it_starts() -> None:
    """A held call that is cancelled is answered -32002 at once and never started."""
    s = session(max_inflight=1)
    first = s.receive('{"id": 1, "func": "wait", "args": [1]}')[0]
    s.receive('{"id": 2, "func": "wait", "args": [1]}')
    [reply] = replies(s.receive('{"id": 2, "op": "cancel"}'))
    assert reply["id"] == 2 and reply["error"]["code"] == -32002
    assert replies(s.finish(first.key, 1)) == [{"id": 1, "result": 1, "error": None}]
    assert s.calls == {}


def test_drain_refuses_new_calls_then_stop_all_words_shutdown() -> None:
    """After drain, new calls get -32003; stop_all(-32003) answers the running ones with it."""
    s = session()
    start = s.receive('{"id": 1, "func": "wait", "args": [1]}')[0]
    s.drain()
    [refused] = replies(s.receive('{"id": 2, "func": "wait", "args": [1]}'))
    assert refused["error"]["code"] == -32003
    assert s.stop_all(-32003) == [Stop(start.key)]
    [reply] = replies(s.finish(start.key, error=asyncio.CancelledError()))
    assert reply["error"] == {"code": -32003, "message": "server is shutting down"}


def test_errors_and_protocol_errors_reach_the_observer() -> None:
    """Calls are recorded with function, outcome and id; refused messages as protocol errors."""
    recorder = Recorder()
    s = session(observer=recorder)
    [reply] = replies(s.receive('{"id": 1, "func": "refuse"}'))
    assert reply["error"] == {"code": 4000, "message": "no", "data": {"why": "because"}}
    s.receive('{"id": 2, "func": "nope"}')
    s.receive("not json")
    assert recorder.calls == [("refuse", "4000", 1), ("<unknown>", "-32601", 2)]
    assert recorder.errors == [-32700]


def test_notifications_get_no_reply() -> None:
    """A JSON-RPC notification runs but is never answered."""
    s = session()
    assert s.receive('{"jsonrpc": "2.0", "method": "add", "params": [1, 2]}') == []
    [start] = s.receive('{"jsonrpc": "2.0", "method": "wait", "params": [1]}')
    assert s.finish(start.key, 1) == []


def test_list_and_discover_describe_the_registry() -> None:
    """op list names every function; rpc.discover answers an OpenRPC document with the version."""
    s = Session(make_registry(), version="9.9")
    [listed] = replies(s.receive('{"id": 1, "op": "list"}'))
    assert [f["name"] for f in listed["result"]["functions"]] == ["add", "wait", "refuse"]
    [document] = replies(s.receive('{"jsonrpc": "2.0", "id": 2, "method": "rpc.discover"}'))
    assert document["result"]["info"]["version"] == "9.9"


# -- the call context and calls to the peer ----------------------------------------------------------


def context_registry() -> Registry:
    registry = Registry(requires=lambda ctx: ctx.identity != "banned")

    @registry.function(inline=True)
    def who(ctx: Context, tag: str) -> list[Any]:
        """Inline, with its context first."""
        return [ctx.identity, ctx.connection_id, ctx.remote_address, ctx.headers["x-tag"], ctx.dialect, tag]

    async def later(ctx: Context) -> None:
        """An async check: it runs in the call's task."""

    @registry.function(requires=later)
    async def checked(value: int, ctx: Context) -> int:
        """A coroutine function behind an async check."""
        return value

    return registry


def context_session(identity: str | None) -> Session:
    caller = Caller(7, "127.0.0.1:5000", Headers([("X-Tag", "a"), ("x-tag", "b")]), identity)
    return Session(context_registry(), clock=lambda: 0.0, caller=caller)


def test_a_context_parameter_is_filled_in_by_the_session() -> None:
    """The connection's caller and the call's dialect reach an inline function's Context."""
    actions = context_session("alice").receive('{"jsonrpc": "2.0", "id": 1, "method": "who", "params": ["t"]}')
    assert actions == [Reply(b'{"jsonrpc":"2.0","result":["alice",7,"127.0.0.1:5000","a, b","jsonrpc","t"],"id":1}')]


def test_a_sync_check_refuses_at_once_and_an_async_one_guards_the_start() -> None:
    """A registry's sync check that returns False answers -32007 now; an async check becomes the Start's guard."""
    [refused] = replies(context_session("banned").receive('{"id": 1, "func": "who", "args": ["t"]}'))
    assert refused == {"id": 1, "result": None, "error": {"code": -32007, "message": "forbidden: who"}}
    [start] = context_session("alice").receive('{"id": 2, "func": "checked", "args": [5]}')
    assert type(start) is Start and start.guard is not None
    assert start.args[0] == 5 and type(start.args[1]) is Context and start.args[1].call_id == 2


def test_a_call_to_the_peer_is_written_and_its_reply_answered() -> None:
    """send_call writes a request with an "s:" id; the peer's reply comes back as Answered for that key."""
    s = session()
    key, actions = s.send_call("echo", [1], "native")
    assert (key, actions) == ("s:1", [Reply(b'{"id":"s:1","func":"echo","args":[1]}')])
    key2, actions = s.send_call("echo", {"value": 2}, "jsonrpc")
    assert actions == [Reply(b'{"jsonrpc":"2.0","method":"echo","params":{"value":2},"id":"s:2"}')]
    assert s.receive('{"jsonrpc": "2.0", "result": 2, "id": "s:2"}') == [Answered(key2, 2)]
    assert s.receive('{"id": "s:1", "result": null, "error": {"code": -32601, "message": "no"}}') == [
        Answered(key, None, ErrorInfo(-32601, "no", verbatim=True))
    ]
    assert s.outgoing.waiting == {}


def test_replies_to_unknown_or_withdrawn_ids_are_ignored() -> None:
    """A reply to an id never sent, or to a call withdrawn (its cancel written), gives no action at all."""
    s = session()
    assert s.receive('{"id": "s:1", "result": 1, "error": null}') == []
    assert s.receive('{"id": 5, "result": 1}') == []
    key, _ = s.send_call("echo", [1], "native")
    assert s.withdraw_call(key) == [Reply(b'{"op":"cancel","id":"s:1"}')]
    assert s.withdraw_call(key) == []
    assert s.receive('{"id": "s:1", "result": 1, "error": null}') == []


def test_a_malformed_reply_to_a_waiting_call_is_answered_invalid() -> None:
    """A reply with both result and error (JSON-RPC) or a bad error member ends the call as invalid."""
    s = session()
    key, _ = s.send_call("echo", [1], "jsonrpc")
    [answered] = s.receive('{"jsonrpc": "2.0", "result": 1, "error": null, "id": "s:1"}')
    assert type(answered) is Answered and answered.key == key and answered.invalid
    assert answered.error == ErrorInfo(
        -32600, 'invalid reply: a JSON-RPC reply has "jsonrpc": "2.0" and one of result or error'
    )


def test_replies_inside_a_batch_are_answered_without_a_slot() -> None:
    """A batch mixing a reply and a call: the reply is Answered, the batch's reply holds only the call's."""
    s = session()
    key, _ = s.send_call("echo", [1], "native")
    actions = s.receive('[{"id": "s:1", "result": 1, "error": null}, {"id": 2, "func": "add", "args": [1, 1]}]')
    assert actions == [Reply(b'[{"id":2,"result":2,"error":null}]'), Answered(key, 1)]


def test_a_notification_to_the_peer_is_jsonrpc_in_both_dialects() -> None:
    """send_notification writes a JSON-RPC notification; params JSON cannot carry are a ValueError."""
    s = session()
    assert s.send_notification("progress", {"step": 1}) == [
        Reply(b'{"jsonrpc":"2.0","method":"progress","params":{"step":1}}')
    ]
    assert s.send_notification("ping", None) == [Reply(b'{"jsonrpc":"2.0","method":"ping"}')]
    with pytest.raises(ValueError, match="cannot be sent as JSON"):
        s.send_notification("bad", [float("nan")])


# -- streams and topics ------------------------------------------------------------------------------


def stream_registry() -> Registry:
    registry = Registry()
    registry.topic("prices", history=10)

    @registry.function
    async def when(n: int) -> AsyncIterator[datetime.date]:
        """Dates: encoded as their declared type, like results."""
        yield datetime.date(2024, 1, n)

    @registry.function
    async def anything() -> AsyncIterator[Any]:
        """Items of no declared type: orjson's JSON, or nothing."""
        yield float("nan")

    return registry


def test_a_topic_call_starts_with_its_topic_and_its_items_framing_in_both_dialects() -> None:
    """A topic subscription's Start names the topic; its items are prefix + shared payload + suffix, the
    native {"id", "item"} and the JSON-RPC rpc.item notification of its subscription."""
    registry = stream_registry()
    native = Session(registry)
    (start,) = native.receive('{"id": "a", "func": "prices", "args": {"since": 3}}')
    assert type(start) is Start and start.topic is registry.topics["prices"] and start.args == (3,)
    prefix, suffix = native.item_framing(start.key)
    assert prefix + b'1,"position":4' + suffix == b'{"id":"a","item":1,"position":4}'
    jsonrpc = Session(registry)
    reply, start = jsonrpc.receive('{"jsonrpc": "2.0", "id": 9, "method": "prices"}')
    assert type(reply) is Reply and orjson.loads(reply.data) == {
        "jsonrpc": "2.0",
        "id": 9,
        "result": {"subscription": "1"},
    }
    prefix, suffix = jsonrpc.item_framing(start.key)  # type: ignore[union-attr]
    assert orjson.loads(prefix + b'{"p":1},"position":7' + suffix) == {
        "jsonrpc": "2.0",
        "method": "rpc.item",
        "params": {"subscription": "1", "item": {"p": 1}, "position": 7},
    }


def test_a_plain_stream_starts_without_a_topic() -> None:
    """A generator function's Start carries no topic: its driver runs the generator."""
    (start,) = Session(stream_registry()).receive('{"id": 1, "func": "when", "args": [2]}')
    assert type(start) is Start and start.topic is None


def test_stream_items_are_encoded_as_their_declared_type() -> None:
    """An item of a generator annotated AsyncIterator[date] is written as pydantic writes a date."""
    sess = Session(stream_registry())
    (start,) = sess.receive('{"id": 1, "func": "when", "args": [2]}')
    assert replies(sess.item(start.key, datetime.date(2024, 1, 2))) == [{"id": 1, "item": "2024-01-02"}]  # type: ignore[union-attr]


def test_an_item_json_cannot_carry_stops_the_stream_with_32603() -> None:
    """NaN as an item: the stream is stopped; once its task ends, the reply is -32603 "item not serializable"."""
    sess = Session(stream_registry())
    (start,) = sess.receive('{"id": 1, "func": "anything"}')
    key = start.key  # type: ignore[union-attr]
    assert sess.item(key, float("nan")) == [Stop(key)]
    error = {"code": -32603, "message": "item not serializable"}
    assert replies(sess.finish(key, error=asyncio.CancelledError())) == [{"id": 1, "result": None, "error": error}]


def test_reading_goes_on_while_calls_wait_on_the_peer_and_refuses_past_twice_the_limit() -> None:
    """A call waiting on the peer's answer keeps the session reading; one held call more is taken, the next
    is refused with -32008; once the answer came, a full session is saturated again."""
    s = session(max_inflight=1)
    [start] = s.receive('{"id": 1, "func": "wait", "args": [1]}')
    assert s.saturated
    key, _ = s.send_call("echo", [1], "native")
    assert not s.saturated
    assert s.receive('{"id": 2, "func": "wait", "args": [1]}') == []  # held
    [refused] = replies(s.receive('{"id": 3, "func": "wait", "args": [1]}'))
    assert refused["error"] == {
        "code": -32008,
        "message": "too many calls: 2 in flight while this server waits on 1 of its answers",
    }
    assert s.receive('{"id": "s:1", "result": 1, "error": null}') == [Answered(key, 1)]
    assert s.saturated
    [reply, held] = s.finish(start.key, 1)
    assert type(reply) is Reply and type(held) is Start and held.args == (1,)
