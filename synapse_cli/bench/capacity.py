"""``bench --find-max``: the highest rate that meets an SLO, found by probing (SPEC §4 "Capacity search").

Each probe is a short open-model run (a :class:`~synapse_cli.bench.report.BenchReport`) at one rate. The rate
steps up geometrically until a probe misses the SLO, then bisects (geometrically) between the last rate
that met it and the first that did not. A probe in which the load generator, not the server, was the
limit ends the search: the answer is then "at least R", never a capacity the server did not show.
A near miss while stepping up (less than 25 % over the bound) is probed once more before it counts, so
one noisy probe on a busy machine does not end the search early. Pure: the probe is a function passed in,
so the search is tested without a server.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from synapse_cli.bench.report import BenchReport, with_unit
from synapse_cli.core import stats

__all__ = ["MARGINAL", "Capacity", "ProbeResult", "find_max", "judge"]

MARGINAL = 1.25  # a miss by less than this (25 % over the bound) while stepping up is probed again


@dataclass
class ProbeResult:
    """One probe: the rate asked for, what it achieved, its latency, errors, and whether the SLO held."""

    rate: float
    achieved: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    calls: int
    met: bool
    generator_bound: bool
    failures: list[str] = field(default_factory=list)
    overshoot: float = 1.0  # the worst missed term's measure over its bound (1.0: met)


@dataclass
class Capacity:
    """The answer: the highest rate that met the SLO (None: not even the first), and every probe."""

    rate: float | None
    generator_bound: bool
    probes: list[ProbeResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "find_max": {
                "rate": self.rate,
                "generator_bound": self.generator_bound,
                "probes": [asdict(probe) for probe in self.probes],
            }
        }


def _value(report: BenchReport, histogram: Any, metric: str) -> float:
    """A metric of a probe; percentiles however few the samples (a probe is short by design)."""
    if metric == "error_rate":
        return report.error_rate()
    if metric == "errors":
        return float(report.calls.errors)
    if metric == "calls_per_s":
        return report.calls_per_s
    if histogram.get_total_count() == 0:
        return math.inf
    if metric == "min":
        return float(histogram.get_min_value() / 1000)
    if metric == "max":
        return float(histogram.get_max_value() / 1000)
    if metric == "mean":
        return float(histogram.get_mean_value() / 1000)
    return float(histogram.get_value_at_percentile(float(metric[1:])) / 1000)


def judge(rate: float, report: BenchReport, rules: list[stats.SloRule]) -> ProbeResult:
    """Did the probe at ``rate`` meet the SLO, and was the generator the limit?"""
    histogram = stats.decode_histogram(report.histogram)
    failures = []
    overshoot = 1.0
    for rule in rules:
        actual = _value(report, histogram, rule.metric)
        if not stats.holds(rule, actual):
            failures.append(f"{rule.text}: measured {with_unit(rule.metric, actual)}")
            overshoot = max(overshoot, _overshoot(rule, actual))
    achieved = report.rate.achieved if report.rate else report.calls_per_s
    count = histogram.get_total_count()
    # The generator was the limit when it ran out of CPU, or sent short of the rate with every slot free (no
    # late send: the server was not holding calls). Its event-loop lag alone is not enough: on a busy
    # machine it lags a few ms whatever the rate, and a probe's latency already shows what that costs.
    late = report.rate.late_sends + report.rate.not_sent if report.rate else 0
    bound = report.generator.cpu_pct > 90 or (achieved < 0.9 * rate and late == 0)
    return ProbeResult(
        rate=round(rate, 2), achieved=achieved,
        p50_ms=histogram.get_value_at_percentile(50) / 1000 if count else None,
        p99_ms=histogram.get_value_at_percentile(99) / 1000 if count else None,
        errors=report.calls.errors, calls=report.calls.measured, met=not failures,
        generator_bound=bound, failures=failures, overshoot=round(overshoot, 3),
    )  # fmt: skip


def _overshoot(rule: stats.SloRule, actual: float) -> float:
    """How far a missed term is from its bound (1.2: 20 % over); infinite for exact terms (errors=0)."""
    if rule.op in ("<", "<=") and rule.bound > 0:
        return actual / rule.bound
    if rule.op in (">", ">=") and actual > 0:
        return rule.bound / actual
    return math.inf


def find_max(
    probe: Callable[[float], BenchReport],
    rules: list[stats.SloRule],
    *,
    start: float = 100.0,
    factor: float = 2.0,
    precision: float = 1.05,
    max_probes: int = 16,
    on_probe: Callable[[ProbeResult], None] | None = None,
) -> Capacity:
    """Search for the highest rate meeting ``rules``: ×``factor`` steps, then bisection to ``precision``."""
    probes: list[ProbeResult] = []
    low: float | None = None
    high: float | None = None
    rate = start
    while len(probes) < max_probes:
        result = judge(rate, probe(rate), rules)
        probes.append(result)
        if on_probe is not None:
            on_probe(result)
        if high is None and not result.met and result.overshoot <= MARGINAL and len(probes) < max_probes:
            # A near miss while still stepping up may be one noisy probe on a busy machine: the repeat decides,
            # so a hiccup does not end the search at a fraction of the capacity.
            result = judge(rate, probe(rate), rules)
            probes.append(result)
            if on_probe is not None:
                on_probe(result)
        if result.generator_bound:  # what the server showed, no more: the last rate met, or this one's achieved
            shown = max(low or 0.0, result.achieved if result.met else 0.0)
            return Capacity(round(shown, 2) if shown else None, True, probes)
        if result.met:
            low = rate
        else:
            high = rate
        if low is None:
            return Capacity(None, False, probes)  # even the lowest rate failed
        if high is None:
            rate = low * factor
        elif high / low <= precision:
            break
        else:
            rate = math.sqrt(low * high)
    return Capacity(round(low, 2) if low is not None else None, False, probes)
