"""The pure latency math of ``synapse bench`` (SPEC §4): HDR recording, percentiles, reports, merge, compare, SLOs."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from synapse_cli import stats
from synapse_cli.stats import SloRule

HDR_PRECISION = 1e-3  # 3 significant digits: any value is within 0.1 % of the one recorded


# -- helpers -------------------------------------------------------------------------------------


def histogram_of(values: list[int]) -> HdrHistogram:
    """An HDR histogram of ``values`` (µs), recorded one by one the plain way."""
    histogram = stats.new_histogram()
    for value in values:
        histogram.record_value(value)
    return histogram


def recorded(histogram: HdrHistogram) -> dict[int, int]:
    """Every distinct recorded value (its bucket's highest equivalent) with its count."""
    return {
        histogram.get_highest_equivalent_value(item.value_iterated_to): item.count_added_in_this_iter_step
        for item in histogram.get_recorded_iterator()
    }


def make_report(
    values: list[int],
    *,
    errors: list[dict[str, Any]] | None = None,
    failed: int = 0,
    calls_per_s: float = 1000.0,
    duration_s: float = 1.0,
    config: dict[str, Any] | None = None,
    rate: dict[str, Any] | None = None,
    service: list[int] | None = None,
) -> dict[str, Any]:
    """A schema-1 report whose latency histogram holds ``values`` (µs)."""
    histogram = histogram_of(values)
    report: dict[str, Any] = {
        "schema_version": 1,
        "config": {"url": "ws://127.0.0.1:8000/ws", "func": "add_numbers", "concurrency": 50, **(config or {})},
        "calls": {"measured": len(values), "ok": len(values) - failed, "errors": failed, "warmup": 10},
        "duration_s": duration_s,
        "calls_per_s": calls_per_s,
        "latency_ms": stats.summarize(histogram),
        "errors": errors or [],
        "traffic": {"bytes_sent": 100, "bytes_received": 200, "unmatched": 0, "duplicates": 0, "late_replies": 0},
        "generator": {"cpu_pct": 20.0, "loop_lag_ms": 0.5, "bound": False},
        "histogram": stats.encode_histogram(histogram),
    }
    if rate is not None:
        report["rate"] = rate
        service_histogram = histogram_of(service or values)
        report["service_latency_ms"] = stats.summarize(service_histogram)
        report["service_histogram"] = stats.encode_histogram(service_histogram)
        report["generator"]["schedule_lag_ms"] = 0.2
    return report


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


# -- merging reports -------------------------------------------------------------------------------


def test_merge_reports_is_the_histogram_of_all_values() -> None:
    """Merging two reports gives exactly the histogram (and so the percentiles) of all their values together."""
    rng = random.Random(11)
    first = [rng.randint(100, 5000) for _ in range(1500)]
    second = [rng.randint(2000, 90_000) for _ in range(2500)]
    merged = stats.merge_reports([make_report(first), make_report(second)])
    everything = histogram_of(first + second)
    decoded = stats.decode_histogram(merged["histogram"])
    assert decoded.get_total_count() == 4000
    assert recorded(decoded) == recorded(everything)
    assert merged["latency_ms"] == stats.summarize(everything)


def test_merge_reports_sums_counts_rates_and_traffic() -> None:
    """Counts, calls/s and traffic add up; the duration is the longest; sources count the reports merged."""
    a = make_report([100] * 300, failed=5, calls_per_s=1000.5, duration_s=2.0)
    b = make_report([200] * 700, failed=1, calls_per_s=2000.25, duration_s=3.0)
    merged = stats.merge_reports([a, b])
    assert merged["schema_version"] == 1
    assert merged["calls"] == {"measured": 1000, "ok": 994, "errors": 6, "warmup": 20}
    assert merged["calls_per_s"] == 3000.75
    assert merged["duration_s"] == 3.0
    assert merged["traffic"]["bytes_sent"] == 200 and merged["traffic"]["bytes_received"] == 400
    assert merged["config"]["sources"] == 2


def test_merge_reports_merges_errors_by_kind_and_code() -> None:
    """Errors of the same kind and code add up and keep the first message; other kinds/codes stay apart."""
    a = make_report([100] * 10, errors=[
        {"kind": "rpc", "code": -32000, "count": 3, "first_message": "division by zero"},
        {"kind": "timeout", "code": None, "count": 1, "first_message": "no reply within 10 s"},
    ])  # fmt: skip
    b = make_report([100] * 10, errors=[
        {"kind": "rpc", "code": -32000, "count": 4, "first_message": "something else"},
        {"kind": "rpc", "code": -32603, "count": 2, "first_message": "internal error"},
        {"kind": "timeout", "code": None, "count": 5, "first_message": "no reply within 10 s"},
    ])  # fmt: skip
    merged = stats.merge_reports([a, b])
    by_key = {(e["kind"], e["code"]): (e["count"], e["first_message"]) for e in merged["errors"]}
    assert by_key == {
        ("rpc", -32000): (7, "division by zero"),
        ("timeout", None): (6, "no reply within 10 s"),
        ("rpc", -32603): (2, "internal error"),
    }
    assert [e["count"] for e in merged["errors"]] == [7, 6, 2]  # most frequent first


def test_merge_reports_of_rate_runs_merges_service_histograms_and_sums_rates() -> None:
    """Open-model reports merge their service-time histograms exactly and add target and achieved rates."""
    a = make_report([900] * 100, rate={"target": 500.0, "achieved": 499.5, "late_sends": 2}, service=[300] * 100)
    b = make_report([800] * 50, rate={"target": 500.0, "achieved": 498.0, "late_sends": 3}, service=[200] * 50)
    merged = stats.merge_reports([a, b])
    assert merged["rate"] == {"target": 1000.0, "achieved": 997.5, "late_sends": 5}
    service = stats.decode_histogram(merged["service_histogram"])
    assert recorded(service) == recorded(histogram_of([300] * 100 + [200] * 50))
    assert merged["service_latency_ms"] == stats.summarize(service)


def test_merge_reports_refuses_nothing_and_other_schema_versions() -> None:
    """merge_reports raises ValueError for an empty list and for a report whose schema_version is not 1."""
    with pytest.raises(ValueError):
        stats.merge_reports([])
    with pytest.raises(ValueError, match="schema_version"):
        stats.merge_reports([make_report([1]), {**make_report([1]), "schema_version": 2}])


# -- comparing reports -----------------------------------------------------------------------------


def test_compare_reports_deltas_percentages_and_better_flags() -> None:
    """Each metric shows base, new, delta, percent and whether it got better (higher calls/s, lower latency)."""
    base = make_report([1000] * 1000, calls_per_s=1000.0, failed=4)
    new = make_report([2000] * 1000, calls_per_s=1500.0, failed=4)
    rows, warnings = stats.compare_reports(base, new)
    assert warnings == []
    by_metric = {row["metric"]: row for row in rows}
    assert list(by_metric) == ["calls_per_s", "p50", "p90", "p99", "p99.9", "errors"]
    assert by_metric["calls_per_s"] == {
        "metric": "calls_per_s", "base": 1000.0, "new": 1500.0, "delta": 500.0, "pct": 50.0, "better": True,
    }  # fmt: skip
    p50 = by_metric["p50"]
    assert (p50["base"], p50["new"]) == (1.0, 2.0)  # 1000 and 2000 µs are exact in HDR
    assert p50["delta"] == 1.0 and p50["pct"] == 100.0 and p50["better"] is False
    errors = by_metric["errors"]
    assert (errors["base"], errors["new"], errors["delta"], errors["pct"], errors["better"]) == (
        4.0,
        4.0,
        0.0,
        0.0,
        None,
    )
    # 1,000 samples are too few for p99.9: no numbers, no verdict
    assert by_metric["p99.9"]["base"] is None and by_metric["p99.9"]["delta"] is None
    assert by_metric["p99.9"]["better"] is None


def test_compare_reports_lower_latency_and_fewer_calls_per_second() -> None:
    """Latency going down is better; calls/s going down is worse."""
    rows, _ = stats.compare_reports(
        make_report([2000] * 100, calls_per_s=800.0), make_report([500] * 100, calls_per_s=400.0)
    )
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["p90"]["pct"] == -75.0 and by_metric["p90"]["better"] is True
    assert by_metric["calls_per_s"]["pct"] == -50.0 and by_metric["calls_per_s"]["better"] is False


def test_compare_reports_warns_when_configs_differ() -> None:
    """A differing config key gives one warning naming the key and both values."""
    base = make_report([100], config={"concurrency": 10})
    new = make_report([100], config={"concurrency": 20, "func": "echo"})
    _, warnings = stats.compare_reports(base, new)
    assert warnings == [
        "config differs: concurrency = 10 vs 20",
        "config differs: func = 'add_numbers' vs 'echo'",
    ]


def test_compare_reports_ignores_output_only_keys_and_embedded_ports() -> None:
    """sources/output/json never warn, nor do the URLs of two embedded-server runs; other URLs do."""
    base = make_report([100], config={"sources": 1, "embedded": True, "url": "ws://127.0.0.1:1111/ws"})
    new = make_report([100], config={"sources": 3, "embedded": True, "url": "ws://127.0.0.1:2222/ws"})
    assert stats.compare_reports(base, new)[1] == []
    base["config"]["embedded"] = new["config"]["embedded"] = False
    assert stats.compare_reports(base, new)[1] == [
        "config differs: url = 'ws://127.0.0.1:1111/ws' vs 'ws://127.0.0.1:2222/ws'"
    ]


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


def test_check_slo_met_and_not_met() -> None:
    """check_slo returns nothing when every term holds and one explanation per broken term."""
    report = make_report([1000] * 990 + [50_000] * 10, failed=10, calls_per_s=2000.0)  # p50 1 ms, max 50 ms
    assert stats.check_slo(report, stats.parse_slo("p50<=1ms,max<60ms,calls_per_s>=2000,errors<=10")) == []
    failures = stats.check_slo(report, stats.parse_slo("p50<1ms,errors=0,error_rate<0.5%,rps>2000"))
    assert len(failures) == 4
    assert failures[0] == "p50<1ms: measured 1"
    assert failures[1] == "errors=0: measured 10"
    assert failures[2] == "error_rate<0.5%: measured 0.01"
    assert failures[3] == "rps>2000: measured 2000"


def test_check_slo_fails_a_percentile_it_cannot_know() -> None:
    """A percentile term over too few samples is reported as not met, not silently passed."""
    report = make_report([1000] * 50)  # 50 samples: no p99
    (failure,) = stats.check_slo(report, stats.parse_slo("p99<1s"))
    assert "not enough samples" in failure
