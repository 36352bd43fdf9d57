"""The compiled request path and its pure-Python twin: which one runs, and that a build without a compiler works.

``setup.py`` compiles ``synapse_cli.compiled.MODULES`` with mypyc; ``synapse_cli/compiled.py`` decides
at import which way they run. The rest of the suite runs both ways (``make test``, ``make test-pure``):
these tests check the switch itself, each in a fresh interpreter.
"""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_packaging import HOOK, project_copy, run_hook

from synapse_cli import compiled

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "synapse_cli"
BUILT = compiled.MANIFEST.exists()  # this install was compiled (whether or not this process runs it)
needs_build = pytest.mark.skipif(not BUILT, reason="this install has no compiled modules (a pure build)")
# Prints, for a fresh interpreter: the status line, then each compiled-or-not module's file suffix.
REPORT = """
import importlib, synapse_cli.compiled as c
print(c.STATUS)
for name in c.MODULES:
    print(name, importlib.import_module(name).__file__.rsplit(".", 1)[-1])
"""


def report(environ: dict[str, str] | None = None, path: Path | None = None) -> tuple[str, dict[str, str]]:
    """The status and {module: "py" or "so"} of a fresh interpreter (``path``: a copy of the package's parent)."""
    env = {key: value for key, value in os.environ.items() if key != compiled.ENV}
    env.update(environ or {})
    if path is not None:
        env["PYTHONPATH"] = str(path)
    done = subprocess.run(
        [sys.executable, "-c", REPORT],
        cwd=path or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status, *lines = done.stdout.splitlines()
    return status, dict(line.split(" ") for line in lines)


def package_copy(tmp_path: Path) -> Path:
    """A copy of the installed package (extension modules, manifest, mypyc's shared library beside it)."""
    shutil.copytree(PACKAGE, tmp_path / "synapse_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for library in ROOT.glob("synapse_cli_native__mypyc*"):
        shutil.copy2(library, tmp_path / library.name)
    return tmp_path


def test_synapse_pure_runs_every_module_from_its_source() -> None:
    """SYNAPSE_PURE=1: each module of the request path is its .py, and the status says why."""
    status, files = report({compiled.ENV: "1"})
    assert status == "pure Python (SYNAPSE_PURE=1)"
    assert files == {name: "py" for name in compiled.MODULES}


@needs_build
def test_a_build_runs_the_compiled_modules() -> None:
    """With the build's extension modules current, every module of the request path is one of them."""
    status, files = report()
    assert status == "compiled (mypyc)"
    assert files == {name: "so" for name in compiled.MODULES}
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    assert all(compiled.source(name).with_suffix(suffix).exists() for name in compiled.MODULES)


@needs_build
def test_a_source_edited_after_its_build_runs_pure_not_stale(tmp_path: Path) -> None:
    """Edit one compiled module's source (an editable install): every module runs from its .py until the
    next build, never the old compiled code beside the new source."""
    copy = package_copy(tmp_path)
    frames = copy / "synapse_cli" / "core" / "frames.py"
    frames.write_text(frames.read_text() + "\n# edited\n")
    status, files = report(path=copy)
    assert status == "pure Python (frames.py changed since it was compiled)"
    assert files == {name: "py" for name in compiled.MODULES}


def test_an_install_without_compiled_modules_says_so(tmp_path: Path) -> None:
    """A pure build (no compiler, or SYNAPSE_PURE=1 when it was built) carries no manifest: pure, and why."""
    copy = package_copy(tmp_path)
    (copy / "synapse_cli" / "compiled.crc32").unlink(missing_ok=True)
    for extension in (copy / "synapse_cli").rglob("*.so"):
        extension.unlink()
    status, files = report(path=copy)
    assert status == "pure Python (no compiled modules in this install)"
    assert files == {name: "py" for name in compiled.MODULES}


def test_the_manifest_records_each_source_as_compiled() -> None:
    """What an import checks is what the build wrote: module, size and CRC-32 of the source."""
    line = compiled.manifest_line("synapse_cli.core.frames")
    name, size, crc = line.split(" ")
    assert (name, int(size)) == ("synapse_cli.core.frames", len((PACKAGE / "core" / "frames.py").read_bytes()))
    assert len(crc) == 8 and int(crc, 16) >= 0
    if BUILT:
        assert compiled.MANIFEST.read_text().splitlines() == [compiled.manifest_line(name) for name in compiled.MODULES]


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


@pytest.mark.slow
def test_a_build_with_synapse_pure_is_a_pure_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SYNAPSE_PURE=1 at build time: a py3-none-any wheel of the sources, nothing compiled, no warning."""
    monkeypatch.setenv(compiled.ENV, "1")
    wheel, warnings = run_hook("build_wheel", project_copy(tmp_path), tmp_path / "dist")
    assert warnings == []
    assert wheel.name.endswith("-py3-none-any.whl")
    files = wheel_files(wheel)
    assert "synapse_cli/core/frames.py" in files and "synapse_cli/compiled.py" in files
    assert [name for name in files if name.endswith(".so") or name.endswith(".crc32")] == []


@pytest.mark.slow
def test_a_build_without_a_c_compiler_still_installs_pure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No working C compiler (CC fails): the build says so in one line and the wheel holds the pure package."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.delenv(compiled.ENV, raising=False)
    project = project_copy(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", HOOK, "build_wheel", str(tmp_path / "dist")],
        cwd=project, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("synapse build:")]
    assert len(said) == 1 and said[0].endswith(": pure Python") and "compiling the request path failed" in said[0]
    files = wheel_files(next((tmp_path / "dist").glob("*.whl")))
    assert "synapse_cli/core/session.py" in files
    assert [name for name in files if name.endswith(".so") or name.endswith(".crc32")] == []


@pytest.mark.parametrize("pure", [True, False], ids=["pure", "as-built"])
def test_synapse_serve_says_at_debug_level_which_way_it_runs(pure: bool) -> None:
    """`synapse serve --log-level debug` logs the request path's status once; at info level it says nothing of it."""
    env = {key: value for key, value in os.environ.items() if key != compiled.ENV}
    if pure:
        env[compiled.ENV] = "1"
    as_built = compiled.pure_reason({})  # what a process without SYNAPSE_PURE decides, whatever this one runs
    expected = (
        "pure Python (SYNAPSE_PURE=1)"
        if pure
        else "compiled (mypyc)"
        if as_built is None
        else f"pure Python ({as_built})"
    )
    synapse = str(Path(sys.executable).parent / "synapse")
    for level, wanted in (("debug", [f"request path: {expected}"]), ("info", [])):
        server = subprocess.Popen(
            [synapse, "serve", "--port", "0", "--log-level", level],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        lines: list[str] = []
        try:
            assert server.stderr is not None
            for line in server.stderr:  # up to uvicorn's startup line: the status is logged before it
                lines.append(line)
                if "Application startup complete" in line:
                    break
        finally:
            server.terminate()
            server.communicate(timeout=20)  # reads the rest of stderr and closes it
        said = [line.split("request path: ", 1)[1].strip() for line in lines if "request path: " in line]
        assert [f"request path: {status}" for status in said] == wanted, lines
