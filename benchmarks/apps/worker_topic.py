"""The built-in functions plus ``pid``, for ``--workers`` fan-out runs: which process a connection reached.

synapse serve benchmarks/apps/worker_topic.py --workers 2 --broker redis://127.0.0.1:6379/0
(benchmarks/topic_deliveries.py --workers 2 --broker: each subscriber asks ``pid`` once, then subscribes to
``events``, so its deliveries are counted for the worker it reached; tests/test_streams.py serves it too.)
"""

from __future__ import annotations

import os

from synapse_cli.server.builtins import default_registry

registry = default_registry()


@registry.function(inline=True)
def pid() -> int:
    """The id of the worker process that ran the call."""
    return os.getpid()


@registry.function(inline=True)
def subscribed() -> int:
    """How many subscribers of ``events`` this worker process holds."""
    return len(registry.topics["events"].subscribers)
