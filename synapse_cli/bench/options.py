"""``synapse bench``'s options checked and read before anything runs: pairs that exclude each other, the
load shape, the ``--data`` mix, ``--shard`` and ``--start-at``. Every problem is a ValueError whose text
the command prints as a usage error (exit 2).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from synapse_cli.bench.config import Call
from synapse_cli.bench.schedule import LoadShape, parse_duration, parse_rate
from synapse_cli.core import stats

__all__ = ["BenchOptions", "CheckedOptions", "check", "parse_mix", "parse_shard", "parse_start_at"]

DEFAULT_CALLS = 1000


@dataclass(frozen=True)
class BenchOptions:
    """The options as typed on the command line."""

    func: str | None = None
    args: list[str] | None = None
    args_json: str | None = None
    data: str | None = None
    calls: int | None = None
    duration: str | None = None
    rate: str | None = None
    find_max: bool = False
    shard: str | None = None
    start_at: str | None = None
    slo: str | None = None
    procs: int = 1


@dataclass(frozen=True)
class CheckedOptions:
    """The options read: what :class:`~synapse_cli.bench.config.BenchConfig` needs."""

    func: str
    args: Any
    calls: int | None
    duration: float | None
    rate: float | None
    shape: LoadShape | None
    mix: tuple[Call, ...]
    shard: tuple[int, int] | None
    start_at: float | None
    rules: list[stats.SloRule] | None


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N (I from 0, as a Kubernetes Indexed Job's JOB_COMPLETION_INDEX)."""
    parts = text.split("/")
    try:
        index, count = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise ValueError(f"--shard: expected I/N such as 0/4, not {text!r}") from None
    if len(parts) != 2 or count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard: {text!r} needs 0 <= I < N (I counts from 0)")
    return index, count


def _iso_instant(text: str) -> float:
    try:
        instant = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--start-at: expected a Unix time or an ISO 8601 instant, not {text!r}") from None
    if instant.tzinfo is None:
        raise ValueError(f"--start-at: {text!r} has no time zone (add Z or +00:00)")
    return instant.timestamp()


def parse_start_at(text: str) -> float:
    """A Unix time (``1767225600``) or an ISO 8601 instant (``2026-12-01T04:00:00Z``)."""
    try:
        value = float(text)
    except ValueError:
        return _iso_instant(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--start-at: {text!r} is not a time")
    return value


def _call_of(line: str, number: int) -> Call:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"--data line {number}: not JSON: {exc}") from None
    weight: Any = 1.0
    if type(value) is dict:
        weight = value.get("weight", 1.0)
        func, args = value.get("func"), value.get("args", [])
        valid = type(func) is str and type(args) in (list, dict)
    else:
        valid = type(value) is list and bool(value) and type(value[0]) is str
        func, args = (value[0], value[1:]) if valid else (None, None)
    if not valid:
        raise ValueError(f'--data line {number}: expected {{"func": "...", "args": [...]}} or ["func", arg, ...]')
    if type(weight) not in (int, float) or not weight > 0 or not math.isfinite(weight):
        raise ValueError(f"--data line {number}: weight must be a positive number")
    return Call(str(func), args, float(weight))


def parse_mix(text: str) -> tuple[Call, ...]:
    """NDJSON calls in ``call --batch``'s format, each with an optional ``"weight"``."""
    calls = tuple(_call_of(line, number) for number, line in enumerate(text.splitlines(), 1) if line.strip())
    if not calls:
        raise ValueError("--data holds no calls")
    return calls


def _read(source: str) -> str:
    try:
        if source == "-":
            return sys.stdin.read()
        with open(source, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}") from None


def check(options: BenchOptions, parse_args: Callable[[list[str], str | None], Any]) -> CheckedOptions:
    """Read and cross-check the options; ValueError naming the problem."""
    if options.calls is not None and options.duration is not None:
        raise ValueError("-n and -z exclude each other: give a number of calls or a duration")
    if options.data is not None and (options.func is not None or options.args or options.args_json is not None):
        raise ValueError("--data takes its calls from the file: no FUNC, ARG or -d")
    shape = parse_rate(options.rate) if options.rate is not None else None
    if shape is not None and shape.staged and (options.calls is not None or options.duration is not None):
        raise ValueError("a --rate of stages sets its own length: no -n or -z with it")
    if options.find_max and not options.slo:
        raise ValueError('--find-max needs an --slo to meet, e.g. --slo "p99<50ms,error_rate<0.1%"')
    if options.find_max and shape is not None and shape.staged:
        raise ValueError("--find-max probes constant rates: give --rate R (the first probe) or none")
    if options.find_max and options.calls is not None:
        raise ValueError("--find-max probes for a duration (-z, default 2s), not a number of calls")
    rules = stats.parse_slo(options.slo) if options.slo else None
    duration = parse_duration(options.duration) if options.duration is not None else None
    if options.find_max and duration is None:
        duration = 2.0
    calls = options.calls if options.calls is not None else (DEFAULT_CALLS if duration is None else None)
    if shape is not None and shape.staged:
        calls = None
    constant = shape.first_rate if shape is not None and not shape.staged else None
    args = parse_args(options.args or [], options.args_json) if options.func is not None else [1, 2]
    return CheckedOptions(
        func=options.func or "add_numbers", args=args, calls=calls, duration=duration, rate=constant,
        shape=shape if shape is not None and shape.staged else None,
        mix=parse_mix(_read(options.data)) if options.data is not None else (),
        shard=parse_shard(options.shard) if options.shard else None,
        start_at=parse_start_at(options.start_at) if options.start_at else None, rules=rules,
    )  # fmt: skip
