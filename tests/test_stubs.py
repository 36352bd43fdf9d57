"""``synapse stubs``: typed Python and TypeScript clients from ``rpc.discover``, checked by mypy/tsc and run."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, TESTS, RunningServer, clean_env, load_app, running_server, serve_process, synapse_executable

from synapse_cli.client.openrpc import read_openrpc
from synapse_cli.client.python_stub import python_stub
from synapse_cli.client.typescript_stub import typescript_stub

TS = TESTS / "ts"

# What tests/apps/stub_usage.py and tests/ts/usage.ts print after calling every function of tests/apps/typed.py.
EXPECTED = {
    "centroid": {"label": "green", "x": 4, "y": 2},
    "count": 2,
    "join": "a-b",
    "join_default": "a b",
    "pair": [1, "x"],
    "refused": -32602,
    "repeat": ["ab", "ab", "ab"],
    "tagged": {"cast": "two", "self": 1},
    "walk": [{"label": None, "x": 1, "y": 2}],
    "xs": [1, 3],
}


def synapse(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``synapse`` command."""
    command = [synapse_executable(), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=clean_env())


@pytest.fixture(scope="module")
def typed() -> Iterator[RunningServer]:
    """A server of tests/apps/typed.py, with a token."""
    with running_server(load_app("typed"), token="s3cret") as running:
        yield running


# -- the generators, on documents --------------------------------------------------------------------


def document(*methods: dict[str, Any], schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenRPC document of ``methods`` (and component schemas)."""
    doc: dict[str, Any] = {"openrpc": "1.3.2", "info": {"title": "t", "version": "1"}, "methods": list(methods)}
    if schemas is not None:
        doc["components"] = {"schemas": schemas}
    return doc


def method(name: str, params: dict[str, Any], result: Any, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """One OpenRPC method with named parameters (``required`` ones marked) and a result schema."""
    listed = [{"name": key, "schema": schema, "required": key in required} for key, schema in params.items()]
    return {"name": name, "params": listed, "result": {"name": "result", "schema": result}}


def test_json_schemas_become_python_and_typescript_types() -> None:
    """Scalars, enums, unions, arrays, tuples, maps and models map to their Python and TypeScript types."""
    params = {
        "n": {"type": "integer"},
        "ratio": {"type": ["number", "null"]},
        "mode": {"enum": ["a", "b"]},
        "flag": {"const": True},
        "tags": {"type": "array", "items": {"type": "string"}},
        "pair": {
            "type": "array",
            "prefixItems": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        },
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "anything": {},
    }
    out = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    doc = document(method("f", params, {"$ref": "#/components/schemas/Out"}, required=("n",)), schemas={"Out": out})
    python = python_stub(doc)
    assert (
        "    async def f(\n        self,\n        n: int,\n        ratio: float | None = _OMIT,\n"
        '        mode: Literal["a", "b"] = _OMIT,\n        flag: Literal[True] = _OMIT,\n'
        "        tags: list[str] = _OMIT,\n        pair: list[int | str] = _OMIT,\n"
        "        counts: dict[str, int] = _OMIT,\n        anything: Any = _OMIT,\n    ) -> Out:\n"
    ) in python
    assert "class Out(TypedDict):\n    ok: bool\n" in python
    typescript = typescript_stub(doc)
    assert (
        '  f(n: number, ratio?: number | null, mode?: "a" | "b", flag?: true, tags?: string[], '
        "pair?: [number, string], counts?: { [key: string]: number }, anything?: unknown): Promise<Out> {\n"
    ) in typescript
    assert "export interface Out {\n  ok: boolean;\n}\n" in typescript


def test_models_are_declared_once_and_recursion_ends() -> None:
    """A model used inline and by $ref is one type; a recursive model refers to itself by name."""
    node = {
        "title": "Node",
        "type": "object",
        "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
    }
    doc = document(
        method("tree", {"root": {"$ref": "#/components/schemas/Node"}}, node, required=("root",)),
        schemas={"Node": node},
    )
    interface = read_openrpc(doc)
    assert list(interface.types) == ["Node"]
    assert "class Node(TypedDict):\n    kids: NotRequired[list[Node]]\n" in python_stub(doc)
    assert "    async def tree(self, root: Node) -> Node:\n" in python_stub(doc)
    assert "export interface Node {\n  kids?: Node[];\n}\n" in typescript_stub(doc)


def test_a_required_parameter_after_an_optional_one() -> None:
    """Python makes it keyword-only (after ``*``); TypeScript takes it as ``T | undefined`` in its place."""
    doc = document(method("f", {"a": {"type": "integer"}, "b": {"type": "string"}}, {}, required=("b",)))
    assert "    async def f(self, a: int = _OMIT, *, b: str) -> Any:\n" in python_stub(doc)
    assert "  f(a: number | undefined, b: string): Promise<unknown> {\n" in typescript_stub(doc)


def test_a_stream_with_a_parameter_named_like_client_streams_own_goes_by_position(tmp_path: Path) -> None:
    """``func`` and ``resume`` are Client.stream's own keywords: such a stream's arguments go by position, trailing
    ones left out may be omitted, a gap before a given one is a TypeError naming the rule."""
    doc = document({**method("s", {"resume": {"type": "boolean"}, "n": {"type": "integer"}}, {}), "x-stream": True})
    text = python_stub(doc)
    assert '        stream = self.client.stream("s", *_leading([resume, n]))\n' in text
    (tmp_path / "positional_stub.py").write_text(text)
    check = (
        "import positional_stub as s\n"
        "print(s._leading([1, s._OMIT]), s._leading([s._OMIT]))\n"
        "try:\n    s._leading([s._OMIT, 2])\nexcept TypeError as exc:\n    print(exc)\n"
    )
    ran = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stderr) == (0, "")
    rule = "this stream takes its arguments by position: give every one before the last you give"
    assert ran.stdout == f"[1] []\n{rule}\n"


HOSTILE = 'x"""\n\nimport os; os.system("echo pwned") #*/ console.log("pwned"); /*\r\u2028\x00'


def hostile_document() -> dict[str, Any]:
    """A document whose every name and description tries to break out of where a stub puts it."""
    model = {
        "type": "object",
        "description": HOSTILE,
        "properties": {HOSTILE: {"type": "string", "description": HOSTILE}},
    }
    return {
        "info": {"title": HOSTILE, "version": HOSTILE},
        "methods": [
            {"name": HOSTILE, "description": HOSTILE, "params": [{"name": HOSTILE, "description": HOSTILE,
             "schema": {"$ref": "#/components/schemas/M"}, "required": True}],
             "result": {"name": "r", "schema": {"enum": [HOSTILE, 1]}}},
            {"name": "class", "params": [{"name": "from", "schema": {"type": "integer"}, "required": True}],
             "result": {"name": "r", "schema": {"$ref": "#/components/schemas/" + "M"}}},
        ],
        "components": {"schemas": {"M": model, "import": {"type": "string", "description": HOSTILE}}},
    }  # fmt: skip


def test_hostile_names_and_descriptions_stay_text_in_python() -> None:
    """Names become identifiers and descriptions escaped text: the module's statements are only the stub's own."""
    text = python_stub(hostile_document())
    tree = ast.parse(text)
    calls = [
        node.func for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    ]
    assert "system" not in {call.attr for call in calls}
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
    }
    assert imported == {
        "annotations",
        "sys",
        "Any",
        "Literal",
        "NotRequired",
        "TypeAlias",
        "TypedDict",
        "cast",
        "synapse_cli",
    }
    assert [n.name for n in tree.body if isinstance(n, ast.ClassDef)] == ["API"]
    names = [node.name for node in ast.walk(tree) if isinstance(node, ast.AsyncFunctionDef)]
    assert names == [
        "__aenter__",
        "__aexit__",
        "x_____import_os__os_system__echo_pwned_______console_log__pwned_________",
        "class_",
    ]
    assert "    async def class_(self, from_: int) -> M:\n" in text
    assert 'result = await self.client.request("class", _given({"from": from_}))' in text


def test_unreadable_documents_are_refused_with_what_is_wrong() -> None:
    """Not an object, no methods list, a nameless method, a $ref to nowhere, a method twice: ValueError, one line."""
    cases = [
        ([], "the document is not a JSON object"),
        ({"methods": 7}, 'the document has no "methods" list'),
        ({"methods": [{"params": []}]}, "method #1 has no name"),
        (document(method("f", {"a": {"$ref": "#/components/schemas/Gone"}}, {})),
         "$ref '#/components/schemas/Gone' points to no schema of the document's components"),
        (document(method("f", {}, {}), method("f", {}, {})), "method 'f' is described twice"),
    ]  # fmt: skip
    for doc, message in cases:
        for generate in (python_stub, typescript_stub):
            with pytest.raises(ValueError) as caught:
                generate(doc)
            assert str(caught.value) == message


# -- Python: mypy --strict, then calls to a real server ---------------------------------------------


def mypy(directory: Path, *files: str) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``files`` of ``directory`` (its own cache, no config of ours)."""
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(directory / ".mypy_cache"), *files]
    return subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_python_stub_from_a_server_passes_mypy_strict_and_calls_it(
    typed: RunningServer, tmp_path: Path, dialect: str
) -> None:
    """``synapse stubs --python`` from a running server (token, either dialect): mypy --strict passes on it and on
    a program using it (a wrong argument type is a mypy error), and the program gets every result."""
    options = ["--jsonrpc"] if dialect == "jsonrpc" else []
    made = synapse(
        "stubs", "--python", str(tmp_path / "typed_stub.py"), "--url", typed.url, "--token", "s3cret", *options
    )
    assert (made.returncode, made.stdout, made.stderr) == (0, "", "")
    shutil.copy(APPS / "stub_usage.py", tmp_path)
    checked = mypy(tmp_path, "typed_stub.py", "stub_usage.py")
    assert checked.returncode == 0, checked.stdout
    ran = subprocess.run([sys.executable, "stub_usage.py", typed.url, dialect, "s3cret"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == EXPECTED


def test_mypy_catches_a_wrong_argument_through_the_stub(tmp_path: Path) -> None:
    """The stub's types are real: passing a string where the model wants a number fails mypy --strict."""
    (tmp_path / "typed_stub.py").write_text(python_stub(load_app("typed").openrpc()))
    (tmp_path / "wrong.py").write_text(
        "from typed_stub import API\n\n\nasync def f(api: API) -> int:\n"
        '    return await api.count_shapes({"points": [{"x": "far"}]})\n'
    )
    checked = mypy(tmp_path, "typed_stub.py", "wrong.py")
    assert checked.returncode == 1
    assert (
        'wrong.py:5: error: Incompatible types (expression has type "str", TypedDict item "x" has type "float")'
        in checked.stdout
    )


def test_hostile_python_stub_passes_mypy_strict(tmp_path: Path) -> None:
    """Even from a hostile document, the Python stub type-checks, and importing it runs nothing the document wrote."""
    (tmp_path / "hostile.py").write_text(python_stub(hostile_document()))
    checked = mypy(tmp_path, "hostile.py")
    assert checked.returncode == 0, checked.stdout
    imported = subprocess.run([sys.executable, "-c", "import hostile; print('imported')"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (imported.returncode, imported.stdout, imported.stderr) == (0, "imported\n", "")


def test_stub_from_the_app_file_equals_the_one_from_its_server(tmp_path: Path) -> None:
    """``synapse stubs app.py`` (loaded as ``synapse serve`` loads it) writes what ``synapse serve app.py`` gives."""
    from_file = synapse(
        "stubs", str(APPS / "typed.py"), "--python", str(tmp_path / "a.py"), "--typescript", str(tmp_path / "a.ts")
    )
    assert (from_file.returncode, from_file.stderr) == (0, "")
    with serve_process(app=str(APPS / "typed.py")) as served:
        from_server = synapse(
            "stubs", "--python", str(tmp_path / "b.py"), "--typescript", str(tmp_path / "b.ts"), "--url", served.url
        )
    assert (from_server.returncode, from_server.stderr) == (0, "")
    assert (tmp_path / "a.py").read_text().replace("from a import", "") == (tmp_path / "b.py").read_text().replace(
        "from b import", ""
    )
    assert (tmp_path / "a.ts").read_text().replace('"./a.js"', "") == (tmp_path / "b.ts").read_text().replace(
        '"./b.js"', ""
    )


def test_stubs_to_stdout() -> None:
    """``--python -`` writes the module to stdout (and nothing else)."""
    result = synapse("stubs", str(APPS / "typed.py"), "--python", "-")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == python_stub(load_app("typed").openrpc(version=_version()), module="stubs")


def _version() -> str:
    from synapse_cli import __version__

    return __version__


# -- TypeScript: tsc --strict, then a Node program calling a real server ------------------------------


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """typescript, ws and @types/ws from tests/ts/package-lock.json (``npm ci``), installed once into a cache dir."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("node and npm are not installed: the TypeScript stub tests need them (tests/ts/package.json)")
    manifest, lock = (TS / "package.json").read_bytes(), (TS / "package-lock.json").read_bytes()
    key = hashlib.sha256(manifest + lock).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "synapse-tests" / f"ts-{key}"
    if not (cache / "node_modules" / ".bin" / "tsc").exists():
        staging = cache.with_name(f"{cache.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copy(TS / "package.json", staging)
        shutil.copy(TS / "package-lock.json", staging)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--silent"], cwd=staging,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, f"npm ci failed in {staging}:\n{done.stdout}{done.stderr}"
        with contextlib.suppress(OSError):  # another session got there first: keep its copy
            staging.rename(cache)
        shutil.rmtree(staging, ignore_errors=True)
    return cache / "node_modules"


def tsc(directory: Path, node_modules: Path, files: list[str], *, types: list[str]) -> subprocess.CompletedProcess[str]:
    """``tsc --strict`` over ``files`` of ``directory`` (ES2022 modules for Node, only the ``types`` packages)."""
    options = {"strict": True, "target": "es2022", "lib": ["es2022"], "module": "nodenext",
               "moduleResolution": "nodenext", "outDir": "out", "noEmitOnError": True, "types": types}  # fmt: skip
    (directory / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": files}))
    (directory / "package.json").write_text('{"type": "module"}\n')
    with contextlib.suppress(FileExistsError):
        (directory / "node_modules").symlink_to(node_modules, target_is_directory=True)
    return subprocess.run([str(node_modules / ".bin" / "tsc"), "-p", str(directory)], cwd=directory,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def node(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``node`` on a compiled program of ``directory``."""
    node_path = shutil.which("node")
    assert node_path is not None
    return subprocess.run([node_path, *args], cwd=directory, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dialect", ["native", "jsonrpc"])
def test_typescript_stub_passes_tsc_strict_and_a_node_program_calls_the_server(
    typed: RunningServer, tmp_path: Path, node_modules: Path, dialect: str
) -> None:
    """``synapse stubs --typescript``: tsc --strict passes on the stub alone (ECMAScript only, no DOM or Node types)
    and on a Node program using it (a wrong argument type is a tsc error), which gets every result over ws."""
    made = synapse("stubs", "--typescript", str(tmp_path / "typed_stub.ts"), "--url", typed.url, "--token", "s3cret")
    assert (made.returncode, made.stdout, made.stderr) == (0, "", "")
    alone = tsc(tmp_path, node_modules, ["typed_stub.ts"], types=[])
    assert alone.returncode == 0, alone.stdout
    shutil.copy(TS / "usage.ts", tmp_path)
    compiled = tsc(tmp_path, node_modules, ["typed_stub.ts", "usage.ts"], types=["node"])
    assert compiled.returncode == 0, compiled.stdout
    ran = node(tmp_path, "out/usage.js", typed.url, dialect, "s3cret")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {**EXPECTED, "first": [{"label": None, "x": 7, "y": 0}], "nothing": None}


def test_typescript_stub_refused_by_a_wrong_token_rejects_with_connect_error(
    typed: RunningServer, tmp_path: Path, node_modules: Path
) -> None:
    """A wrong token: the server refuses the handshake and ``API.connect`` rejects with ConnectError."""
    (tmp_path / "typed_stub.ts").write_text(typescript_stub(load_app("typed").openrpc()))
    shutil.copy(TS / "usage.ts", tmp_path)
    assert tsc(tmp_path, node_modules, ["typed_stub.ts", "usage.ts"], types=["node"]).returncode == 0
    ran = node(tmp_path, "out/usage.js", typed.url, "native", "wrong")
    assert ran.returncode == 1
    assert f"ConnectError: cannot connect to {typed.url} (refused, or the handshake was rejected)" in ran.stderr


def test_hostile_typescript_stub_passes_tsc_strict(tmp_path: Path, node_modules: Path) -> None:
    """Even from a hostile document, the TypeScript stub compiles, and loading it runs nothing the document wrote."""
    (tmp_path / "hostile.ts").write_text(typescript_stub(hostile_document()))
    compiled = tsc(tmp_path, node_modules, ["hostile.ts"], types=[])
    assert compiled.returncode == 0, compiled.stdout
    loaded = node(tmp_path, "--input-type=module", "-e", 'await import("./out/hostile.js"); console.log("loaded")')
    assert (loaded.returncode, loaded.stdout, loaded.stderr) == (0, "loaded\n", "")


# -- bad input -----------------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def foreign_server(mode: str) -> Iterator[str]:
    """tests/apps/foreign_jsonrpc.py in ``mode``: its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(APPS / "foreign_jsonrpc.py"), str(port), mode],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        process.kill()
        process.wait(10)
        assert process.stdout is not None
        process.stdout.close()


def test_stubs_needs_an_output() -> None:
    """No --python or --typescript: exit 2, saying what to give."""
    result = synapse("stubs", str(APPS / "typed.py"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "synapse: error: say what to write: --python FILE and/or --typescript FILE\n"


def test_stubs_cannot_write_both_to_stdout() -> None:
    """--python - --typescript -: exit 2 (one stdout)."""
    result = synapse("stubs", str(APPS / "typed.py"), "--python", "-", "--typescript", "-")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "synapse: error: only one of --python and --typescript can write to stdout (-)\n"


def test_stubs_to_a_path_that_cannot_be_written_exits_2_before_connecting(tmp_path: Path) -> None:
    """An output in a directory that does not exist: exit 2 naming it, before any connection (the URL is dead)."""
    target = tmp_path / "missing" / "out.py"
    result = synapse("stubs", "--python", str(target), "--url", f"ws://127.0.0.1:{free_port()}/ws")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"synapse: error: cannot write {target}: No such file or directory\n"


def test_stubs_of_an_unreachable_server_exits_3(tmp_path: Path) -> None:
    """Nothing listening: exit 3 with the connection error, and no file written."""
    url = f"ws://127.0.0.1:{free_port()}/ws"
    result = synapse("stubs", "--python", str(tmp_path / "out.py"), "--url", url)
    assert (result.returncode, result.stdout) == (3, "")
    assert result.stderr.startswith(f"synapse: error: cannot connect to {url}: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out.py").exists()


def test_stubs_with_a_wrong_token_exits_3(typed: RunningServer, tmp_path: Path) -> None:
    """The server refuses the handshake (401): exit 3, the status shown."""
    result = synapse("stubs", "--python", str(tmp_path / "out.py"), "--url", typed.url, "--token", "wrong")
    assert (result.returncode, result.stdout) == (3, "")
    assert "401" in result.stderr and result.stderr.startswith("synapse: error: ")


@pytest.mark.parametrize("jsonrpc", [False, True])
def test_stubs_of_a_server_without_rpc_discover_exits_1(tmp_path: Path, jsonrpc: bool) -> None:
    """A JSON-RPC server that answers rpc.discover with -32601: exit 1, saying it does not describe its functions."""
    with foreign_server("nodiscover") as url:
        result = synapse(
            "stubs", "--python", str(tmp_path / "out.py"), "--url", url, *(["--jsonrpc"] if jsonrpc else [])
        )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"synapse: error: the server at {url} does not describe its functions "
        "(no rpc.discover: Method not found) (code -32601)\n"
    )
    assert not (tmp_path / "out.py").exists()


def test_stubs_of_a_document_that_is_no_openrpc_exits_1(tmp_path: Path) -> None:
    """rpc.discover answers something that is not an OpenRPC document: exit 1, saying what is wrong."""
    with foreign_server("baddoc") as url:
        result = synapse("stubs", "--typescript", str(tmp_path / "out.ts"), "--url", url, "--jsonrpc")
    assert (result.returncode, result.stdout) == (1, "")
    why = 'the document has no "methods" list'
    assert result.stderr == f"synapse: error: cannot make stubs from the rpc.discover document of {url}: {why}\n"


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            "broken.py",
            "error while importing {path}: RuntimeError: this module is broken on purpose (broken.py, line 3)",
        ),
        ("missing.py", "no such file: {path}"),
        ("no_registry.py", "{path}: found no Registry"),
    ],
)
def test_stubs_of_an_app_that_does_not_load_exits_2(tmp_path: Path, app: str, message: str) -> None:
    """An app file that does not import, is missing or has no Registry: exit 2 with the reason, as serve says it."""
    path = str(APPS / app)
    result = synapse("stubs", path, "--python", str(tmp_path / "out.py"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "synapse: error: " + message.format(path=path) + "\n"
    assert not (tmp_path / "out.py").exists()


def test_stubs_of_an_app_and_a_url_is_a_usage_error(tmp_path: Path) -> None:
    """An APP and --url together: exit 2 (which one?); SYNAPSE_URL in the environment does not count."""
    result = synapse(
        "stubs", str(APPS / "typed.py"), "--url", "ws://127.0.0.1:1/ws", "--python", str(tmp_path / "a.py")
    )
    assert (result.returncode, result.stderr) == (2, "synapse: error: give an APP or --url, not both\n")
    env = {**clean_env(), "SYNAPSE_URL": "ws://127.0.0.1:1/ws"}
    command = [synapse_executable(), "stubs", str(APPS / "typed.py"), "--python", str(tmp_path / "b.py")]
    with_env = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert (with_env.returncode, with_env.stderr) == (0, "")
    assert (tmp_path / "b.py").read_text().startswith('"""Typed calls to synapse ')


def test_documented_stubs_flow(tmp_path: Path, node_modules: Path) -> None:
    """docs/python-client.md: `synapse stubs myfuncs.py` as shown; its client.py passes mypy --strict and prints
    5.0 and 3, its client.ts passes tsc --strict and prints 5, against myfuncs.py served."""
    from test_examples import doc_blocks

    (myfuncs,) = [block for block in doc_blocks("python") if block.startswith("# myfuncs.py")]
    (tmp_path / "myfuncs.py").write_text(myfuncs)
    (client,) = [block for block in doc_blocks("python") if block.startswith("# client.py, using api.py")]
    (typescript,) = [block for block in doc_blocks("ts") if block.startswith("// client.ts, using api.ts")]
    console = next(block for block in doc_blocks("console") if "$ synapse stubs myfuncs.py" in block)
    command = shlex.split(console.splitlines()[0][2:])
    assert command == ["synapse", "stubs", "myfuncs.py", "--python", "api.py", "--typescript", "api.ts"]
    made = subprocess.run([synapse_executable(), *command[1:]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=clean_env())  # fmt: skip
    assert (made.returncode, made.stdout, made.stderr) == (0, "", "")
    with serve_process(app=str(tmp_path / "myfuncs.py")) as served:
        (tmp_path / "client.py").write_text(client.replace("ws://127.0.0.1:8001/ws", served.url))
        checked = mypy(tmp_path, "api.py", "client.py")
        assert checked.returncode == 0, checked.stdout
        ran = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert (ran.returncode, ran.stdout, ran.stderr) == (0, "5.0\n3\n", "")
        (tmp_path / "client.ts").write_text(typescript.replace("ws://127.0.0.1:8001/ws", served.url))
        compiled = tsc(tmp_path, node_modules, ["api.ts", "client.ts"], types=["node"])
        assert compiled.returncode == 0, compiled.stdout
        done = node(tmp_path, "out/client.js")
        assert (done.returncode, done.stdout, done.stderr) == (0, "5\n", "")


NOTIFIED = """\
import WebSocket from "ws";
import { API } from "./context_stub.js";

const notes: unknown[] = [];
const onNotification = (method: string, params: unknown) => notes.push([method, params]);
const api = await API.connect(process.argv[2], { WebSocket, onNotification });
const done = await api.progress(2);
const asked = await api.ask("confirm", []);
api.close();
console.log(JSON.stringify({ done, notes, asked }));
"""


def test_typescript_stub_gets_notifications_and_refuses_server_calls(tmp_path: Path, node_modules: Path) -> None:
    """The TypeScript client hands ctx.notify's notifications to onNotification, and answers a ctx.call with
    -32601 (it exposes no function), so the server's call fails at once instead of timing out."""
    with running_server(load_app("context_app")) as served:
        made = synapse("stubs", "--typescript", str(tmp_path / "context_stub.ts"), "--url", served.url)
        assert (made.returncode, made.stderr) == (0, "")
        (tmp_path / "main.ts").write_text(NOTIFIED)
        compiled = tsc(tmp_path, node_modules, ["context_stub.ts", "main.ts"], types=["node"])
        assert compiled.returncode == 0, compiled.stdout
        start = time.monotonic()
        ran = node(tmp_path, "out/main.js", served.url)
        assert ran.returncode == 0, ran.stderr
        assert time.monotonic() - start < 2.0  # not the 2 s timeout of ask
    result = json.loads(ran.stdout)
    assert result["done"] == "done"
    assert result["notes"] == [["progress", {"step": 0, "of": 2}], ["progress", {"step": 1, "of": 2}]]
    assert result["asked"]["raised"] == "RPCError" and "function not found: confirm" in result["asked"]["message"]
