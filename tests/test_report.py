"""The report model (STYLE habit 17): JSON in and out, merge, compare, SLO checks, the HdrHistogram log."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from conftest import histogram_of, recorded
from hdrh.log import HistogramLogReader

from synapse_cli.bench.report import BenchReport, Interval, Window, check_slo, compare_reports, merge_reports
from synapse_cli.core import stats

# -- helpers -------------------------------------------------------------------------------------


def version_1_document(
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
    """A report as the first schema-1 files were written (no timeseries, window or functions)."""
    histogram = histogram_of(values)
    document: dict[str, Any] = {
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
        document["rate"] = rate
        service_histogram = histogram_of(service or values)
        document["service_latency_ms"] = stats.summarize(service_histogram)
        document["service_histogram"] = stats.encode_histogram(service_histogram)
        document["generator"]["schedule_lag_ms"] = 0.2
    return document


def make_report(values: list[int], **options: Any) -> BenchReport:
    """A BenchReport read from a version-1 document whose histogram holds ``values`` (µs)."""
    return BenchReport.from_json(version_1_document(values, **options))


def interval(t: float, values: list[int], *, target: float | None = None) -> Interval:
    """One second of a timeseries holding ``values`` (µs)."""
    histogram = histogram_of(values)
    return Interval(t, 1.0, len(values), len(values), 0, float(len(values)), stats.interval_summary(histogram),
                    stats.encode_histogram(histogram), target)  # fmt: skip


# -- the model -------------------------------------------------------------------------------------


def test_a_version_1_file_reads_and_writes_back_the_same_document() -> None:
    """An older schema-1 document (no timeseries) reads, and writes back as itself plus the new empty parts."""
    document = version_1_document([100, 200, 300], rate={"target": 500.0, "achieved": 499.0, "late_sends": 2})
    report = BenchReport.from_json(document)
    assert report.rate is not None and report.rate.not_sent == 0
    written = report.to_json()
    assert written.pop("timeseries") == [] and written.pop("functions") == [] and written.pop("versions") == {}
    written["rate"].pop("not_sent")
    assert written == document


def test_to_json_and_from_json_round_trip_every_section() -> None:
    """A full report (window, timeseries with and without targets, functions) survives JSON unchanged."""
    report = make_report([100] * 10)
    report.window = Window(1000.0, 1001.0)
    report.timeseries = [interval(0.0, [100] * 5, target=5.0), interval(1.0, [100] * 5)]
    written = report.to_json()
    assert list(written)[0] == "schema_version"
    assert "target" not in written["timeseries"][1]
    assert BenchReport.from_json(written) == report


@pytest.mark.parametrize("document", [None, [], {"schema_version": 2}, {"schema_version": 1, "calls": {}}])
def test_from_json_refuses_what_is_not_a_version_1_report(document: Any) -> None:
    """Anything but a complete schema-1 report raises ValueError (the CLI turns it into a usage error)."""
    with pytest.raises(ValueError, match="not a synapse bench report"):
        BenchReport.from_json(document)


# -- merging reports -------------------------------------------------------------------------------


def test_merge_reports_is_the_histogram_of_all_values() -> None:
    """Merging two reports gives exactly the histogram (and so the percentiles) of all their values together."""
    rng = random.Random(11)
    first = [rng.randint(100, 5000) for _ in range(1500)]
    second = [rng.randint(2000, 90_000) for _ in range(2500)]
    merged, warnings = merge_reports([make_report(first), make_report(second)])
    everything = histogram_of(first + second)
    decoded = stats.decode_histogram(merged.histogram)
    assert decoded.get_total_count() == 4000
    assert recorded(decoded) == recorded(everything)
    assert merged.latency_ms == stats.summarize(everything)
    assert warnings == []  # no windows to judge by: older reports merge without a word


def test_merge_reports_sums_counts_rates_and_traffic() -> None:
    """Without windows (older files) counts, calls/s and traffic add up and the duration is the longest."""
    a = make_report([100] * 300, failed=5, calls_per_s=1000.5, duration_s=2.0)
    b = make_report([200] * 700, failed=1, calls_per_s=2000.25, duration_s=3.0)
    merged, _ = merge_reports([a, b])
    assert merged.to_json()["calls"] == {"measured": 1000, "ok": 994, "errors": 6, "warmup": 20}
    assert merged.calls_per_s == 3000.75
    assert merged.duration_s == 3.0
    assert merged.traffic is not None and (merged.traffic.bytes_sent, merged.traffic.bytes_received) == (200, 400)
    assert merged.config["sources"] == 2


def test_merge_of_runs_made_together_takes_the_rate_over_the_merged_window() -> None:
    """Two runs over the same 2 s: the merged rate is all calls over that window, and no warning."""
    a, b = make_report([100] * 2000), make_report([100] * 3000)
    a.window, b.window = Window(1000.0, 1002.0), Window(1000.1, 1002.0)
    merged, warnings = merge_reports([a, b])
    assert warnings == []
    assert merged.window == Window(1000.0, 1002.0)
    assert merged.duration_s == 2.0 and merged.calls_per_s == 2500.0


def test_merge_of_runs_made_one_after_the_other_warns_and_does_not_sum_rates() -> None:
    """Windows that do not overlap: a warning, and the rate is the calls over the whole span (not the sum)."""
    a, b = make_report([100] * 1000, calls_per_s=1000.0), make_report([100] * 1000, calls_per_s=1000.0)
    a.window, b.window = Window(1000.0, 1001.0), Window(1005.0, 1006.0)
    merged, warnings = merge_reports([a, b])
    assert warnings == ["the runs' time windows do not overlap: they ran one after the other, not together"]
    assert merged.calls_per_s == round(2000 / 6, 2)


def test_merge_adds_the_same_seconds_of_each_timeseries() -> None:
    """Seconds at the same wall-clock time add up, their histograms merged exactly; targets add up."""
    a, b = make_report([100] * 30), make_report([300] * 30)
    a.window, b.window = Window(1000.0, 1002.0), Window(1001.0, 1003.0)
    a.timeseries = [interval(0.0, [100] * 10, target=10.0), interval(1.0, [100] * 20, target=20.0)]
    b.timeseries = [interval(0.0, [300] * 10, target=10.0), interval(1.0, [300] * 20, target=20.0)]
    merged, _ = merge_reports([a, b])
    assert [(i.t, i.calls, i.target) for i in merged.timeseries] == [(0.0, 10, 10.0), (1.0, 30, 30.0), (2.0, 20, 20.0)]
    middle = stats.decode_histogram(merged.timeseries[1].histogram)
    assert recorded(middle) == recorded(histogram_of([100] * 20 + [300] * 10))


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
    merged, _ = merge_reports([a, b])
    by_key = {(e.kind, e.code): (e.count, e.first_message) for e in merged.errors}
    assert by_key == {
        ("rpc", -32000): (7, "division by zero"),
        ("timeout", None): (6, "no reply within 10 s"),
        ("rpc", -32603): (2, "internal error"),
    }
    assert [e.count for e in merged.errors] == [7, 6, 2]  # most frequent first


def test_merge_reports_of_rate_runs_merges_service_histograms_and_sums_rates() -> None:
    """Open-model reports merge their service-time histograms exactly and add target and achieved rates."""
    a = make_report([900] * 100, rate={"target": 500.0, "achieved": 499.5, "late_sends": 2}, service=[300] * 100)
    b = make_report([800] * 50, rate={"target": 500.0, "achieved": 498.0, "late_sends": 3}, service=[200] * 50)
    merged, _ = merge_reports([a, b])
    assert merged.to_json()["rate"] == {"target": 1000.0, "achieved": 997.5, "late_sends": 5, "not_sent": 0}
    assert merged.service_histogram is not None
    service = stats.decode_histogram(merged.service_histogram)
    assert recorded(service) == recorded(histogram_of([300] * 100 + [200] * 50))
    assert merged.service_latency_ms == stats.summarize(service)


def test_merge_reports_refuses_nothing() -> None:
    """merge_reports raises ValueError for an empty list."""
    with pytest.raises(ValueError):
        merge_reports([])


# -- comparing reports -----------------------------------------------------------------------------


def test_compare_reports_deltas_percentages_and_better_flags() -> None:
    """Each metric shows base, new, delta, percent and whether it got better (higher calls/s, lower latency)."""
    base = make_report([1000] * 1000, calls_per_s=1000.0, failed=4)
    new = make_report([2000] * 1000, calls_per_s=1500.0, failed=4)
    rows, warnings = compare_reports(base, new)
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


def test_compare_reports_has_no_float_noise() -> None:
    """Deltas are rounded: 0.1 → 0.4 calls/s gives 0.3, not 0.30000000000000004."""
    rows, _ = compare_reports(make_report([100], calls_per_s=0.1), make_report([100], calls_per_s=0.4))
    assert rows[0]["delta"] == 0.3 and rows[0]["pct"] == 300.0


def test_compare_reports_lower_latency_and_fewer_calls_per_second() -> None:
    """Latency going down is better; calls/s going down is worse."""
    rows, _ = compare_reports(make_report([2000] * 100, calls_per_s=800.0), make_report([500] * 100, calls_per_s=400.0))
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["p90"]["pct"] == -75.0 and by_metric["p90"]["better"] is True
    assert by_metric["calls_per_s"]["pct"] == -50.0 and by_metric["calls_per_s"]["better"] is False


def test_compare_reports_warns_in_json_spelling_when_configs_differ() -> None:
    """A differing config key gives one warning naming the key and both values as JSON spells them."""
    base = make_report([100], config={"concurrency": 10, "rate": None, "insecure": False})
    new = make_report([100], config={"concurrency": 20, "func": "echo", "rate": 5.0, "insecure": True})
    _, warnings = compare_reports(base, new)
    assert warnings == [
        "config differs: concurrency = 10 vs 20",
        'config differs: func = "add_numbers" vs "echo"',
        "config differs: insecure = false vs true",
        "config differs: rate = null vs 5.0",
    ]


def test_compare_reports_ignores_output_only_keys_and_embedded_ports() -> None:
    """sources/output/json never warn, nor do the URLs of two embedded-server runs; other URLs do."""
    base = make_report([100], config={"sources": 1, "embedded": True, "url": "ws://127.0.0.1:1111/ws"})
    new = make_report([100], config={"sources": 3, "embedded": True, "url": "ws://127.0.0.1:2222/ws"})
    assert compare_reports(base, new)[1] == []
    base.config["embedded"] = new.config["embedded"] = False
    assert compare_reports(base, new)[1] == [
        'config differs: url = "ws://127.0.0.1:1111/ws" vs "ws://127.0.0.1:2222/ws"'
    ]


# -- SLOs ------------------------------------------------------------------------------------------


def test_check_slo_met_and_not_met_with_units() -> None:
    """check_slo returns nothing when every term holds and one explanation, with its unit, per broken term."""
    report = make_report([1000] * 990 + [50_000] * 10, failed=10, calls_per_s=2000.0)  # p50 1 ms, max 50 ms
    assert check_slo(report, stats.parse_slo("p50<=1ms,max<60ms,calls_per_s>=2000,errors<=10")) == []
    failures = check_slo(report, stats.parse_slo("p50<1ms,errors=0,error_rate<0.5%,rps>2000"))
    assert failures == [
        "p50<1ms: measured 1 ms",
        "errors=0: measured 10",
        "error_rate<0.5%: measured 1 %",
        "rps>2000: measured 2000 calls/s",
    ]


def test_check_slo_fails_a_percentile_it_cannot_know() -> None:
    """A percentile term over too few samples is reported as not met, not silently passed."""
    report = make_report([1000] * 50)  # 50 samples: no p99
    (failure,) = check_slo(report, stats.parse_slo("p99<1s"))
    assert "not enough samples" in failure


# -- the HdrHistogram interval log -----------------------------------------------------------------


@pytest.mark.parametrize("start", [1_700_000_000.5, 1_700_000_000.4996, 1_700_000_000.0000004])
def test_hdr_log_reads_back_with_hdrhistograms_own_log_reader(tmp_path: Path, start: float) -> None:
    """--hdr-log's text is read by hdrh's HistogramLogReader: every interval (the first too), same counts and start."""
    report = make_report([100] * 30)
    report.window = Window(start, start + 2)
    report.timeseries = [interval(0.0, [100] * 10), interval(1.0, [250] * 20)]
    path = tmp_path / "run.hlog"
    path.write_text(report.hdr_log())
    reader = HistogramLogReader(str(path), stats.new_histogram())
    try:
        first = reader.get_next_interval_histogram()
        second = reader.get_next_interval_histogram()
        assert reader.get_next_interval_histogram() is None
    finally:
        reader.close()
    assert reader.get_start_time_sec() == pytest.approx(start, abs=1e-6)
    assert (first.get_total_count(), second.get_total_count()) == (10, 20)
    assert recorded(second) == recorded(histogram_of([250] * 20))
    assert second.get_start_time_stamp() == pytest.approx((start + 1.0) * 1000, abs=1)
