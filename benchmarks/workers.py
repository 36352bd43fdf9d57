"""`synapse serve --workers N` scaling: calls/s for each N against N = 1, measured in one run.

For each N (default 1 and 2) one `synapse serve --workers N` runs; the Node `ws` generator (benchmarks/node,
`npm install` there first) drives add_numbers(1, 2) with --connections connections x --window calls in
flight (16 x 16 by default: enough connections for the kernel to spread them over the workers' accepts)
for --seconds, --repeat times. The table shows median calls/s, the ratio to N = 1, and the busiest
worker's share of the workers' CPU time during the load (from /proc: 1/N when the kernel spreads the
connections evenly, 1.00 when one worker gets them all).

Nothing is pinned: the workers need every core. The generator shares those cores with the workers, so on a
2-core machine N = 2 competes with its own load and cannot reach 2x; read the ratio as "what a second
worker buys on this machine", not as the server's scaling limit.

    (cd benchmarks/node && npm install) && python benchmarks/workers.py [--seconds 5] [--repeat 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from servers import find_node, free_port, generate, start_server


@dataclass
class Row:
    """Median calls/s with N workers, and the busiest worker's median share of the workers' CPU time."""

    workers: int
    calls_per_s: float
    busiest_share: float


def cpu_seconds(master: int) -> dict[int, float]:
    """User + system CPU seconds of each child of ``master`` (the master itself when it has none)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # the fields after "pid (comm)"
        except OSError:  # the process exited meanwhile
            continue
        pid, parent = int(stat.parent.name), int(fields[1])
        if master in (pid, parent):
            seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks
    if len(seconds) > 1:
        del seconds[master]
    return seconds


def loaded(node: str, url: str, master: int, connections: int, window: int, seconds: float) -> tuple[float, float]:
    """One unpinned generator run: calls/s, and the busiest worker's share of the CPU time it took."""
    before = cpu_seconds(master)
    rate = generate(node, url, connections, window, seconds, core=None)
    used = [spent - before.get(pid, 0.0) for pid, spent in cpu_seconds(master).items()]
    return rate, max(used) / sum(used) if sum(used) > 0 else 1.0


def measure(
    workers: tuple[int, ...] = (1, 2), seconds: float = 5.0, repeat: int = 3, connections: int = 16, window: int = 16
) -> list[Row]:
    """For each N in ``workers``: one `synapse serve --workers N`, loaded ``repeat`` times; medians."""
    node = find_node()
    synapse = str(Path(sys.executable).parent / "synapse")
    rows = []
    for count in workers:
        port = free_port()
        url = f"ws://127.0.0.1:{port}/ws"
        command = [synapse, "serve", "--port", str(port), "--workers", str(count), "--log-level", "warning"]
        process = start_server(command, url)
        try:
            time.sleep(1.0 if count > 1 else 0)  # one worker answered; let the others finish starting
            runs = [loaded(node, url, process.pid, connections, window, seconds) for _ in range(repeat)]
            rates, shares = zip(*runs, strict=True)
            rows.append(Row(count, statistics.median(rates), statistics.median(shares)))
        finally:
            process.terminate()
            process.wait(30)
    return rows


def print_table(rows: list[Row], seconds: float, repeat: int, connections: int, window: int) -> None:
    reference = next(row for row in rows if row.workers == 1) if any(row.workers == 1 for row in rows) else rows[0]
    print(
        f"not pinned (workers need every core; the Node generator shares the {os.cpu_count()} cores with them); "
        f"{connections} connections x {window} in flight; median of {repeat} x {seconds:g} s"
    )
    print(f"{'server':38} {'calls/s':>12} {'ratio':>6} {'busiest worker CPU share':>25}")
    for row in rows:
        name = f"synapse serve --workers {row.workers}"
        ratio = row.calls_per_s / reference.calls_per_s
        print(f"{name:38} {row.calls_per_s:12,.0f} {ratio:6.2f} {row.busiest_share:25.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--window", type=int, default=16)
    options = parser.parse_args()
    rows = measure(tuple(options.workers), options.seconds, options.repeat, options.connections, options.window)
    print_table(rows, options.seconds, options.repeat, options.connections, options.window)


if __name__ == "__main__":
    main()
