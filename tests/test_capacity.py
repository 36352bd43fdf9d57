"""``bench --find-max`` (SPEC §4 "Capacity search"): the search with fake probes, then against a real server
of known capacity (4 threads x a 10 ms sleep: 400 calls/s).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from conftest import RunningServer, load_app, running_server, synapse_executable

from synapse_cli.bench.capacity import find_max
from synapse_cli.bench.report import BenchReport, CallCounts, Generator, RateResult
from synapse_cli.core import stats

SLO = stats.parse_slo("p99<50ms,error_rate<0.1%")


def fake_probe(
    capacity: float, *, generator_limit: float = float("inf"), hiccup_at: float | None = None
) -> tuple[list[float], object]:
    """A probe of a server that meets the SLO up to ``capacity`` (p99 1 ms), and misses it above (p99 900 ms);
    the first probe at ``hiccup_at`` misses narrowly (p99 55 ms), as one noisy probe on a busy machine does."""
    asked: list[float] = []

    def probe(rate: float) -> BenchReport:
        hiccup = rate == hiccup_at and rate not in asked
        asked.append(rate)
        histogram = stats.new_histogram()
        histogram.record_value(55_000 if hiccup else 1000 if rate <= capacity else 900_000, 100)
        achieved = min(rate, generator_limit)
        return BenchReport(
            config={}, calls=CallCounts(100, 100, 0, 0), duration_s=1.0, calls_per_s=achieved,
            latency_ms=stats.summarize(histogram), histogram=stats.encode_histogram(histogram),
            generator=Generator(cpu_pct=95.0 if rate > generator_limit else 30.0), rate=RateResult(rate, achieved),
        )  # fmt: skip

    return asked, probe


def test_steps_up_geometrically_then_bisects() -> None:
    """Capacity 1,000 from 100: 100, 200, 400, 800, 1600 (missed), then bisection to within 5 %: answer ≤ 1,000."""
    asked, probe = fake_probe(1000)
    answer = find_max(probe, SLO, start=100)  # type: ignore[arg-type]
    assert asked[:5] == [100, 200, 400, 800, 1600]
    assert asked[5] == pytest.approx((800 * 1600) ** 0.5)
    assert answer.rate is not None and 1000 / 1.05 <= answer.rate <= 1000
    assert [p.met for p in answer.probes] == [rate <= 1000 for rate in asked]
    assert answer.generator_bound is False


def test_a_near_miss_while_stepping_up_is_probed_again() -> None:
    """A narrow miss at 400 (p99 55 ms against 50 ms) is repeated; the repeat meets the SLO and the search goes on."""
    asked, probe = fake_probe(1000, hiccup_at=400)
    answer = find_max(probe, SLO, start=100)  # type: ignore[arg-type]
    assert asked[:6] == [100, 200, 400, 400, 800, 1600]
    assert answer.probes[2].met is False and answer.probes[2].overshoot == 1.1 and answer.probes[3].met is True
    assert answer.rate is not None and answer.rate >= 1000 / 1.05


def test_a_clear_miss_is_not_repeated() -> None:
    """A miss far over the bound (900 ms against 50 ms) counts at once: no second probe at that rate."""
    asked, probe = fake_probe(1000)
    find_max(probe, SLO, start=100)  # type: ignore[arg-type]
    assert asked.count(1600) == 1


def test_lowest_probe_missing_gives_no_answer() -> None:
    """When the first probe misses the SLO the search stops: no rate (the CLI exits 99)."""
    asked, probe = fake_probe(50)
    answer = find_max(probe, SLO, start=100)  # type: ignore[arg-type]
    assert asked == [100] and answer.rate is None
    assert answer.to_json()["find_max"]["rate"] is None


def test_a_generator_bound_probe_gives_at_least_never_a_capacity() -> None:
    """A server good for 10,000 but a generator that tops out at 3,000: 'at least 3,000 (generator-bound)'."""
    asked, probe = fake_probe(10_000, generator_limit=3000)
    answer = find_max(probe, SLO, start=100)  # type: ignore[arg-type]
    assert asked == [100, 200, 400, 800, 1600, 3200]
    assert answer.generator_bound is True and answer.rate == 3000


@pytest.fixture(scope="module")
def capacity_server() -> Iterator[RunningServer]:
    """tests/apps/capacity.py served with 4 threads: 400 calls/s at most."""
    with running_server(load_app("capacity"), threads=4) as running:
        yield running


def test_find_max_lands_within_10_percent_of_a_known_capacity(capacity_server: RunningServer) -> None:
    """`bench work --find-max --slo "p90<100ms,error_rate<0.1%"` against 400 calls/s: 360-440, in ≤ 8 probes.

    Past 400 calls/s the server's queue grows by the excess every second, so latency climbs far past 100 ms
    within a probe; below it a shared machine's scheduling jitter stays well under 100 ms at p90.
    """
    command = [
        synapse_executable(), "bench", "work", "--find-max", "--slo", "p90<100ms,error_rate<0.1%", "-z", "1.5s",
        "--warmup", "0.5s", "-c", "200", "--json", "--url", capacity_server.url,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["find_max"]
    probes = found["probes"]
    rates = [probe["rate"] for probe in probes]
    repeats = sum(1 for before, after in zip(rates, rates[1:], strict=False) if before == after)
    assert len(probes) - repeats <= 8 and repeats <= 1, probes  # a near miss may be probed twice
    assert 360 <= found["rate"] <= 440, probes
    assert found["generator_bound"] is False
    assert {"rate", "achieved", "p50_ms", "p99_ms", "errors", "met"} <= set(probes[0])
    assert probes[0]["rate"] == 100 and probes[0]["met"] is True
