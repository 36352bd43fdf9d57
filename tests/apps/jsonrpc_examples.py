"""The example methods of the JSON-RPC 2.0 specification, section 7 (https://www.jsonrpc.org/specification)."""

from __future__ import annotations

from synapse_cli import Registry

registry = Registry()
received: list[tuple[str, tuple[object, ...]]] = []


@registry.function
def subtract(minuend: int | float, subtrahend: int | float) -> int | float:
    """Subtract subtrahend from minuend."""
    return minuend - subtrahend


@registry.function
def sum(*values: int | float) -> int | float:  # noqa: A001 - the spec's method name
    """Add all the numbers given."""
    total: int | float = 0
    for value in values:
        total += value
    return total


@registry.function
def get_data() -> list[object]:
    """Return the spec's sample data."""
    return ["hello", 5]


@registry.function
def update(*values: int) -> None:
    """A notification target: records what it got."""
    received.append(("update", values))


@registry.function
def notify_hello(*values: int) -> None:
    """A notification target: records what it got."""
    received.append(("notify_hello", values))


@registry.function
def notify_sum(*values: int) -> None:
    """A notification target: records what it got."""
    received.append(("notify_sum", values))
