"""session: a connection's decisions, tested with strings in and actions out (no server, no event loop)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from synapse_cli import Registry, RPCError
from synapse_cli.core.session import Reply, Session, Start, Stop


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
