"""``python -m synapse_cli`` runs the ``synapse`` command."""

from synapse_cli.cli import main

main()
