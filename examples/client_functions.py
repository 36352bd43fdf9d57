"""What a shell client serves back to the server while it waits: ``synapse call FUNC --expose this-file.py``.

synapse call ask_client 7 --expose examples/client_functions.py    # the server calls echo: prints 7
"""

from __future__ import annotations

import sys
from typing import Any

from synapse_cli import Registry

registry = Registry()


@registry.function(inline=True)
def echo(value: Any) -> Any:
    """Return the value unchanged."""
    return value


@registry.function
def confirm(question: str) -> bool:
    """Ask on the terminal (stderr: stdout is for the call's result); true for "y"."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


@registry.function(inline=True)
def tick(left: int) -> None:
    """A notification from the server (``ctx.notify("tick", ...)``): shown on stderr. Inline: run as it
    arrives, in order and before the call's result (a plain sync function runs in a thread: several may overlap)."""
    sys.stderr.write(f"{left}...\n")
