"""``synapse bench`` against real servers on 127.0.0.1 (SPEC §4, issue 3): counts, latency, rate, CLI behaviour.

The load generator runs in-process through :func:`synapse_cli.bench.run_bench` (it runs its own event loop,
so these tests are plain sync functions) or as the real ``synapse bench`` command in a subprocess.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, load_app, running_server, synapse_executable

from synapse_cli import stats
from synapse_cli.bench import BenchConfig, run_bench
from synapse_cli.report import BenchReport, compare_reports

REPORT_KEYS = {
    "schema_version", "config", "calls", "duration_s", "calls_per_s", "latency_ms", "errors", "generator", "histogram",
}  # fmt: skip
LATENCY_KEYS = {"min", "mean", "stdev", "p50", "p90", "p99", "p99.9", "max"}

# Latency of a server function that sleeps S ms, measured over loopback at concurrency 1: never below S
# (less HDR's 0.1 %), and at most S + 3 ms (timer granularity, the loopback round trip, a shared GIL).
SLEEP_OVERHEAD_MS = 3.0


# -- helpers -------------------------------------------------------------------------------------


def synapse(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the installed ``synapse`` with ``args``; stdout and stderr are pipes, not terminals."""
    return subprocess.run(
        [synapse_executable(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def bench_json(*args: str, env: dict[str, str], status: int = 0, timeout: float = 30) -> dict[str, Any]:
    """Run ``synapse bench ARGS``, check its exit status, and return the one JSON document it printed."""
    result = synapse("bench", *args, env=env, timeout=timeout)
    assert result.returncode == status, (result.returncode, result.stdout[-500:], result.stderr)
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1, result.stdout[:500]
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    return report


def assert_one_error_line(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    """The command exited with ``status``, printed nothing on stdout and exactly one ``synapse: error:`` line."""
    assert result.returncode == status, (result.returncode, result.stdout[-500:], result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("synapse: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)


def values_between(histogram: Any, low_ms: float, high_ms: float) -> int:
    """How many recorded values lie in [low_ms, high_ms)."""
    return sum(
        item.count_added_in_this_iter_step
        for item in histogram.get_recorded_iterator()
        if low_ms * 1000 <= item.value_iterated_to < high_ms * 1000
    )


@pytest.fixture(scope="module")
def targets() -> Iterator[RunningServer]:
    """A server with tests/apps/bench_targets.py (a known sleep pattern, a one-off event-loop stall)."""
    with running_server(load_app("bench_targets")) as running:
        yield running


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that is bound (so nobody else takes it) but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the library, in-process -----------------------------------------------------------------------


def test_percentiles_of_a_known_latency_distribution(targets: RunningServer) -> None:
    """1,000 calls sleeping 1 ms ×80 %, 5 ms ×15 %, 20 ms ×5 % give p50/p90/p99 in those bands (−0.1 %, +3 ms)."""
    report = run_bench(
        BenchConfig(url=targets.url, func="patterned_sleep", args=["known"], calls=1000, concurrency=1, warmup=0)
    ).to_json()
    assert report["calls"] == {"measured": 1000, "ok": 1000, "errors": 0, "warmup": 0}
    latency = report["latency_ms"]
    for key, sleep_ms in (("p50", 1.0), ("p90", 5.0), ("p99", 20.0), ("min", 1.0)):
        assert sleep_ms * (1 - 1e-3) <= latency[key] <= sleep_ms + SLEEP_OVERHEAD_MS, (key, latency)
    assert latency["max"] >= 20.0 * (1 - 1e-3)  # one slow outlier may stretch the max, so no upper bound here
    assert latency["p99.9"] is None  # 1,000 samples are too few for p99.9
    histogram = stats.decode_histogram(report["histogram"])
    assert histogram.get_total_count() == 1000
    # The mean of the pattern is 0.8·1 + 0.15·5 + 0.05·20 = 2.55 ms, plus the same per-call overhead.
    assert 2.55 * (1 - 1e-3) <= latency["mean"] <= 2.55 + SLEEP_OVERHEAD_MS


def test_rate_mode_achieves_its_target(server: RunningServer) -> None:
    """--rate 1000 for 3 s sends 3,000 ± 5 % calls and reports an achieved rate within 5 % of the target."""
    report = run_bench(BenchConfig(url=server.url, calls=None, duration=3.0, rate=1000, warmup=0)).to_json()
    assert report["config"]["model"] == "open"
    assert report["rate"]["target"] == 1000
    assert report["rate"]["achieved"] == pytest.approx(1000, rel=0.05)
    assert report["calls"]["measured"] == pytest.approx(3000, rel=0.05)
    assert report["calls"]["errors"] == 0
    assert report["calls_per_s"] == pytest.approx(1000, rel=0.05)
    assert set(report["service_latency_ms"]) == LATENCY_KEYS
    service = stats.decode_histogram(report["service_histogram"])
    assert service.get_total_count() == report["calls"]["measured"]


def test_coordinated_omission_shows_a_stall_in_response_time_not_service_time(targets: RunningServer) -> None:
    """--rate 2000 -c 50 with one 500 ms server stall: p99 response time is hundreds of ms, p99 service time small."""
    config = BenchConfig(
        url=targets.url, func="stall_once", args=["omission", 2000], calls=None, duration=4.0, rate=2000,
        concurrency=50, warmup=0,
    )  # fmt: skip
    report = run_bench(config).to_json()
    measured = report["calls"]["measured"]
    assert report["calls"]["errors"] == 0
    assert measured > 100 * 50  # the 50 calls in flight during the stall are under 1 % of the run
    # Response time, from each call's scheduled time: ~1,000 calls were due during the stall.
    assert report["latency_ms"]["p99"] >= 200, report["latency_ms"]
    assert report["latency_ms"]["max"] >= 450
    response = stats.decode_histogram(report["histogram"])
    assert values_between(response, 100, 10_000) > 5 * 50
    # Service time, from the actual send: only the calls in flight (at most -c 50) saw the stall.
    service = stats.decode_histogram(report["service_histogram"])
    assert 1 <= values_between(service, 100, 10_000) <= 50
    assert report["service_latency_ms"]["max"] >= 400
    assert report["service_latency_ms"]["p99"] < 50, report["service_latency_ms"]
    assert report["rate"]["late_sends"] > 0


def test_rate_mode_with_calls_measures_exactly_n_even_with_late_sends(targets: RunningServer) -> None:
    """--rate with -n 2000 measures exactly 2,000 calls, late sends included, and never reports more than the target."""
    config = BenchConfig(
        url=targets.url, func="stall_once", args=["late-sends", 500], calls=2000, rate=2000, concurrency=10, warmup=0
    )
    report = run_bench(config).to_json()
    assert report["rate"]["late_sends"] > 0  # the stall made calls wait for a free slot
    assert report["calls"] == {"measured": 2000, "ok": 2000, "errors": 0, "warmup": 0}
    assert stats.decode_histogram(report["histogram"]).get_total_count() == 2000
    assert stats.decode_histogram(report["service_histogram"]).get_total_count() == 2000
    assert report["rate"]["achieved"] <= 2000 * 1.05


# -- the command -----------------------------------------------------------------------------------


def test_piped_json_report_has_exact_counts_and_every_documented_key(
    server: RunningServer, cli_env: dict[str, str]
) -> None:
    """Piped, `bench -n 2000 --warmup 0.2s` prints one schema-1 JSON document: 2,000 measured, warm-up apart."""
    result = synapse("bench", "-n", "2000", "--warmup", "0.2s", "--url", server.url, env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar when stderr is not a terminal
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report)
    assert report["schema_version"] == 1
    assert report["calls"]["measured"] == 2000 and report["calls"]["ok"] == 2000
    assert report["calls"]["errors"] == 0 and report["errors"] == []
    assert report["calls"]["warmup"] > 0  # warm-up calls come on top of -n and are counted apart
    assert set(report["latency_ms"]) == LATENCY_KEYS
    assert {"cpu_pct", "loop_lag_ms", "bound"} <= set(report["generator"])
    config = report["config"]
    assert (config["url"], config["func"], config["args"], config["calls"]) == (server.url, "add_numbers", [1, 2], 2000)
    assert (config["concurrency"], config["connections"], config["warmup"]) == (50, 8, 0.2)
    assert stats.decode_histogram(report["histogram"]).get_total_count() == 2000
    assert report["calls_per_s"] == pytest.approx(2000 / report["duration_s"], rel=0.01)


def test_procs_2_counts_like_one_process_and_merges_histograms(server: RunningServer, cli_env: dict[str, str]) -> None:
    """`--procs 2 -n 4000` measures 4,000 calls, like one process, in one merged histogram of 4,000 values."""
    single = bench_json("-n", "4000", "--warmup", "0", "--url", server.url, env=cli_env)
    double = bench_json("-n", "4000", "--warmup", "0", "--procs", "2", "--url", server.url, env=cli_env)
    assert single["calls"]["measured"] == double["calls"]["measured"] == 4000
    assert double["calls"]["ok"] == 4000 and double["calls"]["errors"] == 0
    assert double["config"]["procs"] == 2
    merged = stats.decode_histogram(double["histogram"])
    assert merged.get_total_count() == 4000
    assert double["latency_ms"] == stats.summarize(merged)


def test_slo_not_met_exits_99_and_met_exits_0(server: RunningServer, cli_env: dict[str, str]) -> None:
    """--slo exits 99 naming the broken term when not met, and 0 when every term holds."""
    common = ("-n", "200", "--warmup", "0", "--url", server.url)
    missed = synapse("bench", *common, "--slo", "p50<1us,errors=0", env=cli_env)
    assert missed.returncode == 99, missed.stderr
    assert missed.stderr.startswith("synapse: error: SLO not met: p50<1us: measured ")
    assert missed.stderr.count("\n") == 1  # errors=0 held: only one term is reported
    assert json.loads(missed.stdout)["calls"]["measured"] == 200  # the report is still printed
    met = synapse("bench", *common, "--slo", "p50<10s,errors=0", env=cli_env)
    assert met.returncode == 0, met.stderr
    assert met.stderr == ""


def test_refused_connection_exits_3_with_one_error_line(closed_port: int, cli_env: dict[str, str]) -> None:
    """A closed port: exit 3 and a single `synapse: error:` line saying the connection was refused."""
    result = synapse("bench", "-n", "10", "--warmup", "0", "--url", f"ws://127.0.0.1:{closed_port}/ws", env=cli_env)
    assert_one_error_line(result, 3, f"127.0.0.1:{closed_port}")
    assert "refused" in result.stderr.lower()


def test_failing_calls_exit_1_with_the_error_in_the_report(server: RunningServer, cli_env: dict[str, str]) -> None:
    """`bench divide 1 0`: exit 1, every call an error, listed once as rpc -32000 "division by zero"."""
    report = bench_json("divide", "1", "0", "-n", "100", "--warmup", "0", "--url", server.url, env=cli_env, status=1)
    assert report["calls"] == {"measured": 100, "ok": 0, "errors": 100, "warmup": 0}
    assert report["errors"] == [{"kind": "rpc", "code": -32000, "count": 100, "first_message": "division by zero"}]


def test_compare_two_saved_reports(server: RunningServer, cli_env: dict[str, str], tmp_path: Path) -> None:
    """`bench compare A.json B.json` piped prints JSON deltas, and warns on stderr when the configs differ."""
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    common = ("-n", "1000", "--warmup", "0", "--url", server.url)
    printed = bench_json(*common, "-c", "10", "--output", str(base), env=cli_env)
    bench_json(*common, "-c", "20", "--output", str(new), env=cli_env)
    assert json.loads(base.read_text()) == printed  # --output writes the document it prints

    result = synapse("bench", "compare", str(base), str(new), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "synapse: warning: config differs: concurrency = 10 vs 20\n"
    comparison = json.loads(result.stdout)
    assert result.stdout.count("\n") == 1
    assert comparison["warnings"] == ["config differs: concurrency = 10 vs 20"]
    by_metric = {row["metric"]: row for row in comparison["metrics"]}
    assert list(by_metric) == ["calls_per_s", "p50", "p90", "p99", "p99.9", "errors"]
    rows, _ = compare_reports(BenchReport.from_json(json.loads(base.read_text())),
                              BenchReport.from_json(json.loads(new.read_text())))  # fmt: skip
    assert comparison["metrics"] == rows
    assert by_metric["errors"]["delta"] == 0.0

    same = synapse("bench", "compare", str(base), str(base), env=cli_env)
    assert same.returncode == 0 and same.stderr == ""
    assert all(row["delta"] in (0.0, None) for row in json.loads(same.stdout)["metrics"])


def test_merge_sums_counts_of_saved_reports(server: RunningServer, cli_env: dict[str, str], tmp_path: Path) -> None:
    """`bench merge A.json B.json` adds the counts and merges the two histograms into one of their total."""
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    bench_json("-n", "300", "--warmup", "0", "--url", server.url, "--output", str(first), env=cli_env)
    bench_json("-n", "700", "--warmup", "0", "--url", server.url, "--output", str(second), env=cli_env)
    merged = bench_json("merge", str(first), str(second), env=cli_env)
    assert merged["schema_version"] == 1
    assert merged["calls"] == {"measured": 1000, "ok": 1000, "errors": 0, "warmup": 0}
    assert stats.decode_histogram(merged["histogram"]).get_total_count() == 1000
    assert merged["config"]["sources"] == 2


def test_no_url_benchmarks_an_embedded_server_and_says_so(cli_env: dict[str, str]) -> None:
    """Without --url or SYNAPSE_URL, bench starts an embedded server on a free port and says so on stderr."""
    assert "SYNAPSE_URL" not in cli_env
    result = synapse("bench", "-n", "200", "--warmup", "0", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "embedded" in result.stderr
    report = json.loads(result.stdout)
    assert report["config"]["embedded"] is True
    assert report["config"]["url"].startswith("ws://127.0.0.1:") and report["config"]["url"] in result.stderr
    assert report["calls"] == {"measured": 200, "ok": 200, "errors": 0, "warmup": 0}


def test_duration_mode_benchmarks_any_function(server: RunningServer, cli_env: dict[str, str]) -> None:
    """`bench echo '"hello"' -z 1s` calls echo("hello") for about one second without errors."""
    report = bench_json("echo", '"hello"', "-z", "1s", "--warmup", "0", "--url", server.url, env=cli_env)
    config = report["config"]
    assert (config["func"], config["args"], config["duration"]) == ("echo", ["hello"], 1.0)
    assert 0.9 <= report["duration_s"] <= 1.5
    assert report["calls"]["measured"] > 100
    assert report["calls"]["ok"] == report["calls"]["measured"] and report["calls"]["errors"] == 0


def test_jsonrpc_dialect_against_the_synapse_server(server: RunningServer, cli_env: dict[str, str]) -> None:
    """--jsonrpc benchmarks in JSON-RPC 2.0, which the synapse server also speaks."""
    report = bench_json("add_numbers", "5", "3", "--jsonrpc", "-n", "500", "--warmup", "0", "--url", server.url,
                        env=cli_env)  # fmt: skip
    assert report["config"]["dialect"] == "jsonrpc"
    assert report["calls"] == {"measured": 500, "ok": 500, "errors": 0, "warmup": 0}


def test_token_server_needs_the_token(make_server: Callable[..., Any], cli_env: dict[str, str]) -> None:
    """Against a server with a token: --token works; without it bench exits 3 naming HTTP 401."""
    with make_server(token="bench-secret") as secured:
        report = bench_json("-n", "100", "--warmup", "0", "--url", secured.url, "--token", "bench-secret", env=cli_env)
        assert report["calls"]["ok"] == 100
        assert "token" not in report["config"]  # the secret never lands in a report
        refused = synapse("bench", "-n", "100", "--warmup", "0", "--url", secured.url, env=cli_env)
    assert_one_error_line(refused, 3, "401")
