"""The ``/docs`` page (SPEC §6), in a real headless browser: Debian's Chromium driven by Playwright.

Playwright only drives the browser installed on the machine (``executable_path``); it never downloads
one. Without a Chromium binary the browser tests skip, saying so. ``SYNAPSE_DOCS_SCREENSHOT=path.png``
saves the tour's screenshot there too (that is how ``docs/docs-page.png``, shown by the docs pages, is made).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
from conftest import RunningServer, clean_env, running_server, synapse_executable, wait_for
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, WebSocket, expect, sync_playwright

from synapse_cli import Context
from synapse_cli.client.sync import SyncClient
from synapse_cli.core.registry import Registry
from synapse_cli.server.builtins import default_registry
from synapse_cli.server.docs import page as docs_html

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)  # a busy machine: 5 s (the default) is short
TOKEN = "s3cret/+ ✓"  # base64url of its UTF-8 bytes has "-" and "_": the page must encode it right


def chromium_executable() -> str | None:
    """Debian's ``chromium`` (or ``SYNAPSE_CHROMIUM``, or Google Chrome where that is what there is)."""
    return os.environ.get("SYNAPSE_CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module's tests (each gets its own context)."""
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no chromium binary: apt-get install chromium (or set SYNAPSE_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def docs_server() -> Iterator[RunningServer]:
    """A server with the built-ins, for this module alone (its stream counts are ours to check)."""
    with running_server() as running:
        yield running


@dataclass
class DocsPage:
    """A browser tab on a server's ``/docs``, with everything the page asked for or complained about."""

    page: Page
    server: RunningServer
    requests: list[str] = field(default_factory=list)
    websockets: list[WebSocket] = field(default_factory=list)
    socket_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def open(self) -> DocsPage:
        self.page.goto(self.server.http + "/docs")
        return self

    def status(self) -> Locator:
        return self.page.locator("#status")

    def function(self, name: str) -> Locator:
        """The function's card, opened."""
        card = self.page.locator(f'details.fn[data-name="{name}"]')
        if card.get_attribute("open") is None:
            card.locator("summary").click()
        return card

    def call(self, function: str, /, **args: str) -> Locator:
        """Fill the form of ``function`` with ``args`` (the text typed in each field), press Call; the card."""
        card = self.function(function)
        for key, text in args.items():
            card.locator(f'[name="{key}"]').fill(text)
        card.get_by_role("button", name="Call").click()
        return card


@pytest.fixture
def docs(browser: Browser, docs_server: RunningServer) -> Iterator[DocsPage]:
    """A fresh tab (own context) on the module server's ``/docs``, not yet loaded."""
    with tab(browser, docs_server) as opened:
        yield opened


@contextlib.contextmanager
def tab(browser: Browser, server: RunningServer) -> Iterator[DocsPage]:
    """A fresh browser context and page on ``server``, recording requests, WebSockets and errors."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        docs = DocsPage(page, server)

        def websocket(socket: WebSocket) -> None:
            docs.websockets.append(socket)
            socket.on("socketerror", lambda error: docs.socket_errors.append(error))

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                docs.console_errors.append(message.text)

        page.on("request", lambda request: docs.requests.append(request.url))
        page.on("websocket", websocket)
        page.on("console", console)
        page.on("pageerror", lambda error: docs.console_errors.append(f"page error: {error}"))
        yield docs
    finally:
        context.close()


def items(card: Locator) -> list[str]:
    return card.locator("ol.items li").all_inner_texts()


def open_streams(server: RunningServer) -> int:
    return sum(connection.streams for connection in list(server.state.connections))


def describe_registry() -> Registry:
    """A function of every argument kind, and a description that is HTML (to be shown, never parsed)."""
    registry = Registry()

    @registry.function
    def describe(
        name: str,
        count: int = 2,
        loud: bool = True,
        options: dict[str, int] | None = None,
        mode: Literal["fast", "safe"] = "safe",
    ) -> Any:
        """Say what was received. <img src=x onerror="document.title='pwned'"> <b>not bold</b>"""
        return {"name": name, "count": count, "loud": loud, "options": options, "mode": mode}

    return registry


# -- without a browser ------------------------------------------------------------------------------


def test_page_is_self_contained_and_small() -> None:
    """The page is one small file, every src/href inline (data:), and it never parses text as HTML."""
    html = docs_html().decode()
    assert len(docs_html()) < 40_000
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert links and all(link.startswith("data:") for link in links), links
    assert "innerHTML" not in html and "outerHTML" not in html and "insertAdjacentHTML" not in html


def test_docs_route_and_no_docs(docs_server: RunningServer) -> None:
    """GET /docs serves the page under a strict CSP; with --no-docs (docs=False) it is 404."""
    with urllib.request.urlopen(docs_server.http + "/docs", timeout=10) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.read() == docs_html()
    with running_server(docs=False) as server:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.http + "/docs", timeout=10)
        info.value.close()
        assert info.value.code == 404


# -- in the browser ---------------------------------------------------------------------------------


def test_lists_the_builtins(docs: DocsPage) -> None:
    """Every built-in shows with its description and signature; stream functions are marked."""
    docs.open()
    expect(docs.status()).to_contain_text("Connected: 8 functions")
    names = docs.page.locator("details.fn summary .name").all_inner_texts()
    assert sorted(names) == sorted(function.name for function in default_registry())
    docs.page.locator("#filter").fill("count from")
    expect(docs.page.locator("details.fn:visible summary .name")).to_have_text(["ticks"])
    docs.page.locator("#filter").fill("")
    add = docs.function("add_numbers")
    expect(add.locator("summary")).to_contain_text("(a: int | float, b: int | float) -> int | float")
    expect(add.locator(".description")).to_have_text(re.compile(r"^Add two numbers"))
    ticks = docs.page.locator('details.fn[data-name="ticks"] summary')
    expect(ticks.locator(".badge")).to_have_text("stream")
    expect(ticks).to_contain_text("(n: int, interval: float = 0.1) -> AsyncIterator[int]")
    assert docs.page.locator('details.fn[data-name="echo"] .badge').count() == 0


def test_add_numbers_shows_the_result_and_the_command(docs: DocsPage) -> None:
    """add_numbers with 1 and 2 shows 3, and the exact synapse call command for it."""
    card = docs.open().call("add_numbers", a="1", b="2")
    expect(card.locator("pre.value")).to_have_text("3")
    expect(card.locator(".outcome")).to_contain_text("Result in")
    command = f"synapse call add_numbers a=1 b=2 --url {docs.server.url}"
    expect(card.locator(".cli code")).to_have_text(command)


def test_wrong_type_shows_the_error_with_its_data(docs: DocsPage) -> None:
    """A string where a number belongs: the server's -32602, its message and its data, as sent."""
    card = docs.open().call("add_numbers", a="1", b="one")
    expect(card.locator(".outcome")).to_have_text("Error -32602: invalid arguments for add_numbers")
    data = json.loads(card.locator("pre.value").inner_text())
    assert data[0]["loc"][0] == "b" and "valid" in data[0]["msg"]
    expect(card.locator(".cli code")).to_contain_text("b=one")


def test_keyboard_only(docs: DocsPage) -> None:
    """On a function's summary, Enter opens it, Tab moves through the fields (focus visible), Enter calls."""
    docs.open()
    expect(docs.status()).to_contain_text("Connected")
    docs.page.locator('details.fn[data-name="add_numbers"] summary').focus()
    keyboard = docs.page.keyboard
    keyboard.press("Enter")
    keyboard.press("Tab")
    assert docs.page.evaluate("document.activeElement.name") == "a"
    assert docs.page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    keyboard.type("40")
    keyboard.press("Tab")
    keyboard.type("2")
    keyboard.press("Enter")
    expect(docs.page.locator('details.fn[data-name="add_numbers"] pre.value')).to_have_text("42")


def test_stream_items_arrive_one_by_one_and_stop_ends_it(docs: DocsPage) -> None:
    """ticks shows its items as they come; Stop cancels the call and the stream ends on the server."""
    card = docs.open().call("ticks", n="10000", interval="0.05")
    seen = set()
    deadline = time.monotonic() + 10
    while len(seen) < 4 and time.monotonic() < deadline:
        seen.add(len(items(card)))
        time.sleep(0.01)
    assert len([count for count in seen if count > 0]) >= 3, seen  # several partial lists: items arrive live
    assert items(card)[:3] == ["0", "1", "2"]
    assert wait_for(lambda: open_streams(docs.server) == 1)
    card.get_by_role("button", name="Stop").click()
    expect(card.locator(".outcome")).to_have_text(re.compile(r"^Stopped after \d+ items \(-32002 call cancelled\)$"))
    assert wait_for(lambda: open_streams(docs.server) == 0)
    shown = len(items(card))
    time.sleep(0.3)
    assert len(items(card)) == shown
    expect(card.get_by_role("button", name="Call")).to_be_enabled()
    expect(card.get_by_role("button", name="Stop")).to_be_disabled()


def test_topic_items_published_elsewhere_show_live(docs: DocsPage) -> None:
    """Subscribed to events in the page, a value published from a Python client shows up at once."""
    card = docs.open().call("events")
    assert wait_for(lambda: open_streams(docs.server) == 1)
    with SyncClient(docs.server.url) as client:
        assert client.call("publish_event", {"from": "python"}) == 1
    expect(card.locator("ol.items li")).to_have_text(['{"from":"python"}'])
    card.get_by_role("button", name="Stop").click()
    assert wait_for(lambda: open_streams(docs.server) == 0)


def test_form_kinds_defaults_and_the_command_runs(browser: Browser) -> None:
    """Each schema kind gets its field, defaults filled in; the shown command, run, gives the same result."""
    with running_server(describe_registry()) as server, tab(browser, server) as docs:
        card = docs.open().function("describe")
        expect(card.locator('input[name="name"]')).to_have_attribute("aria-required", "true")
        expect(card.locator('label[for$="-name"] .required')).to_have_text("*")
        expect(card.locator('input[name="count"]')).to_have_value("2")
        expect(card.locator('input[name="loud"][type="checkbox"]')).to_be_checked()
        expect(card.locator('textarea[name="options"]')).to_have_value("null")
        expect(card.locator('select[name="mode"] option:checked')).to_have_text('"safe"')
        expect(card.locator(".description")).to_contain_text('<img src=x onerror="document.title=')
        assert card.locator(".description img, .description b").count() == 0
        card.locator('input[name="loud"]').uncheck()
        card.locator('select[name="mode"]').select_option(label='"fast"')
        docs.call("describe", name="42 it's $HOME", options='{"a": 1}')
        expected = {"name": "42 it's $HOME", "count": 2, "loud": False, "options": {"a": 1}, "mode": "fast"}
        expect(card.locator("pre.value")).not_to_be_empty()
        assert json.loads(card.locator("pre.value").inner_text()) == expected
        command = card.locator(".cli code").inner_text()
        assert command.startswith("synapse call describe 'name=42 it'\\''s $HOME' count=2 loud=false")
        words = shlex.split(command)
        assert words[:2] == ["synapse", "call"]
        ran = subprocess.run(
            [synapse_executable(), *words[1:], "--json"], capture_output=True, text=True, timeout=30, env=clean_env()
        )
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout) == expected
        assert docs.page.title() != "pwned" and not docs.console_errors


def test_untrusted_results_are_text(docs: DocsPage) -> None:
    """HTML in a result is shown as text, never made into elements."""
    card = docs.open().call("echo", value="<b>bold?</b><script>document.title='pwned'</script>")
    expect(card.locator("pre.value")).to_have_text("\"<b>bold?</b><script>document.title='pwned'</script>\"")
    assert card.locator("pre.value b, pre.value script").count() == 0
    assert docs.page.title() != "pwned"


def test_token_wrong_is_refused_plainly_and_right_works(browser: Browser) -> None:
    """With --token: no token or a wrong one is a plain 401 message; the right one (as a subprotocol) works."""
    with running_server(token=TOKEN) as server, tab(browser, server) as docs:
        docs.open()
        expect(docs.status()).to_have_text(
            "Handshake refused: 401, this server needs a token: enter it in the Token field."
        )
        expect(docs.page.locator("#token")).to_be_focused()
        docs.page.locator("#token").fill("wrong")
        docs.page.get_by_role("button", name="Connect").click()
        expect(docs.status()).to_have_text("Handshake refused: 401, wrong token.")
        # what Chromium tells the tooling (never the page) about those two handshakes
        assert len(docs.socket_errors) == 2, docs.socket_errors
        assert all("401" in error or "Authentication failed" in error for error in docs.socket_errors)
        docs.page.locator("#token").fill(TOKEN)
        docs.page.locator("#token").press("Enter")
        expect(docs.status()).to_have_text("Connected: 8 functions (with a token).")
        card = docs.call("add_numbers", a="2", b="3")
        expect(card.locator("pre.value")).to_have_text("5")
        expect(card.locator(".cli code")).to_have_text(
            f'synapse call add_numbers a=2 b=3 --url {server.url} --token "$SYNAPSE_TOKEN"'
        )
        assert TOKEN not in docs.page.locator("body").inner_text()


def test_refusal_not_for_the_token_says_so(browser: Browser) -> None:
    """A handshake refused for another reason (here: no connection allowed) is not blamed on the token."""
    with running_server(max_connections=0) as server, tab(browser, server) as docs:
        docs.open()
        expect(docs.status()).to_have_text(
            "Handshake refused, and not for the token: too many connections (503), or an origin rule (403)?"
        )


def test_documented_browser_snippet_connects_with_a_token(browser: Browser) -> None:
    """The JavaScript for a token from a browser, wherever README.md or docs/ shows it, opens a --token server."""
    root = Path(__file__).parent.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    pattern = re.compile(r"\*\*Tokens from a browser\.\*\*.*?```js\n(.*?)```", re.S)
    snippets = [match.group(1) for page in pages if (match := pattern.search(page.read_text()))]
    assert snippets, "README.md and docs/ lost the browser token snippet"
    with running_server(token=TOKEN) as server, tab(browser, server) as docs:
        docs.open()
        expect(docs.status()).to_contain_text("401")
        for snippet in snippets:
            code = snippet.replace("ws://127.0.0.1:8000/ws", server.url)
            script = "(token) => new Promise((done) => {" + code
            script += "ws.onopen = () => done(ws.protocol); ws.onclose = (event) => done('closed ' + event.code); })"
            assert docs.page.evaluate(script, TOKEN) == "synapse.v1"


def test_page_on_another_origin_is_refused(browser: Browser, docs_server: RunningServer) -> None:
    """A page served from another origin cannot open the WebSocket (403), unless --allow-origin names it."""
    with other_origin_page() as other, tab(browser, docs_server) as docs:
        docs.page.goto(f"{other}/?ws={docs_server.url}")
        assert docs.page.evaluate("window.outcome") == "closed 1006"
        assert len(docs.socket_errors) == 1 and "403" in docs.socket_errors[0], docs.socket_errors
        with running_server(allow_origins=(other,)) as allowing:
            docs.page.goto(f"{other}/?ws={allowing.url}")
            assert docs.page.evaluate("window.outcome") == "open"


def test_tour_asks_only_its_own_origin(docs: DocsPage, tmp_path: Path) -> None:
    """A call, an error and a stream: every request goes to the server's own origin, no console error."""
    docs.open()
    docs.call("add_numbers", a="1", b="2")
    docs.call("divide", a="1", b="0")
    ticks = docs.call("ticks", n="3", interval="0.01")
    expect(ticks.locator(".outcome")).to_have_text(re.compile(r"^Stream ended: 3 items"))
    expect(docs.function("divide").locator(".outcome")).to_have_text("Error -32000: division by zero")
    own = urlsplit(docs.server.http).netloc
    assert docs.requests and all(urlsplit(url).netloc == own for url in docs.requests), docs.requests
    assert [ws.url for ws in docs.websockets] == [docs.server.url]
    assert docs.console_errors == []
    light = docs.page.evaluate("getComputedStyle(document.body).backgroundColor")
    docs.page.emulate_media(color_scheme="dark")
    assert docs.page.evaluate("getComputedStyle(document.body).backgroundColor") != light
    docs.page.emulate_media(color_scheme="light")
    docs.function("divide").locator("summary").click()  # closed again: the screenshot shows a call and a stream
    shot = docs.page.screenshot(path=str(tmp_path / "docs-page.png"), full_page=True)
    assert shot.startswith(b"\x89PNG")
    if target := os.environ.get("SYNAPSE_DOCS_SCREENSHOT"):
        Path(target).write_bytes(shot)


# -- a page on another origin -----------------------------------------------------------------------


# A page that opens a WebSocket to the URL in its ``?ws=`` query; ``window.outcome``: "open" or "closed <code>".
ELSEWHERE_HTML = (
    b"<!doctype html><title>elsewhere</title><script>window.outcome = new Promise((done) => {"
    b"const ws = new WebSocket(new URLSearchParams(location.search).get('ws'), ['synapse.v1']);"
    b"ws.onopen = () => done('open'); ws.onclose = (event) => done('closed ' + event.code); });</script>"
)


class ElsewhereHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(ELSEWHERE_HTML)))
        self.end_headers()
        self.wfile.write(ELSEWHERE_HTML)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def other_origin_page() -> Iterator[str]:
    """A second loopback HTTP server (another port: another origin) serving ``ELSEWHERE_HTML``; its origin."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ElsewhereHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def calling_back_registry() -> Registry:
    """A function that asks its caller (the page) for an answer, and one that notifies it."""
    registry = Registry()

    @registry.function
    async def confirm(ctx: Context, question: str) -> Any:
        """Ask the caller; answer with what it said."""
        return {"answer": await ctx.call("confirm", question, {"default": False}, timeout=20)}

    @registry.function
    async def announce(ctx: Context, text: str) -> str:
        """Notify the caller, then answer."""
        await ctx.notify("announcement", {"text": text})
        return "announced"

    return registry


def test_the_page_answers_server_calls_from_a_prompt(browser: Browser) -> None:
    """ctx.call to the page opens a prompt naming the call; its text (JSON, else a string) is the answer,
    Cancel answers -32002; a notification shows in the status line."""
    with running_server(calling_back_registry()) as server, tab(browser, server) as docs:
        prompts: list[tuple[str, str]] = []
        answers = iter(['{"ok": true}', "plain words", None])

        def dialog(opened: Any) -> None:
            prompts.append((opened.type, opened.message))
            answer = next(answers)
            if answer is None:
                opened.dismiss()
            else:
                opened.accept(answer)

        docs.page.on("dialog", dialog)
        card = docs.open().call("confirm", question="Delete it?")
        expect(card.locator("pre.value")).to_have_text(json.dumps({"answer": {"ok": True}}, indent=2))
        card.get_by_role("button", name="Call").click()
        expect(card.locator("pre.value")).to_have_text(json.dumps({"answer": "plain words"}, indent=2))
        card.get_by_role("button", name="Call").click()
        expect(card.locator(".outcome")).to_have_text("Error -32002: cancelled in the browser")
        question = 'The server calls confirm("Delete it?", {"default":false}).\nYour answer (JSON, or text):'
        assert prompts == [("prompt", question)] * 3
        docs.call("announce", text="hello")
        expect(docs.status()).to_have_text('Notification announcement: {"text":"hello"}')
        assert docs.console_errors == []


def test_a_topic_with_history_has_a_since_field_and_shows_each_items_position(browser: Browser) -> None:
    """A topic with a history: its form has a since field (with its hint); since=3 shows the kept items
    after position 3, each marked with its position, then live ones; the command says since=3."""
    from test_resume import _build

    with running_server(_build()) as server, tab(browser, server) as docs:
        with SyncClient(server.url) as client:
            for value in range(1, 6):
                client.call("publish_small", value)
        card = docs.open().function("small")
        expect(card.locator(".hint")).to_have_text(
            "The position of the last item received: the kept items after it come first (none: from now)."
        )
        docs.call("small", since="3")
        expect(card.locator("ol.items li")).to_have_text(["4", "5"])
        with SyncClient(server.url) as client:
            assert client.call("publish_small", 6) == 1
        expect(card.locator("ol.items li")).to_have_text(["4", "5", "6"])
        positions = [li.get_attribute("data-position") for li in card.locator("ol.items li").all()]
        assert positions == ["4", "5", "6"]
        assert card.locator(".cli code").inner_text() == f"synapse call small since=3 --url {server.url}"
        card.get_by_role("button", name="Stop").click()
        assert wait_for(lambda: open_streams(server) == 0)
        assert not docs.console_errors
