"""The layers of the package (CONTRIBUTING.md): core <- server, client <- bench <- cli, read from the imports.

Every ``import`` and ``from ... import`` in every module counts, wherever it stands (top level, inside a
function, under ``TYPE_CHECKING``): a lazy import still ties the layers together.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "synapse_cli"

# Which parts each part may import (itself included). The package root (``synapse_cli/__init__.py``,
# ``__version__`` and the lazy public names) holds no logic and may be imported from anywhere; beside it,
# ``compiled.py`` (which modules run compiled) runs first and imports nothing but the standard library.
ALLOWED = {
    "core": {"core"},
    "server": {"core", "server"},
    "client": {"core", "client"},
    "bench": {"core", "client", "bench"},  # a bench is a client at scale: one foreign-exception map, one TLS context
    "cli": {"core", "server", "client", "bench", "cli"},
}
# What would make the core do I/O or draw on a terminal: never imported there.
NOT_IN_CORE = {"socket", "ssl", "selectors", "websockets", "uvicorn", "starlette", "picows", "rich", "typer", "redis"}


def part_of(module: str) -> str | None:
    """The part a dotted ``synapse_cli`` module name belongs to (None for the package root)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[1] in ALLOWED else None


def imported_modules(text: str, relative: str) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in ``text``, the source of ``relative`` (``synapse_cli/x/y.py``)."""
    dotted = relative.removesuffix(".py").replace("/", ".")
    package = dotted.removesuffix(".__init__") if relative.endswith("__init__.py") else dotted.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base == "synapse_cli":  # `from synapse_cli import server` imports a part, not a name of the root
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return sorted(found)


def violations(text: str, relative: str) -> list[str]:
    """The imports of one module's source that break the layering rule, as ``file:line imports module``."""
    own = part_of(relative.removesuffix(".py").replace("/", "."))
    if own is None:
        return []
    problems = []
    for line, module in imported_modules(text, relative):
        target = part_of(module) if module.startswith("synapse_cli.") else None
        if (target is not None and target not in ALLOWED[own]) or (
            own == "core" and module.split(".")[0] in NOT_IN_CORE
        ):
            problems.append(f"{relative}:{line} imports {module}")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


def source(path: Path) -> tuple[str, str]:
    """A module file's text and its path from the repository root (``synapse_cli/core/protocol.py``)."""
    return path.read_text(encoding="utf-8"), path.relative_to(PACKAGE.parent).as_posix()


def test_every_part_is_a_package() -> None:
    """Each part of the rule is a subpackage, and no module stands outside one but the root's three."""
    assert {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()} == set(ALLOWED)
    assert {path.name for path in PACKAGE.glob("*.py")} == {"__init__.py", "__main__.py", "compiled.py"}


def test_the_compiled_selector_imports_only_the_standard_library() -> None:
    """compiled.py runs before any part is imported (and setup.py runs it with none installed)."""
    imported = {module.split(".")[0] for _, module in imported_modules(*source(PACKAGE / "compiled.py"))}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_imports_follow_the_layers(path: Path) -> None:
    """A module imports only the parts its own part may import (core: nothing outside core, and no I/O)."""
    assert violations(*source(path)) == []


def test_the_rule_catches_an_import_going_up() -> None:
    """A core module importing the server (even lazily, in a function) or websockets is reported, by line."""
    text = "from synapse_cli.core import frames\n\ndef f():\n"
    text += "    from synapse_cli.server import runner\n    import websockets\n"
    assert violations(text, "synapse_cli/core/protocol.py") == [
        "synapse_cli/core/protocol.py:4 imports synapse_cli.server",
        "synapse_cli/core/protocol.py:5 imports websockets",
    ]
    assert violations(text, "synapse_cli/cli/serve.py") == []  # the CLI may import anything


def test_relative_and_root_imports_are_resolved() -> None:
    """``from ..server import app`` and ``from synapse_cli import bench`` count as imports of those parts."""
    text = "from ..server import app\nfrom synapse_cli import __version__, bench\n"
    assert imported_modules(text, "synapse_cli/client/wire.py") == [
        (1, "synapse_cli.server"),
        (2, "synapse_cli.__version__"),
        (2, "synapse_cli.bench"),
    ]
    assert violations(text, "synapse_cli/client/wire.py") == [
        "synapse_cli/client/wire.py:1 imports synapse_cli.server",
        "synapse_cli/client/wire.py:2 imports synapse_cli.bench",
    ]


def test_the_root_imports_nothing_eagerly() -> None:
    """``synapse_cli/__init__.py`` imports its public names only when asked (``synapse call`` stays lazy):
    eagerly only the selector of compiled modules, which must run before any of them is imported."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    eager = [
        (node.module, [alias.name for alias in node.names]) for node in tree.body if isinstance(node, ast.ImportFrom)
    ]
    assert [module for module, _ in eager] == ["__future__", "typing", "synapse_cli"]
    assert eager[2] == ("synapse_cli", ["compiled"])
