"""The build: pyproject.toml says everything but this, the request path compiled by mypyc where it can be.

``synapse_cli/compiled.py`` names the modules (:data:`MODULES`) and decides at import time which way
they run. Here they are compiled to C and built as extension modules beside their sources, and
``synapse_cli/compiled.crc32`` records the sources they were compiled from. When the build cannot
compile (no mypy in the build environment, no C compiler, ``SYNAPSE_PURE=1`` at build time), it says
so in one line and installs the same package as plain Python: every feature works either way.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SELECTOR = runpy.run_path(str(ROOT / "synapse_cli" / "compiled.py"), run_name="synapse_cli_compiled_build")
# The options `make lint` type-checks with are in pyproject.toml; these relax only what depends on the
# build environment, which may lack the runtime dependencies (their types are then Any).
MYPYC_OPTIONS = [
    "--ignore-missing-imports",
    "--no-warn-return-any",
    "--no-warn-unused-ignores",
    "--allow-subclassing-any",
    "--allow-untyped-calls",
    "--allow-untyped-decorators",
]


def say(message: str) -> None:
    print(f"synapse build: {message}", file=sys.stderr)


def pure_requested() -> bool:
    return os.environ.get(SELECTOR["ENV"], "") not in ("", "0")


def mypyc_extensions() -> list[Extension]:
    """mypyc's extension modules for :data:`MODULES` (its C generated now), or none: pure Python."""
    try:
        from mypyc.build import mypycify
    except ImportError as error:
        say(f"mypyc is not available ({error}): pure Python")
        return []
    paths = [str(SELECTOR["source"](module).relative_to(ROOT)) for module in SELECTOR["MODULES"]]
    try:
        return list(mypycify([*MYPYC_OPTIONS, *paths], opt_level="3", group_name="synapse_cli_native"))
    except SystemExit as error:  # mypyc refused the source: its errors are printed above
        say(f"mypyc could not compile the request path (exit {error.code}): pure Python")
        return []


class BuildExt(build_ext):
    """Builds the compiled modules and their manifest; builds none, and says so, if any fails.

    mypyc runs here, when extensions are built, not when setup.py is read (pip reads it several times
    for an install's metadata): until then ``ext_modules`` holds one placeholder. ``sdist`` and
    ``egg_info`` (the metadata step of every pip install) finalize this command too, only to list the
    sources: they keep the placeholder, so mypyc (15-25 s) runs once per build, not once per step.
    """

    def finalize_options(self) -> None:
        if self.distribution.ext_modules == PLACEHOLDER and BUILDING.intersection(self.distribution.commands):
            self.distribution.ext_modules = mypyc_extensions()
        super().finalize_options()

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as error:  # CompileError, a missing compiler (OSError, PlatformError, ...)
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            reason = str(error).splitlines()[0][:200] if str(error) else ""
            say(f"compiling the request path failed ({type(error).__name__}: {reason}): pure Python")
            return
        lines = [SELECTOR["manifest_line"](module) for module in SELECTOR["MODULES"]]
        self.manifest().write_text("\n".join(lines) + "\n")

    def manifest(self) -> Path:
        """Where ``compiled.crc32`` goes: beside the package's extension modules (in place or in the build)."""
        return Path(self.get_ext_fullpath(SELECTOR["MODULES"][0])).parent.parent / "compiled.crc32"

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), str(self.manifest())] if self.extensions else []


# The commands that build extension modules (pip's wheel and editable builds, setup.py build_ext --inplace).
BUILDING = frozenset({"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install", "bdist_egg"})
# The placeholder says the build has extension modules (a platform wheel); SYNAPSE_PURE=1: none at all.
PLACEHOLDER = [] if pure_requested() else [Extension(SELECTOR["MODULES"][0], sources=[])]
if pure_requested():
    say(f"{SELECTOR['ENV']} is set: pure Python")
setup(ext_modules=PLACEHOLDER, cmdclass={"build_ext": BuildExt})
