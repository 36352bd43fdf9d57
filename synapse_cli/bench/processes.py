"""The load spread over processes and machines (``--procs``, ``--shard``), and the embedded server.

``--procs N`` starts N load processes together, each with its share of the load, relays their progress to
one bar and merges their reports exactly. ``--shard I/N`` gives one copy of ``synapse bench`` (one of N
started by any orchestrator) its share the same way. Without ``--url``, bench measures a ``synapse serve``
it starts in a child process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from synapse_cli.bench.config import BenchConfig, Progress
from synapse_cli.bench.driver import run_bench
from synapse_cli.bench.report import BenchReport
from synapse_cli.core.errors import ConnectError

__all__ = ["embedded_server", "run_bench_procs", "share", "sharded"]


def share(config: BenchConfig, index: int, count: int) -> BenchConfig:
    """Part ``index`` (from 0) of ``count`` of the load: its calls, concurrency, connections and rate (one process)."""

    def part(total: int) -> int:
        return total // count + (1 if index < total % count else 0)

    return replace(
        config,
        calls=part(config.calls) if config.calls is not None and config.duration is None else config.calls,
        concurrency=max(1, part(config.concurrency)),
        connections=max(1, part(config.connection_count)),
        rate=config.rate / count if config.rate else None,
        shape=config.shape.scaled(1 / count) if config.shape else None,
        procs=1,
    )


def sharded(config: BenchConfig) -> BenchConfig:
    """The config of this shard (``--shard I/N``): its part of the load, for its own processes."""
    if config.shard is None:
        return config
    return replace(share(config, *config.shard), procs=config.procs)


def _worker(config: BenchConfig, queue: Any) -> dict[str, Any] | str:
    def progress(snapshot: Progress) -> None:
        queue.put_nowait(replace(snapshot, source=os.getpid()))

    try:
        return run_bench(config, progress=progress if queue is not None else None).to_json()
    except ConnectError as exc:
        return f"connect: {exc}"


def run_bench_procs(config: BenchConfig, *, progress: Callable[[Progress], None] | None = None) -> BenchReport:
    """Spread the load over ``config.procs`` processes started together; merge their histograms exactly."""
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    from synapse_cli.bench.report import merge_reports

    procs = config.procs
    context = multiprocessing.get_context("spawn")
    manager = context.Manager() if progress is not None else None
    queue = manager.Queue() if manager is not None else None
    start_at = config.start_at or time.time() + 1.5 + 0.2 * procs + config.warmup  # time to start and connect
    parts = [replace(share(config, i, procs), start_at=start_at) for i in range(procs)]
    stop = threading.Event()
    relay = threading.Thread(target=_relay_progress, args=(queue, procs, progress, stop), daemon=True)
    if queue is not None:
        relay.start()
    try:
        with ProcessPoolExecutor(procs, mp_context=context) as pool:
            results = list(pool.map(_worker, parts, [queue] * procs))
    finally:
        stop.set()
        if queue is not None:
            relay.join(1)
        if manager is not None:
            manager.shutdown()
    failures = [r for r in results if isinstance(r, str)]
    if failures:
        raise ConnectError(failures[0].removeprefix("connect: "), url=config.url)
    merged, _ = merge_reports([BenchReport.from_json(r) for r in results if isinstance(r, dict)])
    merged.config = {**config.describe(), "sources": 1}
    return merged


def _relay_progress(queue: Any, procs: int, progress: Callable[[Progress], None], stop: Any) -> None:
    """Sum the workers' progress snapshots into one (a thread of the parent process)."""
    import queue as queues

    latest: dict[int, Progress] = {}
    while not stop.is_set():
        try:
            snapshot = queue.get(timeout=0.1)
        except (queues.Empty, OSError, EOFError):
            continue
        latest[snapshot.source] = snapshot
        progress(_summed(list(latest.values())))


def _summed(snapshots: list[Progress]) -> Progress:
    first = snapshots[0]
    return Progress(
        done=sum(s.done for s in snapshots), total=first.total, elapsed=max(s.elapsed for s in snapshots),
        planned=first.planned, calls_per_s=sum(s.calls_per_s for s in snapshots),
        in_flight=sum(s.in_flight for s in snapshots), errors=sum(s.errors for s in snapshots),
        warming_up=all(s.warming_up for s in snapshots), recent=_summed_seconds([s.recent for s in snapshots]),
    )  # fmt: skip


def _summed_seconds(series: list[list[tuple[float, float | None]]]) -> list[tuple[float, float | None]]:
    """The processes' last seconds side by side (they started together): calls/s added, the worst p99."""
    length = min(len(recent) for recent in series)
    summed: list[tuple[float, float | None]] = []
    for index in range(-length, 0):
        p99 = [value for recent in series if (value := recent[index][1]) is not None]
        summed.append((sum(recent[index][0] for recent in series), max(p99) if p99 else None))
    return summed


# -- the embedded server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_server(*, timeout: float = 20.0) -> Iterator[str]:
    """Run ``synapse serve`` (the built-ins) in a child process on a free loopback port; yield its URL."""
    port = _free_port()
    command = [sys.executable, "-m", "synapse_cli", "serve", "--port", str(port), "--log-level", "warning"]
    command += ["--max-connections", "100000"]  # bench --topic --subscribers 1000 and more, plus a publisher
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with opener.open(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise ConnectError("the embedded server did not start", url=f"ws://127.0.0.1:{port}/ws") from None
                time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
