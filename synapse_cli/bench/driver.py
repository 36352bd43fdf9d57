"""The load generator: sends calls when a schedule says so, counts them in a tally, returns a report.

The hot path is callback-driven on picows (a Cython WebSocket client): no coroutine or task per call.
Requests are pre-encoded around their id; replies are parsed with orjson and matched by id.

Two models (SPEC §4), their timing in :mod:`synapse_cli.bench.schedule`:

* closed — ``concurrency`` calls in flight over ``connections``; each reply sends the next call;
* open (``rate``, or a load shape of stages) — call *i* is due at a fixed time; with a free slot (at
  most ``concurrency`` in flight) it goes out at once, otherwise it waits and goes out as soon as one
  frees (a *late send*). Latency is recorded from the scheduled time (response time, corrected for
  coordinated omission as wrk2 does) and from the actual send (service time).

Every measured call lands in one :class:`~synapse_cli.bench.tally.Tally` (totals, seconds, functions).
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from picows import ws_connect

from synapse_cli import __version__
from synapse_cli.bench.config import BenchConfig, Progress
from synapse_cli.bench.listener import Listener, mix_order, request_template
from synapse_cli.bench.report import BenchReport, CallCounts, Generator, RateResult, Traffic, Window
from synapse_cli.bench.schedule import ClosedSchedule, OpenSchedule
from synapse_cli.bench.tally import Tally
from synapse_cli.client.foreign import mapped, tls_context
from synapse_cli.core import stats
from synapse_cli.core.errors import ConnectError

__all__ = ["run_bench"]

_NS = 1_000_000_000
_LAST_TICK_NS = 5_000_000  # at -z, calls due within this of the end still go (the timers' own lateness)


class _Run:
    """One process's benchmark: the connections, the schedule, the tally, and what ties them together."""

    def __init__(self, config: BenchConfig, progress: Callable[[Progress], None] | None, t0: int) -> None:
        self.config = config
        self.progress = progress
        calls = config.calls_mixed
        self.templates = [request_template(call, config.dialect) for call in calls]
        self.template = self.templates[0]  # the only one without --data: the hot path skips the list
        self.mix_order = mix_order(calls)
        self.mix_position = 0
        function_names = list(dict.fromkeys(call.func for call in calls))
        self.function_of = [function_names.index(call.func) for call in calls]
        self.loop = asyncio.get_running_loop()
        self.listeners: list[Listener] = []
        self.done = self.loop.create_future()
        highest_us = int((config.timeout + (config.duration or 0) + 60) * 1_000_000)
        shape = config.load_shape
        if shape is not None:
            self.open_schedule: OpenSchedule | None = OpenSchedule(t0, config.warmup, shape, config.calls,
                                                                   config.duration)  # fmt: skip
            self.closed_schedule = ClosedSchedule(t0, config.warmup, 0, None)
        else:
            self.open_schedule = None
            self.closed_schedule = ClosedSchedule(t0, config.warmup, config.calls, config.duration)
        target = self.open_schedule.target if self.open_schedule is not None else None
        self.tally = Tally(highest_us=highest_us, functions=function_names, target=target)
        self.record = self.tally.record  # bound once: the hot path calls it for every reply
        self.lag = stats.Recorder(highest_us)
        self.schedule_lag = stats.Recorder(highest_us)
        self.warm_done = 0
        self.bytes_sent = self.bytes_received = 0
        self.unmatched = self.duplicates = self.late_replies = self.late_sends = self.not_sent = 0
        self.sent = 0  # open model: measured calls that went out
        self.last_reply = 0
        self.backlog: deque[int] = deque()  # open model: scheduled times of calls waiting for a slot
        self.in_flight_total = 0
        self.stopped = False
        self.steady = False  # closed model, measuring: replies take Listener._steady_reply
        self.measuring = False
        self.cpu_start = self.cpu_stop = 0.0
        self.measure_stop = 0
        self.wall_offset = time.time_ns() - time.perf_counter_ns()

    @property
    def schedule(self) -> ClosedSchedule | OpenSchedule:
        return self.open_schedule or self.closed_schedule

    def _notice_measuring(self) -> None:
        """The schedule left its warm-up: the tally starts its first second, the CPU clock starts."""
        if self.measuring or self.schedule.warming:
            return
        self.measuring = True
        self.steady = self.open_schedule is None
        self.tally.begin(self.schedule.measure_start)
        self.cpu_start = time.process_time()

    # -- the closed model ------------------------------------------------------------------------

    def fill(self, listener: Listener) -> None:
        """Keep the connection's window full."""
        schedule = self.closed_schedule
        while len(listener.in_flight) < listener.window and not listener.closed and not self.stopped:
            admitted = schedule.admit(time.perf_counter_ns())
            self._notice_measuring()
            if admitted is None:
                break
            self.in_flight_total += 1
            listener.send(0, not admitted)
        self.check_finished()

    # -- replies ---------------------------------------------------------------------------------

    def on_reply(self, listener: Listener, payload: bytes) -> None:
        now = time.perf_counter_ns()
        try:
            reply = orjson.loads(payload)
            items = reply if type(reply) is list else [reply]
        except orjson.JSONDecodeError:
            self.tally.note_error("protocol", None, "reply is not JSON")
            return
        size = len(payload) // max(len(items), 1)
        for item in items:
            self._on_item(listener, item, now, size)

    def _on_item(self, listener: Listener, item: Any, now: int, size: int) -> None:
        request_id = item.get("id") if type(item) is dict else None
        entry = listener.in_flight.pop(request_id, None) if type(request_id) is int else None
        if entry is None:
            if type(item) is dict and ("func" in item or "method" in item or "op" in item):
                listener.answer(item)  # the server calls us (ctx.call): not a reply
                return
            self._stray(listener, request_id)
            return
        self.in_flight_total -= 1
        scheduled, sent, warm, call = entry
        error = item.get("error")
        if warm:
            self.warm_done += 1
        else:
            self.bytes_received += size
            self.last_reply = now
            self.record(now, (now - scheduled) // 1000, error is None, self.function_of[call])
            if self.open_schedule is not None:
                self.tally.service.record((now - sent) // 1000)
            if error is not None:
                code = error.get("code") if type(error) is dict else None
                message = error.get("message") if type(error) is dict else str(error)
                self.tally.note_error("rpc", code, str(message))
        self._next(listener)

    def _stray(self, listener: Listener, request_id: Any) -> None:
        if type(request_id) is int and request_id in listener.timed_out:
            listener.timed_out.discard(request_id)
            self.late_replies += 1
        elif type(request_id) is int and 0 < request_id <= listener.next_id:
            self.duplicates += 1
        else:
            self.unmatched += 1

    def _next(self, listener: Listener) -> None:
        if self.open_schedule is None:
            self.fill(listener)
            return
        if self.backlog and not listener.closed and not self.stopped:
            scheduled = self.backlog.popleft()
            self.late_sends += 1
            self.sent += 1
            self.in_flight_total += 1
            listener.send(scheduled, False)
        self.check_finished()

    def on_disconnect(self, listener: Listener) -> None:
        lost = [entry for entry in listener.in_flight.values() if not entry[2]]
        self.in_flight_total -= len(listener.in_flight)
        listener.in_flight.clear()
        if lost and not self.stopped:
            now = time.perf_counter_ns()
            for entry in lost:
                self.tally.lose(now, 1, self.function_of[entry[3]])
            code = listener.close_code
            reason = f"connection closed ({code if code is not None else 'no close frame'})"
            self.tally.note_error("close", code, reason, len(lost))
        if all(other.closed for other in self.listeners):
            self._finish()
        else:
            self.check_finished()

    # -- the open model --------------------------------------------------------------------------

    def schedule_tick(self) -> None:
        """Start every call whose time has come (or queue it when no slot is free)."""
        schedule = self.open_schedule
        if self.stopped or schedule is None:
            return
        now = time.perf_counter_ns()
        limit = self.config.concurrency
        live = [listener for listener in self.listeners if not listener.closed]
        ended = schedule.measure_end is not None and now >= schedule.measure_end
        if ended:
            # The run ends at -z: calls due more than a tick ago were beyond the generator; they are counted
            # as not sent (never sent late, after the end). The last tick's calls go out as usual.
            self.not_sent += schedule.skip_until(now - _LAST_TICK_NS)
        if live:
            for scheduled, warm in schedule.due(now):
                self._notice_measuring()
                if self.in_flight_total < limit:
                    self.schedule_lag.record((now - scheduled) // 1000)
                    self.in_flight_total += 1
                    self.sent += not warm
                    live[(schedule.index + schedule.warm_index) % len(live)].send(scheduled, warm)
                elif not warm:
                    self.backlog.append(scheduled)
        self._notice_measuring()
        if ended:
            self.not_sent += len(self.backlog)
            self.backlog.clear()
        self._expire_backlog(now)
        self.check_finished()
        if not self.done.done():
            # The loop's timers have millisecond resolution: wake at the next due call, at most 1 ms
            # ahead; the schedule lag this leaves is measured and shown as generator health.
            due = schedule.next_due()
            delay = 0.1 if due is None else (due - time.perf_counter_ns()) / _NS
            self.loop.call_later(min(max(delay, 0.001), 0.1), self.schedule_tick)

    def _expire_backlog(self, now: int) -> None:
        limit = int(self.config.timeout * _NS)
        expired = 0
        while self.backlog and now - self.backlog[0] > limit:
            self.backlog.popleft()
            expired += 1
        if expired:
            self.tally.lose(now, expired)
            self.tally.note_error("timeout", None, f"not sent within {self.config.timeout:g} s (no free slot)", expired)

    # -- time-outs, progress, the end --------------------------------------------------------------

    def sweep(self) -> None:
        """Every 100 ms: time out calls past ``timeout``, close idle seconds, report progress."""
        if self.done.done():
            return
        now = time.perf_counter_ns()
        limit = int(self.config.timeout * _NS)
        for listener in self.listeners:
            expired = [rid for rid, entry in listener.in_flight.items() if now - entry[1] > limit]
            for request_id in expired:
                _, _, warm, call = listener.in_flight.pop(request_id)
                self.in_flight_total -= 1
                listener.timed_out.add(request_id)
                if not warm:
                    self.tally.lose(now, 1, self.function_of[call])
                    self.tally.note_error("timeout", None, f"no reply within {self.config.timeout:g} s")
            if expired:
                self._next(listener)
        if self.open_schedule is None:
            for listener in self.listeners:
                self.fill(listener)  # also starts measuring when the warm-up ended without replies
        if self.measuring:
            self.tally.tick(now)
        self._report_progress(now)
        self.loop.call_later(0.1, self.sweep)

    def probe_lag(self, expected: float) -> None:
        """The event loop's own lag: how late a 10 ms timer fires."""
        if self.done.done():
            return
        now = self.loop.time()
        self.lag.record(max(0, int((now - expected) * 1_000_000)))
        self.loop.call_at(now + 0.01, self.probe_lag, now + 0.01)

    def _report_progress(self, now: int) -> None:
        if self.progress is None:
            return
        schedule = self.schedule
        elapsed = (now - schedule.measure_start) / _NS if self.measuring else 0.0
        done = self.tally.ok + self.tally.failed
        planned = schedule.duration
        recent = self.tally.recent(60)
        self.progress(
            Progress(
                done=done, total=self.config.calls if planned is None else None, elapsed=elapsed, planned=planned,
                calls_per_s=done / elapsed if elapsed > 0 else 0.0, in_flight=self.in_flight_total,
                errors=self.tally.failed, warming_up=not self.measuring, recent=recent,
            )
        )  # fmt: skip

    def _wants_more(self, now: int) -> bool:
        if self.open_schedule is not None:
            return self.open_schedule.next_due() is not None
        schedule = self.closed_schedule
        return schedule.warming or schedule.wants_more(now)

    def check_finished(self) -> None:
        if self.done.done() or not self.measuring:
            return
        if not self._wants_more(time.perf_counter_ns()) and self.in_flight_total <= 0 and not self.backlog:
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.stopped = True
            self.steady = False
            self.measure_stop = time.perf_counter_ns()
            self.cpu_stop = time.process_time()
            self.done.set_result(None)


# -- running ---------------------------------------------------------------------------------------


async def _connect(run: _Run, config: BenchConfig) -> None:
    count = config.connection_count
    windows = [config.concurrency // count + (1 if i < config.concurrency % count else 0) for i in range(count)]
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else None

    async def one(window: int) -> Listener:
        with mapped(config.url):  # the one map of foreign errors (client, bench and CLI alike)
            _, listener = await ws_connect(
                lambda: Listener(run, window),
                config.url,
                ssl_context=tls_context(config.url, cafile=config.cafile, insecure=config.insecure),
                extra_headers=headers,
                websocket_handshake_timeout=config.timeout,
                max_frame_size=64 * 2**20,
            )
        if not isinstance(listener, Listener):  # picows gives no listener when the peer hung up
            raise ConnectError(f"cannot connect to {config.url}: the server closed the connection", url=config.url)
        return listener

    results = await asyncio.gather(*(one(window) for window in windows), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    run.listeners = [r for r in results if isinstance(r, Listener)]
    if failures:
        for listener in run.listeners:
            listener.transport.disconnect()
        raise failures[0]


async def _wait_until(wall_time: float) -> None:
    """Sleep until a Unix time (several processes or machines start together)."""
    await asyncio.sleep(max(0.0, wall_time - time.time()))


async def _measure(config: BenchConfig, progress: Callable[[Progress], None] | None) -> BenchReport:
    if config.start_at is not None:  # measuring starts at start_at: the warm-up ends there
        warmup = min(config.warmup, max(0.0, config.start_at - time.time()))
        config = replace(config, warmup=warmup)
    run = _Run(config, progress, time.perf_counter_ns())  # t0 is set again below, once connected
    await _connect(run, config)
    if config.start_at is not None:
        await _wait_until(config.start_at - config.warmup)
    run = _restart(run, config, progress)
    run.loop.call_later(0.01, run.probe_lag, run.loop.time() + 0.01)
    run.loop.call_later(0.1, run.sweep)
    run.cpu_start = time.process_time()
    run._notice_measuring()
    if run.open_schedule is not None:
        run.schedule_tick()
    else:
        for listener in run.listeners:
            run.fill(listener)
    await run.done
    for listener in run.listeners:
        if not listener.closed:
            listener.transport.send_close(1000)
            listener.transport.disconnect()
    return _report(run)


def _restart(connected: _Run, config: BenchConfig, progress: Callable[[Progress], None] | None) -> _Run:
    """A fresh run whose clock starts now, on the connections ``connected`` opened."""
    run = _Run(config, progress, time.perf_counter_ns())
    run.listeners = connected.listeners
    run.done = connected.done
    for listener in run.listeners:
        listener.run = run
    return run


def _report(run: _Run) -> BenchReport:
    config, tally, schedule = run.config, run.tally, run.schedule
    end = run.measure_stop
    if run.open_schedule is None and run.last_reply and config.duration is None:
        end = run.last_reply  # -n: the last reply, not the moment the connections were closed
    elif schedule.measure_end is not None:
        # -z or a shape: measuring lasted until the planned end (and the replies after it), unless the run broke
        # off before it (every connection lost); an open schedule that ran out of calls did last until its end.
        ran_out = run.open_schedule is not None and run.open_schedule.next_due() is None
        if ran_out or end >= schedule.measure_end:
            end = max(schedule.measure_end, run.last_reply)
    start = schedule.measure_start
    tally.finish(end)
    duration = max((end - start) / _NS, 1e-9) if run.measuring else 0.0
    cpu = (run.cpu_stop - run.cpu_start) / duration * 100 if duration else 0.0
    lag = run.lag.flush()
    lag_ms = lag.get_value_at_percentile(99) / 1000 if lag.get_total_count() else 0.0
    summary = stats.summarize(tally.total)
    p50 = summary["p50"] or summary["mean"] or 0.0
    measured = tally.ok + tally.failed
    report = BenchReport(
        config={**config.describe(), "sources": 1},
        versions={"synapse": __version__, "python": platform.python_version()},
        calls=CallCounts(measured, tally.ok, tally.failed, run.warm_done),
        duration_s=round(duration, 4),
        calls_per_s=round(measured / duration, 2) if duration else 0.0,
        latency_ms=summary,
        histogram=stats.encode_histogram(tally.total),
        errors=tally.error_counts(),
        traffic=Traffic(run.bytes_sent, run.bytes_received, run.unmatched, run.duplicates, run.late_replies),
        generator=Generator(round(cpu, 1), round(lag_ms, 3), cpu > 90 or lag_ms > max(1.0, p50)),
        window=Window(round((start + run.wall_offset) / _NS, 6), round((end + run.wall_offset) / _NS, 6)),
        timeseries=tally.intervals,
        functions=tally.function_stats(),
    )
    if run.open_schedule is not None:
        service = tally.service.flush()
        schedule_lag = run.schedule_lag.flush()
        planned = run.open_schedule.shape.duration or duration  # a shape's target is over the shape, not the drain
        target = run.open_schedule.target(0.0, min(duration, planned)) if duration else 0.0
        # Sent over the time calls were due (-z, a shape), not over the drain of the last replies after it.
        due_end = schedule.measure_end
        sending = min(duration, (due_end - start) / _NS) if due_end is not None else duration
        report.rate = RateResult(
            target=round(target, 2), achieved=round(run.sent / sending, 2) if sending else 0.0,
            late_sends=run.late_sends, not_sent=run.not_sent,
        )  # fmt: skip
        report.service_latency_ms = stats.summarize(service)
        report.service_histogram = stats.encode_histogram(service)
        p99 = schedule_lag.get_value_at_percentile(99) / 1000 if schedule_lag.get_total_count() else 0.0
        report.generator.schedule_lag_ms = round(p99, 3)
    return report


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run


def run_bench(config: BenchConfig, *, progress: Callable[[Progress], None] | None = None) -> BenchReport:
    """Run one benchmark in this process (its own event loop) and return its report.

    Raises:
        ConnectError: a connection could not be opened.
    """
    return _event_loop_runner()(_measure(config, progress))  # type: ignore[no-any-return]
