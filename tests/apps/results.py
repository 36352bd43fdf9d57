"""Functions whose results need their return annotation to be sent (bytes, sets, Decimal...) or do not fit it."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from synapse_cli import Registry

registry = Registry()


@dataclasses.dataclass
class Reading:
    name: str
    tags: set[str]


class Point(BaseModel):
    x: float
    y: float


@registry.function(inline=True)
def abytes() -> bytes:
    """Bytes, sent as a string."""
    return b"ab"


@registry.function
def aset() -> set[int]:
    """A set, sent as an array."""
    return {3, 1, 2}


@registry.function(inline=True)
def adecimal() -> Decimal:
    """A Decimal, sent as a string: exact."""
    return Decimal("1.50")


@registry.function(inline=True)
def adatetime() -> datetime:
    """A datetime, sent as ISO 8601."""
    return datetime(2026, 12, 1, 4, 5, 6, tzinfo=timezone.utc)


@registry.function(inline=True)
def areading() -> Reading:
    """A dataclass holding a set."""
    return Reading("t", {"x"})


@registry.function
async def apoint() -> Point:
    """A pydantic model."""
    return Point(x=1, y=2.5)


@registry.function
def wrong_bytes() -> bytes:
    """Declares bytes, returns a set: an error."""
    return {1}  # type: ignore[return-value]


@registry.function(inline=True)
def wrong_list() -> list[int]:
    """Declares a plain list, returns a set: an error (caught when JSON refuses it)."""
    return {1}  # type: ignore[return-value]


@registry.function(inline=True)
def anything() -> Any:
    """Declares nothing in particular, returns a set: JSON cannot carry it (only a declared set is sent)."""
    return {1}


@registry.function(inline=True)
def not_a_number() -> float:
    """Returns NaN, which JSON cannot carry."""
    return float("nan")
