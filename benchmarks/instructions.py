"""Instructions per request through the server's WebSocket protocol, counted by callgrind: repeatable on a busy machine.

calls/s move with whatever else the machine runs; the number of CPU instructions a piece of code executes
does not. This script drives `synapse serve`'s protocol class (what uvicorn's `Config(ws=...)` gets) in
one process, with a transport that only counts what it is given: a handshake, then --requests requests
arriving in reads of --per-read frames each (masked, as a client sends them), every reply written. The
whole Python path a request takes on the server runs: frame split and unmask, UTF-8, the session (decode,
route, bind, run `add_numbers`, encode), metrics, reply framing, the end-of-read write. Sockets and the
event loop's polling do not (they cost the same for any server in Python on uvloop).

`valgrind --tool=callgrind` counts the instructions of two runs, one that only builds the requests and one
that also serves them; their difference over --requests is the cost of one request. With --baseline DIR
(the directory holding an older checkout's `synapse_cli`, from issue 10 on: it needs
`transport.websocket_protocol`) the same is counted for that code first, and this checkout's ratio to it
printed: < 1 is cheaper now.

    python benchmarks/instructions.py [--shapes seed jsonrpc] [--per-read 14 1] [--requests 10000]
        [--baseline /tmp/before]

Needs valgrind (Debian package `valgrind`); each count takes 20-60 s, as the code runs about 50x slower
under callgrind. `--per-read 1` is the sequential case (one request per read, one write per reply).
`--loop uvloop` (the default) runs the protocol under uvloop, as `synapse serve` does; `--loop asyncio`
under asyncio's own event loop, whose Python then counts too (issue 10's and 19's figures were taken so).
A checkout built with its compiled modules counts compiled: `SYNAPSE_PURE=1` counts its Python.

`--steps` counts the compiled request path one step at a time: this checkout's Python (SYNAPSE_PURE=1),
then copies of it built with mypyc (`setup.py build_ext --inplace`, in a temporary directory) compiling
the modules of `synapse_cli/compiled.py` cumulatively, group by group (frames; message decode and reply
encode; routing, binding and the session; the WebSocket protocol class; metrics): what each step saves.
Each build takes 20-90 s and needs mypy (the lint extra) in this interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

FORMATS = {
    "seed": '{"id": "%d", "op": "call", "func": "add_numbers", "args": [1, 2]}',
    "jsonrpc": '{"jsonrpc": "2.0", "id": %d, "method": "add_numbers", "params": [1, 2]}',
}
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class CountingTransport(asyncio.Transport):
    """A transport that keeps nothing: it counts the bytes written to it, and whether the protocol reads."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default


async def serve(shape: str, requests: int, per_read: int, build_only: bool) -> None:
    """The measured work (in the child process): serve ``requests`` through one protocol instance."""
    import uvicorn
    from uvicorn.server import ServerState

    try:  # the package's layout since the subpackages (issue 21)
        from synapse_cli.core.frames import OP_TEXT, encode_frame
        from synapse_cli.server.app import create_app
        from synapse_cli.server.builtins import default_registry
        from synapse_cli.server.transport import websocket_protocol
    except ImportError:  # a --baseline checkout from before it: the same modules, side by side
        from synapse_cli.builtins import default_registry  # type: ignore[no-redef]
        from synapse_cli.frames import OP_TEXT, encode_frame  # type: ignore[no-redef]
        from synapse_cli.transport import websocket_protocol  # type: ignore[no-redef]

        from synapse_cli.server import create_app  # type: ignore[no-redef]

    app = create_app(default_registry())
    protocol = websocket_protocol(app.state.synapse)(config=uvicorn.Config(app), server_state=ServerState())  # type: ignore[call-arg]
    transport = CountingTransport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    await asyncio.sleep(0)
    frames = [encode_frame(OP_TEXT, (FORMATS[shape] % i).encode(), mask=True) for i in range(requests)]
    reads = [b"".join(frames[i : i + per_read]) for i in range(0, requests, per_read)]
    gc.collect()
    if build_only:
        return
    before = transport.written
    for data in reads:
        protocol.data_received(data)
        await asyncio.sleep(0)
        while not transport.reading:  # the rest of the read waits for its turns, as on a socket
            await asyncio.sleep(0)
    await asyncio.sleep(0)
    if transport.written - before < 30 * requests:
        raise SystemExit(f"only {transport.written - before} bytes of replies for {requests} requests")


# --steps: the modules of compiled.MODULES, compiled cumulatively in these groups (each a step).
STEPS = (
    ("frames", ("core.frames",)),
    ("+ decode, encode", ("core.protocol", "core.encoding", "core.outgoing")),
    ("+ route, bind, session", ("core.functions", "core.registry", "core.session")),
    ("+ protocol class", ("server.connection", "server.item_output", "server.transport")),
    ("+ metrics", ("server.metrics",)),
)
PURE = {"SYNAPSE_PURE": "1"}


def environ(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without SYNAPSE_PURE, then ``extra``."""
    return {**{key: value for key, value in os.environ.items() if key != "SYNAPSE_PURE"}, **extra}


def build_step(modules: list[str], directory: Path) -> Path:
    """A copy of this checkout in ``directory`` with only ``modules`` compiled (built in place)."""
    root = HERE.parent
    shutil.copytree(
        root / "synapse_cli", directory / "synapse_cli", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(root / name, directory / name)
    (directory / "synapse_cli" / "compiled.crc32").unlink(missing_ok=True)
    selector = directory / "synapse_cli" / "compiled.py"
    text = selector.read_text()
    start, end = text.index("MODULES = ("), text.index(")\n", text.index("MODULES = ("))
    listed = "".join(f'    "synapse_cli.{module}",\n' for module in modules)
    selector.write_text(text[:start] + "MODULES = (\n" + listed + text[end:])
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=directory,
        env=environ({}),
        capture_output=True,
        text=True,
    )
    if built.returncode != 0 or not (directory / "synapse_cli" / "compiled.crc32").exists():
        raise SystemExit(f"building {modules} failed: {(built.stdout + built.stderr)[-800:]}")
    return directory


def count(
    code: Path, shape: str, requests: int, per_read: int, build_only: bool, loop: str, env: dict[str, str]
) -> int:
    """Instructions callgrind counts for one child run."""
    command = [sys.executable, __file__, "--child", str(code), shape, str(requests), str(per_read), loop]
    if build_only:
        command.append("build-only")
    result = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        text=True,
        check=False,
        env=environ(env),
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({result.returncode}): {result.stderr[-500:]}")
    return int(found.group(1))


def per_request(code: Path, shape: str, requests: int, per_read: int, loop: str, env: dict[str, str]) -> float:
    served = count(code, shape, requests, per_read, False, loop, env)
    built = count(code, shape, requests, per_read, True, loop, env)
    return (served - built) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(FORMATS), default=["seed", "jsonrpc"])
    parser.add_argument("--per-read", nargs="+", type=int, default=[14, 1], help="frames per read (default: 14 1)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--baseline", type=Path, help="an older checkout: the directory holding its synapse_cli")
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the event loop: uvloop, as `synapse serve` runs (default), or asyncio's own, in Python",
    )
    parser.add_argument("--steps", action="store_true", help="count the compiled path step by step (see above)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions.py needs valgrind (Debian: apt-get install valgrind)")
    codes: list[tuple[str, Path, dict[str, str]]] = []
    if args.baseline is not None:
        codes.append(("--baseline code", args.baseline.resolve(), {}))
    with tempfile.TemporaryDirectory(prefix="synapse-steps-") as scratch:
        if args.steps:
            codes.append(("pure Python", HERE.parent, PURE))
            modules: list[str] = []
            grouped = [f"synapse_cli.{module}" for _, group in STEPS for module in group]
            selector = runpy.run_path(str(HERE.parent / "synapse_cli" / "compiled.py"))  # as setup.py reads it
            assert sorted(grouped) == sorted(selector["MODULES"]), "STEPS must name each of compiled.MODULES once"
            for index, (name, group) in enumerate(STEPS):
                modules += group
                print(f"building step {index + 1}/{len(STEPS)} ({name}) ...", file=sys.stderr, flush=True)
                codes.append((name, build_step(modules, Path(scratch) / f"step{index}"), {}))
        else:
            codes.append(("synapse (this checkout)", HERE.parent, {}))
        print(
            f"instructions per request, callgrind, {args.requests:,} requests per count, {args.loop} event loop; "
            "ratio: to the first row"
        )
        print(f"{'shape':<9}{'frames/read':>12}  {'code':<26}{'instructions':>14}{'ratio':>8}")
        for shape in args.shapes:
            for per_read in args.per_read:
                reference = None
                for name, code, env in codes:
                    value = per_request(code, shape, args.requests, per_read, args.loop, env)
                    reference = reference or value
                    ratio = f"{value / reference:.3f}" if len(codes) > 1 else "-"
                    print(f"{shape:<9}{per_read:>12}  {name:<26}{value:>14,.0f}{ratio:>8}", flush=True)


def child(argv: list[str]) -> None:
    code, shape, requests, per_read, loop = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    sys.path.insert(0, code)
    os.chdir(code)
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(shape, requests, per_read, build_only=len(argv) > 5))
    else:
        asyncio.run(serve(shape, requests, per_read, build_only=len(argv) > 5))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
