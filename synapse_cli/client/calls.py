"""Calls in flight: the future of each reply, and their deadlines.

:class:`Call` is the ``asyncio.Future`` of one reply; cancelling it (directly, or through the task that
awaits it) tells the client, which tells the server. :class:`Deadlines` times calls out with one
event-loop timer per few milliseconds of deadlines instead of one per call.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

__all__ = ["Call", "Deadlines", "new_call", "time_limit"]


def time_limit(timeout: float | None) -> float | None:
    """Seconds to wait for a reply: None (or infinity) waits forever; ValueError unless positive."""
    if timeout is None or timeout == math.inf:
        return None
    if not timeout > 0:  # NaN too
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


class Call(asyncio.Future):  # type: ignore[type-arg]
    """The reply to one call in flight. Cancelling it tells ``on_cancel`` (which sends ``cancel``)."""

    __slots__ = ("request_id", "what", "limit", "slot", "on_cancel", "on_item")
    request_id: int
    what: str
    limit: float | None
    slot: int | None
    on_cancel: Callable[[Call], None]
    on_item: Callable[[Any], None] | None  # a stream's items, as they arrive (the reply ends it)

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        self.on_cancel(self)
        return True


def new_call(
    loop: asyncio.AbstractEventLoop, request_id: int, what: str, limit: float | None, on_cancel: Callable[[Call], None]
) -> Call:
    """A pending :class:`Call` on ``loop``."""
    call = Call(loop=loop)
    call.request_id, call.what, call.limit, call.slot, call.on_cancel = request_id, what, limit, None, on_cancel
    call.on_item = None
    return call


class Deadlines:
    """Call timeouts, one event-loop timer per ``tick`` of deadlines rather than one per call.

    With thousands of calls in flight, a timer each (or ``wait_for``) cost more than the rest of a call:
    asyncio keeps its timers in a heap ordered by Python-level comparisons. Calls whose deadlines fall
    in the same tick share one timer, which fires at the end of that tick: a timeout is reported at
    most ``tick`` seconds late.
    """

    __slots__ = ("_slots", "_tick", "_expire_call")

    def __init__(self, expire: Callable[[Call], None], tick: float = 0.005) -> None:
        self._tick = tick
        self._expire_call = expire
        self._slots: dict[int, dict[int, Call]] = {}

    def add(self, call: Call, loop: asyncio.AbstractEventLoop) -> None:
        """Expire ``call`` after its ``limit`` seconds (no limit: nothing to do)."""
        if call.limit is None:
            return
        slot = call.slot = math.ceil((loop.time() + call.limit) / self._tick)
        calls = self._slots.get(slot)
        if calls is None:
            calls = self._slots[slot] = {}
            loop.call_at(slot * self._tick, self._expire, slot)
        calls[call.request_id] = call

    def discard(self, call: Call) -> None:
        """The call is over: no timeout for it (its slot's timer still fires, and finds less to do)."""
        calls = self._slots.get(call.slot) if call.slot is not None else None
        if calls is not None:
            calls.pop(call.request_id, None)

    def _expire(self, slot: int) -> None:
        for call in self._slots.pop(slot, {}).values():
            self._expire_call(call)
