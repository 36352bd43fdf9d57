"""Topic fan-out side by side (issue 22): synapse serve's topic vs websockets' broadcast() vs a Node ws loop.

Servers, all up at once and pinned to core 0 where the OS allows:
  * synapse serve, the built-in topic `events` (subscribe: a call to `events`; publish: `publish_event`);
  * a bare websockets server using broadcast() (benchmarks/reference/broadcast_websockets.py);
  * a Node ws server broadcasting in a loop, as ws's README does (benchmarks/node/broadcast_server.js).
The two bare servers share one convention: a connection is a subscriber until it sends a text frame, and
the publisher's frames are sent as is to every subscriber. The publisher sends `{"id":1,"item":{"t",
"seq"}}`, the bytes synapse sends each of its subscribers, so all three deliver the same frames.

Generator: the one of `synapse bench --topic` (synapse_cli.bench.topic: picows subscribers over --procs
processes, the publisher in this one, HDR histograms merged exactly), pinned to core 1 with its
processes, speaking each server's protocol. Per load (subscribers x publishes/s) and server, rounds
interleaved: deliveries/s (items received / the measured window), the server's CPU time over the
measured window (/proc/PID/stat, from the first measured publish until every subscriber is drained) per
delivery and per second (its share of a core), deliveries per server CPU-second (what a delivery costs
the server whatever else runs on the machine: the figure the goals are set in), publish-to-receipt
p50/p99 (one clock: the publisher's time.time_ns() in each item against the subscriber's), items missed,
and the generator's health (its busiest process's CPU share; "bound": the generator, not the server, was
the limit). The table gives medians of --repeat rounds; the ratios synapse / websockets broadcast and
synapse / Node ws follow, with the goals of issue 22 (deliveries per server CPU-second >= 0.8x
websockets broadcast() and >= 1.0x Node ws).

10,000 subscribers need 10,000 open files in the server and in the generator: the script raises its
RLIMIT_NOFILE (the servers and the generator's processes inherit it) and stops with one line when the
hard limit is too low.

    (cd benchmarks/node && npm install) && python benchmarks/fanout.py [--loads 1000x50 10000x5]
        [--seconds 5] [--repeat 3] [--procs 2] [--baseline DIR]

With --baseline DIR (`git archive COMMIT synapse_cli | tar -x -C DIR`), that code's synapse serve (python -m
synapse_cli, DIR first on PYTHONPATH) runs next to this one in every round: before and after in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from servers import find_node, free_port, pinned
from websockets.sync.client import connect

from synapse_cli.bench.topic import BROADCAST, SYNAPSE, TopicConfig, measure_topic

HERE = Path(__file__).parent
SYNAPSE_SERVE = "synapse serve, topic events"
BASELINE = "synapse serve, --baseline code"
WEBSOCKETS = "websockets broadcast()"
NODE_WS = "Node ws, broadcast loop"
NAMES = (SYNAPSE_SERVE, WEBSOCKETS, NODE_WS)
WEBSOCKETS_TARGET = 0.8  # issue 22: deliveries per server CPU-second >= 0.8x websockets broadcast()
NODE_TARGET = 1.0  # issue 22: >= 1.0x Node ws
DEFAULT_LOADS = ("1000x50", "10000x5")  # 50,000 deliveries/s: under what one generator core reads
SPARE_FILES = 512  # open files beyond the subscribers: the server's own, the generator's pipes


@dataclass(frozen=True)
class Load:
    """Subscribers, and publishes per second to all of them."""

    subscribers: int
    rate: float

    @classmethod
    def parse(cls, text: str) -> Load:
        subscribers, _, rate = text.partition("x")
        return cls(int(subscribers), float(rate))

    def __str__(self) -> str:
        return f"{self.subscribers:,} x {self.rate:g}/s"


@dataclass
class Run:
    """One measured run against one server."""

    deliveries_per_s: float
    deliveries: int
    server_cpu_s: float
    window_s: float
    p50_ms: float | None
    p99_ms: float | None
    missed: int
    achieved_rate: float
    server_sys_s: float  # of server_cpu_s, in the kernel (the loopback TCP writes)
    generator_cpu: float  # the busiest generator process, % of its core
    generator_total: float  # every generator process together, % of one core
    generator_bound: bool
    errors: list[str]

    @property
    def per_cpu_s(self) -> float | None:
        return self.deliveries / self.server_cpu_s if self.server_cpu_s > 0 else None


@dataclass
class Row:
    """One server under one load: its runs, one per round."""

    load: Load
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float | None:
        values = [value for run in self.runs if (value := getattr(run, attribute)) is not None]
        return statistics.median(values) if values else None


def raise_open_files(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit for this process and every child it starts (they inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"{needed:,} open files are needed, the hard limit is {hard:,}: raise `ulimit -n`")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def generator_pinned() -> Iterator[str]:
    """This process (the publisher, and the subscriber processes it spawns) on core 1 when there are two;
    its own CPU affinity back afterwards (run.py runs other scripts in this process)."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        yield "not pinned (one core, or no sched_setaffinity)"
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    try:
        yield "server on core 0, generator on core 1"
    finally:
        os.sched_setaffinity(0, before)


def commands(port: int, node: str, baseline: Path | None = None) -> dict[str, list[str]]:
    """Each server's command; BASELINE (with ``baseline``) is synapse serve run from that checkout's code."""
    synapse = str(Path(sys.executable).parent / "synapse")
    serve = ["serve", "--port", str(port), "--log-level", "warning", "--max-connections", "100000"]
    return {
        SYNAPSE_SERVE: [synapse, *serve],
        BASELINE: ["env", f"PYTHONPATH={baseline}", sys.executable, "-m", "synapse_cli", *serve],
        WEBSOCKETS: [sys.executable, str(HERE / "reference" / "broadcast_websockets.py"), str(port)],
        NODE_WS: [node, str(HERE / "node" / "broadcast_server.js"), str(port)],
    }


def start(command: list[str], url: str) -> subprocess.Popen[bytes]:
    """Start a server and wait until it completes a WebSocket handshake (the bare ones answer nothing else)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([*pinned(0), *command], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                with connect(url, open_timeout=1):
                    return process
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait(10)
                    log.seek(0)
                    raise SystemExit(f"server did not start: {command}\n{log.read()[-2000:].decode()}") from None
                time.sleep(0.1)


@contextlib.contextmanager
def running_servers(names: tuple[str, ...], node: str, baseline: Path | None) -> Iterator[dict[str, tuple[str, int]]]:
    """Every server up, pinned to core 0: name -> (URL, pid)."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        urls = {}
        for name in names:
            port = free_port()
            urls[name] = f"ws://127.0.0.1:{port}/ws"
            processes[name] = start(commands(port, node, baseline)[name], urls[name])
        yield {name: (urls[name], processes[name].pid) for name in names}
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(20)


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def measure_one(name: str, url: str, pid: int, load: Load, seconds: float, procs: int) -> Run:
    """One run: the generator against one server, its CPU time read over the measured window."""
    marks: dict[str, tuple[float, float]] = {}

    def on_phase(phase: str) -> None:
        marks[phase] = (time.perf_counter(), *cpu_split(pid))

    config = TopicConfig(
        url=url, topic="events", subscribers=load.subscribers, publish_rate=load.rate, duration=seconds,
        procs=procs, timeout=30.0, wire=SYNAPSE if name in (SYNAPSE_SERVE, BASELINE) else BROADCAST,
    )  # fmt: skip
    report = measure_topic(config, on_phase=on_phase)
    (wall_0, user_0, sys_0), (wall_1, user_1, sys_1) = marks["measuring"], marks["drained"]
    assert report.publish is not None and report.generator is not None
    return Run(
        deliveries_per_s=report.items_per_s, deliveries=report.items,
        server_cpu_s=user_1 + sys_1 - user_0 - sys_0, server_sys_s=sys_1 - sys_0,
        window_s=wall_1 - wall_0, p50_ms=report.latency_ms.get("p50"), p99_ms=report.latency_ms.get("p99"),
        missed=report.missed["total"], achieved_rate=report.publish.achieved_rate,
        generator_cpu=report.generator.cpu_pct, generator_total=report.generator.cpu_total_pct,
        generator_bound=report.generator.bound, errors=report.errors,
    )  # fmt: skip


def measure(
    loads: list[Load], seconds: float = 5.0, repeat: int = 3, procs: int = 2, baseline: Path | None = None
) -> list[Row]:
    """Every server up at once; rounds interleaved (each load, each server once per round).

    With ``baseline`` (a checkout of older synapse code), its synapse serve runs right after this one's.
    """
    node = find_node()
    if baseline is not None and not (baseline / "synapse_cli" / "__init__.py").exists():
        raise SystemExit(f"--baseline {baseline}: no synapse_cli/ there")
    raise_open_files(max(load.subscribers for load in loads) + SPARE_FILES)
    names = (SYNAPSE_SERVE, BASELINE, *NAMES[1:]) if baseline else NAMES
    rows = [Row(load, name) for load in loads for name in names]
    with running_servers(names, node, baseline) as servers, generator_pinned() as pinning:  # servers first
        print(pinning, flush=True)
        for round_ in range(repeat):
            for row in rows:
                url, pid = servers[row.name]
                run = measure_one(row.name, url, pid, row.load, seconds, procs)
                row.runs.append(run)
                print(f"  round {round_ + 1}, {row.load}, {row.name}: {describe(run)}", flush=True)
    return rows


def describe(run: Run) -> str:
    per_cpu = f"{run.per_cpu_s:,.0f}" if run.per_cpu_s else "-"
    return (
        f"{run.deliveries_per_s:,.0f} deliveries/s, server CPU {run.server_cpu_s / run.window_s:.2f} of a core, "
        f"({run.server_sys_s / run.server_cpu_s if run.server_cpu_s else 0:.0%} kernel), {per_cpu} per CPU-s, "
        f"p50 {ms(run.p50_ms)} p99 {ms(run.p99_ms)} ms, missed {run.missed:,}, publishes {run.achieved_rate:g}/s, "
        f"generator CPU {run.generator_total:.0f} % (busiest process {run.generator_cpu:.0f} %)"
        f"{' (bound)' if run.generator_bound else ''}{', errors: ' + '; '.join(run.errors) if run.errors else ''}"
    )


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def find(rows: list[Row], load: Load, name: str) -> Row:
    return next(row for row in rows if row.load == load and row.name == name)


def cpu_ratio(rows: list[Row], load: Load, reference: str) -> float | None:
    """Deliveries per server CPU-second, synapse over ``reference`` (> 1: synapse is cheaper per delivery)."""
    ours, theirs = find(rows, load, SYNAPSE_SERVE).median("per_cpu_s"), find(rows, load, reference).median("per_cpu_s")
    return ours / theirs if ours and theirs else None


def print_table(rows: list[Row], seconds: float, repeat: int) -> None:
    print(f"\nmedian of {repeat} rounds x {seconds:g} s; latency: publish to receipt, one clock (this machine);")
    print("cpu: the server's share of its core over the measured window; per cpu-s: deliveries per server CPU-second;")
    print("kernel: the share of that CPU time spent in the kernel; gen: the generator's processes together, % of")
    print("its one core; bound: in how many rounds the generator, not the server, was the limit")
    print(
        f"{'subscribers x rate':20} {'server':31} {'deliveries/s':>12} {'cpu':>5} {'kernel':>6} {'µs/delivery':>11} "
        f"{'per cpu-s':>10} {'p50 ms':>8} {'p99 ms':>8} {'missed':>7} {'gen':>4} {'bound':>5}"
    )
    for row in rows:
        cpu = statistics.median(run.server_cpu_s / run.window_s for run in row.runs)
        kernel = statistics.median(run.server_sys_s / run.server_cpu_s if run.server_cpu_s else 0 for run in row.runs)
        per_cpu = row.median("per_cpu_s")
        per_delivery = f"{1e6 / per_cpu:.2f}" if per_cpu else "-"
        bound = sum(run.generator_bound for run in row.runs)
        label = str(row.load) if row.name == SYNAPSE_SERVE else ""
        print(
            f"{label:20} {row.name:31} {row.median('deliveries_per_s') or 0:12,.0f} {cpu:5.2f} {kernel:6.0%} "
            f"{per_delivery:>11} "
            f"{per_cpu or 0:10,.0f} {ms(row.median('p50_ms')):>8} {ms(row.median('p99_ms')):>8} "
            f"{max(run.missed for run in row.runs):7,} {row.median('generator_total') or 0:4.0f} "
            f"{bound:>2}/{len(row.runs)}"
        )
    print("\nratios of the medians (goal: deliveries per server CPU-second, issue 22)")
    for load in dict.fromkeys(row.load for row in rows):
        ours = find(rows, load, SYNAPSE_SERVE)
        if any(row.name == BASELINE for row in rows):
            older = find(rows, load, BASELINE)
            ratio = cpu_ratio(rows, load, BASELINE)
            rate = (ours.median("deliveries_per_s") or 0) / (older.median("deliveries_per_s") or 1)
            shown = "-" if ratio is None else f"{ratio:.2f}"
            print(f"  {load}: synapse / --baseline code: per server CPU-second {shown}, deliveries/s {rate:.2f}")
        for reference, target in ((WEBSOCKETS, WEBSOCKETS_TARGET), (NODE_WS, NODE_TARGET)):
            theirs = find(rows, load, reference)
            ratio = cpu_ratio(rows, load, reference)
            rate = (ours.median("deliveries_per_s") or 0) / (theirs.median("deliveries_per_s") or 1)
            p99s = ours.median("p99_ms"), theirs.median("p99_ms")
            p99 = f"{p99s[0] / p99s[1]:.2f}" if p99s[0] and p99s[1] else "-"
            verdict = "-" if ratio is None else ("met" if ratio >= target else "not met")
            shown = "-" if ratio is None else f"{ratio:.2f}"
            print(
                f"  {load}: synapse / {reference}: per server CPU-second {shown} (goal >= {target:.1f}: {verdict}), "
                f"deliveries/s {rate:.2f}, p99 {p99}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loads", nargs="+", default=list(DEFAULT_LOADS), help="SUBSCRIBERSxRATE, e.g. 1000x100")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--procs", type=int, default=2, help="generator processes for the subscribers")
    parser.add_argument("--baseline", type=Path, help="also synapse serve from this checkout's code (before/after)")
    options = parser.parse_args()
    loads = [Load.parse(text) for text in options.loads]
    rows = measure(loads, options.seconds, options.repeat, options.procs, options.baseline)
    print_table(rows, options.seconds, options.repeat)


if __name__ == "__main__":
    main()
