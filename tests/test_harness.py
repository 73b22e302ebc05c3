"""Tests of the test harness itself: the asset cache, servers on 127.0.0.1, the SSE client and offline Chromium."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fasthtml.common import Button, Div, EventStream, Link, P, Script, fast_app, to_xml
from playwright.sync_api import expect

from tests.support.browser import STAND_IN_SCRIPTS, assets, save_screenshot
from tests.support.server import LOOPBACK, SSEParser, ThreadedServer, iter_sse_lines, open_sse_stream

SSE_EXTENSION_URL = "https://cdn.jsdelivr.net/npm/htmx-ext-sse@2.2.4/sse.js"
DAISYUI_URL = "https://cdn.jsdelivr.net/npm/daisyui@5/daisyui.css"
TAILWIND_URL = "https://cdn.jsdelivr.net/npm/@tailwindcss/browser@4/dist/index.global.js"
HARNESS_MESSAGES = ("first message", "second message")


def create_harness_app(marker_dir: str | None = None):
    """Create a small FastHTML page: an hx-post button and an element fed by two server-sent events.

    With `marker_dir`, the startup and shutdown handlers write `started` and `stopped` files there.
    """
    def mark(name: str) -> None:
        if marker_dir is not None:
            Path(marker_dir, name).write_text(name)

    # secret_key keeps FastHTML from writing a .sesskey file into the working directory.
    app, rt = fast_app(pico=False, surreal=False, secret_key="harness-test-secret",
                       hdrs=[Script(src=SSE_EXTENSION_URL)],
                       on_startup=[lambda: mark("started")], on_shutdown=[lambda: mark("stopped")])

    @rt("/")
    def index():
        return Div(
            Button("Click me", id="go", hx_post="/clicked", hx_target="#out"),
            Div(id="out"),
            Div(Div(id="feed", sse_swap="message", hx_swap="beforeend"),
                hx_ext="sse", sse_connect="/events", sse_close="close"),
        )

    @rt("/clicked")
    def post():
        return P("Clicked", id="clicked")

    @rt("/events")
    async def events():
        async def stream():
            for number, text in enumerate(HARNESS_MESSAGES, start=1):
                yield f"id: {number}\nevent: message\nretry: 3000\ndata: {to_xml(P(text, cls='msg'))}\n\n"
                await asyncio.sleep(0.05)
            yield "event: close\ndata: done\n\n"
        return EventStream(stream())

    @rt("/styled")
    def styled():
        return (Link(rel="stylesheet", href=DAISYUI_URL), Script(src=TAILWIND_URL),
                Div(Button("Styled", id="styled", cls="btn btn-primary"), P("hidden", id="hidden", cls="hidden")))

    return app


# --- asset cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("url, package, file", [
    ("https://cdn.jsdelivr.net/npm/htmx.org@2.0.7/dist/htmx.js", "htmx.org", "dist/htmx.js"),
    ("https://cdn.jsdelivr.net/npm/htmx.org@2.0.7/dist/htmx.min.js", "htmx.org", "dist/htmx.min.js"),
    ("https://unpkg.com/htmx.org@2.0.7/dist/htmx.js", "htmx.org", "dist/htmx.js"),
    ("https://cdn.jsdelivr.net/npm/htmx-ext-sse@2.2.4/sse.js", "htmx-ext-sse", "sse.js"),
    ("https://unpkg.com/htmx-ext-sse@2.2.4", "htmx-ext-sse", "dist/sse.min.js"),  # the "unpkg" field
    ("https://cdn.jsdelivr.net/npm/daisyui@5/daisyui.css", "daisyui", "daisyui.css"),
    ("https://cdn.jsdelivr.net/npm/daisyui@5/themes.css", "daisyui", "themes.css"),
    ("https://cdn.jsdelivr.net/npm/daisyui@5.8.1/daisyui.css", "daisyui", "daisyui.css"),
    ("https://cdn.jsdelivr.net/npm/@tailwindcss/browser@4/dist/index.global.js",
     "@tailwindcss/browser", "dist/index.global.js"),
    ("https://cdn.jsdelivr.net/npm/@tailwindcss/browser@4.3.3/dist/index.global.js",
     "@tailwindcss/browser", "dist/index.global.js"),
    ("https://cdn.jsdelivr.net/npm/axe-core@4.14.1/axe.min.js", "axe-core", "axe.min.js"),
])
def test_cdn_url_maps_to_cached_file(asset_cache, url, package, file):
    path = assets.local_path_for_url(url, asset_cache)
    assert path is not None, f"{url} has no cached file"
    assert path == (asset_cache / "node_modules" / package / file).resolve()
    assert path.is_file()


@pytest.mark.parametrize("url", [
    "https://cdn.jsdelivr.net/npm/htmx.org@1.9.12/dist/htmx.js",  # version the pin does not satisfy
    "https://cdn.jsdelivr.net/npm/htmx.org@2/dist/missing.js",  # file the package lacks
    "https://cdn.jsdelivr.net/npm/daisyui@4/dist/full.css",  # major version not pinned
    "https://cdn.jsdelivr.net/npm/left-pad@1.3.0/index.js",  # package not pinned
    "https://cdn.jsdelivr.net/npm/htmx.org@2.0.7/../../../../etc/passwd",  # path outside the package
    "https://cdn.jsdelivr.net/gh/answerdotai/fasthtml-js@1.0.12/fasthtml.js",  # GitHub mirror, not npm
    "https://example.invalid/npm/htmx.org@2.0.7/dist/htmx.js",  # not a CDN host
])
def test_cdn_url_without_cached_file(asset_cache, url):
    assert assets.local_path_for_url(url, asset_cache) is None


def test_fasthtml_default_htmx_is_cached(asset_cache):
    from fasthtml.core import htmxsrc

    url = htmxsrc.attrs["src"]
    assert assets.local_path_for_url(url, asset_cache) is not None, f"FastHTML's htmx {url} is not cached"


def test_library_sse_extension_is_cached(asset_cache):
    from cjm_fasthtml_job_monitor.components.modal import SSE_EXTENSION_CDN_URL

    path = assets.local_path_for_url(SSE_EXTENSION_CDN_URL, asset_cache)
    assert path is not None, f"the library's SSE extension {SSE_EXTENSION_CDN_URL} is not cached"


def test_asset_cache_has_every_pin(asset_cache):
    assert assets.missing_packages(asset_cache) == {}
    for name, version in assets.PINNED_PACKAGES.items():
        assert assets.installed_version(name, asset_cache) == version


# --- SSE parsing ---------------------------------------------------------------------------------


def test_sse_parser_reads_all_fields():
    body = "id: 7\nevent: progress\nretry: 2500\ndata: line one\ndata: line two\n\n"
    events = list(iter_sse_lines(body))
    assert len(events) == 1
    assert events[0].id == "7"
    assert events[0].event == "progress"
    assert events[0].retry == 2500
    assert events[0].data == "line one\nline two"


def test_sse_parser_edge_cases():
    parser = SSEParser()
    lines = [": keep-alive", "", "id: 3", "", "data:no space", "retry: soon", "", "data: x", "id: bad\0id", ""]
    events = [event for event in map(parser.feed, lines) if event is not None]
    assert parser.comments == ["keep-alive"]
    assert [event.data for event in events] == ["no space", "x"]
    assert events[0].event == "message"
    assert events[0].retry is None  # a non-numeric retry is ignored
    assert events[0].id is None  # the id came in an earlier block without data
    assert parser.last_event_id == "3"  # ... but it still set the last event id; the NUL id did not


# --- servers -------------------------------------------------------------------------------------


def test_threaded_server_runs_lifespan(tmp_path):
    server = ThreadedServer(create_harness_app(str(tmp_path)))
    server.start()
    try:
        assert (tmp_path / "started").exists()
        assert server.base_url.startswith(f"http://{LOOPBACK}:")
        response = httpx.get(server.url("/"))
        assert response.status_code == 200
        assert 'id="go"' in response.text
        assert not (tmp_path / "stopped").exists()
    finally:
        server.stop()
    assert (tmp_path / "stopped").exists()


def test_threaded_server_startup_failure():
    def fail():
        raise RuntimeError("startup handler failed on purpose")

    app, _ = fast_app(pico=False, secret_key="harness-test-secret", on_startup=[fail])
    with pytest.raises(RuntimeError, match="failed to start") as raised:
        ThreadedServer(app, startup_timeout=20).start()
    assert "startup handler failed on purpose" in str(raised.value)


def test_sse_stream_over_httpx(serve_app):
    server = serve_app(create_harness_app())
    with open_sse_stream(server.url("/events")) as stream:
        events = stream.read_events(3, timeout=10)
        with pytest.raises(EOFError):
            stream.next_event(timeout=5)
    assert [event.event for event in events] == ["message", "message", "close"]
    assert [event.id for event in events] == ["1", "2", None]
    assert [event.retry for event in events] == [3000, 3000, None]
    assert "first message" in events[0].data
    assert "second message" in events[1].data
    assert stream.parser.last_event_id == "2"


def test_sse_stream_rejects_plain_page(serve_app):
    server = serve_app(create_harness_app())
    with pytest.raises(AssertionError, match="not an event stream"):
        open_sse_stream(server.url("/"))


def test_sse_stream_timeout_keeps_stream(serve_app):
    from fasthtml.common import fast_app as make_app

    app, rt = make_app(pico=False, secret_key="harness-test-secret")

    @rt("/slow")
    async def slow():
        async def stream():
            await asyncio.sleep(1.0)
            yield "data: late\n\n"
            await asyncio.sleep(30)
        return EventStream(stream())

    server = serve_app(app)
    with open_sse_stream(server.url("/slow")) as stream:
        with pytest.raises(TimeoutError):
            stream.next_event(timeout=0.2)
        assert stream.next_event(timeout=10).data == "late"


def test_server_process_stop_restart_kill(start_server_process, tmp_path):
    server = start_server_process("tests.test_harness:create_harness_app", {"marker_dir": str(tmp_path)})
    assert (tmp_path / "started").exists()
    assert httpx.get(server.url("/")).status_code == 200
    port = server.port

    (tmp_path / "started").unlink()
    server.restart()
    assert (tmp_path / "stopped").exists(), "SIGTERM did not run the shutdown handlers"
    assert (tmp_path / "started").exists()
    assert server.port == port
    assert httpx.get(server.url("/")).status_code == 200

    (tmp_path / "stopped").unlink()
    server.kill()
    assert not server.is_running()
    assert not (tmp_path / "stopped").exists(), "SIGKILL should leave no chance to run shutdown handlers"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{LOOPBACK}:{port}/", timeout=2)


# --- browser -------------------------------------------------------------------------------------


def test_browser_click_and_sse(page, page_log, serve_app, artifacts_dir):
    server = serve_app(create_harness_app())
    page.goto(server.url("/"))

    messages = page.locator("#feed p.msg")
    expect(messages).to_have_count(2)
    expect(messages.nth(0)).to_have_text(HARNESS_MESSAGES[0])
    expect(messages.nth(1)).to_have_text(HARNESS_MESSAGES[1])

    page.click("#go")
    expect(page.locator("#out #clicked")).to_have_text("Clicked")
    save_screenshot(page, "harness-click-and-sse", directory=artifacts_dir)

    page_log.assert_clean()
    assert page_log.stand_ins == list(STAND_IN_SCRIPTS)
    assert any("htmx.org@2.0.7" in url for url in page_log.from_cache)
    assert SSE_EXTENSION_URL in page_log.from_cache
    assert page.evaluate("typeof htmx.version") == "string"
    assert page.evaluate("htmx.version") == "2.0.7"


def test_browser_blocks_other_hosts(page, page_log, serve_app):
    server = serve_app(create_harness_app())
    page.goto(server.url("/"))
    expect(page.locator("#feed p.msg")).to_have_count(2)

    outside = "https://example.invalid/probe"
    unpinned = "https://cdn.jsdelivr.net/npm/htmx.org@1.9.12/dist/htmx.js"
    for url in (outside, unpinned):
        outcome = page.evaluate("url => fetch(url).then(() => 'loaded', error => 'failed: ' + error)", url)
        assert outcome.startswith("failed"), f"{url} was not blocked: {outcome}"
    assert page_log.blocked == [outside, unpinned]
    assert page_log.problems(), "blocked requests must count as problems"


def test_browser_styles_from_cache(page, page_log, serve_app):
    server = serve_app(create_harness_app())
    page.goto(server.url("/styled"))
    expect(page.locator("#hidden")).to_be_hidden()  # Tailwind's browser build generated `.hidden`
    background = page.locator("#styled").evaluate("element => getComputedStyle(element).backgroundColor")
    assert background not in ("", "rgba(0, 0, 0, 0)", "transparent"), "daisyUI's .btn-primary did not apply"
    page_log.assert_clean()
    assert DAISYUI_URL in page_log.from_cache
    assert TAILWIND_URL in page_log.from_cache


def test_axe_runs_offline(page, page_log, serve_app, asset_cache):
    server = serve_app(create_harness_app())
    page.goto(server.url("/"))
    page.add_script_tag(path=str(asset_cache / "node_modules" / "axe-core" / "axe.min.js"))
    result = page.evaluate("async () => { const r = await axe.run(); return {version: axe.version, "
                           "violations: r.violations.map(v => v.id)}; }")
    assert result["version"] == assets.PINNED_PACKAGES["axe-core"]
    assert isinstance(result["violations"], list)
    page_log.assert_clean()


def test_page_log_records_errors(page, page_log, serve_app):
    server = serve_app(create_harness_app())
    page.goto(server.url("/"))
    page.evaluate("console.error('deliberate console error')")
    page.evaluate("setTimeout(() => { throw new Error('deliberate page error'); }, 0)")
    page.wait_for_timeout(200)
    assert page_log.console_errors == ["deliberate console error"]
    assert len(page_log.page_errors) == 1
    assert "deliberate page error" in page_log.page_errors[0]
    with pytest.raises(AssertionError, match="deliberate"):
        page_log.assert_clean()
