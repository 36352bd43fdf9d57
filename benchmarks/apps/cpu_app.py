"""A CPU-bound function for benchmarks/workers.py: what a second worker process is for.

synapse serve benchmarks/apps/cpu_app.py --workers 2
"""

from __future__ import annotations

import time

from synapse_cli import Registry

registry = Registry()


@registry.function
def burn(milliseconds: float) -> int:
    """Keep the CPU busy in Python for ``milliseconds``; return the loop count (holds the GIL throughout)."""
    deadline = time.perf_counter() + milliseconds / 1000
    loops = 0
    while time.perf_counter() < deadline:
        loops += 1
    return loops
