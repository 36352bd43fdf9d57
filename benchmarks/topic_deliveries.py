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

    python benchmarks/topic_deliveries.py [--subscribers 1000] [--procs 2] [--seconds 5] [--repeat 3]
        [--window 8] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import multiprocessing
import os
import select
import socket
import statistics
import struct
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from servers import cpu_seconds, free_port, pinned, start_server

SYNAPSE = "synapse serve"
BASELINE = "synapse serve, --baseline code"
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


def subscribers(port: int, count: int, received: multiprocessing.sharedctypes.Synchronized, ready: object) -> None:
    """Open ``count`` subscriptions, then count the items they receive into ``received`` until killed."""
    socks = [connect(port) for _ in range(count)]
    subscribe = client_frame(b'{"id":1,"func":"events"}')
    poller = select.epoll()
    tails: dict[int, bytes] = {}
    for sock in socks:
        sock.sendall(subscribe)
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
        tails[sock.fileno()] = b""
    by_fd = {sock.fileno(): sock for sock in socks}
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
            total += data.count(ITEM_MARK)
            tails[fd] = data[-(len(ITEM_MARK) - 1) :]
        received.value = total
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


@dataclass
class Round:
    deliveries_per_s: float
    publishes_per_s: float
    server_cpu: float
    generator_cpu: float
    missed: int

    @property
    def per_cpu_second(self) -> float:
        return self.deliveries_per_s / self.server_cpu if self.server_cpu else 0.0


@dataclass
class Row:
    name: str
    rounds: list[Round] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(run, attribute) for run in self.rounds)


def server_command(name: str, port: int, subscribers_count: int, baseline: Path | None) -> list[str]:
    python = sys.executable
    head = [python, "-m", "synapse_cli"] if name == BASELINE else [str(Path(python).parent / "synapse")]
    env = ["env", f"PYTHONPATH={baseline}"] if name == BASELINE else []
    options = ["--port", str(port), "--max-connections", str(subscribers_count + 50), "--log-level", "warning"]
    return [*pinned(0), *env, *head, "serve", *options]


def subscribed(port: int) -> int:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith('synapse_topic_subscribers{topic="events"}'):
            return int(float(line.split()[-1]))
    return 0


def process_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def one_round(command: list[str], count: int, procs: int, window: int, seconds: float) -> Round:
    port = int(command[command.index("--port") + 1])
    server = start_server(command, f"ws://127.0.0.1:{port}/ws")
    context = multiprocessing.get_context("fork")
    workers: list[multiprocessing.process.BaseProcess] = []
    try:
        counters = [context.Value(ctypes.c_longlong, 0, lock=False) for _ in range(procs)]
        readies = [context.Event() for _ in range(procs)]
        shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
        for share, counter, ready in zip(shares, counters, readies, strict=True):
            workers.append(context.Process(target=subscribers, args=(port, share, counter, ready), daemon=True))
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
        while subscribed(port) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {subscribed(port)} of {count} subscribed")
            time.sleep(0.1)
        go.set()
        time.sleep(1.0)  # warm-up
        start = time.monotonic()
        got0, pub0 = sum(c.value for c in counters), published.value
        server0, generator0 = cpu_seconds(server.pid), process_cpu(pids)
        time.sleep(seconds)
        elapsed = time.monotonic() - start
        got1, pub1 = sum(c.value for c in counters), published.value
        server1, generator1 = cpu_seconds(server.pid), process_cpu(pids)
        stop_flag.set()
        time.sleep(0.5)  # the last publishes are answered
        expected = published.value * count
        deadline = time.monotonic() + 30
        while sum(c.value for c in counters) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
            expected = published.value * count
        missed = expected - sum(c.value for c in counters)
        return Round(
            (got1 - got0) / elapsed,
            (pub1 - pub0) / elapsed,
            (server1 - server0) / elapsed,
            (generator1 - generator0) / elapsed,
            missed,
        )
    finally:
        for worker in workers:
            worker.kill()
            worker.join(10)
        server.terminate()
        server.wait(10)


def measure(
    subscribers_count: int = 1000,
    procs: int = 2,
    seconds: float = 5.0,
    repeat: int = 3,
    window: int = 8,
    baseline: Path | None = None,
) -> list[Row]:
    """Rounds of every server, interleaved."""
    names = [SYNAPSE, *([BASELINE] if baseline else [])]
    rows = {name: Row(name) for name in names}
    for _ in range(repeat):
        for name in names:
            command = server_command(name, free_port(), subscribers_count, baseline)
            rows[name].rounds.append(one_round(command, subscribers_count, procs, window, seconds))
    return list(rows.values())


def print_table(rows: list[Row], subscribers_count: int, seconds: float) -> None:
    print(
        f"{subscribers_count} subscribers of one topic, server on core 0, generator on core 1; "
        f"medians of {len(rows[0].rounds)} rounds of {seconds:g} s"
    )
    print(
        f"{'server':32} {'deliveries/s':>13} {'publishes/s':>12} {'server CPU':>11} {'generator CPU':>14} "
        f"{'per CPU-s':>11} {'missed':>7}"
    )
    for row in rows:
        print(
            f"{row.name:32} {row.median('deliveries_per_s'):13,.0f} {row.median('publishes_per_s'):12,.0f} "
            f"{row.median('server_cpu'):11.2f} {row.median('generator_cpu'):14.2f} "
            f"{row.median('per_cpu_second'):11,.0f} {sum(r.missed for r in row.rounds):7}"
        )
        rounds = ", ".join(f"{r.deliveries_per_s:,.0f}" for r in row.rounds)
        print(f"{'':32} rounds: {rounds}")
    if len(rows) == 2:
        now, before = rows
        print(
            f"after / before: deliveries/s {now.median('deliveries_per_s') / before.median('deliveries_per_s'):.2f}x, "
            f"per server CPU-second {now.median('per_cpu_second') / before.median('per_cpu_second'):.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=2, help="processes the subscribers are spread over")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--window", type=int, default=8, help="publishes in flight")
    parser.add_argument("--baseline", type=Path, help="an older checkout's synapse_cli, run alongside")
    options = parser.parse_args()
    rows = measure(
        options.subscribers, options.procs, options.seconds, options.repeat, options.window, options.baseline
    )
    print_table(rows, options.subscribers, options.seconds)


if __name__ == "__main__":
    main()
