"""Two functions for benchmarks/server_calls.py: a plain async call, and the same with a call back to the caller.

synapse serve benchmarks/apps/round_trips.py
"""

from __future__ import annotations

from typing import Any

from synapse_cli import Context, Registry

registry = Registry()


@registry.function
async def reply(ctx: Context, value: Any) -> Any:
    """The reference: an async function that takes its Context and answers at once."""
    return value


@registry.function
async def ask_client(ctx: Context, value: Any) -> Any:
    """The same, after a server-to-client call: the caller's ``echo`` (bench connections expose it)."""
    return await ctx.call("echo", value, timeout=5)
