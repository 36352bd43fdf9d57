"""``synapse bench --topic``: a topic's fan-out, publish to receipt, to many subscribers (SPEC §5).

The run, in order:

1. The subscribers connect (spread over ``--procs`` processes, :mod:`synapse_cli.bench.subscribers`)
   and subscribe; then the publisher connects (in this process: its own). A connection the server
   refuses stops the run with one error naming how many were refused and the server's answer.
2. Warm-up: the publisher publishes ``{"t", "seq": 0}`` until every subscriber has received one (its
   subscription is live), within ``timeout``.
3. Measuring: ``{"t": time.time_ns(), "seq": n}`` is published at ``publish_rate`` per second for
   ``duration`` seconds (at most ``concurrency`` publishes in flight; one due while none is free goes
   out late, and one never sent is counted), then the subscribers are drained: until each holds every
   accepted publish, or no item came for a second.
4. The processes' parts are merged exactly (HDR histograms added) into one :class:`StreamReport`,
   with the generator's health: the busiest process's CPU and event-loop lag, and all processes' CPU
   against the cores they may use.

Publish-to-receipt latency is the publisher's ``time.time_ns()`` in the item against the subscriber's
when it arrives: one clock, since publisher and subscribers run on this machine (the report says so).

``wire=BROADCAST`` measures a bare broadcast server instead (``benchmarks/fanout.py``): subscribers
send nothing, and the publisher's text frames, ``{"id": 1, "item": {...}}`` (the bytes synapse sends
each subscriber), are what the server broadcasts to every connection that never sent one.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from picows import WSListener, WSMsgType, ws_connect

from synapse_cli.bench.streams import LATENCY_CLOCK, Publishing, StreamReport, TopicGenerator
from synapse_cli.bench.subscribers import (
    BROADCAST,
    FILES_PER_PROCESS,
    SYNAPSE,
    WARMUP_SEQ,
    Health,
    Refusal,
    SubscriberGroup,
    TopicConfig,
    event_loop_runner,
    raise_open_files,
)
from synapse_cli.bench.topic_processes import RemoteGroup
from synapse_cli.client.foreign import mapped, tls_context
from synapse_cli.core import encoding, stats
from synapse_cli.core.errors import ConnectError, SynapseError

__all__ = [
    "BROADCAST",
    "SYNAPSE",
    "TopicConfig",
    "judge_generator",
    "measure_topic",
    "prepare_open_files",
    "topic_failed",
    "topic_warnings",
]

SHORTFALL = 0.9  # achieving less than this share of --publish-rate fails the run (the rule of --rate)
WARMUP_INTERVAL_S = 0.5  # a warm-up publish every this long until every subscriber has had one
CPU_BOUND_PCT = 90.0  # a load process above this share of its core is the limit (request/reply's rule)
# ... or one whose event loop lags more than the items' p50 latency, and more than this: the lag probe's
# timers fire on a 1 ms clock and a shared machine's scheduler adds a few ms, so less tells nothing.
LAG_FLOOR_MS = 5.0
_NS = 1_000_000_000


def prepare_open_files(config: TopicConfig, *, embedded_server: bool = False) -> None:
    """Raise this process's open-file limit for the run (and for an embedded server started after it).

    Raises:
        ValueError: the hard limit is too low for this many subscribers in one process.
    """
    per_process = math.ceil(config.subscribers / _procs(config)) + FILES_PER_PROCESS
    server = config.subscribers + 1 + FILES_PER_PROCESS if embedded_server else 0
    raise_open_files(max(per_process, server))


def _procs(config: TopicConfig) -> int:
    return max(1, min(config.procs, config.subscribers))


def measure_topic(config: TopicConfig, *, on_phase: Callable[[str], None] | None = None) -> StreamReport:
    """Run the topic benchmark (its own event loop; ``--procs`` processes) and return its report.

    ``on_phase`` is told ``"measuring"`` as the first measured publish goes out and ``"drained"`` once
    the subscribers are drained (``benchmarks/fanout.py`` reads the server's CPU time there).

    Raises:
        ConnectError: a connection was refused (the message counts them and gives the server's answer).
        SynapseError: the subscriptions never went live, or a load process failed.
    """
    report: StreamReport = event_loop_runner()(_measure(config, on_phase or (lambda phase: None)))
    return report


def _shares(config: TopicConfig) -> list[int]:
    procs = _procs(config)
    return [config.subscribers // procs + (1 if i < config.subscribers % procs else 0) for i in range(procs)]


async def _measure(config: TopicConfig, on_phase: Callable[[str], None]) -> StreamReport:
    shares = _shares(config)
    groups: list[Any]
    if len(shares) == 1:
        groups = [SubscriberGroup(config, shares[0])]
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        groups = [RemoteGroup(replace(config, procs=1), count) for count in shares]
        for group in groups:
            group.launch(context)
    publisher: _Publisher | None = None
    try:
        refusal = _merged_refusals(await asyncio.gather(*(group.connect() for group in groups)))
        try:
            publisher = await _Publisher.open(config)
        except ConnectError as exc:
            refusal.note(exc)
        if refusal.count:
            raise _refused(config, refusal)
        assert publisher is not None
        await _warm_up(config, groups, publisher)
        return await _run(config, groups, publisher, on_phase)
    finally:
        if publisher is not None:
            publisher.close()
        for group in groups:
            group.close()


def _merged_refusals(refusals: list[Refusal]) -> Refusal:
    merged = Refusal()
    for refusal in refusals:
        merged.count += refusal.count
        if refusal.message and not merged.message:
            merged.message, merged.status = refusal.message, refusal.status
    return merged


def _refused(config: TopicConfig, refusal: Refusal) -> ConnectError:
    """One error for every refused connection: how many of how many, and the server's first answer."""
    answer = refusal.message.removeprefix(f"cannot connect to {config.url}: ").removeprefix(f"{config.url}: ")
    answer = answer.removeprefix("handshake rejected: ")
    verb = "refused" if refusal.status else "failed"
    total = config.subscribers + 1
    message = f"{refusal.count:,} of {total:,} connections to {config.url} {verb}: {answer}"
    return ConnectError(message, url=config.url, status=refusal.status)


async def _warm_up(config: TopicConfig, groups: list[Any], publisher: _Publisher) -> None:
    """Publish warm-up items until every subscriber had one; fail when none is live or time runs out."""
    waits = [asyncio.ensure_future(group.wait_warm()) for group in groups]
    deadline = time.monotonic() + config.timeout
    try:
        while not all(wait.done() for wait in waits):
            if time.monotonic() > deadline or publisher.lost:
                why = f"{config.publish_func} failed: {publisher.first_error}" if publisher.first_error else (
                    "the publisher's connection was lost" if publisher.lost
                    else f"does {config.publish_func} publish to it?"
                )  # fmt: skip
                raise SynapseError(
                    f"the subscribers of {config.topic!r} did not all receive a warm-up item within "
                    f"{config.timeout:g} s: {why}"
                )
            publisher.publish({"t": time.time_ns(), "seq": WARMUP_SEQ}, measured=False)
            await asyncio.wait(waits, timeout=WARMUP_INTERVAL_S)
    finally:
        for wait in waits:
            wait.cancel()
    outcomes = [wait.result() for wait in waits]
    if sum(live for live, _ in outcomes) == 0:
        first = next((error for _, error in outcomes if error), "no reason given")
        raise SynapseError(f"no subscriber of {config.topic!r} stayed subscribed: {first}")


async def _run(
    config: TopicConfig, groups: list[Any], publisher: _Publisher, on_phase: Callable[[str], None]
) -> StreamReport:
    health = Health() if len(groups) > 1 else None  # alone, the one group's process is this one
    if health is not None:
        health.start()
    on_phase("measuring")
    for group in groups:
        group.start()
    started = time.time()
    publishing, schedule_lag = await publisher.run(config)
    ended = time.time()
    parts = await asyncio.gather(*(group.drain(publishing.ok, config.timeout) for group in groups))
    on_phase("drained")
    own = health.stop() if health is not None else None
    return _report(config, parts, publishing, (started, ended), schedule_lag, own, publisher)


def _report(
    config: TopicConfig, parts: list[dict[str, Any]], publishing: Publishing, window: tuple[float, float],
    schedule_lag_ms: float, own: tuple[float, float] | None, publisher: _Publisher,
) -> StreamReport:  # fmt: skip
    histogram = stats.new_histogram()
    for part in parts:
        histogram.add(stats.decode_histogram(part["histogram"]))
    latency = stats.summarize(histogram)
    items = sum(part["items"] for part in parts)
    last = max([part["last_receipt"] for part in parts] + [window[1]])
    seconds = max(last - window[0], config.duration)  # the run lasted at least as long as asked
    healths = [(part["cpu_pct"], part["loop_lag_ms"]) for part in parts] + ([own] if own else [])
    generator = judge_generator(healths, latency["p50"] or latency["mean"] or 0.0, schedule_lag_ms, _cores())
    errors = [error for part in parts for error in part["errors"]]
    if publisher.failed:
        errors.insert(0, f"{publisher.failed:,} publishes failed, the first: {publisher.first_error}")
    elif publisher.lost:
        errors.insert(0, "the publisher's connection was lost")
    return StreamReport(
        "topic", config.topic, config.subscribers, round(seconds, 4), items, round(items / seconds, 2),
        latency_ms=latency, published=publishing.ok, errors=list(dict.fromkeys(errors))[:5],
        missed={"max": max(p["missed_max"] for p in parts), "total": sum(p["missed_total"] for p in parts)},
        procs=len(parts), publish=publishing, latency_clock=LATENCY_CLOCK,
        generator=generator,
        histogram=stats.encode_histogram(histogram), out_of_order=sum(p["out_of_order"] for p in parts),
        ended=sum(p["ended"] for p in parts),
    )  # fmt: skip


def judge_generator(
    healths: list[tuple[float, float]], p50_ms: float, schedule_lag_ms: float, cores: int
) -> TopicGenerator:
    """The generator's health from each load process's (CPU %, event-loop lag p99 ms), and whether it was the
    limit: a process above ``CPU_BOUND_PCT`` of its core, or lagging more than the items' p50 latency (and
    ``LAG_FLOOR_MS``) -- request/reply bench's rule -- or all of them together above ``CPU_BOUND_PCT`` of
    the cores they may run on (processes that share a full core each look idle)."""
    total = sum(cpu for cpu, _ in healths)
    bound = any(cpu > CPU_BOUND_PCT or lag > max(LAG_FLOOR_MS, p50_ms) for cpu, lag in healths)
    bound = bound or total > CPU_BOUND_PCT * min(len(healths), cores)
    return TopicGenerator(
        cpu_pct=round(max(cpu for cpu, _ in healths), 1), loop_lag_ms=round(max(lag for _, lag in healths), 3),
        bound=bound, schedule_lag_ms=round(schedule_lag_ms, 3), cpu_total_pct=round(total, 1),
        processes=len(healths), cores=cores,
    )  # fmt: skip


def _cores() -> int:
    """The cores this process (and the load processes it starts, which inherit it) may run on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def topic_warnings(report: StreamReport) -> list[str]:
    """What a topic run must say besides its figures, each in one line: a shortfall, missed items, the
    generator as the limit. Empty when the run measured what it was asked to."""
    lines = []
    publish = report.publish
    if publish is not None and publish.achieved_rate < SHORTFALL * publish.target_rate:
        share = publish.achieved_rate / publish.target_rate * 100 if publish.target_rate else 0.0
        lines.append(
            f"published {publish.achieved_rate:,.1f}/s, {share:.0f} % of --publish-rate {publish.target_rate:g} "
            f"({publish.not_sent:,} publishes due were never sent): the server or the generator could not keep up"
        )
    if report.missed.get("total"):
        lines.append(
            f"{report.missed['total']:,} items missed ({report.missed['max']:,} by the subscriber that missed most "
            f"of {report.published:,})"
        )
    generator = report.generator
    if generator is not None and generator.bound:
        if generator.processes < generator.cores:
            advice = f"try --procs {report.procs + 1} or more"
        else:
            advice = f"its processes had all {generator.cores} cores they may use: fewer subscribers or publishes"
        lines.append(
            f"the load generator, not the server, was the limit (CPU {generator.cpu_total_pct:.0f} % over "
            f"{generator.processes} processes on {generator.cores} cores, the busiest {generator.cpu_pct:.0f} %, "
            f"event-loop lag p99 {generator.loop_lag_ms:.1f} ms): {advice}"
        )
    return lines


def topic_failed(report: StreamReport) -> bool:
    """Whether the run fails (exit 1): nothing arrived, an error, items missed, or the rate fell short."""
    publish = report.publish
    short = publish is not None and publish.achieved_rate < SHORTFALL * publish.target_rate
    return bool(report.errors or not report.items or report.missed.get("total") or short)


# -- the publisher -----------------------------------------------------------------------------------


class _Publisher(WSListener):
    """The publisher's connection: publish calls (or, ``BROADCAST``, bare item frames) and their replies."""

    def __init__(self, config: TopicConfig) -> None:
        super().__init__()
        self.config = config
        self.transport: Any = None
        self.next_id = 0
        self.pending: dict[int, bool] = {}  # request id -> measured
        self.ok = self.failed = 0
        self.first_error: str | None = None
        self.lost = False
        self.slot = asyncio.Event()

    @classmethod
    async def open(cls, config: TopicConfig) -> _Publisher:
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else None
        with mapped(config.url):
            _, publisher = await ws_connect(
                lambda: cls(config), config.url, extra_headers=headers, websocket_handshake_timeout=config.timeout,
                ssl_context=tls_context(config.url, cafile=config.cafile, insecure=config.insecure),
            )  # fmt: skip
        if not isinstance(publisher, cls):
            raise ConnectError(f"{config.url}: the server closed the connection", url=config.url)
        return publisher

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT or self.config.wire != SYNAPSE:
            return
        try:
            replies = encoding.decode_replies(frame.get_payload_as_bytes())
        except ValueError as exc:
            replies = []
            self._failed(str(exc))
        for reply in replies:
            measured = self.pending.pop(reply.id, None) if type(reply.id) is int else None
            if measured is None:
                continue
            if reply.error is not None:
                self._failed(f"{reply.error.message} (code {reply.error.code})", measured)
            elif measured:
                self.ok += 1
        if len(self.pending) < self.config.concurrency:
            self.slot.set()

    def _failed(self, message: str, measured: bool = True) -> None:
        self.failed += measured
        self.first_error = self.first_error or message

    def on_ws_disconnected(self, transport: Any) -> None:
        self.lost = True
        self.pending.clear()
        self.slot.set()

    def publish(self, value: dict[str, int], *, measured: bool) -> None:
        """Send one publish now."""
        if self.config.wire == SYNAPSE:
            self.next_id += 1
            data = encoding.encode_call(self.next_id, self.config.publish_func, [value], self.config.dialect)
            self.pending[self.next_id] = measured
        else:
            data = b'{"id":1,"item":' + orjson.dumps(value) + b"}"
            self.ok += measured
        self.transport.send(WSMsgType.TEXT, data)

    async def run(self, config: TopicConfig) -> tuple[Publishing, float]:
        """Publish on the open model's schedule for ``duration``; then wait for the replies (at most ``timeout``)."""
        interval = _NS / config.publish_rate
        start = time.perf_counter_ns()
        end = start + int(config.duration * _NS)
        due_count = math.ceil(config.duration * config.publish_rate)
        lag = stats.Recorder()
        sent = 0
        while sent < due_count and not self.lost:
            now = time.perf_counter_ns()
            due = start + int(sent * interval)
            if now >= end:
                break
            if due > now:
                await asyncio.sleep((due - now) / _NS)
            elif len(self.pending) >= config.concurrency:
                self.slot.clear()
                await _wait(self.slot, (end - now) / _NS)
            else:
                lag.record((now - due) // 1000)
                sent += 1
                self.publish({"t": time.time_ns(), "seq": sent}, measured=True)
        deadline = time.monotonic() + config.timeout
        while any(self.pending.values()) and not self.lost and time.monotonic() < deadline:
            self.slot.clear()
            await _wait(self.slot, 0.05)
        late = lag.flush()
        achieved = sent / config.duration  # over the time asked for: a run that broke off early fell short
        return Publishing(
            target_rate=config.publish_rate, achieved_rate=round(achieved, 2), sent=sent, ok=self.ok,
            failed=self.failed, not_sent=due_count - sent,
        ), late.get_value_at_percentile(99) / 1000 if late.get_total_count() else 0.0  # fmt: skip

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.send_close(1000)
            self.transport.disconnect()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), max(seconds, 0.0))
    except asyncio.TimeoutError:
        pass
