"""``synapse serve --workers 2 --broker redis://...`` (SPEC §5): one publish reaches the subscribers of every worker.

A real redis-server on a loopback port and the real ``synapse serve`` command with two worker processes
sharing one port; clients connect through that port until both workers hold subscribers.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from conftest import serve_process
from test_streams import free_port, redis_server

from synapse_cli import Client

APP = Path(__file__).parent.parent / "benchmarks" / "apps" / "worker_topic.py"
PER_WORKER = 3  # subscribers wanted on each of the two workers
PUBLISHES = 200


async def _clients_on_both_workers(url: str) -> dict[int, list[Client]]:
    """Open clients through the shared port until each of the two workers holds PER_WORKER of them."""
    by_worker: dict[int, list[Client]] = {}
    for _ in range(60):
        client = Client(url)
        await client.connect()
        pid = await client.call("pid")
        if len(by_worker.setdefault(pid, [])) < PER_WORKER:
            by_worker[pid].append(client)
        else:
            await client.close()
        if len(by_worker) == 2 and all(len(clients) == PER_WORKER for clients in by_worker.values()):
            return by_worker
    raise AssertionError(f"60 connections did not reach both workers {PER_WORKER} times each: {by_worker}")


async def _until_subscribed(client: Client) -> None:
    """Wait until the worker ``client`` reached holds its PER_WORKER subscribers of ``events``."""
    for _ in range(200):
        if await client.call("subscribed") == PER_WORKER:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the subscriptions did not reach their worker within 10 s")


async def _every_subscriber_gets_every_publish(url: str) -> None:
    by_worker = await _clients_on_both_workers(url)
    clients = [client for group in by_worker.values() for client in group]
    try:
        streams = [client.stream("events") for client in clients]
        firsts = [asyncio.ensure_future(stream.__anext__()) for stream in streams]  # each subscribes
        for group in by_worker.values():
            await _until_subscribed(group[0])
        publisher = clients[0]
        receivers = [await publisher.call("publish_event", n) for n in range(PUBLISHES)]
        assert receivers == [2] * PUBLISHES  # PUBLISH reached both worker processes, each time
        for stream, first in zip(streams, firsts, strict=True):
            got = [await asyncio.wait_for(first, 10)]
            while len(got) < PUBLISHES:
                got.append(await asyncio.wait_for(stream.__anext__(), 10))
            assert got == list(range(PUBLISHES))
            await stream.aclose()
    finally:
        for client in clients:
            await client.close()


def test_two_workers_share_a_topic_through_redis_and_every_subscriber_gets_every_publish() -> None:
    """`synapse serve --workers 2 --broker redis://...`: 3 subscribers on each worker; 200 publishes made on
    one worker each reach both processes (PUBLISH counts 2) and every subscriber receives 0..199 in order."""
    redis_port, port = free_port(), free_port()
    options = ["--port", str(port), "--workers", "2", "--broker", f"redis://127.0.0.1:{redis_port}/0"]
    with redis_server(redis_port), serve_process(*options, app=str(APP)) as server:
        try:
            asyncio.run(_every_subscriber_gets_every_publish(server.url))
        finally:
            server.process.send_signal(signal.SIGTERM)  # the supervisor stops its workers (a kill would not)
            server.process.wait(20)
