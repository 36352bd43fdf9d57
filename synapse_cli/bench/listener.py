"""One bench connection on picows: sends pre-encoded calls and matches their replies by id.

picows calls the ``on_ws_*`` methods of :class:`Listener` from its reader, with no coroutine or task per
call; while the closed model measures, an ok reply takes :meth:`Listener._steady_reply`, which records
it and sends the next call in one step. Everything else goes back to the run (``driver._Run``).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import orjson
from picows import WSListener, WSMsgType

from synapse_cli.bench.config import Call
from synapse_cli.core import encoding
from synapse_cli.core.protocol import JSONRPC, METHOD_NOT_FOUND, NATIVE, Dialect, ErrorInfo

if TYPE_CHECKING:
    from synapse_cli.bench.driver import _Run

__all__ = ["MIX_LENGTH", "Listener", "mix_order", "request_template"]

MIX_LENGTH = 10_000  # weighted draws are made once, in this many, then cycled


class Listener(WSListener):
    """One connection: sends calls, matches replies by id (picows calls the ``on_ws_*`` methods)."""

    def __init__(self, run: _Run, window: int) -> None:
        super().__init__()
        self.run = run
        self.window = window
        self.transport: Any = None
        # id -> (scheduled ns, sent ns, warm-up, index of the call in the mix)
        self.in_flight: dict[int, tuple[int, int, bool, int]] = {}
        self.next_id = 0
        self.timed_out: set[int] = set()
        self.closed = False
        self.close_code: int | None = None

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind == _TEXT:
            payload = frame.get_payload_as_bytes()
            run = self.run
            if run.steady and self._steady_reply(run, payload):
                return
            run.on_reply(self, payload)
        elif kind == _CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(self.close_code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed = True
        self.run.on_disconnect(self)

    def _steady_reply(self, run: _Run, payload: bytes) -> bool:
        """The hot path of the closed model while measuring: one ok reply in, the next call out.

        Everything else (errors, warm-up, batches, strays, the rate model) takes the general path;
        this one only skips what that path would check for the common case, with the same counts.
        """
        now = time.perf_counter_ns()
        try:
            reply = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False  # the general path counts it as a protocol error
        if type(reply) is not dict or reply.get("error") is not None:
            return False
        request_id = reply.get("id")
        entry = self.in_flight.get(request_id) if type(request_id) is int else None
        if entry is None or entry[2]:
            return False
        del self.in_flight[request_id]  # type: ignore[arg-type]  # an int: checked above
        run.bytes_received += len(payload)
        run.in_flight_total -= 1
        run.last_reply = now
        run.record(now, (now - entry[0]) // 1000, True, entry[3])
        schedule = run.closed_schedule  # ClosedSchedule.admit inlined (measuring: no warm-up to leave)
        end = schedule.measure_end
        if (now < end) if end is not None else (schedule.started < schedule.limit):
            schedule.started += 1
            run.in_flight_total += 1
            self.send(0, False)
        else:
            run.check_finished()
        return True

    def answer(self, request: dict[str, Any]) -> None:
        """A call from the server (its ``ctx.call``): a bench connection exposes ``echo(value)``, answered
        at once with its argument, so a round trip can include a server-to-client call; any other
        function is -32601. Notifications and cancels need no answer."""
        if "id" not in request or request.get("op") is not None:
            return
        dialect: Dialect = JSONRPC if "jsonrpc" in request else NATIVE
        func, args = (
            (request.get("method"), request.get("params"))
            if dialect == JSONRPC
            else (request.get("func"), request.get("args"))
        )
        if func == "echo" and type(args) is list and len(args) == 1:
            data = encoding.reply_result(request["id"], dialect, args[0])
        elif func == "echo" and type(args) is dict and args.keys() == {"value"}:
            data = encoding.reply_result(request["id"], dialect, args["value"])
        else:
            error = ErrorInfo(METHOD_NOT_FOUND, f"function not found: {str(func)[:128]}")
            data = encoding.reply_error(request["id"], dialect, error)
        self.transport.send(_TEXT, data)

    def send(self, scheduled: int, warm: bool) -> None:
        run = self.run
        self.next_id += 1
        request_id = self.next_id
        order = run.mix_order
        if order is None:
            call = 0
            data = run.template % request_id
        else:
            call = order[run.mix_position % len(order)]
            run.mix_position += 1
            data = run.templates[call] % request_id
        now = time.perf_counter_ns()
        self.in_flight[request_id] = (scheduled or now, now, warm, call)
        self.transport.send(_TEXT, data)
        if not warm:
            run.bytes_sent += len(data)


_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE


def request_template(call: Call, dialect: str) -> bytes:
    """Everything of a request but its id (a ``%d`` the hot path fills in)."""
    args = orjson.dumps(call.args)
    func = orjson.dumps(call.func)
    if dialect == "jsonrpc":
        prefix, suffix = b'{"jsonrpc":"2.0","method":' + func + b',"params":' + args + b',"id":', b"}"
    else:
        prefix, suffix = b'{"func":' + func + b',"args":' + args + b',"id":', b"}"
    return prefix.replace(b"%", b"%%") + b"%d" + suffix.replace(b"%", b"%%")


def mix_order(calls: tuple[Call, ...]) -> list[int] | None:
    """The order calls of a mix go out: in turn, or drawn by weight (the same draws every run)."""
    if len(calls) == 1:
        return None
    weights = [call.weight for call in calls]
    if len(set(weights)) == 1:
        return list(range(len(calls)))
    return random.Random(13).choices(range(len(calls)), weights=weights, k=MIX_LENGTH)
