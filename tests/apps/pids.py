"""A registry that tells which process answered (for --workers tests)."""

from __future__ import annotations

import os

from synapse_cli import Registry

registry = Registry()


@registry.function(inline=True)
def pid() -> int:
    """The id of the process that ran the call."""
    return os.getpid()
