"""One process's share of a topic benchmark's subscribers (``synapse bench --topic``).

A :class:`SubscriberGroup` opens its subscribers as picows connections (no coroutine or task per item),
subscribes each to the topic, and for every item records its publish-to-receipt latency (the
publisher's ``time.time_ns()`` in the item against the subscriber's on receipt: one clock, this
machine) and whether it came in order. Items with ``seq`` 0 are the warm-up's: they prove that a
subscription is live and are not counted.

With ``--procs N`` each of N processes runs one group (:mod:`synapse_cli.bench.topic_processes`); with
one process the parent drives a group directly. Either way the group's :meth:`~SubscriberGroup.part`
is a plain dict the parent merges exactly (histograms added).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from picows import WSListener, WSMsgType, ws_connect

from synapse_cli.bench.config import Call
from synapse_cli.bench.listener import request_template
from synapse_cli.client.foreign import mapped, tls_context
from synapse_cli.core import encoding, stats
from synapse_cli.core.errors import ConnectError
from synapse_cli.core.protocol import Dialect

__all__ = [
    "BROADCAST",
    "HANDSHAKES_AT_ONCE",
    "Health",
    "SYNAPSE",
    "WARMUP_SEQ",
    "Refusal",
    "SubscriberGroup",
    "TopicConfig",
    "event_loop_runner",
    "raise_open_files",
]

SYNAPSE = "synapse"  # subscribe with a call to the topic, publish with a call to the publish function
BROADCAST = "broadcast"  # a bare broadcast server: subscribers send nothing, the publisher's frames are the items
WARMUP_SEQ = 0
HANDSHAKES_AT_ONCE = 100  # per process: more at once overflows a server's accept backlog for nothing
DRAIN_IDLE_S = 1.0  # after the last publish, a group stops waiting once no item arrived for this long
FILES_PER_PROCESS = 64  # open files a process needs besides its connections (Python, pipes, the loop)
_READ_BUFFER = 4096  # picows' initial read buffer per connection (it grows when a frame needs it)
_NS = 1_000_000_000


@dataclass(frozen=True)
class TopicConfig:
    """What ``synapse bench --topic`` measures and how (SPEC §5)."""

    url: str
    topic: str = "events"
    subscribers: int = 100
    publish_rate: float = 10.0
    duration: float = 5.0
    publish_func: str = "publish_event"
    procs: int = 1
    concurrency: int = 50  # publishes in flight at most
    timeout: float = 10.0
    token: str | None = None
    dialect: Dialect = "native"
    cafile: str | None = None
    insecure: bool = False
    wire: str = SYNAPSE  # BROADCAST: benchmarks/fanout.py's bare broadcast servers


@dataclass
class Refusal:
    """Connections that could not be opened: how many, and the first one's answer."""

    count: int = 0
    message: str = ""
    status: int | None = None

    def note(self, exc: BaseException) -> None:
        self.count += 1
        if not self.message:
            self.message = str(exc)
            self.status = getattr(exc, "status", None)


def raise_open_files(needed: int) -> None:
    """Let this process (and the children it starts) open ``needed`` files: the soft limit goes up.

    Raises:
        ValueError: the hard limit is lower (``ulimit -n`` must be raised first).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows has no RLIMIT_NOFILE
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(f"{needed:,} open files are needed and this process may open {hard:,}: raise `ulimit -n`")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


class Health:
    """A generator process's own health while it measures: its CPU share and its event loop's lag."""

    def __init__(self) -> None:
        self.lag = stats.Recorder()
        self.running = False
        self.cpu_start = self.wall_start = 0.0

    def start(self) -> None:
        self.running = True
        self.cpu_start, self.wall_start = time.process_time(), time.perf_counter()
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, self._probe, loop, loop.time() + 0.01)

    def _probe(self, loop: asyncio.AbstractEventLoop, expected: float) -> None:
        """How late a 10 ms timer fires: the loop's lag."""
        if not self.running:
            return
        now = loop.time()
        self.lag.record(max(0, int((now - expected) * 1_000_000)))
        loop.call_at(now + 0.01, self._probe, loop, now + 0.01)

    def stop(self) -> tuple[float, float]:
        """(CPU % of one core, event-loop lag p99 in ms) since :meth:`start`."""
        self.running = False
        seconds = max(time.perf_counter() - self.wall_start, 1e-9)
        lag = self.lag.flush()
        lag_ms = lag.get_value_at_percentile(99) / 1000 if lag.get_total_count() else 0.0
        return (time.process_time() - self.cpu_start) / seconds * 100, lag_ms


class _Subscriber(WSListener):
    """One subscriber's connection: picows calls ``on_ws_frame`` for each frame, no task per item."""

    def __init__(self, group: SubscriberGroup) -> None:
        super().__init__()
        self.group = group
        self.transport: Any = None
        self.received = 0
        self.last_seq = WARMUP_SEQ
        self.warm = False
        self.ended = False

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport
        if self.group.subscribe is not None:
            transport.send(_TEXT, self.group.subscribe)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind == _TEXT:
            now = time.time_ns()
            try:
                message = orjson.loads(frame.get_payload_as_memoryview())
            except orjson.JSONDecodeError:
                self.group.note_error("an item frame is not JSON")
                return
            item = message.get("item") if type(message) is dict else None  # native and broadcast items
            if type(item) is not dict:
                item = self.group.other_message(self, message)
                if item is None:
                    return
            seq, sent = item.get("seq"), item.get("t")
            if type(seq) is not int or type(sent) is not int:
                return  # not the bench's item (someone else published to the topic)
            if seq == WARMUP_SEQ:
                if not self.warm:
                    self.warm = True
                    self.group.on_warm()
                return
            self.received += 1
            if seq <= self.last_seq:
                self.group.out_of_order += 1
            self.last_seq = seq
            counts = self.group.latency.counts
            value = (now - sent) // 1000
            counts[value] = counts.get(value, 0) + 1
            self.group.last_receipt = now
        elif kind == _CLOSE:
            code = frame.get_close_code()
            self.group.on_ended(self, f"the server closed the connection ({int(code)})")
            transport.send_close(code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.group.on_ended(self, "the connection was lost")


_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE


class SubscriberGroup:
    """One process's subscribers: connect them, see them live, count their items, report a part."""

    def __init__(self, config: TopicConfig, count: int) -> None:
        self.config = config
        self.count = count
        subscribing = config.wire == SYNAPSE
        self.subscribe = request_template(Call(config.topic, []), config.dialect) % 1 if subscribing else None
        self.subscribers: list[_Subscriber] = []
        self.latency = stats.Recorder()
        self.health = Health()
        self.out_of_order = 0
        self.ended = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.unsettled = count  # subscribers neither warm nor ended (see _settled)
        self.all_warm = asyncio.Event()
        self.last_receipt = 0
        self.measuring = False
        self.cpu_pct = self.lag_ms = 0.0

    # -- what the subscribers tell the group -----------------------------------------------------

    def note_error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5 and message not in self.errors:
            self.errors.append(message)

    def on_warm(self) -> None:
        self._settled()

    def on_ended(self, subscriber: _Subscriber, reason: str) -> None:
        if subscriber.ended:
            return
        subscriber.ended = True
        self.ended += 1
        self.note_error(f"subscriber ended: {reason}")
        if not subscriber.warm:
            self._settled()

    def _settled(self) -> None:
        """One more subscriber is warm or ended: when none is left waiting, the group is live."""
        self.unsettled -= 1
        if self.unsettled <= 0:
            self.all_warm.set()

    def other_message(self, subscriber: _Subscriber, message: Any) -> dict[str, Any] | None:
        """A frame that is not a native item: a JSON-RPC item (returned), a reply or a stream's end."""
        params = message.get("params") if type(message) is dict else None
        if type(params) is dict and message.get("method") == "rpc.item":
            item = params.get("item")
            return item if type(item) is dict else None
        try:
            replies = encoding.decode_replies(orjson.dumps(message))
        except ValueError:
            self.note_error("a frame the subscriber cannot read")
            return None
        for reply in replies:
            if reply.kind == "item":
                return reply.result if type(reply.result) is dict else None
            if reply.error is not None:
                self.on_ended(subscriber, f"{reply.error.message} (code {reply.error.code})")
            elif reply.kind == "end" or not isinstance(reply.result, dict):
                self.on_ended(subscriber, "the stream ended")
        return None  # a JSON-RPC subscription's reply: nothing to count

    # -- the steps the parent drives -------------------------------------------------------------

    async def connect(self) -> Refusal:
        """Open every subscriber (``HANDSHAKES_AT_ONCE`` at a time); what could not be opened."""
        config = self.config
        refusal = Refusal()
        gate = asyncio.Semaphore(HANDSHAKES_AT_ONCE)
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else None
        context = tls_context(config.url, cafile=config.cafile, insecure=config.insecure)

        async def one() -> None:
            async with gate:
                try:
                    with mapped(config.url):
                        _, subscriber = await ws_connect(
                            lambda: _Subscriber(self), config.url, ssl_context=context, extra_headers=headers,
                            websocket_handshake_timeout=config.timeout, read_buffer_init_size=_READ_BUFFER,
                        )  # fmt: skip
                except ConnectError as exc:
                    refusal.note(exc)
                    return
                if isinstance(subscriber, _Subscriber):
                    self.subscribers.append(subscriber)
                else:  # picows gives no listener when the peer hung up during the handshake
                    refusal.note(ConnectError(f"{config.url}: the server closed the connection", url=config.url))

        await asyncio.gather(*(one() for _ in range(self.count)))
        self.unsettled -= self.count - len(self.subscribers)
        if self.unsettled <= 0:
            self.all_warm.set()
        return refusal

    async def wait_warm(self) -> tuple[int, str | None]:
        """Wait until every subscriber received a warm-up item or ended; (live subscribers, first error)."""
        await self.all_warm.wait()
        return len(self.subscribers) - self.ended, self.errors[0] if self.errors else None

    def start(self) -> None:
        """Measuring begins: the process's CPU clock and its event loop's lag probe start."""
        self.measuring = True
        self.health.start()

    async def drain(self, published: int, timeout: float) -> dict[str, Any]:
        """Wait for every live subscriber to hold ``published`` items (or for no item in a while); the part."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            live = [s for s in self.subscribers if not s.ended]
            if all(s.received >= published for s in live):
                break
            count = sum(s.received for s in self.subscribers)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > DRAIN_IDLE_S:
                break
            await asyncio.sleep(0.01)
        return self.part(published)

    def part(self, published: int) -> dict[str, Any]:
        """This group's share of the report (plain JSON: it crosses a pipe), measuring stopped."""
        if self.measuring:
            self.cpu_pct, self.lag_ms = self.health.stop()
            self.measuring = False
        missed = [max(0, published - s.received) for s in self.subscribers]
        missed += [published] * (self.count - len(self.subscribers))
        return {
            "subscribers": self.count, "items": sum(s.received for s in self.subscribers),
            "missed_max": max(missed, default=0), "missed_total": sum(missed), "out_of_order": self.out_of_order,
            "ended": self.ended, "errors": self.errors, "error_count": self.error_count,
            "histogram": stats.encode_histogram(self.latency.flush()), "cpu_pct": round(self.cpu_pct, 1),
            "loop_lag_ms": round(self.lag_ms, 3), "last_receipt": self.last_receipt / _NS,
        }  # fmt: skip

    def close(self) -> None:
        for subscriber in self.subscribers:
            if subscriber.transport is not None and not subscriber.ended:
                subscriber.ended = True
                subscriber.transport.send_close(1000)
                subscriber.transport.disconnect()


def event_loop_runner() -> Callable[[Any], Any]:
    """uvloop's ``run`` where it exists, else asyncio's."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run
