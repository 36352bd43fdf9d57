"""GET /metrics: Prometheus text from prometheus_client, scraped after real calls."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from conftest import RunningServer
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(url: str, token: str | None = None) -> dict[str, list[tuple[dict[str, str], float]]]:
    request = urllib.request.Request(url + "/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with OPENER.open(request, timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


def test_metrics_count_calls_by_function_and_outcome(make_server) -> None:  # type: ignore[no-untyped-def]
    """After 3 ok calls, 2 failing ones and an unknown function, the counters say exactly that."""
    with make_server() as running, connect(running.url) as ws:
        for request_id, (func, args) in enumerate(
            [("add_numbers", [1, 2])] * 3 + [("divide", [1, 0])] * 2 + [("nope", [])] + [("sleep", [0.01])], 1
        ):
            ws.send(f'{{"id":{request_id},"func":"{func}","args":{str(args).lower()}}}')
            ws.recv(timeout=5)
        samples = scrape(running.http)
        assert value(samples, "synapse_calls_total", function="add_numbers", outcome="ok") == 3
        assert value(samples, "synapse_calls_total", function="divide", outcome="-32000") == 2
        assert value(samples, "synapse_calls_total", function="<unknown>", outcome="-32601") == 1
        assert value(samples, "synapse_calls_total", function="sleep", outcome="ok") == 1
        assert value(samples, "synapse_call_duration_seconds_count", function="add_numbers") == 3
        assert value(samples, "synapse_call_duration_seconds_sum", function="sleep") >= 0.01
        assert value(samples, "synapse_connections") == 1
        assert value(samples, "synapse_inflight_calls") == 0
        assert value(samples, "synapse_messages_total", direction="in") == 7
        assert value(samples, "synapse_messages_total", direction="out") == 7
        assert value(samples, "synapse_message_bytes_total", direction="out") > 0


def test_results_that_cannot_be_sent_count_as_errors(make_server) -> None:  # type: ignore[no-untyped-def]
    """A result that does not fit its annotation counts as -32603, inline or in a thread; a fitting one as ok."""
    from conftest import load_app

    with make_server(load_app("results")) as running, connect(running.url) as ws:
        for request_id, func in enumerate(["wrong_bytes", "wrong_list", "wrong_list", "aset", "not_a_number"]):
            ws.send(f'{{"id":{request_id},"func":"{func}"}}')
            ws.recv(timeout=5)
        samples = scrape(running.http)
        assert value(samples, "synapse_calls_total", function="wrong_bytes", outcome="-32603") == 1
        assert value(samples, "synapse_calls_total", function="wrong_list", outcome="-32603") == 2
        assert value(samples, "synapse_calls_total", function="not_a_number", outcome="-32603") == 1
        assert value(samples, "synapse_calls_total", function="aset", outcome="ok") == 1
        assert value(samples, "synapse_calls_total", outcome="ok") == 1


def test_metrics_count_messages_bytes_and_protocol_errors(make_server) -> None:  # type: ignore[no-untyped-def]
    """Bytes in are the UTF-8 size of what was sent; refused messages count by error code."""
    with make_server() as running, connect(running.url) as ws:
        message = '{"id":1,"func":"echo","args":["héllo"]}'
        ws.send(message)
        ws.recv(timeout=5)
        for text in ("not json", "[]", '{"id":true,"func":"echo"}'):
            ws.send(text)
            ws.recv(timeout=5)
        samples = scrape(running.http)
    sizes = len(message.encode()) + len(b"not json") + len(b"[]") + len(b'{"id":true,"func":"echo"}')
    assert value(samples, "synapse_message_bytes_total", direction="in") == sizes
    assert value(samples, "synapse_protocol_errors_total", code="-32700") == 1
    assert value(samples, "synapse_protocol_errors_total", code="-32600") == 2


def test_metrics_require_the_token_when_set(make_server) -> None:  # type: ignore[no-untyped-def]
    """With --token, /metrics answers 401 without it and 200 with it."""
    with make_server(token="t0ken") as running:
        with pytest.raises(urllib.error.HTTPError) as info:
            scrape(running.http)
        assert info.value.code == 401
        info.value.close()
        assert "synapse_connections" in scrape(running.http, token="t0ken")


def test_health_is_open_and_counts(server: RunningServer) -> None:
    """/health stays reachable and reports the functions and open connections."""
    with connect(server.url), OPENER.open(server.http + "/health", timeout=10) as response:
        body = response.read()
    assert b'"status":"ok"' in body and b'"functions":8' in body


@pytest.mark.slow
def test_workers_report_whole_numbers(cli_env: dict[str, str]) -> None:
    """With --workers 2, every scrape (whichever worker answers) counts the calls and connections of both."""
    import os
    import signal
    import socket
    import subprocess
    import time

    from conftest import synapse_executable

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [synapse_executable(), "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL, env=cli_env, start_new_session=True)
    http, url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                scrape(http)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        for request_id in range(1, 21):  # 20 connections: the kernel spreads them over both workers
            with connect(url) as ws:
                ws.send(f'{{"id":{request_id},"func":"add_numbers","args":[1,2]}}')
                assert ws.recv(timeout=5) == f'{{"id":{request_id},"result":3,"error":null}}'
        with connect(url), connect(url):
            time.sleep(0.2)
            for _ in range(6):
                samples = scrape(http)
                assert value(samples, "synapse_calls_total", function="add_numbers", outcome="ok") == 20
                assert value(samples, "synapse_call_duration_seconds_count", function="add_numbers") == 20
                assert value(samples, "synapse_connections") == 2
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
