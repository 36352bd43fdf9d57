"""The pure latency math of ``synapse bench`` (SPEC §4): HDR recording, percentiles, buckets, SLO terms."""

from __future__ import annotations

import random

import pytest
from conftest import histogram_of, recorded

from synapse_cli.core import stats
from synapse_cli.core.stats import SloRule

HDR_PRECISION = 1e-3  # 3 significant digits: any value is within 0.1 % of the one recorded


# -- recording and percentiles ---------------------------------------------------------------------


def test_recorder_counts_every_value_exactly() -> None:
    """Recorder.flush puts each counted value into the histogram with its exact count, then starts empty."""
    recorder = stats.Recorder()
    values = [random.Random(7).randint(1, 50_000) for _ in range(5000)]
    for value in values:
        recorder.record(value)
    histogram = recorder.flush()
    assert recorder.counts == {}
    assert histogram.get_total_count() == 5000
    assert recorded(histogram) == recorded(histogram_of(values))


def test_recorder_clamps_out_of_range_values_without_losing_them() -> None:
    """Values below 1 µs count as 1 µs and values past the highest trackable one as that value: none is dropped."""
    recorder = stats.Recorder(highest_us=10_000)
    for value in (0, -5, 7, 10**12):
        recorder.record(value)
    histogram = recorder.flush()
    assert histogram.get_total_count() == 4
    assert histogram.get_min_value() == 1
    assert histogram.get_count_at_value(1) == 2
    assert histogram.get_max_value() == histogram.get_highest_equivalent_value(recorder.highest)


def test_summarize_one_to_ten_thousand_microseconds_within_hdr_precision() -> None:
    """1..10000 µs summarize to min 0.001, mean 5.0005, stdev 2.8868, p50 5, p90 9, p99 9.9, p99.9 9.99, max 10 ms."""
    recorder = stats.Recorder()
    for value in range(1, 10_001):
        recorder.record(value)
    summary = stats.summarize(recorder.flush())
    assert list(summary) == ["min", "mean", "stdev", "p50", "p90", "p99", "p99.9", "max"]
    expected = {
        "min": 0.001, "mean": 5.0005, "stdev": 2.8868, "p50": 5.0, "p90": 9.0, "p99": 9.9, "p99.9": 9.99, "max": 10.0,
    }  # fmt: skip
    for key, value in expected.items():
        assert summary[key] == pytest.approx(value, rel=HDR_PRECISION), key


def test_min_samples_is_ten_over_one_minus_the_percentile() -> None:
    """A percentile pX needs 10/(1-X) samples: 20 for p50, 100 for p90, 1,000 for p99, 10,000 for p99.9."""
    assert [stats.min_samples(p) for p in stats.PERCENTILES] == [20, 100, 1000, 10_000]


@pytest.mark.parametrize(("count", "shown"), [(19, []), (20, ["p50"]), (99, ["p50"]), (100, ["p50", "p90"]),
                                              (999, ["p50", "p90"]), (1000, ["p50", "p90", "p99"])])  # fmt: skip
def test_summarize_hides_percentiles_without_enough_samples(count: int, shown: list[str]) -> None:
    """With n samples, summarize gives exactly the percentiles n is large enough for and None for the others."""
    summary = stats.summarize(histogram_of(list(range(1, count + 1))))
    assert [key for key in ("p50", "p90", "p99", "p99.9") if summary[key] is not None] == shown
    assert summary["min"] is not None and summary["max"] is not None and summary["mean"] is not None


def test_summarize_shows_p99_9_from_ten_thousand_samples() -> None:
    """10,000 samples are enough for p99.9 (10/(1-0.999) = 10,000) and 9,999 are not."""
    assert stats.summarize(histogram_of(list(range(1, 10_000))))["p99.9"] is None
    assert stats.summarize(histogram_of(list(range(1, 10_001))))["p99.9"] is not None


def test_summarize_of_an_empty_histogram_is_all_none() -> None:
    """No samples: every statistic is None rather than a made-up zero."""
    assert stats.summarize(stats.new_histogram()) == dict.fromkeys(
        ["min", "mean", "stdev", "p50", "p90", "p99", "p99.9", "max"]
    )


def test_encode_decode_round_trip_keeps_every_count() -> None:
    """decode_histogram(encode_histogram(h)) has the same values, counts and percentiles as h."""
    values = [random.Random(3).randint(1, 2_000_000) for _ in range(3000)]
    histogram = histogram_of(values)
    encoded = stats.encode_histogram(histogram)
    assert isinstance(encoded, str) and encoded.isascii()
    decoded = stats.decode_histogram(encoded)
    assert decoded.get_total_count() == 3000
    assert recorded(decoded) == recorded(histogram)
    assert stats.summarize(decoded) == stats.summarize(histogram)
    assert stats.encode_histogram(decoded) == encoded


def test_log_buckets_cover_min_to_max_and_sum_to_the_total() -> None:
    """log_buckets: at most 16 contiguous ranges from min to max (ms) whose counts add up to the total."""
    values = [random.Random(5).randint(50, 500_000) for _ in range(4000)]
    histogram = histogram_of(values)
    buckets = stats.log_buckets(histogram)
    assert 1 <= len(buckets) <= 16
    assert sum(count for _, _, count in buckets) == 4000
    assert buckets[0][0] == pytest.approx(histogram.get_min_value() / 1000)
    assert buckets[-1][1] == pytest.approx(histogram.get_max_value() / 1000)
    for (_, high, _), (low, _, _) in zip(buckets[:-1], buckets[1:], strict=True):
        assert high == pytest.approx(low)
    ratios = [high / low for low, high, _ in buckets]
    assert max(ratios) == pytest.approx(min(ratios))  # log-spaced: every range spans the same factor


def test_log_buckets_of_one_value_and_of_nothing() -> None:
    """A single repeated value lands in one bucket; an empty histogram has no buckets."""
    assert stats.log_buckets(stats.new_histogram()) == []
    buckets = stats.log_buckets(histogram_of([1000] * 7))
    assert sum(count for _, _, count in buckets) == 7


# -- SLOs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "op", "bound"),
    [
        ("p99<20ms", "p99", "<", 20.0),
        ("p99.9 <= 500us", "p99.9", "<=", 0.5),
        ("max<1.5s", "max", "<", 1500.0),
        ("mean<3", "mean", "<", 3.0),
        ("min>=0.1ms", "min", ">=", 0.1),
        ("p90 > 2e1 ms", "p90", ">", 20.0),
        ("errors=0", "errors", "=", 0.0),
        ("errors==0", "errors", "=", 0.0),
        ("error_rate<0.1%", "error_rate", "<", 0.001),
        ("error_rate<0.01", "error_rate", "<", 0.01),
        ("calls_per_s>=5000", "calls_per_s", ">=", 5000.0),
        ("rps>=5000/s", "calls_per_s", ">=", 5000.0),
        ("qps>100", "calls_per_s", ">", 100.0),
        ("throughput>100", "calls_per_s", ">", 100.0),
        ("P99<20MS", "p99", "<", 20.0),
    ],
)
def test_parse_slo_terms_units_and_aliases(text: str, metric: str, op: str, bound: float) -> None:
    """Each SLO term reads into its metric, comparison and bound (latency in ms, error rate as a ratio)."""
    (rule,) = stats.parse_slo(text)
    assert (rule.metric, rule.op) == (metric, op)
    assert rule.bound == pytest.approx(bound)
    assert rule.text == text.strip()


def test_parse_slo_reads_a_comma_separated_list() -> None:
    """'p99<20ms,errors=0' is two rules, in order; empty terms between commas are skipped."""
    assert stats.parse_slo("p99<20ms, errors=0,") == [
        SloRule("p99", "<", 20.0, "p99<20ms"),
        SloRule("errors", "=", 0.0, "errors=0"),
    ]


@pytest.mark.parametrize(
    "text", ["", " , ", "p99", "p99<", "p99<fast", "p99<20parsecs", "latency<5ms", "errors<5ms", "p99~5ms", "rps>5ms"]
)
def test_parse_slo_rejects_bad_input(text: str) -> None:
    """Empty SLOs, unknown metrics, unknown units and missing bounds raise ValueError."""
    with pytest.raises(ValueError):
        stats.parse_slo(text)


def test_holds_compares_in_the_rule_unit() -> None:
    """holds() applies the rule's comparison to a value in the rule's unit."""
    (rule,) = stats.parse_slo("p99<20ms")
    assert stats.holds(rule, 19.9) and not stats.holds(rule, 20.0)
    (rule,) = stats.parse_slo("errors=0")
    assert stats.holds(rule, 0) and not stats.holds(rule, 1)


def test_interval_summary_shows_percentiles_of_few_samples() -> None:
    """One second's p50/p90/p99/max are shown however few calls it held (10 here), None when it held none."""
    summary = stats.interval_summary(histogram_of([1000] * 9 + [2000]))
    assert summary == {"p50": 1.0, "p90": 1.0, "p99": 2.0, "max": 2.0}  # below 2,048 µs HDR is exact
    assert stats.interval_summary(stats.new_histogram()) == {"p50": None, "p90": None, "p99": None, "max": None}


def test_percentile_spectrum_rises_from_the_median_to_the_max() -> None:
    """The spectrum starts at p0, never goes down, and ends at (100, max)."""
    values = list(range(1, 10_001))
    spectrum = stats.percentile_spectrum(histogram_of(values))
    assert spectrum[0][0] == 0.0
    assert spectrum[-1] == (100.0, pytest.approx(10.0, rel=HDR_PRECISION))
    latencies = [value for _, value in spectrum]
    assert latencies == sorted(latencies)
    assert any(p == pytest.approx(99.0) for p, _ in spectrum)
    assert stats.percentile_spectrum(stats.new_histogram()) == []
