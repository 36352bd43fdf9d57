"""Every benchmark's comparison in one run, then one summary table against the targets: `make bench`.

Imports each script's measure() and runs them in turn, each printing its own table as it finishes:
  servers.py        synapse serve vs bare Starlette on the seed's message shape (string ids) and vs npm
                    rpc-websockets on JSON-RPC (and the earlier three-key shape vs bare Starlette and raw
                    websockets), Node generator, pipelined 8 x 128 and 8 x 16, sequential 1 x 1;
  pipelined.py      synapse Client + gather vs a bare pipelined websockets loop;
  bench_vs_bare.py  synapse bench vs a bare picows loop (and Node ws);
  coldstart.py      synapse call / synapse --help wall time vs a minimal websockets script;
  memory.py         RSS per idle connection and churn drift, synapse serve vs bare Starlette;
  workers.py        synapse serve --workers 2 vs --workers 1 (worker i on core i), CPU-bound and add_numbers calls;
  fairness.py       one connection's sequential round trips while another floods cancels, vs no flood;
  fanout.py         a topic's deliveries per server CPU-second, synapse serve vs websockets broadcast() and a
                    Node ws broadcast loop, 1,000 and 10,000 subscribers, the synapse bench --topic generator.
Then a summary: each comparison, the synapse figure, the reference figure, the ratio, the target and
whether it is met. A comparison with no target set is informational. A script that fails is reported
in the summary (exit status 1); missed targets do not change the exit status. Without Node or
`npm install` in benchmarks/node, the scripts that need them are skipped with one line saying what to
install.

The defaults take about 9 minutes on 2 cores; --quick is a smoke run (under a minute) whose figures are
too short to trust.

--baseline DIR (a checkout of older synapse code) runs that code's synapse serve next to this one in
servers.py, and the summary compares the two: before and after in one run.

    (cd benchmarks/node && npm install) && python benchmarks/run.py [--quick] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bench_vs_bare
import coldstart
import fairness
import fanout
import memory
import pipelined
import servers
import workers

SEED_TARGET = 1.2  # issue 10: synapse serve ≥ 1.2x bare Starlette, pipelined, the seed's message shape
JSONRPC_TARGET = 0.8  # issue 10: ≥ 0.8x npm rpc-websockets on JSON-RPC, pipelined
SEED_SEQUENTIAL_TARGET = 1.0  # issue 10: ≤ 1.0x bare Starlette's µs per sequential call, seed shape
PIPELINED_TARGET = 1.0  # issue 5 (benchmarks/README.md): ≥ 1.0x bare Starlette, pipelined, three-key shape
SEQUENTIAL_TARGET = 1.1  # issue 5: ≤ 1.1x bare Starlette's µs per sequential call, three-key shape
CLIENT_TARGET = 0.8  # issue 5: Client + gather ≥ 0.8x a bare pipelined websockets loop
BENCH_TARGET = 1.0  # issue 13: the load generator is still at least as fast as a bare picows loop


@dataclass
class Summary:
    """One line of the summary table (figures already formatted with their units)."""

    comparison: str
    synapse: str
    reference: str
    ratio: float | None = None
    target: str = "none set"
    met: bool | None = None


def comparison(rows: list[servers.Row], shape: str, load: tuple[int, int], target: float | None) -> Summary:
    """One servers.py comparison: synapse against the shape's reference under one load."""
    reference = servers.find(rows, shape, load, servers.SHAPES[shape].reference)
    ours = servers.find(rows, shape, load, servers.SYNAPSE)
    ratio = servers.ratio(ours, reference)
    versus = "bare Starlette" if reference.name == servers.REFERENCE else "rpc-websockets"
    label = f"serve vs {versus}, {shape}, {load[0]}x{load[1]}"
    if ours.sequential:
        figures = f"{ours.us_per_call:,.1f} µs/call", f"{reference.us_per_call:,.1f} µs/call"
        return Summary(label, *figures, ratio, *((f"≤ {target:.2f}x", ratio <= target) if target else ()))
    figures = f"{ours.calls_per_s:,.0f} calls/s", f"{reference.calls_per_s:,.0f} calls/s"
    return Summary(label, *figures, ratio, *((f"≥ {target:.2f}x", ratio >= target) if target else ()))


def per_cpu_second(rows: list[servers.Row], shape: str, load: tuple[int, int]) -> Summary:
    """The same comparison in calls per second of the server's CPU time (what a busy machine changes least)."""
    reference = servers.find(rows, shape, load, servers.SHAPES[shape].reference)
    ours = servers.find(rows, shape, load, servers.SYNAPSE)
    figures = [f"{row.calls_per_cpu_s:,.0f} /cpu-s" if row.calls_per_cpu_s else "—" for row in (ours, reference)]
    return Summary("  same, calls per server CPU-second", *figures, servers.cpu_ratio(ours, reference))


def against_baseline(rows: list[servers.Row], shape: str, load: tuple[int, int]) -> Summary:
    """This code's synapse serve against the --baseline code's, same shape and load, same run."""
    ours, older = (servers.find(rows, shape, load, name) for name in (servers.SYNAPSE, servers.BASELINE))
    ratio = servers.ratio(ours, older)
    if ours.sequential:
        return Summary(f"serve vs --baseline, {shape}, 1x1", f"{ours.us_per_call:,.1f} µs/call",
                       f"{older.us_per_call:,.1f} µs/call", ratio)  # fmt: skip
    label = f"serve vs --baseline, {shape}, {load[0]}x{load[1]}"
    return Summary(label, f"{ours.calls_per_s:,.0f} calls/s", f"{older.calls_per_s:,.0f} calls/s", ratio)


def run_servers(quick: bool, baseline: Path | None = None) -> list[Summary]:
    seconds, repeat = (1.0, 1) if quick else (2.0, 3)
    rows = servers.measure(seconds, repeat, baseline=baseline)
    servers.print_table(rows, seconds, repeat)
    pipelined, pipelined_16, sequential = servers.PIPELINED, servers.PIPELINED_16, servers.SEQUENTIAL
    before = [against_baseline(rows, shape, load) for shape, load in
              (("seed", pipelined), ("jsonrpc", pipelined), ("seed", sequential))] if baseline else []  # fmt: skip
    return before + [
        comparison(rows, "seed", pipelined, SEED_TARGET),
        per_cpu_second(rows, "seed", pipelined),
        comparison(rows, "seed", pipelined_16, SEED_TARGET),
        comparison(rows, "seed", sequential, SEED_SEQUENTIAL_TARGET),
        comparison(rows, "jsonrpc", pipelined, JSONRPC_TARGET),
        per_cpu_second(rows, "jsonrpc", pipelined),
        comparison(rows, "jsonrpc", pipelined_16, JSONRPC_TARGET),
        comparison(rows, "jsonrpc", sequential, None),
        comparison(rows, "three-key", pipelined_16, PIPELINED_TARGET),
        comparison(rows, "three-key", sequential, SEQUENTIAL_TARGET),
    ]


def run_fairness(quick: bool) -> list[Summary]:
    seconds, repeat = (1.0, 1) if quick else (2.0, 3)
    quiet, flooded = fairness.measure(seconds, repeat)
    fairness.print_table([quiet, flooded], seconds, repeat)
    return [
        Summary(
            f"round trip p{percentile:g} under a cancel flood vs none",
            f"{flooded.us(percentile):,.1f} µs",
            f"{quiet.us(percentile):,.1f} µs",
            flooded.us(percentile) / quiet.us(percentile),
        )
        for percentile in (50, 99)
    ]


def run_pipelined(quick: bool) -> list[Summary]:
    calls, repeat = (5000, 1) if quick else (10000, 5)
    rows = pipelined.measure(calls, repeat)
    pipelined.print_table(rows)
    reference, ours = rows
    ratio = ours.calls_per_s / reference.calls_per_s
    return [
        Summary(
            "Client gather vs bare websockets loop",
            f"{ours.calls_per_s:,.0f} calls/s",
            f"{reference.calls_per_s:,.0f} calls/s",
            ratio,
            f"≥ {CLIENT_TARGET:.2f}x",
            ratio >= CLIENT_TARGET,
        ),
    ]


def run_bench_vs_bare(quick: bool) -> list[Summary]:
    seconds, repeat = (1.0, 1) if quick else (3.0, 2)
    rows = bench_vs_bare.measure(seconds, repeat)
    bench_vs_bare.print_table(rows, seconds, repeat)
    reference = next(row.calls_per_s for row in rows if row.name == bench_vs_bare.REFERENCE)
    row = next(row for row in rows if row.name == bench_vs_bare.SYNAPSE)
    ours, law = row.calls_per_s, row.littles_law
    assert reference is not None and ours is not None and law is not None
    return [
        Summary(
            "synapse bench vs bare picows loop", f"{ours:,.0f} calls/s", f"{reference:,.0f} calls/s", ours / reference,
            f"≥ {BENCH_TARGET:.1f}x", ours / reference >= BENCH_TARGET,
        ),
        Summary("synapse bench: Little's law (calls/s x mean / in flight)", f"{law:.3f}", "1.000", law, "± 5 %",
                abs(law - 1) <= 0.05),
    ]  # fmt: skip


def run_coldstart(quick: bool) -> list[Summary]:
    repeat = 3 if quick else 10
    rows = {row.name: row for row in coldstart.measure(repeat)}
    coldstart.print_table(list(rows.values()), repeat)
    reference, call, help_, floor = (
        rows[name] for name in (coldstart.REFERENCE, coldstart.CALL, coldstart.HELP, coldstart.FLOOR)
    )
    return [
        Summary(
            "synapse call vs minimal websockets script",
            f"{call.seconds * 1000:,.1f} ms",
            f"{reference.seconds * 1000:,.1f} ms",
            call.ratio,
            call.target,
            call.met,
        ),
        Summary(
            "synapse --help vs python -c pass",
            f"{help_.seconds * 1000:,.1f} ms",
            f"{floor.seconds * 1000:,.1f} ms",
            help_.seconds / floor.seconds,
            help_.target,
            help_.met,
        ),
    ]


def run_memory(quick: bool) -> list[Summary]:
    connections, rounds, size, warmup_rounds = (500, 3, 200, 1) if quick else (2000, 20, 500, 10)
    rows = memory.measure(connections, rounds, size, warmup_rounds)
    memory.print_table(rows)
    reference = next(row for row in rows if row.name == memory.REFERENCE)
    ours = next(row for row in rows if row.name == memory.SYNAPSE)
    return [
        Summary(
            f"RSS per idle connection ({connections:,}) vs bare Starlette",
            f"{ours.per_connection_kib:.1f} KiB",
            f"{reference.per_connection_kib:.1f} KiB",
            ours.per_connection_kib / reference.per_connection_kib,
            f"≤ {memory.IDLE_TARGET_KIB:g} KiB",
            ours.per_connection_kib <= memory.IDLE_TARGET_KIB,
        ),
        Summary(
            f"RSS drift, {rounds} x {size} churn, vs bare Starlette",
            f"{ours.drift_mib:+.2f} MiB",
            f"{reference.drift_mib:+.2f} MiB",
            None,
            f"< {memory.DRIFT_TARGET_MIB:g} MiB",
            ours.drift_mib < memory.DRIFT_TARGET_MIB,
        ),
    ]


def run_workers(quick: bool) -> list[Summary]:
    seconds, repeat = (1.0, 1) if quick else (3.0, 2)
    rows = workers.measure((1, 2), seconds, repeat)
    workers.print_table(rows, seconds, repeat)
    summaries = []
    for workload in workers.WORKLOADS:
        one, two = (next(r for r in rows if r.workload == workload and r.workers == n) for n in (1, 2))
        summaries.append(
            Summary(
                f"serve --workers 2 vs 1, {workload} (pinned)",
                f"{two.calls_per_s:,.0f} calls/s",
                f"{one.calls_per_s:,.0f} calls/s",
                two.calls_per_s / one.calls_per_s,
            )
        )
    return summaries


def run_fanout(quick: bool) -> list[Summary]:
    loads = [fanout.Load(1000, 20)] if quick else [fanout.Load.parse(text) for text in fanout.DEFAULT_LOADS]
    seconds, repeat = (1.0, 1) if quick else (5.0, 2)
    rows = fanout.measure(loads, seconds, repeat)
    fanout.print_table(rows, seconds, repeat)
    summaries = []
    for load in loads:
        ours = fanout.find(rows, load, fanout.SYNAPSE_SERVE).median("per_cpu_s") or 0.0
        references = ((fanout.WEBSOCKETS, "websockets", fanout.WEBSOCKETS_TARGET),
                      (fanout.NODE_WS, "Node ws", fanout.NODE_TARGET))  # fmt: skip
        for reference, short, target in references:
            theirs = fanout.find(rows, load, reference).median("per_cpu_s") or 0.0
            ratio = ours / theirs if theirs else None
            summaries.append(
                Summary(
                    f"topic {load}, per server CPU-s vs {short}", f"{ours:,.0f} /cpu-s",
                    f"{theirs:,.0f} /cpu-s", ratio, f"≥ {target:.1f}x", ratio is not None and ratio >= target,
                )
            )  # fmt: skip
    return summaries


SECTIONS: dict[str, Callable[[bool], list[Summary]]] = {
    "servers.py": run_servers,
    "pipelined.py": run_pipelined,
    "bench_vs_bare.py": run_bench_vs_bare,
    "coldstart.py": run_coldstart,
    "memory.py": run_memory,
    "workers.py": run_workers,
    "fairness.py": run_fairness,
    "fanout.py": run_fanout,
}
NEEDS_NODE = {"servers.py", "fanout.py"}  # bench_vs_bare.py skips its Node row by itself


def print_summary(lines: list[Summary]) -> None:
    print(f"{'comparison':50} {'synapse':>16} {'reference':>16} {'ratio':>6} {'target':>9} {'met':>8}")
    for line in lines:
        ratio = "" if line.ratio is None else f"{line.ratio:.2f}"
        met = "—" if line.met is None else ("met" if line.met else "not met")
        print(f"{line.comparison:50} {line.synapse:>16} {line.reference:>16} {ratio:>6} {line.target:>9} {met:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (figures too short to trust)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these scripts")
    parser.add_argument("--baseline", type=Path, help="servers.py: also synapse serve from this checkout's code")
    options = parser.parse_args()
    sections = {**SECTIONS, "servers.py": functools.partial(run_servers, baseline=options.baseline)}
    lines: list[Summary] = []
    failed = False
    start = time.monotonic()
    for name, section in sections.items():
        if options.only and name not in options.only:
            continue
        print(f"\n== {name}", flush=True)
        problem = servers.missing_node() if name in NEEDS_NODE else None
        if problem is not None:
            print(f"{name}: skipped, {problem}")
            lines.append(Summary(f"{name}: skipped (Node)", "—", "—", None, "—", None))
            continue
        try:
            lines += section(options.quick)
        except SystemExit as exc:  # the scripts stop with SystemExit("why") on setup failures: the why, no traceback
            print(f"{name}: failed: {exc}")
            lines.append(Summary(f"{name}: failed (see above)", "—", "—", None, "—", False))
            failed = True
        except Exception as exc:
            traceback.print_exc()
            lines.append(Summary(f"{name}: failed ({type(exc).__name__}, see above)", "—", "—", None, "—", False))
            failed = True
        sys.stdout.flush()
    print(
        f"\n== summary ({'quick smoke run, do not trust the figures; ' if options.quick else ''}"
        f"{time.monotonic() - start:.0f} s)"
    )
    print_summary(lines)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
