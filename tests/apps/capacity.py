"""A server of known capacity for ``bench --find-max``: served with 4 threads, ``work`` (a 10 ms sleep in a
thread) takes at most 4 / 0.010 = 400 calls/s, whatever the load generator does.
"""

from __future__ import annotations

import time

from synapse_cli import Registry

registry = Registry()

THREADS = 4
SLEEP_S = 0.010
CAPACITY = THREADS / SLEEP_S  # calls/s


@registry.function
def work() -> None:
    """Sleep 10 ms in one of the server's threads."""
    time.sleep(SLEEP_S)
