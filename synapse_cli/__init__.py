"""synapse: WebSocket RPC in one command — a server, a client and a load generator.

Expose functions with a :class:`Registry`, serve them with ``synapse serve`` (or mount them in your own
ASGI app with :func:`asgi`), call them with :class:`Client` (or :func:`call` from a script, ``synapse
call`` from a shell).

The names are imported on first use, so ``synapse call`` does not pay for pydantic or uvicorn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from synapse_cli import compiled  # noqa: F401  first: it decides whether the compiled modules run

__version__ = "0.1.0"

__all__ = [
    "CallTimeout",
    "Client",
    "ConnectError",
    "Context",
    "ConnectionLost",
    "InvalidReply",
    "RPCError",
    "Registry",
    "Settings",
    "SyncClient",
    "SynapseError",
    "__version__",
    "asgi",
    "call",
]

_LOCATIONS = {
    "CallTimeout": "synapse_cli.core.errors",
    "ConnectError": "synapse_cli.core.errors",
    "ConnectionLost": "synapse_cli.core.errors",
    "Context": "synapse_cli.core.context",
    "InvalidReply": "synapse_cli.core.errors",
    "RPCError": "synapse_cli.core.errors",
    "SynapseError": "synapse_cli.core.errors",
    "Client": "synapse_cli.client.client",
    "SyncClient": "synapse_cli.client.sync",
    "call": "synapse_cli.client.sync",
    "Registry": "synapse_cli.core.registry",
    "Settings": "synapse_cli.core.settings",
    "asgi": "synapse_cli.server.mount",
}

if TYPE_CHECKING:
    from synapse_cli.client.client import Client
    from synapse_cli.client.sync import SyncClient, call
    from synapse_cli.core.context import Context
    from synapse_cli.core.errors import CallTimeout, ConnectError, ConnectionLost, InvalidReply, RPCError, SynapseError
    from synapse_cli.core.registry import Registry
    from synapse_cli.core.settings import Settings
    from synapse_cli.server.mount import asgi


def __getattr__(name: str) -> Any:
    location = _LOCATIONS.get(name)
    if location is None:
        raise AttributeError(f"module 'synapse_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(location), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
