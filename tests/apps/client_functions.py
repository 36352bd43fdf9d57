"""Functions a shell client serves back to the server: ``synapse call ... --expose tests/apps/client_functions.py``."""

from __future__ import annotations

from typing import Any

from synapse_cli import Registry

registry = Registry()


@registry.function(inline=True)
def echo(value: Any) -> Any:
    """The server's value, back."""
    return value


@registry.function
def shout(text: str) -> str:
    """A sync function (runs in a thread on the client)."""
    return text.upper()
