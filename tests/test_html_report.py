"""``bench --html``: one self-contained page, checked as text and then in a real headless Chromium.

The browser test drives Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``) with
Playwright's Python package and that executable (no browser download). It skips only when no Chromium
binary exists. The screenshot it takes is kept in the test's temporary folder; with ``SYNAPSE_SCREENSHOTS=DIR``
it is also copied there (the picture in README.md and docs/bench.md is made that way).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_app, running_server

from synapse_cli.bench import html_report
from synapse_cli.bench.config import BenchConfig, Call
from synapse_cli.bench.driver import run_bench
from synapse_cli.bench.report import BenchReport
from synapse_cli.bench.schedule import parse_rate

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
LAUNCH_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
CHART_TITLES = ["calls/s over time", "latency over time", "latency by percentile", "latency histogram"]


@pytest.fixture(scope="module")
def runs() -> Iterator[list[BenchReport]]:
    """Two short real runs: a ramp with a stall in the middle (and some failing calls), and a constant rate."""
    with running_server(load_app("bench_targets")) as server:
        mix = (Call("stall_once", ["html", 900], 9.0), Call("patterned_sleep", [], 1.0))
        ramp = BenchConfig(url=server.url, calls=None, shape=parse_rate("200:1s, 200->600:2s"), warmup=0.5, mix=mix)
        constant = BenchConfig(url=server.url, calls=None, duration=2.0, rate=300, warmup=0.5)
        with running_server() as builtins:
            yield [run_bench(ramp), run_bench(dataclasses.replace(constant, url=builtins.url))]


def test_the_page_stands_alone(runs: list[BenchReport]) -> None:
    """No script, no external resource (src/href/url()), every chart an inline SVG with drawn paths."""
    page = html_report.page(runs[:1])
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and not re.search(r"\b(src|href)\s*=", page) and "url(" not in page
    assert len(page) < 100_000
    for title in CHART_TITLES:
        assert f"<h2>{title}</h2><svg" in page
    assert len(re.findall(r'<path d="M[0-9.]+,[0-9.]+ L', page)) >= 6  # lines of at least two points
    assert "warm-up" in page and "per function" in page
    assert "<h3>errors</h3><table>" in page and "errors/s" in page  # the failing calls: listed, and drawn over time


def test_compare_page_names_both_runs(runs: list[BenchReport]) -> None:
    """Two runs overlaid: both names in the title and in the legends."""
    page = html_report.page(runs, names=["ramp.json", "constant.json"])
    assert "<title>synapse bench: ramp.json vs constant.json</title>" in page
    assert "ramp.json calls/s" in page and "constant.json calls/s" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")
@pytest.mark.parametrize("overlay", [False, True], ids=["one run", "compare"])
def test_the_page_draws_in_a_real_browser_offline(runs: list[BenchReport], tmp_path: Path, overlay: bool) -> None:
    """Chromium loads the file with no console error and no request but the file; every chart has drawn paths."""
    from playwright.sync_api import sync_playwright

    path = tmp_path / "report.html"
    path.write_text(html_report.page(runs if overlay else runs[:1], names=["ramp", "constant"][: 2 if overlay else 1]))
    console: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            drawn = page.evaluate(
                """() => [...document.querySelectorAll('section > svg')].map(svg => ({
                    title: svg.querySelector('title').textContent,
                    paths: [...svg.querySelectorAll('path')].filter(p => {
                        const box = p.getBBox();
                        return p.getAttribute('d').length > 8 && (box.width > 0 || box.height > 0);
                    }).length,
                }))"""
            )
            screenshot = tmp_path / ("compare.png" if overlay else "report.png")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert [error for error in console if error.startswith(("error", "pageerror"))] == []
    assert requests == [path.as_uri()]
    assert [chart["title"] for chart in drawn] == CHART_TITLES
    assert all(chart["paths"] >= (2 if overlay else 1) for chart in drawn), drawn
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("SYNAPSE_SCREENSHOTS"):
        shutil.copy(screenshot, Path(os.environ["SYNAPSE_SCREENSHOTS"]) / screenshot.name)
