"""A user's application for ``synapse serve tests/apps/userfuncs.py`` and ``synapse serve userfuncs:registry``."""

from __future__ import annotations

from synapse_cli import Registry, RPCError

registry = Registry()


@registry.function
def greet(name: str) -> str:
    """Say hello to someone."""
    return f"hello {name}"


@registry.function
def withdraw(amount: int) -> int:
    """Refuse every withdrawal with an application error code of its own."""
    raise RPCError("insufficient funds", code=4002, data={"balance": 3, "asked": amount})
