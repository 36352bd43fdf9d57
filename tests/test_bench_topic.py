"""``synapse bench --topic`` against real servers (SPEC §5, issue 22): subscribers over ``--procs`` processes
merged exactly, the shortfall and refusal rules, the ``--json`` report. The bench runs as the real ``synapse``
command; servers are in-process (tests/conftest.py) or ``synapse serve`` subprocesses."""

from __future__ import annotations

import json
import resource
import subprocess
from typing import Any

import pytest
from conftest import load_app, serve_process, synapse_executable

from synapse_cli.bench.streams import LATENCY_CLOCK, Publishing, StreamReport, TopicGenerator
from synapse_cli.bench.topic import judge_generator, topic_failed, topic_warnings
from synapse_cli.core import stats

TOPIC_KEYS = {
    "mode", "target", "connections", "seconds", "items", "items_per_s", "gap_ms", "latency_ms", "published", "missed",
    "errors", "procs", "publish", "generator", "latency_clock", "histogram", "out_of_order", "ended",
}  # fmt: skip
PUBLISH_KEYS = {"target_rate", "achieved_rate", "sent", "ok", "failed", "not_sent"}
GENERATOR_KEYS = {"cpu_pct", "loop_lag_ms", "bound", "schedule_lag_ms", "cpu_total_pct", "processes", "cores"}


def bench_topic(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``synapse bench --topic ARGS`` (stdout and stderr are pipes)."""
    return subprocess.run(
        [synapse_executable(), "bench", "--topic", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        env=env, timeout=timeout,
    )  # fmt: skip


def topic_report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON document a run printed, its ``stream_bench`` part."""
    assert result.stdout.count("\n") == 1, (result.returncode, result.stdout[:500], result.stderr)
    report: dict[str, Any] = json.loads(result.stdout)["stream_bench"]
    return report


def assert_one_error_line(result: subprocess.CompletedProcess[str], status: int, line: str) -> None:
    """Exit ``status``, nothing on stdout, exactly ``line`` on stderr (no traceback)."""
    assert (result.returncode, result.stdout, result.stderr) == (status, "", line + "\n")


def assert_only_generator_warnings(stderr: str) -> None:
    """Nothing on stderr but, on a busy machine, the warning that the generator's own loop lagged."""
    for line in stderr.splitlines():
        assert line.startswith("synapse: warning: the load generator, not the server, was the limit"), stderr


def needs_open_files(count: int) -> None:
    """Skip when this machine's hard RLIMIT_NOFILE is below ``count``; else raise the soft limit (children inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < count:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {count}")
    if soft != resource.RLIM_INFINITY and soft < count:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- measuring -------------------------------------------------------------------------------------


def test_procs_spread_the_subscribers_and_merge_their_histograms_exactly(server: Any, cli_env: dict[str, str]) -> None:
    """--procs 3: 40 subscribers over 3 processes, every publish reaches each, and the merged histogram holds
    exactly one latency per item received (none lost in the merge), summarized as the report says."""
    result = bench_topic("events", "--subscribers", "40", "--publish-rate", "20", "-z", "1s", "--procs", "3",
                         "--url", server.url, "--json", env=cli_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_only_generator_warnings(result.stderr)
    report = topic_report(result)
    assert (report["procs"], report["connections"], report["errors"], report["ended"]) == (3, 40, [], 0)
    assert report["generator"]["processes"] == 4  # three of subscribers, the publisher's own
    assert report["published"] == report["publish"]["ok"] == report["publish"]["sent"] == 20
    assert report["items"] == 40 * 20
    assert report["missed"] == {"max": 0, "total": 0} and report["out_of_order"] == 0
    histogram = stats.decode_histogram(report["histogram"])
    assert histogram.get_total_count() == report["items"]
    assert report["latency_ms"] == stats.summarize(histogram)
    assert 0 < report["latency_ms"]["min"] <= report["latency_ms"]["p50"] <= report["latency_ms"]["max"]


def test_json_report_has_every_topic_field(server: Any, cli_env: dict[str, str]) -> None:
    """--json: the topic report's fields (publish, generator health, the latency clock) and nothing else."""
    result = bench_topic("events", "--subscribers", "5", "--publish-rate", "10", "-z", "1s", "--url", server.url,
                         "--json", env=cli_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"schema_version", "stream_bench"} and document["schema_version"] == 1
    report = document["stream_bench"]
    assert set(report) == TOPIC_KEYS
    assert set(report["publish"]) == PUBLISH_KEYS and set(report["generator"]) == GENERATOR_KEYS
    assert (report["mode"], report["target"], report["procs"], report["gap_ms"]) == ("topic", "events", 1, {})
    assert report["publish"] == {"target_rate": 10.0, "achieved_rate": 10.0, "sent": 10, "ok": 10, "failed": 0,
                                 "not_sent": 0}  # fmt: skip
    assert report["latency_clock"] == LATENCY_CLOCK and "one clock" in LATENCY_CLOCK
    assert report["seconds"] >= 1.0 and report["items_per_s"] == pytest.approx(report["items"] / report["seconds"])
    generator = report["generator"]
    assert generator["processes"] == 1 and generator["cores"] >= 1
    assert type(generator["bound"]) is bool and 0 <= generator["cpu_pct"] < 100 and generator["loop_lag_ms"] >= 0


def test_jsonrpc_subscribers_count_rpc_item_notifications(server: Any, cli_env: dict[str, str]) -> None:
    """--jsonrpc: subscriptions and publishes in JSON-RPC 2.0; every rpc.item notification is counted."""
    result = bench_topic("events", "--subscribers", "10", "--publish-rate", "20", "-z", "1s", "--jsonrpc",
                         "--url", server.url, "--json", env=cli_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = topic_report(result)
    assert (report["items"], report["missed"], report["errors"]) == (200, {"max": 0, "total": 0}, [])


@pytest.mark.slow
def test_the_embedded_server_takes_a_thousand_subscribers(cli_env: dict[str, str]) -> None:
    """No --url: the embedded server accepts 1,000 subscribers and the publisher; every item arrives."""
    needs_open_files(2200)
    result = bench_topic("events", "--subscribers", "1000", "--publish-rate", "5", "-z", "1s", "--procs", "2",
                         "--json", env=cli_env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("no --url: benchmarking an embedded synapse server at ws://127.0.0.1:")
    report = topic_report(result)
    assert (report["connections"], report["items"], report["missed"]["total"]) == (1000, 5000, 0)


# -- what a run must say ---------------------------------------------------------------------------


def test_more_than_ten_percent_short_of_the_publish_rate_is_one_line_and_exit_1(
    make_server: Any, cli_env: dict[str, str]
) -> None:
    """A publish function that takes 50 ms with one publish in flight cannot reach 100/s: the figures are
    printed, one warning line says how short, and the exit status is 1."""
    with make_server(load_app("slow_publish")) as running:
        result = bench_topic("news", "--publish-func", "publish_slowly", "--subscribers", "3", "--publish-rate",
                             "100", "-c", "1", "-z", "1s", "--url", running.url, "--json", env=cli_env)  # fmt: skip
    assert result.returncode == 1
    publish = topic_report(result)["publish"]
    assert publish["target_rate"] == 100.0 and publish["achieved_rate"] <= 20.0
    assert publish["sent"] + publish["not_sent"] == 100 and publish["not_sent"] >= 80
    share = round(publish["achieved_rate"])
    assert result.stderr == (
        f"synapse: warning: published {publish['achieved_rate']:,.1f}/s, {share} % of --publish-rate 100 "
        f"({publish['not_sent']:,} publishes due were never sent): the server or the generator could not keep up\n"
    )


def test_connections_past_max_connections_are_one_error_line_and_exit_3(cli_env: dict[str, str]) -> None:
    """The issue's run: 1,000 subscribers and the publisher against a default `synapse serve`
    (--max-connections 1000): one line counts the refused connection and gives the server's answer."""
    needs_open_files(2200)
    with serve_process() as served:
        result = bench_topic("events", "--subscribers", "1000", "-z", "1s", "--url", served.url, "--json",
                             env=cli_env)  # fmt: skip
    line = f"synapse: error: 1 of 1,001 connections to {served.url} refused: HTTP 503 (too many connections)"
    assert_one_error_line(result, 3, line)


def test_a_missing_token_is_one_error_line_naming_every_refused_connection(
    make_server: Any, cli_env: dict[str, str]
) -> None:
    """Without the server's token every handshake gets 401: one line says all 5 + 1 were refused, and why."""
    with make_server(token="s3cret") as running:
        result = bench_topic("events", "--subscribers", "5", "-z", "1s", "--url", running.url, env=cli_env)
        line = f"synapse: error: 6 of 6 connections to {running.url} refused: HTTP 401 (missing or wrong bearer token)"
        assert_one_error_line(result, 3, line)
        with_token = bench_topic("events", "--subscribers", "5", "-z", "1s", "--publish-rate", "5", "--token",
                                 "s3cret", "--url", running.url, "--json", env=cli_env)  # fmt: skip
    assert with_token.returncode == 0, with_token.stderr
    assert topic_report(with_token)["items"] == 25


def test_a_topic_nobody_can_subscribe_to_is_one_error_line_and_exit_1(server: Any, cli_env: dict[str, str]) -> None:
    """Subscribing to an unknown function ends every subscriber at once: one line with the server's error."""
    result = bench_topic("nosuch", "--subscribers", "3", "-z", "1s", "--url", server.url, env=cli_env)
    line = "synapse: error: no subscriber of 'nosuch' stayed subscribed: subscriber ended: function not found: nosuch"
    assert_one_error_line(result, 1, line + " (code -32601)")


def _report(**changes: Any) -> StreamReport:
    """A topic report that met everything (5 subscribers x 10 publishes), with ``changes``."""
    fields: dict[str, Any] = {
        "mode": "topic", "target": "events", "connections": 5, "seconds": 1.0, "items": 50, "items_per_s": 50.0,
        "published": 10, "missed": {"max": 0, "total": 0}, "procs": 2,
        "publish": Publishing(10.0, 10.0, 10, 10), "generator": TopicGenerator(20.0, 1.0, False, 0.5, 35.0, 3, 2),
    }  # fmt: skip
    return StreamReport(**{**fields, **changes})


def test_warnings_name_missed_items_and_a_bound_generator() -> None:
    """Missed items fail the run with a line; a generator at its limit is said (try more --procs) but does not."""
    assert topic_warnings(_report()) == [] and not topic_failed(_report())
    missed = _report(missed={"max": 3, "total": 7}, items=43)
    assert topic_warnings(missed) == ["7 items missed (3 by the subscriber that missed most of 10)"]
    assert topic_failed(missed)
    busy = _report(generator=TopicGenerator(97.0, 12.5, True, 0.5, 99.0, 1, 2))
    assert topic_warnings(busy) == [
        "the load generator, not the server, was the limit (CPU 99 % over 1 processes on 2 cores, the busiest 97 %, "
        "event-loop lag p99 12.5 ms): try --procs 3 or more"
    ]
    assert not topic_failed(busy)
    shared = _report(generator=TopicGenerator(60.0, 3.0, True, 0.5, 190.0, 3, 2))
    assert topic_warnings(shared) == [
        "the load generator, not the server, was the limit (CPU 190 % over 3 processes on 2 cores, the busiest 60 %, "
        "event-loop lag p99 3.0 ms): its processes had all 2 cores they may use: fewer subscribers or publishes"
    ]


def test_the_generator_is_the_limit_when_a_process_or_all_of_them_are_out_of_cpu() -> None:
    """Bound: a process above 90 % of its core, or lagging past the p50 latency and 5 ms, or processes
    together above 90 % of the cores they may use (two at 47 % on one core); not bound otherwise."""
    assert not judge_generator([(47.0, 2.0), (47.0, 2.0), (3.0, 1.0)], 1.0, 0.5, cores=2).bound
    assert judge_generator([(47.0, 2.0), (47.0, 2.0)], 1.0, 0.5, cores=1).bound
    assert judge_generator([(95.0, 1.0)], 1.0, 0.5, cores=2).bound
    assert judge_generator([(20.0, 12.0)], 3.0, 0.5, cores=2).bound
    assert not judge_generator([(20.0, 4.0)], 3.0, 0.5, cores=2).bound  # under the 5 ms floor
    assert not judge_generator([(20.0, 12.0)], 30.0, 0.5, cores=2).bound  # lag below the p50 latency
    health = judge_generator([(47.0, 2.0), (46.0, 3.5)], 1.0, 0.25, cores=1)
    assert health == TopicGenerator(47.0, 3.5, True, 0.25, 93.0, 2, 1)
