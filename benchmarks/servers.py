"""synapse serve against references, with the messages users send, measured by an independent generator in one run.

Servers, all up at once and pinned to core 0 where the OS allows:
  * bare Starlette + orjson (benchmarks/reference/bare_starlette.py) — the reference for the native shapes;
  * raw websockets + orjson (benchmarks/reference/raw_websockets.py) — informational, three-key shape only;
  * npm rpc-websockets (benchmarks/node/rpc_server.js, Node) — the reference for JSON-RPC 2.0;
  * synapse serve (full validation, per-call concurrency, metrics);
  * a C floor (benchmarks/reference/limit_server.c, built with gcc at run time, left out without it) in the
    seed and JSON-RPC comparisons: one thread on epoll, the framing and an id copied into a fixed reply, no
    JSON parse — not a server, what is left of a call on one core.
Generator: Node `ws` (benchmarks/node/pipelined.js, pinned to core 1), add_numbers(1, 2) in three shapes:
  * seed:      {"id": "17", "op": "call", "func": "add_numbers", "args": [1, 2]}, string ids "1", "2", ...
               (the seed's canonical request): synapse vs bare Starlette, and the C floor;
  * jsonrpc:   {"jsonrpc": "2.0", "id": 17, "method": "add_numbers", "params": [1, 2]}, number ids:
               synapse vs rpc-websockets, and the C floor;
  * three-key: {"func": "add_numbers", "args": [1, 2], "id": 17}, number ids — the shape of the figures in
               benchmarks/README.md before issue 10, kept so they stay comparable: synapse vs bare Starlette
               and raw websockets.
Loads: pipelined 8 connections x 128 in flight (issue 10's figures) and 8 x 16 (the earlier figures), and
sequential 1 x 1 (latency: µs per call = 1 / calls per second). The three-key shape runs 8 x 16 and 1 x 1.

Every reply is checked (a result, no error, an id of the type sent); a server that answers with errors
stops the run. Rounds are interleaved (every shape, load and server once per round, the servers of one
comparison back to back) and the table shows medians of --repeat rounds, the ratio of the medians to the
comparison's reference, the range of the per-round ratios, and the CPU share of the server (its core) and of
the generator during the measured seconds: a generator near 1.00 while the server is not is measuring itself,
and a server well under 1.00 while the generator is too shared its core with something else. Calls per
second of the server's CPU time (and their ratio) are what each call costs the server whoever else runs on
the machine: read them when the CPU shares show that the machine was busy.

With --generator raw the load comes from benchmarks/rawload.py instead (raw sockets and epoll, pre-built
masked frames, replies counted, not parsed: about a fifth of the Node generator's CPU per call), for the
seed and JSON-RPC shapes: the Node generator is the bound of the pipelined loads once the server is fast
(its CPU share near 1.00), and this one is not. The table says which generator measured.

With --baseline DIR (a checkout of older synapse code, e.g. `git archive COMMIT synapse_cli | tar -x -C DIR`),
that code's `synapse serve` (python -m synapse_cli, DIR first on PYTHONPATH, this environment's dependencies)
runs next to this one in every comparison: before and after in one run, which a shared machine needs.

    (cd benchmarks/node && npm install) && python benchmarks/servers.py [--seconds 3] [--repeat 3] [--shapes ...]
        [--generator node|raw] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

HERE = Path(__file__).parent
REFERENCE = "bare Starlette + orjson (reference)"
RAW_WEBSOCKETS = "raw websockets + orjson"
RPC_WEBSOCKETS = "rpc-websockets (Node)"
SYNAPSE = "synapse serve"
BASELINE = "synapse serve, --baseline code"
C_FLOOR = "C floor (reference/limit_server.c)"
NODE_PACKAGES = ("ws", "rpc-websockets")  # benchmarks/node/package.json

THREE_KEY_BODY = '{"func": "add_numbers", "args": [1, 2], "id": 0}'
SEED_BODY = '{"id": "17", "op": "call", "func": "add_numbers", "args": [1, 2]}'
JSONRPC_BODY = '{"jsonrpc": "2.0", "id": 17, "method": "add_numbers", "params": [1, 2]}'
PIPELINED, PIPELINED_16, SEQUENTIAL = (8, 128), (8, 16), (1, 1)


@dataclass(frozen=True)
class Shape:
    """A request shape, the servers compared with it (reference first) and the loads it runs."""

    name: str
    body: str
    ids: str  # "string" or "number", the generator's ID_STYLE
    servers: tuple[str, ...]
    loads: tuple[tuple[int, int], ...] = (PIPELINED, PIPELINED_16, SEQUENTIAL)

    @property
    def reference(self) -> str:
        return self.servers[0]


SHAPES = {
    "seed": Shape("seed", SEED_BODY, "string", (REFERENCE, SYNAPSE, C_FLOOR)),
    "jsonrpc": Shape("jsonrpc", JSONRPC_BODY, "number", (RPC_WEBSOCKETS, SYNAPSE, C_FLOOR)),
    "three-key": Shape(
        "three-key", THREE_KEY_BODY, "number", (REFERENCE, RAW_WEBSOCKETS, SYNAPSE), (PIPELINED_16, SEQUENTIAL)
    ),
}


@dataclass
class Run:
    """One generator run: what the generator measured, and the CPU shares during its measured seconds."""

    calls_per_s: float
    generator_cpu: float
    server_cpu: float | None = None


@dataclass
class Row:
    """One server under one shape and load: its runs, one per round."""

    shape: str
    load: tuple[int, int]
    name: str
    runs: list[Run] = field(default_factory=list)

    @property
    def calls_per_s(self) -> float:
        return statistics.median(run.calls_per_s for run in self.runs)

    @property
    def us_per_call(self) -> float:
        return 1e6 / self.calls_per_s

    @property
    def server_cpu(self) -> float | None:
        shares = [run.server_cpu for run in self.runs if run.server_cpu is not None]
        return statistics.median(shares) if shares else None

    @property
    def calls_per_cpu_s(self) -> float | None:
        """Calls per second of the server's CPU time (median of the rounds): what it costs, whoever else runs."""
        rates = [run.calls_per_s / run.server_cpu for run in self.runs if run.server_cpu]
        return statistics.median(rates) if rates else None

    @property
    def generator_cpu(self) -> float:
        return statistics.median(run.generator_cpu for run in self.runs)

    @property
    def sequential(self) -> bool:
        return self.load == SEQUENTIAL


def ratio(row: Row, reference: Row) -> float:
    """Throughput ratio (> 1: faster than the reference); for 1 x 1, the latency ratio (< 1: lower latency)."""
    return row.us_per_call / reference.us_per_call if row.sequential else row.calls_per_s / reference.calls_per_s


def cpu_ratio(row: Row, reference: Row) -> float | None:
    """The ratio of calls per server CPU-second (> 1: cheaper per call than the reference), when /proc tells."""
    if row.calls_per_cpu_s is None or reference.calls_per_cpu_s is None:
        return None
    return row.calls_per_cpu_s / reference.calls_per_cpu_s


def round_ratios(row: Row, reference: Row) -> list[float]:
    """The same ratio, round by round (runs of one round were measured back to back)."""
    pairs = zip(row.runs, reference.runs, strict=True)
    if row.sequential:
        return [ref.calls_per_s / run.calls_per_s for run, ref in pairs]
    return [run.calls_per_s / ref.calls_per_s for run, ref in pairs]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int) -> list[str]:
    """A taskset prefix when pinning is possible (2+ cores and taskset installed)."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def missing_node() -> str | None:
    """What to install before the Node generator and servers can run; None when nothing is missing."""
    if shutil.which("node") is None:
        return "needs Node (20 or later) and `npm install` in benchmarks/node (`make bench` runs it)"
    absent = [name for name in NODE_PACKAGES if not (HERE / "node" / "node_modules" / name).exists()]
    if absent:
        return f"needs `npm install` in benchmarks/node (missing: {', '.join(absent)}; `make bench` runs it)"
    return None


def find_node() -> str:
    """The node executable, once `npm install` has run in benchmarks/node."""
    problem = missing_node()
    if problem is not None:
        raise SystemExit(problem)
    return str(shutil.which("node"))


def build_floor(directory: Path) -> Path | None:
    """benchmarks/reference/limit_server.c built with gcc into ``directory``; None (and why, on stderr) if not."""
    gcc = shutil.which("gcc")
    if gcc is None:
        print(f"servers.py: no gcc, so no {C_FLOOR} row", file=sys.stderr)
        return None
    binary = directory / "limit_server"
    source = HERE / "reference" / "limit_server.c"
    build = subprocess.run([gcc, "-O2", "-o", str(binary), str(source), "-lcrypto"], capture_output=True, text=True)
    if build.returncode != 0:
        lines = [line.strip() for line in build.stderr.splitlines() if line.strip()] or [f"exit {build.returncode}"]
        why = next((line for line in lines if "error" in line or "cannot find" in line), lines[-1])
        print(f"servers.py: gcc could not build {source.name} (no {C_FLOOR} row): {why}", file=sys.stderr)
        return None
    return binary


def servers(port: int, baseline: Path | None = None, floor: Path | None = None) -> dict[str, list[str]]:
    """Each server's command; BASELINE (with ``baseline``) is synapse serve run from that checkout's code.

    C_FLOOR's is ``floor``, the binary build_floor made.
    """
    python, synapse = sys.executable, str(Path(sys.executable).parent / "synapse")
    older = ["env", f"PYTHONPATH={baseline}", python, "-m", "synapse_cli"] if baseline else []
    return {
        BASELINE: [*older, "serve", "--port", str(port), "--log-level", "warning"],
        REFERENCE: [python, str(HERE / "reference" / "bare_starlette.py"), str(port)],
        RAW_WEBSOCKETS: [python, str(HERE / "reference" / "raw_websockets.py"), str(port)],
        RPC_WEBSOCKETS: [shutil.which("node") or "node", str(HERE / "node" / "rpc_server.js"), str(port)],
        SYNAPSE: [synapse, "serve", "--port", str(port), "--log-level", "warning"],
        **({C_FLOOR: [str(floor), str(port)]} if floor else {}),  # measure leaves its rows out without one
    }


def probe(name: str) -> str:
    """A request the server ``name`` answers (the references answer one dialect only)."""
    return JSONRPC_BODY if name == RPC_WEBSOCKETS else THREE_KEY_BODY


def wait_ready(url: str, process: subprocess.Popen[bytes], request: str = THREE_KEY_BODY) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with connect(url, open_timeout=1) as ws:
                ws.send(request)
                ws.recv(timeout=5)
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {process.args}") from None
            time.sleep(0.1)


def start_server(command: list[str], url: str, request: str = THREE_KEY_BODY) -> subprocess.Popen[bytes]:
    """Start ``command`` and wait until it answers ``request`` on ``url``; if not, exit with its stderr's tail."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty server never blocks on it
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_ready(url, process, request)
        except SystemExit:
            process.kill()
            process.wait(10)
            log.seek(0)
            tail = log.read()[-3000:].decode(errors="replace")
            raise SystemExit(f"server did not start: {command}\n{tail}") from None
    return process


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    node: str,
    url: str,
    connections: int,
    window: int,
    seconds: float,
    *,
    core: int | None = 1,
    body: str | None = None,
    ids: str = "number",
    server_pid: int | None = None,
) -> Run:
    """One Node generator run (pinned to ``core``; None: not pinned) sending ``body`` with ``ids`` ids.

    With ``server_pid`` (and /proc), the server's CPU share over the generator's measured seconds too.
    Exits with the first bad reply when the server answered any call with an error.
    """
    script = str(HERE / "node" / "pipelined.js")
    prefix = pinned(core) if core is not None else []
    command = [*prefix, node, script, url, str(connections), str(window), str(seconds), body or "", ids]
    watch = server_pid is not None and Path(f"/proc/{server_pid}/stat").exists()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as generator:
        assert generator.stdout is not None
        lines = [generator.stdout.readline()]  # {"measuring": true}, once the warm-up is over
        start = (time.perf_counter(), cpu_seconds(server_pid)) if watch and server_pid else None
        lines += generator.stdout.readlines()
        server_cpu = None
        if start is not None and server_pid is not None:
            server_cpu = (cpu_seconds(server_pid) - start[1]) / (time.perf_counter() - start[0])
        if generator.wait(seconds + 60) != 0:
            raise SystemExit(f"node generator failed ({generator.returncode}): {' '.join(command)}")
    result = json.loads(lines[-1])
    if result["errors"]:
        raise SystemExit(f"{result['errors']} bad replies from {url} to {body}, the first: {result['first_error']}")
    return Run(float(result["calls_per_s"]), float(result["cpu"]), server_cpu)


def load_raw(url: str, connections: int, window: int, seconds: float, shape: str, server_pid: int) -> Run:
    """One benchmarks/rawload.py run (pinned to core 1), the server's CPU share read over its measured seconds."""
    start_at = time.time() + 1.0  # the connections open and warm up before it
    command = [*pinned(1), sys.executable, str(HERE / "rawload.py"), url, "--connections", str(connections),
               "--window", str(window), "--block", str(min(16, window)), "--seconds", str(seconds),
               "--start-at", repr(start_at), "--shape", shape]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as generator:
        time.sleep(max(0.0, start_at - time.time()))
        began = time.perf_counter(), cpu_seconds(server_pid)
        time.sleep(max(0.0, start_at + seconds - time.time()))
        server_cpu = (cpu_seconds(server_pid) - began[1]) / (time.perf_counter() - began[0])
        out, _ = generator.communicate(timeout=seconds + 60)
    if generator.returncode != 0:
        raise SystemExit(f"rawload.py failed ({generator.returncode}) against {url}: {out.strip()[-500:]}")
    result = json.loads(out.splitlines()[-1])
    return Run(result["calls"] / result["interval"], result["cpu"] / result["interval"], server_cpu)


def generate(
    node: str, url: str, connections: int, window: int, seconds: float, core: int | None = 1, body: str | None = None
) -> float:
    """Calls/s the Node generator measured (pinned to ``core``; None: not pinned); ``body``: the call's JSON."""
    return load(node, url, connections, window, seconds, core=core, body=body).calls_per_s


def with_baseline(shape: Shape, baseline: Path | None) -> tuple[str, ...]:
    """The shape's servers, and the baseline's synapse right after this code's when there is one."""
    if baseline is None:
        return shape.servers
    return tuple(x for name in shape.servers for x in ((name, BASELINE) if name == SYNAPSE else (name,)))


def measure(
    seconds: float = 3.0,
    repeat: int = 3,
    shapes: tuple[str, ...] = tuple(SHAPES),
    baseline: Path | None = None,
    generator: str = "node",
) -> list[Row]:
    """All servers up at once (core 0), loaded in turn by the generator (core 1), round after round.

    Interleaving the rounds spreads the machine's drifts over every server instead of favouring the one
    measured in a quiet minute; the servers of one comparison run back to back, for per-round ratios.
    With ``baseline`` (a checkout of older synapse code), its synapse serve runs next to this one. The C
    floor is built into a temporary directory first; without gcc (or if the build fails) its rows are left out.
    """
    node = find_node()
    if generator == "raw" and "three-key" in shapes:
        raise SystemExit("--generator raw sends the seed and JSON-RPC shapes only: add --shapes seed jsonrpc")
    if baseline is not None and not (baseline / "synapse_cli" / "__init__.py").exists():
        raise SystemExit(f"--baseline {baseline}: no synapse_cli/ there")
    lineup = {shape: with_baseline(SHAPES[shape], baseline) for shape in shapes}
    build = tempfile.TemporaryDirectory(prefix="limit_server-")  # the C floor's binary, removed at the end
    floor = build_floor(Path(build.name)) if any(C_FLOOR in lineup[shape] for shape in shapes) else None
    if floor is None:
        lineup = {shape: tuple(name for name in lineup[shape] if name != C_FLOOR) for shape in shapes}
    names = list(dict.fromkeys(name for shape in shapes for name in lineup[shape]))
    ports: dict[str, int] = {}
    for name in names:
        while (port := free_port()) in ports.values():
            pass
        ports[name] = port
    urls = {name: f"ws://127.0.0.1:{port}/ws" for name, port in ports.items()}
    rows = [Row(s, load_, name) for s in shapes for load_ in SHAPES[s].loads for name in lineup[s]]
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            command = [*pinned(0), *servers(ports[name], baseline, floor)[name]]
            processes[name] = start_server(command, urls[name], probe(name))
        for _ in range(repeat):
            for row in rows:
                shape = SHAPES[row.shape]
                connections, window = row.load
                pid = processes[row.name].pid
                if generator == "raw":
                    run = load_raw(urls[row.name], connections, window, seconds, row.shape, pid)
                else:
                    run = load(node, urls[row.name], connections, window, seconds, body=shape.body, ids=shape.ids,
                               server_pid=pid)  # fmt: skip
                row.runs.append(run)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(10)
        build.cleanup()
    return rows


def find(rows: list[Row], shape: str, load_: tuple[int, int], name: str) -> Row:
    return next(row for row in rows if (row.shape, row.load, row.name) == (shape, load_, name))


def print_table(rows: list[Row], seconds: float, repeat: int, generator: str = "node") -> None:
    made_by = "benchmarks/rawload.py" if generator == "raw" else "Node ws"
    print(f"{made_by} generator on core 1, servers on core 0; median of {repeat} rounds x {seconds:g} s")
    print("ratio: of the medians, to the first server of each block (calls/s; for 1 x 1, µs per call);")
    print("rounds: the lowest and highest per-round ratio; cpu: server / generator share of a core;")
    print("calls/cpu-s: calls per second of the server's CPU time, and its ratio to the reference's")
    print(
        f"{'shape, load':20} {'server':36} {'calls/s':>9} {'µs/call':>8} {'ratio':>6} {'rounds':>10} {'cpu':>11} "
        f"{'calls/cpu-s':>11} {'ratio':>6}"
    )
    for row in rows:
        reference = find(rows, row.shape, row.load, SHAPES[row.shape].reference)
        per_round = round_ratios(row, reference)
        server_cpu = "-" if row.server_cpu is None else f"{row.server_cpu:.2f}"
        per_cpu = "-" if row.calls_per_cpu_s is None else f"{row.calls_per_cpu_s:,.0f}"
        per_cpu_ratio = cpu_ratio(row, reference)
        label = f"{row.shape}, {row.load[0]} x {row.load[1]}" if row is reference else ""
        print(
            f"{label:20} {row.name:36} {row.calls_per_s:9,.0f} {row.us_per_call:8.1f} {ratio(row, reference):6.2f} "
            f"{min(per_round):4.2f}-{max(per_round):4.2f} {server_cpu:>4} / {row.generator_cpu:.2f} {per_cpu:>11} "
            f"{'-' if per_cpu_ratio is None else f'{per_cpu_ratio:.2f}':>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--baseline", type=Path, help="also run synapse serve from this checkout's code (before/after)")
    parser.add_argument(
        "--generator",
        choices=["node", "raw"],
        default="node",
        help="node: benchmarks/node/pipelined.js; raw: rawload.py",
    )
    options = parser.parse_args()
    rows = measure(options.seconds, options.repeat, tuple(options.shapes), options.baseline, options.generator)
    print_table(rows, options.seconds, options.repeat, options.generator)


if __name__ == "__main__":
    main()
