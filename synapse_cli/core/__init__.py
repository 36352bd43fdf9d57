"""The pure core: what synapse *decides*, with no socket, server or terminal in sight.

Owns the wire protocol (messages of both dialects, their decoding and encoding, the error codes), the
RFC 6455 frame codec, the registry of functions (binding arguments and JSON Schema from type hints),
the sans-I/O session of one connection, topics, the exception hierarchy, latency statistics and the
settings with their defaults. It is tested by feeding strings in and asserting on objects out.

May import: the standard library, its own modules and third-party libraries (orjson, pydantic,
hdrhistogram). Never ``synapse_cli.server``, ``.client``, ``.bench`` or ``.cli``
(``tests/test_layering.py`` enforces it).
"""

__all__: list[str] = []  # the public names live in the modules (and in synapse_cli itself)
