"""Functions for the hardening tests: the built-ins plus task counting, random delays and leaky failures.

Served with ``synapse serve tests/apps/hardening_app.py`` (a real process) so the tests can measure its
memory and see inside its event loop without mocking anything.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from synapse_cli.server.builtins import default_registry

registry = default_registry()

# A path that must never reach a client: its text is what a careless server would leak.
SECRET_PATH = Path("/srv/synapse-hardening/secret-config/credentials.toml")


@registry.function
async def task_count() -> int:
    """The number of asyncio tasks alive in the server's event loop (this call's own task included)."""
    return len(asyncio.all_tasks())


@registry.function
async def jittered(value: int) -> int:
    """Sleep a random 0-50 ms, then return ``value`` unchanged."""
    await asyncio.sleep(random.uniform(0.0, 0.05))
    return value


@registry.function
def read_config() -> str:
    """Open a file that does not exist: the OSError's text holds its full path."""
    return SECRET_PATH.read_text()


@registry.function
async def parse_module() -> None:
    """Raise an exception whose message names this module's file and the secret path."""
    raise ValueError(f"cannot parse {__file__} (see {SECRET_PATH})")


@registry.function
def chained_failure() -> None:
    """Raise an exception chained from an OSError that carries the secret path."""
    try:
        raise PermissionError(13, "Permission denied", str(SECRET_PATH))
    except PermissionError as exc:
        raise RuntimeError(f"wrapped: {exc}") from exc
