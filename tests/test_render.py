"""render: the pure functions that turn results into text for terminals and pipes."""

from __future__ import annotations

import io

from rich.console import Console

from synapse_cli.bench.capacity import Capacity, ProbeResult
from synapse_cli.bench.report import BenchReport, CallCounts, FunctionStats, Interval
from synapse_cli.cli import bench_render, render
from synapse_cli.core import stats
from synapse_cli.server.builtins import default_registry


def _text(renderable: object, width: int = 120) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(renderable)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def test_json_line_is_compact_and_newline_terminated() -> None:
    """Pipes get compact JSON on exactly one line."""
    assert render.json_line({"a": [1, 2.5, None, "x"]}) == '{"a":[1,2.5,null,"x"]}\n'


def test_write_json_writes_to_the_given_stream() -> None:
    """write_json bypasses rich and writes the JSON line itself."""
    stream = io.StringIO()
    render.write_json([3], stream)
    assert stream.getvalue() == "[3]\n"


def test_error_line_is_one_line() -> None:
    """Every CLI error is a single 'synapse: error:' line, whatever the message holds."""
    assert render.error_line("bad\nthing   here") == "synapse: error: bad thing here"


def test_type_of_names_common_schemas() -> None:
    """JSON Schemas become short type names."""
    assert render.type_of({"anyOf": [{"type": "integer"}, {"type": "number"}]}) == "integer | number"
    assert render.type_of({"type": "array", "items": {"type": "string"}}) == "array[string]"
    assert render.type_of({"$ref": "#/$defs/Point"}) == "Point"
    assert render.type_of({}) == "any"
    assert render.type_of({"enum": ["a", "b"]}) == '"a" | "b"'
    assert render.type_of({"type": "object", "additionalProperties": {"type": "number"}}) == "object[number]"


def test_signature_shows_defaults() -> None:
    """A function's signature lists parameters, defaults and the result type."""
    functions = {f["name"]: f for f in default_registry().describe()}
    assert render.signature(functions["add_numbers"]) == (
        "add_numbers(a: integer | number, b: integer | number) -> integer | number"
    )
    assert render.signature(functions["fail"]) == 'fail(message: string = "boom") -> null'


def test_functions_table_lists_every_function() -> None:
    """The list table has one row per function, with its description."""
    text = _text(render.functions_table(default_registry().describe()))
    for name in ("add_numbers", "echo", "sleep", "divide", "fail"):
        assert name in text
    assert "Return the value unchanged." in text


def test_banner_shows_url_and_details() -> None:
    """The serve banner shows the URL, the version, the details and the functions."""
    text = _text(
        render.banner("ws://127.0.0.1:9/ws", default_registry().describe(), version="1.2.3", details={"auth": "none"})
    )
    assert "ws://127.0.0.1:9/ws" in text
    assert "synapse 1.2.3" in text
    assert "auth: none" in text
    assert "8 functions" in text


def test_pretty_value_renders_json() -> None:
    """Terminal results are indented JSON."""
    assert _text(render.pretty_value({"a": 1})) == '{\n  "a": 1\n}\n'


def test_stream_functions_are_marked_in_signatures() -> None:
    """A list entry with "stream": true reads `-> stream of <item>` in `synapse list` and the banner."""
    entry = {"name": "ticks", "params": {"properties": {"n": {"type": "integer"}}, "required": ["n"]}}
    assert (
        render.signature({**entry, "result": {"type": "integer"}, "stream": True})
        == "ticks(n: integer) -> stream of integer"
    )
    assert render.signature({**entry, "result": {"type": "integer"}}) == "ticks(n: integer) -> integer"


def test_banner_entry_is_one_log_entry_with_the_signatures() -> None:
    """In JSON log mode the banner is one log-shaped object: URL, version, settings, signatures (no table)."""
    details = {"auth": "none (loopback only)", "health": "http://127.0.0.1:9/health"}
    entry = render.banner_entry("ws://127.0.0.1:9/ws", default_registry().describe(), version="1.2", details=details)
    assert entry.keys() == {"timestamp", "level", "logger", "event", "url", "version", "auth", "health", "functions"}
    assert (entry["level"], entry["logger"], entry["event"]) == (
        "info",
        "synapse.server",
        "synapse 1.2 serving on ws://127.0.0.1:9/ws",
    )
    assert "echo(value: any) -> any" in entry["functions"] and len(entry["functions"]) == len(default_registry())
    assert entry["timestamp"].endswith("+00:00")


# -- bench -----------------------------------------------------------------------------------------


def bench_report_of(seconds: list[int], *, functions: int = 1) -> BenchReport:
    """A report whose timeseries holds ``seconds`` (calls in each second; 0 is a stall), every call 1 ms."""
    intervals = []
    total = stats.new_histogram()
    for index, calls in enumerate(seconds):
        histogram = stats.new_histogram()
        if calls:
            histogram.record_value(1000, calls)
        total.add(histogram)
        intervals.append(Interval(float(index), 1.0, calls, calls, 0, float(calls), stats.interval_summary(histogram),
                                  stats.encode_histogram(histogram)))  # fmt: skip
    measured = sum(seconds)
    names = ["add_numbers", "echo", "sleep"][:functions]
    return BenchReport(
        config={"url": "ws://127.0.0.1:9/ws", "func": "add_numbers", "args": [1], "concurrency": 8, "connections": 2},
        calls=CallCounts(measured, measured, 0, 5), duration_s=float(len(seconds)), calls_per_s=measured / len(seconds),
        latency_ms=stats.summarize(total), histogram=stats.encode_histogram(total), timeseries=intervals,
        functions=[FunctionStats(name, measured // functions, measured // functions, 0, stats.summarize(total),
                                 stats.encode_histogram(total)) for name in names],
    )  # fmt: skip


def test_sparkline_scales_to_the_highest_value() -> None:
    """Block characters from ▁ (any value above 0) to █ (the max); None is a blank."""
    assert bench_render.sparkline([0, 1, 2, 4, 8, None]) == "▁▁▂▄█ "
    assert bench_render.sparkline([]) == ""
    assert bench_render.sparkline([5.0] * 100, width=10) == "█" * 10


def test_over_time_chart_shows_a_stall_as_a_gap() -> None:
    """Ten seconds at 1,000 calls/s with seconds 4 and 5 at 0: full columns, two empty ones, the scale and p99."""
    text = _text(bench_render.over_time_chart(bench_report_of([1000] * 4 + [0, 0] + [1000] * 4), height=4))
    rows = text.splitlines()
    assert rows[0] == "over time (one column per second)"
    assert rows[1:] == [
        "    1,000/s │████  ████",
        "            │████  ████",
        "            │████  ████",
        "        0/s │████  ████",
        "p99 ≤1.0 ms │████  ████",
        "            └0 s   10 s",
    ]


def test_bench_report_includes_the_chart_and_the_functions() -> None:
    """The full report of a multi-second, two-function run shows the over-time chart and a per-function table."""
    text = _text(bench_render.bench_report(bench_report_of([100, 200, 300], functions=2)), width=140)
    assert "over time" in text and "per function" in text and "echo" in text
    assert "warm-up calls (excluded)" in text


def test_capacity_table_gives_the_answer() -> None:
    """The probe table lists every probe and ends with the capacity, 'at least' or no answer."""
    probes = [
        ProbeResult(100, 99.5, 1.0, 2.0, 0, 200, True, False),
        ProbeResult(200, 150, 9.0, 900, 3, 300, False, False),
    ]
    assert "capacity: 100 calls/s" in _text(bench_render.capacity_table(Capacity(100, False, probes)))
    assert "at least 100 calls/s (generator-bound" in _text(bench_render.capacity_table(Capacity(100, True, probes)))
    assert "even the lowest probe missed" in _text(bench_render.capacity_table(Capacity(None, False, probes[1:])))
    line = bench_render.probe_line(probes[1])
    assert line.startswith("probe 200 calls/s: achieved 150") and "missed" in line
