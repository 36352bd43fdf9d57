"""Which modules run compiled: the request path built by mypyc, or the same source as plain Python.

``setup.py`` compiles :data:`MODULES` with mypyc where it can (a C compiler and mypy at build time) and
writes, next to this file, ``compiled.crc32``: each module's source as it was compiled (size and
CRC-32). Python imports an extension module ahead of its ``.py``, so a compiled module is used as soon
as it is there. This module, imported first by ``synapse_cli/__init__.py``, decides otherwise when:

* ``SYNAPSE_PURE=1`` is set: every module runs from its source, compiled or not;
* a source changed since it was compiled (an editable install being edited): the compiled modules
  would run old code, so every one of them runs from its source until the next build.

Either way an import finder placed first on ``sys.meta_path`` (importlib's public API) loads the
``.py`` of each of :data:`MODULES`; nothing else changes. Both ways behave the same: the suite runs
both ways (``make test-pure``). :data:`STATUS` says which way this process runs; ``synapse serve`` logs
it once at debug level. Pure standard library: it runs before anything else of the package.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED", "ENV", "MODULES", "STATUS", "manifest_line", "pure_reason"]

ENV = "SYNAPSE_PURE"
# The request path: frame codec, message decode, routing and binding, reply encode, the session, its
# asyncio driver, the WebSocket protocol class and the metrics it counts. Every one is fully typed (mypy
# --strict) and uses nothing mypyc refuses (async generators: what a topic's subscribers call is made
# in topics.py; a function websockets binds as a method: server/app.py's select_subprotocol).
MODULES = (
    "synapse_cli.core.frames",
    "synapse_cli.core.protocol",
    "synapse_cli.core.encoding",
    "synapse_cli.core.outgoing",
    "synapse_cli.core.functions",
    "synapse_cli.core.registry",
    "synapse_cli.core.session",
    "synapse_cli.server.connection",
    "synapse_cli.server.item_output",
    "synapse_cli.server.transport",
    "synapse_cli.server.metrics",
)
_PACKAGE = Path(__file__).resolve().parent
MANIFEST = _PACKAGE / "compiled.crc32"


def source(module: str) -> Path:
    """The ``.py`` file of one of :data:`MODULES`."""
    return _PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def manifest_line(module: str) -> str:
    """``module size crc32`` of the source as it is now: what the build records, what an import checks."""
    data = source(module).read_bytes()
    return f"{module} {len(data)} {zlib.crc32(data):08x}"


def pure_reason(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why this process runs every module from its source, or None when the compiled ones are current."""
    if environ.get(ENV, "") not in ("", "0"):
        return f"{ENV}={environ[ENV]}"
    try:
        recorded = MANIFEST.read_text().splitlines()
    except OSError:
        return "no compiled modules in this install"
    for line in recorded:
        module = line.split(" ", 1)[0]
        built = source(module).with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])
        try:
            if manifest_line(module) != line:
                return f"{source(module).name} changed since it was compiled"
        except OSError:
            return f"{module} has no source"
        if not built.exists():
            return f"{built.name} is missing"
    return None


class _SourceFinder(importlib.machinery.PathFinder):
    """Finds each of :data:`MODULES` as its ``.py``, whatever extension module sits beside it."""

    @classmethod
    def find_spec(
        cls, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


_reason = pure_reason()
COMPILED = _reason is None
STATUS = "compiled (mypyc)" if COMPILED else f"pure Python ({_reason})"
if not COMPILED:  # compiled modules may be there (stale, or SYNAPSE_PURE): never run them
    sys.meta_path.insert(0, _SourceFinder)
