"""When calls go out: load shapes (``--rate "200:10s, 200->5000:60s"``) and the closed and open schedules.

Pure: every time is passed in (nanoseconds of ``time.perf_counter_ns()``), so each schedule is tested with
a fake clock. The load generator (:mod:`synapse_cli.bench.driver`) asks a schedule whether a call may start
(closed model) or which calls are due (open model) and does the sending itself.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

__all__ = ["ClosedSchedule", "LoadShape", "OpenSchedule", "Stage", "parse_duration", "parse_rate"]

_NS = 1_000_000_000
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_STAGE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(?:->\s*([0-9]*\.?[0-9]+)\s*)?:\s*(.+?)\s*$")


def parse_duration(text: str) -> float:
    """``10s``, ``500ms``, ``2m``, ``1h`` or plain seconds; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"cannot read duration {text!r} (e.g. 10s, 500ms, 2m)")
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass(frozen=True)
class Stage:
    """A stretch of the open model: ``start`` calls/s rising (or falling) linearly to ``end`` over ``duration`` s."""

    start: float
    end: float
    duration: float

    def calls(self, elapsed: float) -> float:
        """Calls due in the first ``elapsed`` seconds of the stage (the integral of its rate)."""
        return self.start * elapsed + (self.end - self.start) * elapsed * elapsed / (2 * self.duration)

    def time_of(self, calls: float) -> float:
        """Seconds into the stage at which ``calls`` calls are due (the inverse of :meth:`calls`)."""
        if calls <= 0:
            return 0.0
        slope = (self.end - self.start) / self.duration
        root = math.sqrt(max(self.start * self.start + 2 * slope * calls, 0.0))
        return 2 * calls / (self.start + root) if self.start + root > 0 else math.inf


@dataclass(frozen=True)
class LoadShape:
    """Total calls/s over time: one constant rate without an end, or stages one after the other."""

    stages: tuple[Stage, ...]

    @classmethod
    def constant(cls, rate: float) -> LoadShape:
        return cls((Stage(rate, rate, math.inf),))

    def scaled(self, factor: float) -> LoadShape:
        """The same shape at ``factor`` times the rate (one shard's part of the load)."""
        return LoadShape(tuple(Stage(s.start * factor, s.end * factor, s.duration) for s in self.stages))

    def __str__(self) -> str:
        def one(stage: Stage) -> str:
            rate = f"{stage.start:g}" if stage.start == stage.end else f"{stage.start:g}->{stage.end:g}"
            return rate if math.isinf(stage.duration) else f"{rate}:{stage.duration:g}s"

        return ", ".join(one(stage) for stage in self.stages)

    @property
    def duration(self) -> float | None:
        """Seconds the shape lasts; None for a constant rate (the run stops at -n or -z)."""
        total = sum(stage.duration for stage in self.stages)
        return None if math.isinf(total) else total

    @property
    def staged(self) -> bool:
        return self.duration is not None

    @property
    def first_rate(self) -> float:
        """The rate the warm-up runs at: the first non-zero rate of the shape."""
        for stage in self.stages:
            if stage.start or stage.end:
                return stage.start or stage.end
        return 0.0

    @cached_property
    def _table(self) -> tuple[list[float], list[float]]:
        return self._bounds()

    def _bounds(self) -> tuple[list[float], list[float]]:
        starts, counts, time, total = [], [], 0.0, 0.0
        for stage in self.stages:
            starts.append(time)
            counts.append(total)
            if not math.isinf(stage.duration):
                time += stage.duration
                total += stage.calls(stage.duration)
        return starts, counts

    def rate_at(self, elapsed: float) -> float:
        """Target calls/s at ``elapsed`` seconds (0 past the end)."""
        starts, _ = self._table
        index = bisect.bisect_right(starts, elapsed) - 1
        if index < 0 or (self.duration is not None and elapsed >= self.duration):
            return 0.0
        stage = self.stages[index]
        if math.isinf(stage.duration):
            return stage.start
        return stage.start + (stage.end - stage.start) * (elapsed - starts[index]) / stage.duration

    def calls_until(self, elapsed: float) -> float:
        """Calls due in the first ``elapsed`` seconds."""
        starts, counts = self._table
        index = bisect.bisect_right(starts, elapsed) - 1
        if index < 0:
            return 0.0
        stage = self.stages[index]
        return counts[index] + stage.calls(min(elapsed - starts[index], stage.duration))

    def time_of(self, index: int) -> float | None:
        """Seconds after the start at which call ``index`` (from 0) is due; None past the shape's end."""
        if len(self.stages) == 1 and math.isinf(self.stages[0].duration):
            return index / self.stages[0].start  # a constant rate: the open model's hot path
        starts, counts = self._table
        stage_index = bisect.bisect_right(counts, index) - 1  # the last stage starting at or before it
        stage = self.stages[stage_index]
        offset = stage.time_of(index - counts[stage_index])
        if offset < stage.duration:
            return starts[stage_index] + offset
        return None  # past the end (a rounding at a boundary lands here only for the last stage)


def parse_rate(text: str) -> LoadShape:
    """``"1000"`` (constant) or stages ``"200:10s, 200->5000:60s, 5000:30s"``; ValueError with the bad part."""
    text = text.strip()
    try:
        rate = float(text)
    except ValueError:
        pass
    else:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive number of calls/s, not {text!r}")
        return LoadShape.constant(rate)
    stages = []
    for part in text.split(","):
        match = _STAGE.match(part)
        if not match:
            raise ValueError(f"cannot read stage {part.strip()!r} (expected R:10s or R1->R2:60s)")
        start, end, duration = float(match.group(1)), float(match.group(2) or match.group(1)), match.group(3)
        seconds = parse_duration(duration)
        if seconds <= 0:
            raise ValueError(f"stage {part.strip()!r} must last longer than 0 s")
        stages.append(Stage(start, end, seconds))
    shape = LoadShape(tuple(stages))
    if shape.first_rate <= 0:
        raise ValueError(f"every stage of {text!r} has a rate of 0")
    return shape


class _Phases:
    """Warm-up, then measuring until a deadline (-z, the shape's end) or a number of calls (-n)."""

    def __init__(self, t0: int, warmup: float, calls: int | None, duration: float | None) -> None:
        self.t0 = t0
        self.warmup_end = t0 + int(warmup * _NS)
        self.calls = calls
        self.duration = duration
        self.warming = warmup > 0
        self.measure_start = 0 if self.warming else t0
        self.measure_end: int | None = None if self.warming or duration is None else t0 + int(duration * _NS)
        self.started = 0  # measured calls started (or scheduled, in the open model)
        self.limit = calls or 0  # -n (0 with -z)

    def _begin_measuring(self, now: int) -> None:
        self.warming = False
        self.measure_start = now
        if self.duration is not None:
            self.measure_end = now + int(self.duration * _NS)

    def wants_more(self, at: int) -> bool:
        """Whether a measured call may start at ``at``."""
        if self.measure_end is not None:
            return at < self.measure_end
        return self.started < self.limit


class ClosedSchedule(_Phases):
    """The closed model: a call starts whenever a slot frees, until -n calls or -z seconds."""

    def admit(self, now: int) -> bool | None:
        """May a call start at ``now``? True: a measured call, False: a warm-up call, None: no more calls."""
        if self.warming:
            if now < self.warmup_end:
                return False
            self._begin_measuring(now)
        if not self.wants_more(now):
            return None
        self.started += 1
        return True


class OpenSchedule(_Phases):
    """The open model: call *i* is due at a fixed time; warm-up at the shape's first rate, then the shape."""

    def __init__(self, t0: int, warmup: float, shape: LoadShape, calls: int | None, duration: float | None) -> None:
        super().__init__(t0, warmup, calls, shape.duration if shape.staged else duration)
        self.shape = shape
        self.warm_interval = _NS / shape.first_rate
        self.warm_index = 0
        self.index = 0  # the next measured call

    def next_due(self) -> int | None:
        """When the next call is due (ns), None when no call is left."""
        if self.warming:
            due = self.t0 + int(self.warm_index * self.warm_interval)
            if due < self.warmup_end:
                return due
            self._begin_measuring(self.warmup_end)
        offset = self.shape.time_of(self.index)
        if offset is None:
            return None
        due = self.measure_start + int(offset * _NS)
        return due if self.wants_more(due) else None

    def due(self, now: int) -> Iterator[tuple[int, bool]]:
        """Every call due by ``now``: its scheduled time and whether it is a warm-up call."""
        while (due := self.next_due()) is not None and due <= now:
            if self.warming:
                self.warm_index += 1
                yield due, True
            else:
                self.index += 1
                self.started += 1
                yield due, False

    def skip_until(self, at: int) -> int:
        """Pass over the calls due before ``at`` (ns) not handed out yet; how many (the run counts them unsent)."""
        if self.warming:
            return 0
        first = math.ceil(self.shape.calls_until(max(0, at - self.measure_start) / _NS))
        skipped = max(0, first - self.index)
        self.index += skipped
        return skipped

    def target(self, start: float, end: float) -> float:
        """The target rate (calls/s) between ``start`` and ``end`` seconds of measuring."""
        if end <= start:
            return 0.0
        return (self.shape.calls_until(end) - self.shape.calls_until(start)) / (end - start)
