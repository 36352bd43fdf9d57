"""An application with typed parameters and results, for ``synapse stubs`` (tests/test_stubs.py).

Models (nested, recursive, shared by parameters and results), an enum, optional and keyword-only
parameters, a stream of models, a function named with a dot, parameters named like the stub's own names.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator

from pydantic import BaseModel, Field

from synapse_cli import Registry

registry = Registry()


class Color(str, enum.Enum):
    red = "red"
    green = "green"


class Point(BaseModel):
    """A point in the plane."""

    x: float
    y: float = 0.0
    label: str | None = Field(default=None, description="What the point is called */ \"\"\" '''")


class Shape(BaseModel):
    points: list[Point]
    color: Color = Color.red
    children: list[Shape] = []


@registry.function
def centroid(shape: Shape, *, scale: float = 1.0) -> Point:
    """The centre of a shape's points, scaled."""
    count = len(shape.points) or 1
    x = sum(p.x for p in shape.points) / count * scale
    y = sum(p.y for p in shape.points) / count * scale
    return Point(x=x, y=y, label=shape.color.value)


@registry.function
def count_shapes(shape: Shape) -> int:
    """How many shapes there are in a shape, itself included (children are shapes too)."""
    return 1 + sum(count_shapes(child) for child in shape.children)


@registry.function
async def walk(shape: Shape, limit: int | None = None) -> AsyncIterator[Point]:
    """Each point of a shape, one at a time."""
    for point in shape.points[:limit]:
        yield point


@registry.function(name="text.join")
def join(parts: list[str], sep: str = " ") -> str:
    """Join strings (a function whose name is no identifier)."""
    return sep.join(parts)


@registry.function
def tagged(self: int, cast: str) -> dict[str, int | str]:
    """Parameters named like what a stub's methods use themselves (self, cast)."""
    return {"self": self, "cast": cast}


@registry.function
async def repeat(func: str, times: int = 2) -> AsyncIterator[str]:
    """A stream with a parameter named ``func`` (the name of Client.stream's own first parameter)."""
    for _ in range(times):
        yield func


@registry.function
def pair(a: int, b: str) -> tuple[int, str]:
    """A fixed-size array."""
    return (a, b)


@registry.function
def nothing() -> None:
    """Returns nothing."""
