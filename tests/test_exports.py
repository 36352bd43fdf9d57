"""The public API: every module declares ``__all__`` and the package re-exports agree (STYLE §4)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import synapse_cli

# ``__main__`` is a script: importing it runs the command line, so it has no API to declare.
MODULE_NAMES = sorted(
    info.name
    for info in pkgutil.walk_packages(synapse_cli.__path__, "synapse_cli.")
    if info.name != "synapse_cli.__main__"
)
REEXPORTED = [name for name in synapse_cli.__all__ if name != "__version__"]


def module(name: str) -> ModuleType:
    """Import a module of the package by its dotted name."""
    return importlib.import_module(name)


def test_modules_found() -> None:
    """The package's modules are discovered (guards against an empty parametrization)."""
    assert {"synapse_cli.core.protocol", "synapse_cli.core.registry", "synapse_cli.core.errors"} <= set(MODULE_NAMES)
    assert {"synapse_cli.core", "synapse_cli.server", "synapse_cli.client", "synapse_cli.bench"} <= set(MODULE_NAMES)
    assert {"synapse_cli.cli", "synapse_cli.cli.serve", "synapse_cli.bench.driver"} <= set(MODULE_NAMES)


@pytest.mark.parametrize("name", ["synapse_cli", *MODULE_NAMES])
def test_module_declares_all(name: str) -> None:
    """Every module has an ``__all__`` list of unique strings."""
    declared = module(name).__all__
    assert isinstance(declared, list)
    assert all(isinstance(item, str) for item in declared)
    assert len(declared) == len(set(declared))


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_all_names_resolve(name: str) -> None:
    """Every name a module lists in ``__all__`` exists in it."""
    mod = module(name)
    assert [item for item in mod.__all__ if not hasattr(mod, item)] == []


@pytest.mark.parametrize("name", synapse_cli.__all__)
def test_package_all_names_resolve(name: str) -> None:
    """Every name in ``synapse_cli.__all__`` resolves on the package."""
    assert getattr(synapse_cli, name) is not None


@pytest.mark.parametrize("name", REEXPORTED)
def test_reexport_agrees_with_its_module(name: str) -> None:
    """A re-exported name is the very object its defining module lists in its own ``__all__``."""
    value = getattr(synapse_cli, name)
    home = module(value.__module__)
    assert home.__name__ in MODULE_NAMES
    assert name in home.__all__
    assert getattr(home, name) is value


def test_reexports_are_unique_across_modules() -> None:
    """No public name is exported by two modules with different objects behind it."""
    owners: dict[str, object] = {}
    for name in MODULE_NAMES:
        mod = module(name)
        for item in mod.__all__:
            value = getattr(mod, item)
            if item in REEXPORTED:
                assert owners.setdefault(item, value) is value, f"{item} differs in {name}"
    assert sorted(owners) == sorted(REEXPORTED)


def test_version() -> None:
    """``__version__`` is exported and is a dotted version string."""
    assert "__version__" in synapse_cli.__all__
    assert isinstance(synapse_cli.__version__, str)
    assert all(part.isdigit() for part in synapse_cli.__version__.split(".")[:2])


def test_dir_lists_the_public_api() -> None:
    """``dir(synapse_cli)`` shows exactly the public API."""
    assert dir(synapse_cli) == sorted(synapse_cli.__all__)


def test_unknown_attribute_raises() -> None:
    """A name the package does not export is an AttributeError, not an import of something else."""
    with pytest.raises(AttributeError, match="no_such_name"):
        synapse_cli.no_such_name  # noqa: B018


def test_exceptions_form_one_tree() -> None:
    """The exported exceptions all derive from SynapseError, which derives from Exception."""
    assert issubclass(synapse_cli.SynapseError, Exception)
    for name in ["ConnectError", "ConnectionLost", "CallTimeout", "RPCError"]:
        exported = getattr(synapse_cli, name)
        assert inspect.isclass(exported) and issubclass(exported, synapse_cli.SynapseError)
