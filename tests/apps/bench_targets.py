"""Functions for the ``synapse bench`` tests: a known latency distribution and a one-off event-loop stall.

State is keyed by a tag the test passes as an argument, so tests sharing this module (it is loaded once
per server, but ``sys.modules`` may keep it) never see each other's counters.
"""

from __future__ import annotations

import asyncio
import threading
import time

from synapse_cli import Registry

registry = Registry()

# Per 100 calls: 80 sleep 1 ms, 15 sleep 5 ms, 5 sleep 20 ms. Any 100 consecutive calls hold exactly
# this mix, so 1,000 calls have p50 in the 1 ms band, p90 in the 5 ms band, p99 in the 20 ms band.
PATTERN_MS = [1.0] * 80 + [5.0] * 15 + [20.0] * 5
STALL_SECONDS = 0.5

_lock = threading.Lock()
_calls: dict[str, int] = {}  # tag -> calls seen so far


def _count(tag: str) -> int:
    """The number of this call for ``tag`` (0 for the first)."""
    with _lock:
        seen = _calls.get(tag, 0)
        _calls[tag] = seen + 1
    return seen


@registry.function
async def patterned_sleep(tag: str) -> float:
    """Sleep the next duration of PATTERN_MS (cycling) without blocking the loop; return it in ms."""
    milliseconds = PATTERN_MS[_count(tag) % len(PATTERN_MS)]
    await asyncio.sleep(milliseconds / 1000)
    return milliseconds


@registry.function(inline=True)
def stall_once(tag: str, after: int) -> int:
    """Answer at once, except call number ``after`` of ``tag``, which blocks the event loop for 500 ms."""
    seen = _count(tag)
    if seen == after:
        time.sleep(STALL_SECONDS)  # deliberately on the event loop: every connection stalls
    return seen
