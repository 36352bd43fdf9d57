"""Load shapes and schedules (SPEC §4 "Load shapes"), with a fake clock: no server, no event loop."""

from __future__ import annotations

import pytest

from synapse_cli.bench.schedule import ClosedSchedule, LoadShape, OpenSchedule, Stage, parse_duration, parse_rate

NS = 1_000_000_000


def test_parse_rate_reads_a_constant_rate_and_stages() -> None:
    """'1000' is a constant rate without end; stages read R:D and R1->R2:D in any duration unit."""
    assert parse_rate("1000") == LoadShape.constant(1000.0)
    assert parse_rate("1000").duration is None
    shape = parse_rate("200:10s, 200->5000:1m, 5000:30000ms")
    assert shape.stages == (Stage(200, 200, 10), Stage(200, 5000, 60), Stage(5000, 5000, 30))
    assert shape.duration == 100.0
    assert str(shape) == "200:10s, 200->5000:60s, 5000:30s"


@pytest.mark.parametrize("text", ["", "0", "-5", "fast", "200:", "200:0s", "200->:5s", "0:5s", "200:5parsecs", "inf"])
def test_parse_rate_rejects_what_it_cannot_read(text: str) -> None:
    """Bad rates and stages raise ValueError (the CLI's usage error)."""
    with pytest.raises(ValueError):
        parse_rate(text)


def test_parse_duration_units() -> None:
    """Durations in ms, s, m, h or plain seconds."""
    assert [parse_duration(t) for t in ("500ms", "2", "1.5s", "2m", "1h")] == [0.5, 2.0, 1.5, 120.0, 3600.0]


def test_calls_until_is_the_integral_of_the_rate() -> None:
    """200/s for 10 s, a ramp to 5000/s over 60 s, 5000/s for 30 s: 2,000, then 156,000, then 150,000 calls."""
    shape = parse_rate("200:10s, 200->5000:60s, 5000:30s")
    assert shape.calls_until(10) == 2000
    assert shape.calls_until(70) == 2000 + 156_000
    assert shape.calls_until(100) == 2000 + 156_000 + 150_000
    assert shape.rate_at(5) == 200 and shape.rate_at(40) == 2600 and shape.rate_at(99) == 5000
    assert shape.rate_at(100) == 0


def test_time_of_inverts_calls_until_on_every_stage() -> None:
    """Call i is due when i calls are due: time_of and calls_until agree to a nanosecond, ramps included."""
    shape = parse_rate("200:10s, 200->5000:60s, 5000:30s")
    for index in (0, 1, 1999, 2000, 2001, 50_000, 157_999, 158_000, 300_000, 307_999):
        due = shape.time_of(index)
        assert due is not None
        assert shape.calls_until(due) == pytest.approx(index, abs=1e-6)
    assert shape.time_of(308_000) is None  # past the end


def test_a_zero_rate_stage_holds_no_call() -> None:
    """'0:1s, 0->100:2s': nothing in the first second, the first call at 1 s, 100 calls in all."""
    shape = parse_rate("0:1s, 0->100:2s")
    assert shape.time_of(0) == 1.0
    assert shape.calls_until(3) == 100
    assert shape.first_rate == 100


def test_closed_schedule_warms_up_then_admits_n_calls() -> None:
    """Warm-up calls until the warm-up ends, then exactly -n measured calls, then none."""
    schedule = ClosedSchedule(0, 1.0, 3, None)
    assert schedule.admit(NS // 2) is False and schedule.warming
    assert [schedule.admit(NS + i) for i in range(4)] == [True, True, True, None]
    assert schedule.measure_start == NS


def test_closed_schedule_with_a_duration_stops_at_the_deadline() -> None:
    """-z 2s without warm-up: calls are admitted until 2 s after the start, none at or after it."""
    schedule = ClosedSchedule(10, 0.0, None, 2.0)
    assert schedule.admit(10 + 2 * NS - 1) is True
    assert schedule.admit(10 + 2 * NS) is None


def test_open_schedule_sends_each_second_its_target() -> None:
    """A 0.5 s warm-up at 100/s, then 100/s for 1 s and a ramp 100->300 over 2 s: 50, 100, 150, 250 calls."""
    schedule = OpenSchedule(0, 0.5, parse_rate("100:1s, 100->300:2s"), None, None)
    due = list(schedule.due(10 * NS))
    warm = [t for t, is_warm in due if is_warm]
    measured = [t for t, is_warm in due if not is_warm]
    assert len(warm) == 50 and max(warm) < NS // 2
    assert schedule.measure_start == NS // 2
    per_second = [sum(1 for t in measured if NS // 2 + s * NS <= t < NS // 2 + (s + 1) * NS) for s in range(3)]
    assert per_second == [100, 150, 250]
    assert schedule.next_due() is None
    assert schedule.target(1.0, 2.0) == 150.0


def test_open_schedule_hands_out_only_what_is_due() -> None:
    """At 1,000/s with no warm-up, 10.5 ms in: calls 0..10 are due, the next at 11 ms."""
    schedule = OpenSchedule(0, 0.0, parse_rate("1000"), None, 1.0)
    assert [t for t, _ in schedule.due(10_500_000)] == [i * 1_000_000 for i in range(11)]
    assert schedule.next_due() == 11_000_000
    assert schedule.started == 11


def test_open_schedule_stops_at_n_calls_or_the_duration() -> None:
    """-n 5 stops after five calls; -z 1s stops before the call due at 1 s."""
    by_count = OpenSchedule(0, 0.0, parse_rate("100"), 5, None)
    assert len(list(by_count.due(10 * NS))) == 5
    by_time = OpenSchedule(0, 0.0, parse_rate("100"), None, 1.0)
    assert len(list(by_time.due(10 * NS))) == 100


def test_skip_until_passes_over_calls_the_generator_never_reached() -> None:
    """At 1,000/s with 10 calls handed out, skipping until 25 ms passes over calls 10..24 (15), then hands out 25."""
    schedule = OpenSchedule(0, 0.0, parse_rate("1000"), None, 1.0)
    assert len(list(schedule.due(9_500_000))) == 10
    assert schedule.skip_until(25_000_000) == 15
    assert schedule.next_due() == 25_000_000
    assert schedule.skip_until(20_000_000) == 0  # nothing left before that
