"""The load generator: schedules calls, records latencies, returns a report.

The hot path is callback-driven on picows (a Cython WebSocket client): no coroutine or task per call.
Requests are pre-encoded around their id; replies are parsed with orjson and matched by id.

Two models (SPEC §4):

* closed — ``concurrency`` calls in flight over ``connections``; each reply sends the next call;
* open (``rate``) — call *i* is scheduled at ``t0 + i / rate``; with a free slot (at most
  ``concurrency`` in flight) it goes out at once, otherwise it waits and goes out as soon as one
  frees (a *late send*). Latency is recorded from the scheduled time (response time, corrected for
  coordinated omission as wrk2 does) and from the actual send (service time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson
from picows import WSError, WSInvalidStatusError, WSListener, WSMsgType, ws_connect

from synapse_cli import __version__, stats
from synapse_cli.errors import ConnectError

__all__ = ["BenchConfig", "Progress", "embedded_server", "run_bench", "run_bench_procs"]

_NS = 1_000_000_000


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how (SPEC §4 ``synapse bench``)."""

    url: str
    func: str = "add_numbers"
    args: Any = field(default_factory=lambda: [1, 2])
    calls: int | None = 1000
    duration: float | None = None
    concurrency: int = 50
    connections: int | None = None
    warmup: float = 1.0
    rate: float | None = None
    timeout: float = 10.0
    token: str | None = None
    dialect: str = "native"
    cafile: str | None = None
    insecure: bool = False
    procs: int = 1

    @property
    def connection_count(self) -> int:
        return max(1, min(self.connections or min(self.concurrency, 8), self.concurrency))

    def describe(self) -> dict[str, Any]:
        """The config as the report shows it (no token)."""
        shown = asdict(self)
        shown.pop("token")
        shown["connections"] = self.connection_count
        shown["model"] = "open" if self.rate else "closed"
        return shown


@dataclass(slots=True)
class Progress:
    """A snapshot for the live progress bar."""

    done: int
    total: int | None
    elapsed: float
    planned: float | None
    calls_per_s: float
    in_flight: int
    errors: int
    warming_up: bool


class _Listener(WSListener):
    """One connection: sends calls, matches replies by id (picows calls the ``on_ws_*`` methods)."""

    def __init__(self, run: _Run, window: int) -> None:
        super().__init__()
        self.run = run
        self.window = window
        self.transport: Any = None
        self.in_flight: dict[int, tuple[int, int, bool]] = {}  # id -> (scheduled ns, sent ns, warm-up)
        self.next_id = 0
        self.timed_out: set[int] = set()
        self.closed = False
        self.close_code: int | None = None

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind == _TEXT:
            payload = frame.get_payload_as_bytes()
            run = self.run
            if run.steady and self._steady_reply(run, payload):
                return
            run.on_reply(self, payload)
        elif kind == _CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(self.close_code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed = True
        self.run.on_disconnect(self)

    def _steady_reply(self, run: _Run, payload: bytes) -> bool:
        """The hot path of the closed model while measuring: one ok reply in, the next call out.

        Everything else (errors, warm-up, batches, strays, the rate model) takes the general path;
        this one only inlines what that path would do for the common case, with the same counts.
        """
        now = time.perf_counter_ns()
        reply = orjson.loads(payload)
        if type(reply) is not dict or reply.get("error") is not None:
            return False
        request_id = reply.get("id")
        entry = self.in_flight.get(request_id) if type(request_id) is int else None
        if entry is None or entry[2]:
            return False
        del self.in_flight[request_id]  # type: ignore[arg-type]  # an int: checked above
        run.bytes_received += len(payload)
        run.ok += 1
        run.in_flight_total -= 1
        run.last_reply = now
        counts = run.latency.counts
        value = (now - entry[0]) // 1000
        counts[value] = counts.get(value, 0) + 1
        if (run.started < run.calls_limit) if run.measure_end is None else (now < run.measure_end):
            run.started += 1
            run.in_flight_total += 1
            self.send(0, False)
        else:
            run._check_finished()
        return True

    def send(self, scheduled: int, warm: bool) -> None:
        self.next_id += 1
        request_id = self.next_id
        data = self.run.template % request_id
        now = time.perf_counter_ns()
        self.in_flight[request_id] = (scheduled or now, now, warm)
        self.transport.send(_TEXT, data)
        self.run.bytes_sent += len(data)


_TEXT = WSMsgType.TEXT
_CLOSE = WSMsgType.CLOSE


def _request_parts(config: BenchConfig) -> tuple[bytes, bytes]:
    """Everything of a request but its id: the hot path only glues the id in between."""
    args = orjson.dumps(config.args)
    func = orjson.dumps(config.func)
    if config.dialect == "jsonrpc":
        return b'{"jsonrpc":"2.0","method":' + func + b',"params":' + args + b',"id":', b"}"
    return b'{"func":' + func + b',"args":' + args + b',"id":', b"}"


class _Run:
    """One process's benchmark: state, counters and the scheduling of calls."""

    def __init__(self, config: BenchConfig, progress: Callable[[Progress], None] | None) -> None:
        self.config = config
        self.progress = progress
        prefix, suffix = _request_parts(config)
        self.template = prefix.replace(b"%", b"%%") + b"%d" + suffix.replace(b"%", b"%%")
        self.calls_limit = config.calls or 0
        self.steady = False  # closed model, measuring: replies take _Listener._steady_reply
        self.loop = asyncio.get_running_loop()
        self.listeners: list[_Listener] = []
        self.done = self.loop.create_future()
        highest_us = int((config.timeout + (config.duration or 0) + 60) * 1_000_000)
        self.latency = stats.Recorder(highest_us)
        self.service = stats.Recorder(highest_us)
        self.lag = stats.Recorder(highest_us)
        self.schedule_lag = stats.Recorder(highest_us)
        self.errors: dict[tuple[str, Any], list[Any]] = {}  # (kind, code) -> [count, first message]
        self.ok = self.failed = self.warm_done = self.started = 0
        self.bytes_sent = self.bytes_received = 0
        self.unmatched = self.duplicates = self.late_replies = self.late_sends = 0
        self.warming = config.warmup > 0
        self.measure_start = 0
        self.measure_end: int | None = None  # a deadline in duration mode
        self.last_reply = 0
        self.backlog: deque[int] = deque()  # rate mode: scheduled times waiting for a slot
        self.in_flight_total = 0
        self.scheduled_count = 0
        self.stopped = False
        self.t0 = self.warmup_end = 0  # set when the connections are up
        self.cpu_start = self.cpu_stop = 0.0
        self.measure_stop = 0

    # -- deciding what to send -------------------------------------------------------------------

    def _begin_measuring(self, now: int) -> None:
        self.warming = False
        self.steady = self.config.rate is None
        self.measure_start = now
        self.cpu_start = time.process_time()
        if self.config.duration is not None:
            self.measure_end = now + int(self.config.duration * _NS)

    def _may_start(self, now: int) -> bool:
        """Whether one more call may start now (the warm-up turns into measuring on the way)."""
        if self.stopped:
            return False
        if self.warming:
            if now < self.warmup_end:
                return True
            self._begin_measuring(now)
        if self.measure_end is not None:
            return now < self.measure_end
        return self.started < (self.config.calls or 0)

    def _start_call(self, listener: _Listener) -> None:
        warm = self.warming
        if not warm:
            self.started += 1
        self.in_flight_total += 1
        listener.send(0, warm)

    def fill(self, listener: _Listener) -> None:
        """Closed model: keep the connection's window full."""
        while len(listener.in_flight) < listener.window and not listener.closed:
            now = time.perf_counter_ns()
            if not self._may_start(now):
                break
            self._start_call(listener)
        self._check_finished()

    # -- replies ---------------------------------------------------------------------------------

    def on_reply(self, listener: _Listener, payload: bytes) -> None:
        now = time.perf_counter_ns()
        self.bytes_received += len(payload)
        try:
            reply = orjson.loads(payload)
            items = reply if type(reply) is list else [reply]
        except orjson.JSONDecodeError:
            self._error("protocol", None, "reply is not JSON")
            return
        for item in items:
            self._on_item(listener, item, now)

    def _on_item(self, listener: _Listener, item: Any, now: int) -> None:
        request_id = item.get("id") if type(item) is dict else None
        entry = listener.in_flight.pop(request_id, None) if type(request_id) is int else None
        if entry is None:
            self._stray(listener, request_id)
            return
        self.in_flight_total -= 1
        scheduled, sent, warm = entry
        error = item.get("error")
        if warm:
            self.warm_done += 1
        else:
            self.last_reply = now
            counts = self.latency.counts
            value = (now - scheduled) // 1000
            counts[value] = counts.get(value, 0) + 1
            if self.config.rate:
                self.service.record((now - sent) // 1000)
            if error is None:
                self.ok += 1
            else:
                self.failed += 1
                code = error.get("code") if type(error) is dict else None
                message = error.get("message") if type(error) is dict else str(error)
                self._error("rpc", code, str(message))
        self._next(listener, now)

    def _stray(self, listener: _Listener, request_id: Any) -> None:
        if type(request_id) is int and request_id in listener.timed_out:
            listener.timed_out.discard(request_id)
            self.late_replies += 1
        elif type(request_id) is int and 0 < request_id <= listener.next_id:
            self.duplicates += 1
        else:
            self.unmatched += 1

    def _next(self, listener: _Listener, now: int) -> None:
        if self.config.rate:
            if self.backlog and not listener.closed:
                scheduled = self.backlog.popleft()  # already counted in `started` when scheduled
                self.late_sends += 1
                self.in_flight_total += 1
                listener.send(scheduled, False)
            self._check_finished()
        else:
            self.fill(listener)

    def _error(self, kind: str, code: Any, message: str, count: int = 1) -> None:
        entry = self.errors.get((kind, code))
        if entry is None:
            self.errors[(kind, code)] = [count, message]
        else:
            entry[0] += count

    def on_disconnect(self, listener: _Listener) -> None:
        lost = [entry for entry in listener.in_flight.values() if not entry[2]]
        self.in_flight_total -= len(listener.in_flight)
        listener.in_flight.clear()
        if lost and not self.stopped:
            self.failed += len(lost)
            code = listener.close_code
            self._error(
                "close", code, f"connection closed ({code if code is not None else 'no close frame'})", len(lost)
            )
        if all(other.closed for other in self.listeners):
            self._finish()
        else:
            self._check_finished()

    # -- open model ------------------------------------------------------------------------------

    def schedule_tick(self) -> None:
        """Rate mode: start every call whose time has come (or queue it when no slot is free)."""
        if self.stopped:
            return
        now = time.perf_counter_ns()
        interval = _NS / (self.config.rate or 1)
        limit = self.config.concurrency
        live = [listener for listener in self.listeners if not listener.closed]
        while live:
            scheduled = self.t0 + int(self.scheduled_count * interval)
            if scheduled > now:
                break
            if self.warming and scheduled >= self.warmup_end:
                self._begin_measuring(scheduled)
            if not self.warming and not self._wants_more(scheduled):
                break
            self.scheduled_count += 1
            if not self.warming:
                self.started += 1
            if self.in_flight_total < limit:
                self.schedule_lag.record((now - scheduled) // 1000)
                listener = live[self.scheduled_count % len(live)]
                self.in_flight_total += 1
                listener.send(scheduled, self.warming)
            elif not self.warming:
                self.backlog.append(scheduled)
        self._expire_backlog(now)
        self._check_finished()
        if not self.done.done():
            # The loop's timers have millisecond resolution: wake at the next due call, at most 1 ms
            # ahead; the schedule lag this leaves is measured and shown as generator health.
            delay = (self.t0 + int(self.scheduled_count * interval) - time.perf_counter_ns()) / _NS
            self.loop.call_later(min(max(delay, 0.001), 0.1), self.schedule_tick)

    def _wants_more(self, scheduled: int) -> bool:
        if self.measure_end is not None:
            return scheduled < self.measure_end
        return self.started < (self.config.calls or 0)

    def _expire_backlog(self, now: int) -> None:
        limit = int(self.config.timeout * _NS)
        expired = 0
        while self.backlog and now - self.backlog[0] > limit:
            self.backlog.popleft()
            expired += 1
        if expired:
            self.failed += expired
            self._error("timeout", None, f"not sent within {self.config.timeout:g} s (no free slot)", expired)

    # -- time-outs, progress, the end --------------------------------------------------------------

    def sweep(self) -> None:
        """Every 100 ms: time out calls past ``timeout``, report progress, move the warm-up along."""
        if self.done.done():
            return
        now = time.perf_counter_ns()
        limit = int(self.config.timeout * _NS)
        for listener in self.listeners:
            expired = [rid for rid, (_, sent, _) in listener.in_flight.items() if now - sent > limit]
            for request_id in expired:
                _, _, warm = listener.in_flight.pop(request_id)
                self.in_flight_total -= 1
                listener.timed_out.add(request_id)
                if not warm:
                    self.failed += 1
                    self._error("timeout", None, f"no reply within {self.config.timeout:g} s")
            if expired:
                self._next(listener, now)
        if not self.config.rate:
            for listener in self.listeners:
                self.fill(listener)  # also starts measuring when the warm-up ended without replies
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
        elapsed = (now - self.measure_start) / _NS if not self.warming else 0.0
        done = self.ok + self.failed
        self.progress(
            Progress(
                done=done,
                total=self.config.calls if self.config.duration is None else None,
                elapsed=elapsed,
                planned=self.config.duration,
                calls_per_s=done / elapsed if elapsed > 0 else 0.0,
                in_flight=self.in_flight_total,
                errors=self.failed,
                warming_up=self.warming,
            )
        )

    def _check_finished(self) -> None:
        if self.done.done() or self.warming:
            return
        more = self._wants_more(time.perf_counter_ns()) if self.config.rate else self._may_start(time.perf_counter_ns())
        if not more and self.in_flight_total <= 0 and not self.backlog:
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.stopped = True
            self.steady = False
            self.measure_stop = time.perf_counter_ns()
            self.cpu_stop = time.process_time()
            self.done.set_result(None)


# -- running ---------------------------------------------------------------------------------------


def _ssl_context(config: BenchConfig) -> ssl.SSLContext | None:
    if not config.url.startswith("wss://"):
        return None
    context = ssl.create_default_context(cafile=config.cafile)
    if config.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _connect(run: _Run, config: BenchConfig) -> None:
    count = config.connection_count
    windows = [config.concurrency // count + (1 if i < config.concurrency % count else 0) for i in range(count)]
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else None

    async def one(window: int) -> _Listener:
        try:
            _, listener = await ws_connect(
                lambda: _Listener(run, window),
                config.url,
                ssl_context=_ssl_context(config),
                extra_headers=headers,
                websocket_handshake_timeout=config.timeout,
                max_frame_size=64 * 2**20,
            )
        except WSInvalidStatusError as exc:
            status = getattr(getattr(exc, "response", None), "status", None)
            code = int(status) if status is not None else None
            raise ConnectError(f"{config.url}: handshake rejected: HTTP {code}", url=config.url, status=code) from exc
        except (OSError, asyncio.TimeoutError, WSError, ValueError) as exc:
            errno = getattr(exc, "errno", None)
            reason = os.strerror(errno) if errno else str(exc) or type(exc).__name__
            raise ConnectError(f"cannot connect to {config.url}: {reason}", url=config.url) from exc
        if not isinstance(listener, _Listener):  # picows gives no listener when the peer hung up
            raise ConnectError(f"cannot connect to {config.url}: the server closed the connection", url=config.url)
        return listener

    results = await asyncio.gather(*(one(window) for window in windows), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    run.listeners = [r for r in results if isinstance(r, _Listener)]
    if failures:
        for listener in run.listeners:
            listener.transport.disconnect()
        raise failures[0]


async def _measure(
    config: BenchConfig, progress: Callable[[Progress], None] | None, start_at: float | None
) -> dict[str, Any]:
    run = _Run(config, progress)
    await _connect(run, config)
    if start_at is not None:  # several processes start together
        await asyncio.sleep(max(0.0, start_at - time.time()))
    now = time.perf_counter_ns()
    run.t0 = now
    run.warmup_end = now + int(config.warmup * _NS)
    run.cpu_start = time.process_time()
    if not run.warming:
        run._begin_measuring(now)
    run.loop.call_later(0.01, run.probe_lag, run.loop.time() + 0.01)
    run.loop.call_later(0.1, run.sweep)
    if config.rate:
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


def _report(run: _Run) -> dict[str, Any]:
    config = run.config
    end = run.last_reply if config.rate is None and run.last_reply else run.measure_stop
    duration = max((end - run.measure_start) / _NS, 1e-9) if run.measure_start else 0.0
    cpu = (run.cpu_stop - run.cpu_start) / duration * 100 if duration else 0.0
    latency = run.latency.flush()
    measured = run.ok + run.failed
    lag = run.lag.flush()
    lag_ms = lag.get_value_at_percentile(99) / 1000 if lag.get_total_count() else 0.0
    summary = stats.summarize(latency)
    p50 = summary["p50"] or summary["mean"] or 0.0
    report: dict[str, Any] = {
        "schema_version": stats.SCHEMA_VERSION,
        "config": {**config.describe(), "sources": 1},
        "versions": {"synapse": __version__, "python": platform.python_version()},
        "calls": {"measured": measured, "ok": run.ok, "errors": run.failed, "warmup": run.warm_done},
        "duration_s": round(duration, 4),
        "calls_per_s": round(measured / duration, 2) if duration else 0.0,
        "latency_ms": summary,
        "errors": [
            {"kind": kind, "code": code, "count": count, "first_message": message}
            for (kind, code), (count, message) in sorted(run.errors.items(), key=lambda item: -item[1][0])
        ],
        "traffic": {
            "bytes_sent": run.bytes_sent,
            "bytes_received": run.bytes_received,
            "unmatched": run.unmatched,
            "duplicates": run.duplicates,
            "late_replies": run.late_replies,
        },
        "generator": {
            "cpu_pct": round(cpu, 1),
            "loop_lag_ms": round(lag_ms, 3),
            "bound": cpu > 90 or lag_ms > max(1.0, p50),
        },
        "histogram": stats.encode_histogram(latency),
    }
    if config.rate:
        service = run.service.flush()
        schedule = run.schedule_lag.flush()
        report["rate"] = {
            "target": config.rate,
            "achieved": round(run.started / duration, 2) if duration else 0.0,
            "late_sends": run.late_sends,
        }
        report["service_latency_ms"] = stats.summarize(service)
        report["service_histogram"] = stats.encode_histogram(service)
        report["generator"]["schedule_lag_ms"] = (
            round(schedule.get_value_at_percentile(99) / 1000, 3) if schedule.get_total_count() else 0.0
        )
    return report


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run


def run_bench(
    config: BenchConfig, *, progress: Callable[[Progress], None] | None = None, start_at: float | None = None
) -> dict[str, Any]:
    """Run one benchmark in this process (its own event loop) and return the JSON report.

    Raises:
        ConnectError: a connection could not be opened.
    """
    return _event_loop_runner()(_measure(config, progress, start_at))  # type: ignore[no-any-return]


def _share(config: BenchConfig, index: int, procs: int) -> BenchConfig:
    def part(total: int) -> int:
        return total // procs + (1 if index < total % procs else 0)

    return replace(
        config,
        calls=part(config.calls) if config.calls is not None and config.duration is None else config.calls,
        concurrency=max(1, part(config.concurrency)),
        connections=max(1, part(config.connection_count)),
        rate=config.rate / procs if config.rate else None,
        procs=1,
    )


def _worker(config: BenchConfig, start_at: float) -> dict[str, Any] | str:
    try:
        return run_bench(config, start_at=start_at)
    except ConnectError as exc:
        return f"connect: {exc}"


def run_bench_procs(config: BenchConfig) -> dict[str, Any]:
    """Spread the load over ``config.procs`` processes started together; merge their histograms exactly."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    procs = config.procs
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(procs, mp_context=context) as pool:
        start_at = time.time() + 1.5 + 0.2 * procs  # time for the workers to start and connect
        results = list(pool.map(_worker, [_share(config, i, procs) for i in range(procs)], [start_at] * procs))
    failures = [r for r in results if isinstance(r, str)]
    if failures:
        raise ConnectError(failures[0].removeprefix("connect: "), url=config.url)
    merged = stats.merge_reports([r for r in results if isinstance(r, dict)])
    merged["config"] = {**config.describe(), "sources": 1}
    return merged


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
