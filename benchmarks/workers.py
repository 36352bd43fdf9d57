"""`synapse serve --workers N` scaling: calls/s with N workers against one, in interleaved rounds of one run.

One `synapse serve --workers N` per N (default 1 and 2) runs for the whole run; each round loads every
N in turn for --seconds. The generator is benchmarks/rawload.py (raw sockets, pre-built frames, replies
counted, not parsed), spread over --generators processes: it costs the server's cores little (its CPU
is reported), so a second worker has a core to run on. Workloads:
  * transport: add_numbers(1, 2) in the seed's shape {"id": "17", "op": "call", ...} with string ids,
    64 connections x 64 in flight: the server's own cost per message;
  * jsonrpc: the same call as JSON-RPC 2.0 (number ids), same load;
  * cpu: burn(1) from benchmarks/apps/cpu_app.py, 1 ms of Python CPU per call, 64 connections x 2.

Placement (--placement), on this machine's cores, with the commands it amounts to:
  * pinned (default): worker i on core i mod cores (`taskset -a -p -c i PID` on every thread; N = 1:
    core 0), the generators on every core at nice 10 (`nice -n 10`): with N = 1 they take the idle core,
    with N = 2 they take what the workers leave, and a worker never waits behind them for long;
  * free: nothing pinned, generators at nice 0 (the scheduler places everything);
  * split: the workers on core 0 only and the generators on core 1 (`taskset -c 1`): for N = 1 the
    same as "pinned"; for N = 2 it shows what the second worker costs when it has no core of its own.

Every run reports, over the measured seconds (from /proc): calls/s; the server's CPU (supervisor and
workers, in cores) and calls per server CPU-second (what a call costs the server, whoever else runs);
the busiest worker's share of the workers' CPU (1/N when the connections are spread evenly) and the
connections each worker holds (from /proc/net/tcp); the generators' CPU; the whole machine's busy cores
(/proc/stat: 2.00 on 2 cores = nothing left idle), how much of it was neither server nor generator, and
the cores the hypervisor stole (a VM's neighbours); and the load average. On a shared machine, --quiet S
waits before each run (up to S seconds) for a second in which the machine's busy cores stay under 0.15.
The table then gives every round and the medians, and the ratio to N = 1 in the same round.

    python benchmarks/workers.py [--seconds 5] [--repeat 3] [--workers 1 2] [--workload transport cpu]
        [--placement pinned|free|split] [--generators 2] [--quiet 60]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from servers import SEED_BODY, free_port, start_server

HERE = Path(__file__).parent
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Workload:
    app: str | None
    shape: str  # rawload.py --shape
    probe: str  # a request the server answers (start_server waits for its reply)
    connections: int
    window: int
    block: int


WORKLOADS = {
    "transport": Workload(None, "seed", SEED_BODY, 64, 64, 16),
    "jsonrpc": Workload(None, "jsonrpc", SEED_BODY, 64, 64, 16),
    "cpu": Workload(str(HERE / "apps" / "cpu_app.py"), "burn", '{"id": "1", "func": "burn", "args": [1]}', 64, 2, 1),
}
PLACEMENTS = ("pinned", "free", "split")


@dataclass
class Run:
    """One load of one server: what the generators counted and what /proc said over the same seconds."""

    calls_per_s: float
    server_cpu: float  # cores: supervisor and workers
    worker_cpu: list[float]  # cores, each worker
    generator_cpu: float  # cores, all generator processes
    busy: float  # cores busy on the whole machine
    steal: float  # cores the hypervisor took from this machine
    connections: list[int]  # each worker's established connections
    load: str  # /proc/loadavg's first three fields when the run began

    @property
    def per_cpu_s(self) -> float:
        return self.calls_per_s / self.server_cpu if self.server_cpu else 0.0

    @property
    def busiest_share(self) -> float:
        total = sum(self.worker_cpu)
        return max(self.worker_cpu) / total if total else 1.0

    @property
    def other(self) -> float:
        return max(0.0, self.busy - self.server_cpu - self.generator_cpu)


@dataclass
class Row:
    """N workers under one workload: its runs, one a round, and their medians."""

    workers: int
    workload: str = "transport"
    runs: list[Run] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(run, name) for run in self.runs)

    @property
    def calls_per_s(self) -> float:
        return self.median("calls_per_s")

    @property
    def busiest_share(self) -> float:
        return self.median("busiest_share")


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()  # the fields after "pid (comm)"
    except OSError:  # the process exited meanwhile
        return None


def processes(master: int) -> tuple[list[int], list[int]]:
    """(every process of the server: ``master`` and its children, the workers): N = 1 serves in ``master``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(stat.parent.name)
        if fields is not None and int(fields[1]) == master:
            children.append(int(stat.parent.name))
    workers = []
    for pid in children:
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not multiprocessing's resource tracker
                workers.append(pid)
        except OSError:
            continue
    return [master, *children], sorted(workers) or [master]


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """Busy CPU seconds of the whole machine (every core), and the seconds the hypervisor stole, from /proc/stat."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values[:7]) - idle) / ticks, values[7] / ticks  # user ... softirq (guest is in user); steal


def connections_of(pids: list[int], port: int) -> list[int]:
    """Established TCP connections to ``port`` held by each process in ``pids`` (from /proc/net/tcp)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    counts = []
    for pid in pids:
        count = 0
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                count += 1
        counts.append(count)
    return counts


def wait_quiet(limit: float, idle_below: float = 0.15) -> float:
    """Wait up to ``limit`` seconds for a second in which the machine's busy cores stay under ``idle_below``."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy()[0]
        time.sleep(1.0)
        busy = machine_busy()[0] - before
        if busy < idle_below or time.monotonic() > deadline:
            return busy
        time.sleep(1.0)


def place(workers: list[int], placement: str) -> None:
    """Pin each worker's threads (``taskset -a -p -c CORE PID``) as ``placement`` says, or let them run anywhere."""
    for index, pid in enumerate(workers):
        if placement == "pinned":
            cores = {index % CORES}
        elif placement == "split":
            cores = {0}
        else:
            cores = set(range(CORES))
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cores)
            except OSError:  # the thread ended meanwhile
                continue


def generator_prefix(placement: str) -> list[str]:
    """How the generators start: ``nice -n 10`` on every core, nothing, or ``taskset -c 1``."""
    if placement == "pinned":
        return ["nice", "-n", "10"]
    if placement == "split" and CORES > 1:
        return ["taskset", "-c", "1"]
    return []


def load(url: str, port: int, master: int, workload: Workload, seconds: float, generators: int, placement: str) -> Run:
    """Load the server at ``url`` with ``generators`` rawload.py processes; measure it over ``seconds``."""
    everyone, workers = processes(master)
    place(workers, placement)
    start_at = time.time() + 1.5  # connections open and warm by then
    command = [*generator_prefix(placement), sys.executable, str(HERE / "rawload.py"), url]
    share = [workload.connections // generators + (i < workload.connections % generators) for i in range(generators)]
    options = ["--window", str(workload.window), "--block", str(workload.block), "--seconds", str(seconds)]
    options += ["--start-at", repr(start_at), "--shape", workload.shape]
    procs = [
        subprocess.Popen([*command, "--connections", str(count), *options], stdout=subprocess.PIPE, text=True)
        for count in share
    ]
    time.sleep(max(0.0, start_at - time.time()))
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    began = (time.perf_counter(), [cpu_seconds(pid) for pid in everyone], [cpu_seconds(pid) for pid in workers])
    busy_began = machine_busy()
    time.sleep(seconds / 2)
    held = connections_of(workers, port)
    time.sleep(max(0.0, start_at + seconds - time.time()))
    wall = time.perf_counter() - began[0]
    server = (sum(cpu_seconds(pid) for pid in everyone) - sum(began[1])) / wall
    each = [(cpu_seconds(pid) - before) / wall for pid, before in zip(workers, began[2], strict=True)]
    busy_ended = machine_busy()
    busy, steal = ((end - start) / wall for end, start in zip(busy_ended, busy_began, strict=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise SystemExit(f"generator failed ({proc.returncode}): {out}")
        results.append(json.loads(out.splitlines()[-1]))
    interval = statistics.mean(result["interval"] for result in results)
    rate = sum(result["calls"] for result in results) / interval
    generator = sum(result["cpu"] for result in results) / interval
    return Run(rate, server, each, generator, busy, steal, held, loadavg)


def measure(
    workers: tuple[int, ...] = (1, 2),
    seconds: float = 5.0,
    repeat: int = 3,
    workloads: tuple[str, ...] = tuple(WORKLOADS),
    placement: str = "pinned",
    generators: int = 2,
    quiet: float = 0.0,
) -> list[Row]:
    """For each workload, one server per N in ``workers``; ``repeat`` rounds, each loading every N in turn."""
    synapse = str(Path(sys.executable).parent / "synapse")
    rows = []
    for name in workloads:
        workload = WORKLOADS[name]
        servers = []
        try:
            for count in workers:
                port = free_port()
                url = f"ws://127.0.0.1:{port}/ws"
                command = [synapse, "serve", *([workload.app] if workload.app else []), "--port", str(port)]
                command += ["--workers", str(count), "--log-level", "warning"]
                servers.append((count, port, url, start_server(command, url, workload.probe)))
            time.sleep(1.0)  # one worker answered; let the others finish starting
            these = {count: Row(count, name) for count in workers}
            for _ in range(repeat):
                for count, port, url, process in servers:
                    if quiet:
                        wait_quiet(quiet)
                    run = load(url, port, process.pid, workload, seconds, generators, placement)
                    these[count].runs.append(run)
            rows.extend(these.values())
        finally:
            for *_, process in servers:
                process.terminate()
                process.wait(30)
    return rows


def describe(placement: str, generators: int) -> str:
    how = {
        "pinned": "worker i on core i mod cores (taskset -a -p -c i PID), generators on every core at nice 10",
        "free": "nothing pinned, generators at nice 0",
        "split": "workers on core 0 (taskset -a -p -c 0 PID), generators on core 1 (taskset -c 1)",
    }[placement]
    return f"placement {placement}: {how}; {generators} generator processes (benchmarks/rawload.py)"


def print_table(rows: list[Row], seconds: float, repeat: int, placement: str = "pinned", generators: int = 2) -> None:
    print(f"{describe(placement, generators)}; {repeat} rounds x {seconds:g} s, {CORES} cores")
    head = ("workload", "N", "round", "calls/s", "ratio", "server", "calls/CPU-s", "ratio", "busiest", "conns",
            "generator", "busy", "other", "steal", "load")  # fmt: skip
    widths = (20, 2, 6, 10, 6, 7, 11, 6, 8, 10, 9, 5, 6, 5, 15)
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for row in rows:
        workload = WORKLOADS[row.workload]
        label = f"{row.workload} ({workload.connections}x{workload.window})"
        base = next(r for r in rows if r.workload == row.workload and r.workers == min(
            x.workers for x in rows if x.workload == row.workload))  # fmt: skip
        for index, run in [*enumerate(row.runs), (None, None)]:
            if run is None:  # the medians
                ratio = statistics.median(
                    r.calls_per_s / b.calls_per_s for r, b in zip(row.runs, base.runs, strict=True)
                )
                cpu_ratio = statistics.median(
                    r.per_cpu_s / b.per_cpu_s for r, b in zip(row.runs, base.runs, strict=True)
                )
                values = [row.median(n) for n in ("calls_per_s", "server_cpu", "per_cpu_s", "busiest_share")]
                rest = [row.median(n) for n in ("generator_cpu", "busy", "other", "steal")]
                name, conns, loadavg = "median", "", ""
            else:
                assert index is not None
                ref = base.runs[index]
                ratio, cpu_ratio = run.calls_per_s / ref.calls_per_s, run.per_cpu_s / ref.per_cpu_s
                values = [run.calls_per_s, run.server_cpu, run.per_cpu_s, run.busiest_share]
                rest = [run.generator_cpu, run.busy, run.other, run.steal]
                name, conns, loadavg = str(index + 1), "/".join(map(str, run.connections)), run.load
            print(
                f"{label:>20} {row.workers:>2} {name:>6} {values[0]:10,.0f} {ratio:6.2f} {values[1]:7.2f} "
                f"{values[2]:11,.0f} {cpu_ratio:6.2f} {values[3]:8.2f} {conns:>10} {rest[0]:9.2f} {rest[1]:5.2f} "
                f"{rest[2]:6.2f} {rest[3]:5.2f} {loadavg:>15}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), nargs="+", default=list(WORKLOADS))
    parser.add_argument("--placement", choices=PLACEMENTS, default="pinned")
    parser.add_argument("--generators", type=int, default=2, help="rawload.py processes sharing the connections")
    parser.add_argument(
        "--quiet", type=float, default=0.0, help="before each run, wait up to this many seconds for an idle machine"
    )
    options = parser.parse_args()
    rows = measure(
        tuple(options.workers), options.seconds, options.repeat, tuple(options.workload), options.placement,
        options.generators, options.quiet,
    )  # fmt: skip
    print_table(rows, options.seconds, options.repeat, options.placement, options.generators)


if __name__ == "__main__":
    main()
