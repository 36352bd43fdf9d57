"""The client: :class:`~synapse_cli.Client`, :class:`~synapse_cli.SyncClient` and :func:`~synapse_cli.call`.

Owns the connection (websockets' sans-I/O ``ClientProtocol`` for the handshake, the core's frame codec
for messages), routing replies to calls by id, timeouts, reconnects, streams, the NDJSON batch runner
and the one map that turns every foreign exception (websockets, OSError, TLS) into a synapse error.

May import: ``synapse_cli.core`` and itself. Never ``.server``, ``.bench`` or ``.cli``.
"""

__all__: list[str] = []  # the public names live in the modules (and in synapse_cli itself)
