"""A registry inside a package, for `synapse serve pkg.rpc:registry`."""

from __future__ import annotations

from synapse_cli import Registry

registry = Registry()
other = Registry()


@registry.function
def greet(name: str) -> str:
    """Say hello."""
    return f"hello {name}"
