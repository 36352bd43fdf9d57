"""Functions that know their caller and call it back: the call context and server-to-client calls.

synapse serve examples/both_ways.py --token-file tokens.csv        # lines: TOKEN,IDENTITY
synapse call whoami --token "$ALICE_TOKEN"                         # the caller's identity, address, dialect
synapse call ask_client 7 --expose examples/client_functions.py    # the server calls the client's echo
synapse bench ask_client 7 --url ws://127.0.0.1:8000/ws            # a round trip with a server-to-client call
"""

from __future__ import annotations

from typing import Any

from synapse_cli import Context, Registry, RPCError

registry = Registry()


def admins_only(ctx: Context) -> bool:
    """A check: only the identity "admin" may call (any other gets -32007 "forbidden")."""
    return ctx.identity == "admin"


@registry.function
async def whoami(ctx: Context) -> dict[str, Any]:
    """Who is calling: the token's identity, the address, the dialect, the user agent."""
    return {
        "identity": ctx.identity,
        "remote_address": ctx.remote_address,
        "dialect": ctx.dialect,
        "user_agent": ctx.headers.get("user-agent"),
    }


@registry.function
async def ask_client(ctx: Context, value: Any) -> Any:
    """Call the caller's own ``echo`` with ``value`` and answer with what it returned."""
    return await ctx.call("echo", value, timeout=5)


@registry.function
async def countdown(ctx: Context, n: int) -> str:
    """Notify the caller of each number from n down to 1 (``ctx.notify``), then answer."""
    for left in range(n, 0, -1):
        await ctx.notify("tick", {"left": left})
    return "liftoff"


@registry.function(requires=admins_only)
async def delete_everything(ctx: Context) -> str:
    """Allowed to the admin only, and only once the caller confirms (its ``confirm`` function)."""
    if not await ctx.call("confirm", "Delete everything?", timeout=60):
        raise RPCError("not confirmed", 4090)
    return "deleted (not really)"
