"""Functions that read their call's Context, push to their caller, call their caller back, or are guarded.

Served with ``tokens={"tok-alice": "alice", "tok-bob": "bob"}`` by tests/test_context.py; ``ENDINGS``
records how each server-to-client call ended, as seen by the server.
"""

from __future__ import annotations

import asyncio
from typing import Any

from synapse_cli import Context, Registry, RPCError, SynapseError

ENDINGS: list[str] = []  # how each ``ask`` ended: "answered", "CallTimeout", "cancelled", ...
BODIES: list[str] = []  # functions whose body ran (a refused call never appears)


def only_alice(ctx: Context) -> bool:
    """A sync check: refuses anyone but alice (-32007)."""
    return ctx.identity == "alice"


async def slow_check(ctx: Context) -> None:
    """An async check: refuses with its own code when the header x-deny is sent."""
    await asyncio.sleep(0)
    if "x-deny" in ctx.headers:
        raise RPCError("denied by header", 4031, {"header": ctx.headers["x-deny"]})


registry = Registry()


@registry.function
async def whoami(ctx: Context, tag: str = "") -> dict[str, Any]:
    """Everything the context says about this call."""
    return {
        "connection_id": ctx.connection_id,
        "remote_address": ctx.remote_address,
        "user_agent": ctx.headers.get("User-Agent"),
        "identity": ctx.identity,
        "dialect": ctx.dialect,
        "call_id": ctx.call_id,
        "function": ctx.function,
        "tag": tag,
    }


@registry.function(inline=True)
def add_with_context(a: int, ctx: Context, b: int) -> list[Any]:
    """An inline sync function with the context between two parameters."""
    return [a + b, ctx.function]


@registry.function(requires=only_alice)
def secret() -> str:
    """Allowed to alice only."""
    BODIES.append("secret")
    return "for alice"


@registry.function(requires=[only_alice, slow_check])
async def guarded_twice(value: int) -> int:
    """A sync check, then an async one, then the body."""
    BODIES.append("guarded_twice")
    return value


@registry.function
async def progress(ctx: Context, steps: int) -> str:
    """Notify the caller of each step, then answer."""
    for step in range(steps):
        await ctx.notify("progress", {"step": step, "of": steps})
    return "done"


@registry.function
async def ask(ctx: Context, func: str, args: list[Any], timeout: float = 2.0) -> Any:
    """Call ``func(*args)`` on the caller and answer with its result, or the error's name and text."""
    try:
        result = await ctx.call(func, *args, timeout=timeout)
    except asyncio.CancelledError:
        ENDINGS.append("cancelled")
        raise
    except SynapseError as exc:
        ENDINGS.append(type(exc).__name__)
        return {"raised": type(exc).__name__, "message": str(exc)}
    ENDINGS.append("answered")
    return {"result": result}


@registry.function
async def ask_by_name(ctx: Context, value: Any) -> Any:
    """Call the caller's ``echo`` by name."""
    return await ctx.call("echo", value=value)


@registry.function
def endings() -> list[str]:
    """How the calls of ``ask`` ended so far."""
    return list(ENDINGS)


@registry.function
def bodies() -> list[str]:
    """The guarded functions whose body ran so far."""
    return list(BODIES)
