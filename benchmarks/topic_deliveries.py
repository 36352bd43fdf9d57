"""Topic fan-out of one ``synapse serve``: deliveries/s and deliveries per server CPU-second, before and after.

One server (pinned to core 0 where the OS allows) serves the built-in topic ``events``. --subscribers raw
WebSocket connections (spread over --procs processes, pinned to core 1) each subscribe once; a
publisher process keeps --window ``publish_event({"n": i})`` calls in flight as fast as the server
answers them. Subscribers read with a non-blocking ``epoll`` loop that sleeps 5 ms between polls, so a
read carries many items and a delivery costs the generator a ``bytes.count``, not a Python callback:
the generator is cheap enough not to be the bound (its CPU share is printed to prove it).

A round measures --seconds after one second of warm-up: deliveries/s (items received by all
subscribers), publishes/s, the server's CPU share of its core and the generator's (subscribers and
publisher together, on core 1), and deliveries per server CPU-second, the figure a busy machine moves
least. After the round the publisher stops and the script waits until every subscriber received every
publish: "missed" counts deliveries that never came (must be 0).

With --baseline DIR (``git archive COMMIT synapse_cli | tar -x -C DIR``) that code's server runs the
same rounds, interleaved: before and after in one run, the ratio of the medians printed.

With --workers N --broker the rounds compare one process against N sharing a topic through Redis:
``synapse serve benchmarks/apps/worker_topic.py`` alone, with ``--broker``, and with ``--workers N
--broker``, each round against a fresh ``redis-server`` on a free loopback port. The subscribers connect
through the one shared port and ask ``pid`` first, so every delivery is counted for the worker that made
it; the publisher's calls land on whichever worker the kernel gives its connection, and each publish
reaches the others through Redis. The N workers are not pinned (the machine's cores are theirs, shared
with the generator on core 1 and with Redis); server CPU is the sum over the workers, and Redis's own
share is printed beside it.

    python benchmarks/topic_deliveries.py [--subscribers 1000] [--procs 2] [--seconds 5] [--repeat 3]
        [--window 8] [--baseline DIR | --workers N --broker]
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import multiprocessing
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from servers import cpu_seconds, free_port, pinned, start_server

SYNAPSE = "synapse serve"
BASELINE = "synapse serve, --baseline code"
WORKER_APP = Path(__file__).parent / "apps" / "worker_topic.py"  # the built-ins plus pid and subscribed
ITEM_MARK = b'"item":'  # once in every item frame, native and JSON-RPC alike
POLL_SLEEP = 0.005  # seconds a subscriber process sleeps between polls: reads carry many items
MIB = 2**20


# -- RFC 6455, just enough ------------------------------------------------------------------------


def handshake(sock: socket.socket, port: int) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the server closed the connection during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101 "):
        raise SystemExit(f"handshake refused: {head[:200]!r}")


def client_frame(payload: bytes) -> bytes:
    """A masked text frame (payloads under 64 KiB)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    if len(payload) < 126:
        return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked
    return struct.pack("!BBH", 0x81, 0x80 | 126, len(payload)) + mask + masked


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait behind the server's delayed ACK
    handshake(sock, port)
    return sock


# -- the generator's processes --------------------------------------------------------------------


def call(sock: socket.socket, func: str) -> int:
    """One blocking call on a fresh connection (before it subscribes); its integer result."""
    sock.sendall(client_frame(b'{"id":0,"func":"%s"}' % func.encode()))
    reply = b""
    while b'"error"' not in reply:
        reply += sock.recv(4096)
    return int(reply.split(b'"result":')[1].split(b",")[0])


def subscribers(
    port: int,
    count: int,
    received: multiprocessing.sharedctypes.Synchronized,
    ready: object,
    workers: list[int] | None = None,
    per_worker: multiprocessing.sharedctypes.SynchronizedArray | None = None,
    held: multiprocessing.sharedctypes.SynchronizedArray | None = None,
) -> None:
    """Open ``count`` subscriptions, then count the items they receive into ``received`` until killed.

    With ``workers`` (their pids), each connection asks ``pid`` first: its deliveries are also counted in
    ``per_worker`` at that worker's index, and ``held`` counts the subscribers each worker holds.
    """
    socks = [connect(port) for _ in range(count)]
    subscribe = client_frame(b'{"id":1,"func":"events"}')
    poller = select.epoll()
    tails: dict[int, bytes] = {}
    slots: dict[int, int] = {}
    for sock in socks:
        if workers is not None and held is not None:
            slots[sock.fileno()] = workers.index(call(sock, "pid"))
            held[slots[sock.fileno()]] += 1
        sock.sendall(subscribe)
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        tails[sock.fileno()] = b""
    by_fd = {sock.fileno(): sock for sock in socks}
    counts = [0] * (len(workers) if workers else 0)
    ready.set()  # type: ignore[attr-defined]
    total = 0
    while True:
        for fd, _ in poller.poll(1.0):
            try:
                data = by_fd[fd].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise SystemExit("a subscriber's connection was closed")
            data = tails[fd] + data
            items = data.count(ITEM_MARK)
            total += items
            if slots:
                counts[slots[fd]] += items
            tails[fd] = data[-(len(ITEM_MARK) - 1) :]
        received.value = total
        if per_worker is not None:
            for index, value in enumerate(counts):
                per_worker[index] = value
        time.sleep(POLL_SLEEP)


def publisher(port: int, window: int, published: multiprocessing.sharedctypes.Synchronized, go: object) -> None:
    """Keep ``window`` publish_event calls in flight; count the answered ones into ``published``."""
    sock = connect(port)
    go.wait()  # type: ignore[attr-defined]
    number = 0

    def send() -> None:
        nonlocal number
        sock.sendall(client_frame(b'{"id":%d,"func":"publish_event","args":[{"n":%d}]}' % (number, number)))
        number += 1

    for _ in range(window):
        send()
    answered, pending = 0, b""
    while True:
        pending += sock.recv(1 << 16)
        replies = pending.count(b'"result":')
        if replies:
            pending = pending[pending.rindex(b'"result":') + 9 :]
            answered += replies
            published.value = answered
            for _ in range(replies):
                if not stop_flag.is_set():
                    send()


stop_flag = multiprocessing.Event()


# -- one round ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """One server the rounds run: this code or --baseline's, in one process or ``workers``, with Redis or not."""

    name: str
    baseline: Path | None = None
    workers: int = 0  # 0: the plain built-ins in one process (no pid probes); 1+: WORKER_APP in that many
    broker: bool = False


@dataclass
class Round:
    deliveries_per_s: float
    publishes_per_s: float
    server_cpu: float
    generator_cpu: float
    missed: int
    redis_cpu: float = 0.0
    per_worker: list[float] = field(default_factory=list)  # deliveries/s made by each worker
    held: list[int] = field(default_factory=list)  # subscribers each worker held

    @property
    def per_cpu_second(self) -> float:
        return self.deliveries_per_s / self.server_cpu if self.server_cpu else 0.0


@dataclass
class Row:
    name: str
    rounds: list[Round] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.rounds)


def server_command(setup: Setup, port: int, subscribers_count: int, redis_port: int | None) -> list[str]:
    python = sys.executable
    baseline = setup.baseline
    head = [python, "-m", "synapse_cli"] if baseline else [str(Path(python).parent / "synapse")]
    env = ["env", f"PYTHONPATH={baseline}"] if baseline else []
    options = ["--port", str(port), "--max-connections", str(subscribers_count + 50), "--log-level", "warning"]
    if setup.workers:
        options[:0] = [str(WORKER_APP)]
    if setup.workers > 1:
        options += ["--workers", str(setup.workers)]
    if redis_port is not None:
        options += ["--broker", f"redis://127.0.0.1:{redis_port}/0"]
    pin = pinned(0) if setup.workers <= 1 else []  # N workers get the machine's cores
    return [*pin, *env, *head, "serve", *options]


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A fresh redis-server on a loopback port, no persistence (pinned to no core: it is a third party)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--broker needs redis-server on PATH (Debian: apt-get install redis-server)")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise SystemExit(f"redis-server did not start on port {port}")
        time.sleep(0.05)


def worker_probes(port: int, workers: int) -> dict[int, socket.socket]:
    """One connection to each of the ``workers`` processes (by pid), found by connecting until all answered."""
    probes: dict[int, socket.socket] = {}
    deadline = time.monotonic() + 30
    while len(probes) < workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(probes)} of {workers} workers answered within 30 s")
        sock = connect(port)
        pid = call(sock, "pid")
        if pid in probes:
            sock.close()
        else:
            probes[pid] = sock
    return probes


def subscribed(port: int, probes: dict[int, socket.socket] | None = None) -> int:
    """Subscribers of ``events`` the server holds: each worker's own count, or /metrics' for the built-ins."""
    if probes:
        return sum(call(sock, "subscribed") for sock in probes.values())
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('synapse_topic_subscribers{topic="events"}'):
            return int(float(line.split()[-1]))
    return 0


def process_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def one_round(setup: Setup, count: int, procs: int, window: int, seconds: float) -> Round:
    port = free_port()
    redis_port = free_port() if setup.broker else None
    redis = start_redis(redis_port) if redis_port is not None else None
    command = server_command(setup, port, count, redis_port)
    workers: list[multiprocessing.process.BaseProcess] = []
    probes: dict[int, socket.socket] = {}
    server = start_server(command, f"ws://127.0.0.1:{port}/ws")
    context = multiprocessing.get_context("fork")
    try:
        probes = worker_probes(port, setup.workers) if setup.workers else {}
        server_pids = list(probes) or [server.pid]
        slots = list(probes) or None
        width = max(1, len(probes))
        counters = [context.Value(ctypes.c_longlong, 0, lock=False) for _ in range(procs)]
        per_worker = [context.Array(ctypes.c_longlong, width, lock=False) for _ in range(procs)]
        held = [context.Array(ctypes.c_longlong, width, lock=False) for _ in range(procs)]
        readies = [context.Event() for _ in range(procs)]
        shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
        for arguments in zip(shares, counters, readies, per_worker, held, strict=True):
            share, counter, ready, worker_counts, worker_held = arguments
            target_args = (port, share, counter, ready, slots, worker_counts, worker_held)
            workers.append(context.Process(target=subscribers, args=target_args, daemon=True))
        published = context.Value(ctypes.c_longlong, 0, lock=False)
        go = context.Event()
        stop_flag.clear()
        workers.append(context.Process(target=publisher, args=(port, window, published, go), daemon=True))
        for worker in workers:
            worker.start()
        pids = [worker.pid for worker in workers if worker.pid is not None]
        if pinned(1):
            for pid in pids:
                os.sched_setaffinity(pid, {1})
        for ready in readies:
            if not ready.wait(120):
                raise SystemExit("the subscribers did not connect in time")
        deadline = time.monotonic() + 60
        while subscribed(port, probes) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {subscribed(port, probes)} of {count} subscribed")
            time.sleep(0.1)
        go.set()
        time.sleep(1.0)  # warm-up

        def snapshot() -> tuple[float, int, list[int], int, float, float, float]:
            by_worker = [sum(array[i] for array in per_worker) for i in range(width)]
            redis_seconds = cpu_seconds(redis.pid) if redis is not None else 0.0
            delivered = sum(c.value for c in counters)
            now = time.monotonic()
            return (
                now,
                delivered,
                by_worker,
                published.value,
                process_cpu(server_pids),
                process_cpu(pids),
                redis_seconds,
            )

        before = snapshot()
        time.sleep(seconds)
        after = snapshot()
        elapsed = after[0] - before[0]
        stop_flag.set()
        time.sleep(0.5)  # the last publishes are answered
        expected = published.value * count
        deadline = time.monotonic() + 30
        while sum(c.value for c in counters) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
            expected = published.value * count
        missed = expected - sum(c.value for c in counters)
        return Round(
            (after[1] - before[1]) / elapsed,
            (after[3] - before[3]) / elapsed,
            (after[4] - before[4]) / elapsed,
            (after[5] - before[5]) / elapsed,
            missed,
            (after[6] - before[6]) / elapsed,
            [(a - b) / elapsed for a, b in zip(after[2], before[2], strict=True)] if probes else [],
            [sum(array[i] for array in held) for i in range(width)] if probes else [],
        )
    finally:
        for worker in workers:
            worker.kill()
            worker.join(10)
        for sock in probes.values():
            sock.close()
        server.terminate()
        server.wait(20)
        if redis is not None:
            redis.terminate()
            redis.wait(10)


def setups(baseline: Path | None, workers: int, broker: bool) -> list[Setup]:
    """The servers the rounds compare."""
    if workers > 1 or broker:
        many = [Setup(f"{workers} workers, --broker", workers=workers, broker=True)] if workers > 1 else []
        return [Setup("1 process", workers=1), Setup("1 process, --broker", workers=1, broker=True), *many]
    return [Setup(SYNAPSE), *([Setup(BASELINE, baseline=baseline)] if baseline else [])]


def measure(
    subscribers_count: int = 1000,
    procs: int = 2,
    seconds: float = 5.0,
    repeat: int = 3,
    window: int = 8,
    baseline: Path | None = None,
    workers: int = 1,
    broker: bool = False,
) -> list[Row]:
    """Rounds of every server, interleaved."""
    servers = setups(baseline, workers, broker)
    rows = {setup.name: Row(setup.name) for setup in servers}
    for _ in range(repeat):
        for setup in servers:
            rows[setup.name].rounds.append(one_round(setup, subscribers_count, procs, window, seconds))
    return list(rows.values())


def print_table(rows: list[Row], subscribers_count: int, seconds: float) -> None:
    print(
        f"{subscribers_count} subscribers of one topic, generator on core 1 (one process: server on core 0); "
        f"medians of {len(rows[0].rounds)} rounds of {seconds:g} s"
    )
    print(
        f"{'server':32} {'deliveries/s':>13} {'publishes/s':>12} {'server CPU':>11} {'generator CPU':>14} "
        f"{'per CPU-s':>11} {'redis CPU':>10} {'missed':>7}"
    )
    for row in rows:
        print(
            f"{row.name:32} {row.median('deliveries_per_s'):13,.0f} {row.median('publishes_per_s'):12,.0f} "
            f"{row.median('server_cpu'):11.2f} {row.median('generator_cpu'):14.2f} "
            f"{row.median('per_cpu_second'):11,.0f} {row.median('redis_cpu'):10.2f} "
            f"{sum(r.missed for r in row.rounds):7}"
        )
        rounds = ", ".join(f"{r.deliveries_per_s:,.0f}" for r in row.rounds)
        print(f"{'':32} rounds: {rounds}")
        for index, run in enumerate(row.rounds):
            if len(run.per_worker) > 1:
                shares = ", ".join(f"{d:,.0f}/s to {n}" for d, n in zip(run.per_worker, run.held, strict=True))
                print(f"{'':32} round {index + 1} by worker: {shares}")
    if len(rows) == 2 and rows[1].name == BASELINE:
        now, before = rows
        print(
            f"after / before: deliveries/s {now.median('deliveries_per_s') / before.median('deliveries_per_s'):.2f}x, "
            f"per server CPU-second {now.median('per_cpu_second') / before.median('per_cpu_second'):.2f}x"
        )
    elif len(rows) == 3:
        alone, single, many = rows
        for label, attribute in (("deliveries/s", "deliveries_per_s"), ("per server CPU-second", "per_cpu_second")):
            print(
                f"{many.name} / {single.name}: {label} {many.median(attribute) / single.median(attribute):.2f}x "
                f"(/ {alone.name}: {many.median(attribute) / alone.median(attribute):.2f}x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2, help="processes the subscribers are spread over")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=int, default=8, help="publishes in flight")
    parser.add_argument("--baseline", type=Path, help="an older checkout's synapse_cli, run alongside")
    parser.add_argument("--workers", type=int, default=1, help="with --broker: also N worker processes")
    parser.add_argument("--broker", action="store_true", help="compare against servers sharing a redis-server")
    options = parser.parse_args()
    if options.workers > 1 and not options.broker:
        parser.error("--workers N shares the topic through Redis: add --broker")
    if options.baseline and options.broker:
        parser.error("--baseline compares one process; run it without --workers/--broker")
    rows = measure(
        options.subscribers,
        options.procs,
        options.seconds,
        options.repeat,
        options.window,
        options.baseline,
        options.workers,
        options.broker,
    )
    print_table(rows, options.subscribers, options.seconds)


if __name__ == "__main__":
    main()
