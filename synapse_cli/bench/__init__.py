"""The load generator: ``synapse bench`` as a library that returns a report.

Owns the driver (closed and open models, load shapes), its configuration and option parsing,
schedules, the per-second tally, the versioned report (compare, merge), the capacity search, several
processes, stream and topic benchmarks, and the HTML report.

May import: ``synapse_cli.core``, ``synapse_cli.client`` (a bench is a client at scale: it connects
through the client's one foreign-exception map and TLS context) and itself. Never ``.server`` or
``.cli``: the embedded server a bench measures is started by the CLI.
"""

__all__: list[str] = []  # the public names live in the modules (and in synapse_cli itself)
