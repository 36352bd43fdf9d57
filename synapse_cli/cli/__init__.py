"""The ``synapse`` command: one thin module per command, and the renderers that print their results.

Each command parses its options, builds settings, calls the library (``server``, ``client``,
``bench``) and renders what comes back; no logic of its own. Results go to stdout, the rest to stderr.

May import: everything in ``synapse_cli``. Nothing imports it but ``__main__`` and the console script.
"""

# Each module registers its command on the app, in the order `synapse --help` lists them.
from synapse_cli.cli import serve, call, list, bench, stubs  # noqa: F401, I001
from synapse_cli.cli.app import main

__all__ = ["main"]
