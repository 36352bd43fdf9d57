"""The server: ``synapse serve`` and the ASGI app behind it.

Owns the Starlette app and its HTTP routes (``/health``, ``/metrics``, ``/docs``), the WebSocket
transport uvicorn runs (its public ``Config(ws=...)`` hook), the asyncio driver of each connection's
session, processes, signals and reload, the Redis broker for topics, metrics, logs and the default
functions.

May import: ``synapse_cli.core`` and itself. Never ``.client``, ``.bench`` or ``.cli``.
"""

__all__: list[str] = []  # the public names live in the modules (and in synapse_cli itself)
