"""The tally of a run: totals, seconds and functions counted from one ``record`` (fake clock, no server)."""

from __future__ import annotations

from synapse_cli.bench.tally import Tally
from synapse_cli.core import stats

NS = 1_000_000_000
MS = 1_000_000


def test_seconds_hold_the_calls_that_finished_in_them() -> None:
    """Replies at 0.5 s, 1.5 s (x2) and 2.2 s: seconds of 1, 2 and a last partial one of 0.3 s holding 1."""
    tally = Tally(highest_us=10**7)
    tally.begin(0)
    for now in (NS // 2, 3 * NS // 2, 3 * NS // 2 + 1):
        tally.record(now, 1000)
    tally.record(22 * NS // 10, 2000, ok=False)
    tally.finish(23 * NS // 10)
    assert [(i.t, i.duration_s, i.calls, i.ok, i.errors) for i in tally.intervals] == [
        (0.0, 1.0, 1, 1, 0),
        (1.0, 1.0, 2, 2, 0),
        (2.0, 0.3, 1, 0, 1),
    ]
    assert tally.intervals[2].calls_per_s == round(1 / 0.3, 2)
    assert tally.intervals[2].latency_ms == {"p50": 2.0, "p90": 2.0, "p99": 2.0, "max": 2.0}
    assert (tally.ok, tally.failed) == (3, 1)
    assert tally.total.get_total_count() == 4


def test_a_stall_shows_as_seconds_without_calls() -> None:
    """No reply between 0.9 s and 3.1 s: seconds 1 and 2 are there, with 0 calls."""
    tally = Tally(highest_us=10**7)
    tally.begin(0)
    tally.record(9 * NS // 10, 500)
    tally.tick(2 * NS)  # the sweep closes the idle second 1
    tally.record(31 * NS // 10, 3_000_000)
    tally.finish(4 * NS)
    assert [i.calls for i in tally.intervals] == [1, 0, 0, 1]
    assert tally.intervals[1].latency_ms["p99"] is None


def test_the_run_histogram_is_the_sum_of_the_seconds() -> None:
    """The total is exactly the seconds' histograms added: same values, same counts."""
    tally = Tally(highest_us=10**7)
    tally.begin(0)
    for i in range(3000):
        tally.record(i * MS, 100 + i % 7)
    tally.finish(3 * NS)
    added = stats.new_histogram()
    for interval in tally.intervals:
        added.add(stats.decode_histogram(interval.histogram))
    assert added.get_total_count() == tally.total.get_total_count() == 3000
    assert stats.summarize(added) == stats.summarize(tally.total)


def test_open_model_seconds_carry_their_target() -> None:
    """With a target function, each second carries the target rate between its start and end."""
    tally = Tally(highest_us=10**7, target=lambda start, end: 100 * (start + end) / 2)
    tally.begin(0)
    tally.finish(2 * NS)
    assert [i.target for i in tally.intervals] == [50.0, 150.0]


def test_functions_and_errors_are_broken_down() -> None:
    """Two functions: each gets its calls, errors and latency; lost calls count against their function."""
    tally = Tally(highest_us=10**7, functions=["add", "divide"])
    tally.begin(0)
    tally.record(1, 100, ok=True, func=0)
    tally.record(2, 100, ok=True, func=0)
    tally.record(3, 900, ok=False, func=1)
    tally.lose(4, 2, func=1)
    tally.note_error("rpc", -32000, "division by zero")
    tally.note_error("timeout", None, "no reply within 10 s", 2)
    tally.note_error("rpc", -32000, "another message")
    tally.finish(NS)
    add, divide = tally.function_stats()
    assert (add.func, add.calls, add.ok, add.errors, add.latency_ms["max"]) == ("add", 2, 2, 0, 0.1)
    assert (divide.func, divide.calls, divide.ok, divide.errors, divide.latency_ms["max"]) == ("divide", 3, 0, 3, 0.9)
    errors = [(e.kind, e.code, e.count, e.first_message) for e in tally.error_counts()]
    assert errors == [("rpc", -32000, 2, "division by zero"), ("timeout", None, 2, "no reply within 10 s")]


def test_one_function_is_the_run_itself() -> None:
    """With one function its breakdown is the run's totals (no second recording on the hot path)."""
    tally = Tally(highest_us=10**7, functions=["add_numbers"])
    tally.begin(0)
    tally.record(1, 100)
    tally.record(2, 200, ok=False)
    tally.lose(3)
    tally.finish(NS)
    (only,) = tally.function_stats()
    assert (only.func, only.calls, only.ok, only.errors) == ("add_numbers", 3, 1, 2)
    assert only.histogram == stats.encode_histogram(tally.total)
