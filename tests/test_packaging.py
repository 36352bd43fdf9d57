"""The package as pip and PyPI see it: the sdist carries the whole test suite, and builds print no warnings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs a setuptools PEP 517 hook (what pip and `python -m build` call) and reports the warnings it raised:
# pip shows those even with --quiet, as the banner of a first `make serve`.
HOOK = """
import json, sys, warnings
import setuptools.build_meta as backend
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    name = getattr(backend, sys.argv[1])(sys.argv[2])
print(json.dumps({"name": name, "warnings": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def project_copy(tmp_path: Path) -> Path:
    """The project's files without version control, venvs, caches or build output (builds write into the tree)."""
    target = tmp_path / "project"
    ignore = shutil.ignore_patterns(
        ".git", ".venv*", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "build", "dist", "node_modules",
        "*.so", "compiled.crc32",  # what an in-place build compiled: a clone has none
    )  # fmt: skip
    shutil.copytree(ROOT, target, ignore=ignore)
    return target


def run_hook(hook: str, project: Path, out: Path) -> tuple[Path, list[str]]:
    """Run ``setuptools.build_meta.<hook>(out)`` in ``project``: the file built and the warnings raised."""
    out.mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", HOOK, hook, str(out)], cwd=project, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return out / report["name"], report["warnings"]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist of this project, built from a clean copy, and unpacked: the directory it unpacks to."""
    tmp_path = tmp_path_factory.mktemp("sdist")
    archive, warnings = run_hook("build_sdist", project_copy(tmp_path), tmp_path / "dist")
    assert warnings == []
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    return unpacked


@pytest.mark.slow
def test_sdist_ships_the_whole_test_suite(sdist: Path) -> None:
    """Every file of tests/ (conftest.py and the apps included), examples/, docs/ and mkdocs.yml is in the sdist."""
    for folder in ("tests", "examples", "docs"):
        expected = {
            path.relative_to(ROOT).as_posix()
            for path in (ROOT / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts
        }
        shipped = {path.relative_to(sdist).as_posix() for path in (sdist / folder).rglob("*") if path.is_file()}
        assert expected - shipped == set()
    assert (sdist / "tests" / "conftest.py").is_file() and (sdist / "tests" / "apps" / "pkg" / "rpc.py").is_file()
    assert (sdist / "mkdocs.yml").read_text() == (ROOT / "mkdocs.yml").read_text()  # test_examples.py reads its nav


@pytest.mark.slow
def test_tests_run_from_the_unpacked_sdist(sdist: Path) -> None:
    """pytest in the unpacked sdist runs tests that need conftest.py, tests/apps and examples/ (its own code)."""
    tests = [
        "tests/test_runner.py::test_load_from_file_path",
        "tests/test_runner.py::test_load_module_attr",
        "tests/test_examples.py::test_functions_example_serves_every_kind",
        "tests/test_protocol.py",
    ]
    check = "import synapse_cli, sys; assert synapse_cli.__file__.startswith(sys.argv[1]), synapse_cli.__file__"
    subprocess.run([sys.executable, "-c", check, str(sdist)], cwd=sdist, check=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=sdist, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " failed" not in done.stdout and " error" not in done.stdout


def project_text_files() -> dict[str, str]:
    """Every text file of the project (not version control, venvs, caches or build output), by path."""
    skip = {
        ".git",
        ".venv",
        "node_modules",
        "__pycache__",
        "build",
        "dist",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
    }
    files = {}
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in skip and not d.endswith(".egg-info")]
        for name in names:
            path = Path(directory, name)
            try:
                files[path.relative_to(ROOT).as_posix()] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    return files


def test_the_repository_stands_alone() -> None:
    """No file points outside the repository; the README links CONTRIBUTING.md, which exists."""
    outside = "../" + "shared"  # spelled in two parts, so that this file does not match itself
    assert [name for name, text in project_text_files().items() if outside in text] == []
    assert "[CONTRIBUTING.md](CONTRIBUTING.md)" in (ROOT / "README.md").read_text()
    assert (ROOT / "CONTRIBUTING.md").read_text().startswith("# Contributing to synapse\n")


@pytest.mark.slow
def test_sdist_metadata_and_contributing(sdist: Path) -> None:
    """The long description PyPI shows (the README) names nothing outside the package; CONTRIBUTING.md ships."""
    metadata = (sdist / "PKG-INFO").read_text()
    assert "WebSocket RPC in one command" in metadata and "../" + "shared" not in metadata
    assert (sdist / "CONTRIBUTING.md").read_text() == (ROOT / "CONTRIBUTING.md").read_text()


@pytest.mark.slow
def test_editable_install_prints_no_warning_banner(tmp_path: Path) -> None:
    """The editable build that `make serve` and `make test` run (pip install -e .) raises no warning."""
    wheel, warnings = run_hook("build_editable", project_copy(tmp_path), tmp_path / "dist")
    assert wheel.name.endswith(".whl")
    assert warnings == []
