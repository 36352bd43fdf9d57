"""A user registry showing every kind of function synapse serves.

synapse serve examples/functions.py
synapse call greet Ada                      # "hello, Ada"
synapse call fetch_user 42                  # async
synapse call area '{"width": 3, "height": 4.5}'    # a pydantic model argument
synapse call withdraw 500                   # an RPCError with its own code and data
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from synapse_cli import Registry, RPCError

registry = Registry()


@registry.function(inline=True)
def greet(name: str) -> str:
    """Say hello (cheap and non-blocking: runs inline on the event loop)."""
    return f"hello, {name}"


@registry.function
def slow_square(x: int) -> int:
    """Square a number the slow way (a sync function: runs in the thread pool, never stalls the server)."""
    total = 0
    for _ in range(x):
        total += x
    return total


@registry.function
async def fetch_user(user_id: int) -> dict[str, object]:
    """Look a user up (an async function: runs on the event loop)."""
    await asyncio.sleep(0.01)  # stands for a database or HTTP call
    return {"id": user_id, "name": f"user-{user_id}"}


class Rectangle(BaseModel):
    """A rectangle; JSON objects become this model, validated strictly."""

    width: float = Field(gt=0)
    height: float = Field(gt=0)


@registry.function
def area(shape: Rectangle) -> float:
    """The area of a rectangle (a typed-model argument)."""
    return shape.width * shape.height


@registry.function
def withdraw(amount: int) -> int:
    """Withdraw from a balance of 100; too much answers error 4002 with the balance as data."""
    balance = 100
    if amount > balance:
        raise RPCError("insufficient funds", code=4002, data={"balance": balance, "requested": amount})
    return balance - amount
