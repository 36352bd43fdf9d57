"""Two registries in one file, for `synapse serve two.py:r2` (naming one of several)."""

from __future__ import annotations

from synapse_cli import Registry

r1 = Registry()
r2 = Registry()


@r1.function
def first() -> int:
    """Served by r1."""
    return 1


@r2.function
def second() -> int:
    """Served by r2."""
    return 2
