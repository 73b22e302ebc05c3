"""Browser tests of the job modal, the trigger, the overlay and job_monitor.js, driven by a push app.

The push app renders the library's components into a page and serves an event
stream that sends exactly what a test queues. That makes bursts, clock skew and
many updates deterministic without a worker. `test_browser_demo.py` covers the
same components end to end with the routes and real workers.
"""
from __future__ import annotations

import asyncio
import os
import queue
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pytest
from fasthtml.common import Div, H1, Input, Label, Link, Main, P, Script, Title, fast_app, to_xml
from playwright.sync_api import Page, expect
from starlette.responses import StreamingResponse

from cjm_fasthtml_job_monitor.components.modal import (
    STATIC_PATH, get_sse_headers, render_footer_oob, render_job_modal, render_sse_connection, render_sse_response,
    static_response,
)
from cjm_fasthtml_job_monitor.components.overlay import render_job_overlay, render_job_overlay_placeholder
from cjm_fasthtml_job_monitor.components.tabs.logs_tab import render_log_append_oob, render_logs_tab
from cjm_fasthtml_job_monitor.components.tabs.resources_tab import render_resources_tab
from cjm_fasthtml_job_monitor.components.trigger import render_job_progress_button, render_job_trigger
from cjm_fasthtml_job_monitor.html_ids import JobMonitorHtmlIds
from cjm_fasthtml_job_monitor.models import JobMonitorConfig, JobMonitorUrls, LogLine, ResourceSnapshot
from tests.support.browser import REPO_ROOT, assets

HTMX_URL = "https://cdn.jsdelivr.net/npm/htmx.org@2.0.7/dist/htmx.min.js"
DAISYUI_URL = "https://cdn.jsdelivr.net/npm/daisyui@5.8.1/daisyui.css"
DAISYUI_THEMES_URL = "https://cdn.jsdelivr.net/npm/daisyui@5.8.1/themes.css"
TAILWIND_URL = "https://cdn.jsdelivr.net/npm/@tailwindcss/browser@4.3.3/dist/index.global.js"
AXE_PATH = assets.DEFAULT_CACHE_DIR / "node_modules" / "axe-core" / "axe.min.js"
DOC_IMAGES_DIR = REPO_ROOT / "nbs" / "images"

JOB_ID = "job-1"
CONTENT_ID = "work-area"
BASE_TITLE = "Push test page"
UI_TIMEOUT_MS = 10_000

IDS = JobMonitorHtmlIds("jm")
URLS = JobMonitorUrls(trigger="/jobs/trigger", progress="/jobs/progress", cancel="/jobs/cancel", log="/jobs/log")


# --- the push app --------------------------------------------------------------------------------


class PushStream:
    "Messages that a test queues and the page's event stream sends, in order, to whichever viewer reads first."

    def __init__(self) -> None:
        self._messages: "queue.Queue[tuple[str, str]]" = queue.Queue()
        self.connections = 0  # Event streams opened so far

    def push(self, *parts: Any, event: str = "message") -> None:
        "Queue one message whose data is `parts` (FT or HTML strings) inside one <div>."
        html = "".join(part if isinstance(part, str) else to_xml(part) for part in parts)
        self._messages.put((event, f"<div>{html}</div>" if html else ""))

    def finish(self, *parts: Any) -> None:
        "Queue a last message with `parts`, then the `done` event that closes the stream."
        if parts: self.push(*parts)
        self.push(event="done")

    async def stream(self):
        self.connections += 1
        while True:
            try:
                event, data = self._messages.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
                continue
            lines = [f"event: {event}"] + [f"data: {line}" for line in (data.split("\n") or [""])]
            yield "\n".join(lines) + "\n\n"
            if event == "done": return


@dataclass
class PageSetup:
    "What the push app's page shows when it loads."
    theme: str = "light"
    status: str = "running"
    progress: float = 0.25
    message: str = "Packing files"
    elapsed_s: Optional[float] = 12.0  # Server-side elapsed seconds of the job at page load
    log_lines: Sequence[LogLine] = ()
    resources: Optional[ResourceSnapshot] = None
    history: Sequence[ResourceSnapshot] = ()
    open_on_render: bool = True
    config: JobMonitorConfig = field(default_factory=lambda: JobMonitorConfig(
        modal_title="Archive job", trigger_icon="play", progress_label="View progress"))
    kb_system_id: Optional[str] = None
    connect: bool = True  # Render the SSE connection; False leaves the page without a stream


def page_headers() -> list:
    return [
        Link(rel="stylesheet", href=DAISYUI_URL),
        Link(rel="stylesheet", href=DAISYUI_THEMES_URL),
        Script(src=TAILWIND_URL),
        Script(src=HTMX_URL),
        *get_sse_headers(),
    ]


def render_test_modal(setup: PageSetup, *, open_on_render: Optional[bool] = None, oob: bool = False) -> Any:
    "Render the modal for the state in `setup`, as the page starts with it or as an out-of-band replacement."
    now = time.time()
    started_at = None if setup.elapsed_s is None else now - setup.elapsed_s
    modal = render_job_modal(
        setup.config, IDS, URLS, job_id=JOB_ID if setup.connect else "", status=setup.status,
        progress_value=setup.progress, status_message=setup.message, started_at=started_at,
        resources=setup.resources, open_on_render=setup.open_on_render if open_on_render is None else open_on_render,
        log_url=f"{URLS.log}?job_id={JOB_ID}", history=list(setup.history), kb_system_id=setup.kb_system_id, now=now,
        log_lines=list(setup.log_lines))
    if oob: modal.attrs["hx-swap-oob"] = "true"
    return modal


def create_push_app(stream: PushStream, setup_holder: dict):
    "Create the push app: `/` renders the page for `setup_holder['setup']`, the progress URL streams `stream`."
    app, rt = fast_app(pico=False, surreal=False, default_hdrs=False, secret_key="push-test-secret",
                       hdrs=page_headers(), title=BASE_TITLE, htmlkw={"lang": "en"})

    @rt("/")
    def index():
        setup: PageSetup = setup_holder["setup"]
        # fast_app's htmlkw is fixed when the app is made; the theme is set per page load.
        theme = Script(f"document.documentElement.dataset.theme = {setup.theme!r};")
        # What check_inflight_job renders: the progress button and the overlay while the job is active.
        active = setup.status in ("pending", "running", "cancelling")
        button = (render_job_progress_button(setup.config, IDS) if active
                  else render_job_trigger(setup.config, IDS, URLS))
        overlay = render_job_overlay(IDS, setup.config) if active else render_job_overlay_placeholder(IDS)
        page = Main(
            Div(Div(H1("Archive sources", cls="text-2xl font-bold"), button,
                    cls="flex items-center justify-between mb-4"),
                Div(P("Covered while a job runs."), Label("Name ", Input(id="covered-input", cls="input")), overlay,
                    id=CONTENT_ID, cls="relative card bg-base-200 p-6 min-h-48"),
                id="page-top", cls="p-2"),
            render_test_modal(setup),
            cls="max-w-3xl mx-auto p-6 min-h-screen")
        return Title(BASE_TITLE), theme, page

    @app.route(URLS.progress)
    async def progress(job_id: str = ""):
        return StreamingResponse(stream.stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.route(STATIC_PATH + "/{fname}")
    def job_monitor_static(fname: str):
        return static_response(fname)

    return app


# --- messages like the routes send ---------------------------------------------------------------


def progress_oob(status: str = "running", progress: float = 0.5, message: str = "", *, elapsed_s: float = 10.0,
                 ended: bool = False, error: Optional[str] = None, eta_s: Optional[float] = None) -> Any:
    "Render the progress tab's out-of-band update for a job `elapsed_s` seconds old by the server's clock."
    now = time.time()
    started_at = now - elapsed_s
    return render_sse_response(IDS, URLS, status, progress, message, started_at, now if ended else None,
                               now=now, eta_s=eta_s, error_message=error)


def log_lines(start: int, count: int, level: str = "INFO", text: str = "line") -> list[LogLine]:
    return [LogLine(seq, 1_700_000_000.0 + seq, level, f"{text} {seq}") for seq in range(start, start + count)]


def terminal_parts(status: str = "completed", elapsed_s: float = 30.0, error: Optional[str] = None) -> list:
    "The last update of a job, as the routes send it: final progress, no Cancel, no overlay, the trigger back."
    placeholder = render_job_overlay_placeholder(IDS)
    placeholder.attrs["hx-swap-oob"] = "true"
    inert = render_sse_connection(IDS, URLS, "", is_active=False)
    inert.attrs["hx-swap-oob"] = "true"
    trigger = render_job_trigger(PageSetup().config, IDS, URLS)
    trigger.attrs["hx-swap-oob"] = "true"
    return [progress_oob(status, 1.0 if status == "completed" else 0.4, elapsed_s=elapsed_s, ended=True,
                         error=error),
            render_footer_oob(IDS, URLS, is_active=False), placeholder, inert, trigger]


# --- fixtures and page helpers -------------------------------------------------------------------


@dataclass
class PushPage:
    "A loaded push-app page and the stream that feeds it."
    page: Page
    stream: PushStream
    server: Any
    setup_holder: dict

    def load(self, setup: Optional[PageSetup] = None) -> "PushPage":
        "Load the page for `setup` and wait until job_monitor.js ran and the stream connected."
        self.setup_holder["setup"] = setup or PageSetup()
        before = self.stream.connections
        self.page.goto(self.server.url("/"))
        self.page.wait_for_function("() => window.jobMonitor !== undefined")
        if self.setup_holder["setup"].connect and self.setup_holder["setup"].status in ("pending", "running",
                                                                                         "cancelling"):
            wait_until(lambda: self.stream.connections > before, "the page did not open its event stream")
        return self


def wait_until(condition, message: str, timeout: float = UI_TIMEOUT_MS / 1000) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline: raise AssertionError(message)
        time.sleep(0.02)


@pytest.fixture
def push_page(page: Page, serve_app) -> PushPage:
    "A push app on 127.0.0.1 and the test's page; call `.load(PageSetup(...))` to open it."
    stream = PushStream()
    holder: dict = {"setup": PageSetup()}
    server = serve_app(create_push_app(stream, holder))
    return PushPage(page, stream, server, holder)


def wait_for_modal_open(page: Page) -> None:
    "Wait until the modal is open and daisyUI's fade-in finished."
    page.wait_for_function(
        """id => {
            const dialog = document.getElementById(id);
            const box = dialog?.querySelector(".modal-box");
            return dialog?.open === true && box !== null && getComputedStyle(box).opacity === "1";
        }""", arg=IDS.modal, timeout=UI_TIMEOUT_MS)


def wait_for_modal_closed(page: Page) -> None:
    page.wait_for_function("id => document.getElementById(id)?.open === false", arg=IDS.modal, timeout=UI_TIMEOUT_MS)


def modal_is_open(page: Page) -> bool:
    return page.evaluate("id => document.getElementById(id)?.open === true", IDS.modal)


def open_tab(page: Page, name: str) -> None:
    page.locator(f"#{IDS.tab_button(name)}").click()
    expect(page.locator(f"#{IDS.tab_panel(name)}")).to_be_visible()


def progress_data(page: Page) -> dict:
    "Return the data attributes of the progress block that job_monitor.js reads."
    return page.locator(f"#{IDS.tab_progress} [data-jm-progress]").evaluate("element => ({...element.dataset})")


def elapsed_text(page: Page) -> str:
    return page.locator(f"#{IDS.elapsed}").inner_text().strip()


def to_seconds(text: str) -> int:
    "Convert M:SS or H:MM:SS to seconds."
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def ax_node(page: Page, selector: str) -> dict:
    "Return the browser's accessibility node for `selector`: role, name and properties such as valuenow."
    client = page.context.new_cdp_session(page)
    try:
        root = client.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node_id = client.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        node = client.send("Accessibility.getPartialAXTree", {"nodeId": node_id, "fetchRelatives": False})["nodes"][0]
    finally:
        client.detach()
    properties = {prop["name"]: prop["value"].get("value") for prop in node.get("properties", [])}
    return {"role": node["role"]["value"], "name": node.get("name", {}).get("value"),
            "value": node.get("value", {}).get("value"), **properties}


# --- progress tab --------------------------------------------------------------------------------


def test_progress_bar_badge_and_notices(push_page: PushPage):
    page = push_page.load(PageSetup(status="running", progress=0.25)).page
    wait_for_modal_open(page)
    tab = page.locator(f"#{IDS.tab_progress}")
    bar = page.locator(f"#{IDS.progress_bar}")

    # Determinate: the bar's value, the printed percentage, and the value assistive technology reads.
    expect(bar).to_have_attribute("value", "25")
    expect(tab).to_contain_text("25%")
    expect(tab.locator(".badge[data-status]")).to_have_text("Running")
    node = ax_node(page, f"#{IDS.progress_bar}")
    assert node["role"] == "progressbar", node
    assert node["name"] == "Job progress", node
    assert node["value"] == 25 or node.get("valuenow") == 25, node

    # No fraction reported: an indeterminate bar and no percentage anywhere.
    push_page.stream.push(progress_oob("running", -1.0, "Scanning the source"))
    expect(tab).to_contain_text("Scanning the source")
    assert page.locator(f"#{IDS.progress_bar}").evaluate("bar => bar.matches(':indeterminate')")
    assert "%" not in tab.inner_text()
    assert progress_data(page)["percent"] == ""

    # An estimate appears when the routes send one and goes when they withdraw it.
    push_page.stream.push(progress_oob("running", 0.5, "Packing", eta_s=83))
    expect(tab).to_contain_text("About 1:23 remaining (estimate)")
    push_page.stream.push(progress_oob("running", 0.55, "Packing"))
    expect(tab).to_contain_text("55%")
    expect(tab).not_to_contain_text("remaining")

    push_page.stream.push(progress_oob("cancelling", 0.6, "Packing"))
    expect(tab.locator(".badge[data-status]")).to_have_text("Cancelling")
    expect(tab).to_contain_text("Cancel requested")

    push_page.stream.push(progress_oob("cancelled", 0.6, ended=True))
    expect(tab.locator(".badge[data-status]")).to_have_text("Cancelled")
    expect(tab).to_contain_text("The job was cancelled.")

    push_page.stream.push(progress_oob("failed", 0.6, ended=True, error="Disk full: /data/archive.tar.xz"))
    expect(tab.locator(".badge[data-status]")).to_have_text("Failed")
    expect(tab.locator(".alert")).to_contain_text("Failed: Disk full: /data/archive.tar.xz")

    push_page.stream.push(progress_oob("completed", 0.97, ended=True))
    expect(tab.locator(".badge[data-status]")).to_have_text("Completed")
    expect(page.locator(f"#{IDS.progress_bar}")).to_have_attribute("value", "100")


SKEW_MS = -7 * 3600 * 1000  # The browser's clock runs seven hours behind the server's

SKEWED_DATE_SCRIPT = """
(() => {
  const RealDate = Date;
  const skew = %d;
  class SkewedDate extends RealDate {
    constructor(...args) { if (args.length === 0) super(RealDate.now() + skew); else super(...args); }
    static now() { return RealDate.now() + skew; }
  }
  window.Date = SkewedDate;
})();
""" % SKEW_MS


def test_elapsed_ignores_skewed_browser_clock(push_page: PushPage):
    push_page.page.add_init_script(SKEWED_DATE_SCRIPT)
    page = push_page.load(PageSetup(status="running", elapsed_s=7200.0)).page
    skew_s = page.evaluate("() => (Date.now() - performance.timeOrigin - performance.now()) / 1000")
    assert abs(skew_s - SKEW_MS / 1000) < 5, f"the page's clock is not skewed: {skew_s} s"

    # The server's figure, ticking with the time since it arrived.
    first = to_seconds(elapsed_text(page))
    assert 7200 <= first <= 7203, elapsed_text(page)
    page.wait_for_timeout(2200)
    later = to_seconds(elapsed_text(page))
    assert 2 <= later - first <= 4, (first, later)

    # A new update resets the base to the server's new figure.
    push_page.stream.push(progress_oob("running", 0.5, "update", elapsed_s=7300.0))
    expect(page.locator(f"#{IDS.tab_progress}")).to_contain_text("update")
    assert 7300 <= to_seconds(elapsed_text(page)) <= 7302, elapsed_text(page)

    # The end freezes it at the server's final figure.
    push_page.stream.finish(*terminal_parts("completed", elapsed_s=7400.0))
    expect(page.locator(f"#{IDS.elapsed}")).to_have_attribute("data-running", "0")
    assert elapsed_text(page) == "2:03:20"
    assert page.evaluate("() => jobMonitor.activeTimers()") == 0
    page.wait_for_timeout(1500)
    assert elapsed_text(page) == "2:03:20", "the elapsed time moved after the job ended"


# Counts the intervals job_monitor.js creates and clears, by wrapping setInterval and clearInterval.
INTERVAL_COUNTER_SCRIPT = """
(() => {
  const live = new Set();
  let created = 0;
  const realSet = window.setInterval.bind(window), realClear = window.clearInterval.bind(window);
  window.setInterval = function (fn, ms, ...args) {
    const id = realSet(fn, ms, ...args);
    if ((new Error().stack || "").includes("/_job_monitor/script")) { live.add(id); created += 1; }
    return id;
  };
  window.clearInterval = function (id) { live.delete(id); return realClear(id); };
  window.__jmIntervals = () => ({ live: live.size, created });
})();
"""


def test_one_timer_for_many_updates(push_page: PushPage):
    push_page.page.add_init_script(INTERVAL_COUNTER_SCRIPT)
    page = push_page.load(PageSetup(status="running")).page
    assert page.evaluate("() => __jmIntervals()") == {"live": 1, "created": 1}

    for number in range(1, 301):
        parts = [progress_oob("running", number / 400, f"update {number}", elapsed_s=number)]
        if number % 10 == 0:
            parts.append(render_log_append_oob(IDS, log_lines(number, 3)))
        push_page.stream.push(*parts)
    expect(page.locator(f"#{IDS.tab_progress}")).to_contain_text("update 300", timeout=30_000)

    assert page.evaluate("() => __jmIntervals()") == {"live": 1, "created": 1}
    assert page.evaluate("() => jobMonitor.activeTimers()") == 1

    # The timer stops when the element it ticks leaves the page.
    page.evaluate("id => document.getElementById(id).remove()", IDS.modal)
    page.wait_for_function("() => __jmIntervals().live === 0 && jobMonitor.activeTimers() === 0", timeout=3000)


# --- logs tab ------------------------------------------------------------------------------------


def log_geometry(page: Page) -> dict:
    return page.locator(f"#{IDS.log_container}").evaluate(
        """c => ({top: c.scrollTop, height: c.scrollHeight, client: c.clientHeight,
                  atBottom: c.scrollHeight - c.scrollTop - c.clientHeight < 8,
                  lines: c.querySelectorAll('[data-seq]').length,
                  last: c.querySelector('[data-seq]:last-child')?.dataset.seq})""")


def push_lines(stream: PushStream, start: int, count: int, burst: int = 10, level: str = "INFO") -> None:
    for first in range(start, start + count, burst):
        stream.push(render_log_append_oob(IDS, log_lines(first, min(burst, start + count - first), level)))


def wait_for_last_line(page: Page, seq: int) -> None:
    page.wait_for_function(
        "([id, seq]) => document.querySelector(`#${id} [data-seq]:last-child`)?.dataset.seq === String(seq)",
        arg=[IDS.log_lines, seq], timeout=UI_TIMEOUT_MS)


def test_log_follows_tail_until_reader_scrolls_up(push_page: PushPage):
    page = push_page.load().page
    wait_for_modal_open(page)
    jump = page.locator("[data-jm-log-jump]")

    # Lines that arrive while another tab is shown are at the tail when the reader opens the log.
    push_lines(push_page.stream, 1, 100)
    wait_for_last_line(page, 100)
    open_tab(page, "logs")
    geometry = log_geometry(page)
    assert geometry["atBottom"], geometry
    assert geometry["height"] > geometry["client"], "the test needs a log taller than its box"
    page.wait_for_function("id => { const c = document.getElementById(id); "
                           "return c.scrollHeight - c.scrollTop - c.clientHeight < 8; }", arg=IDS.log_container)
    expect(jump).to_be_hidden()

    # Scrolling up stops following and offers the way back.
    page.locator(f"#{IDS.log_container}").hover()
    page.mouse.wheel(0, -600)
    expect(jump).to_be_visible()
    parked = log_geometry(page)["top"]
    push_lines(push_page.stream, 101, 50)
    wait_for_last_line(page, 150)
    page.wait_for_timeout(200)
    geometry = log_geometry(page)
    assert geometry["top"] == parked, f"the log moved while the reader was scrolled up: {parked} -> {geometry}"
    assert not geometry["atBottom"]
    expect(jump).to_be_visible()

    # "Jump to latest" returns to the tail and following resumes.
    jump.click()
    expect(jump).to_be_hidden()
    assert log_geometry(page)["atBottom"]
    push_lines(push_page.stream, 151, 30)
    wait_for_last_line(page, 180)
    page.wait_for_function("id => { const c = document.getElementById(id); "
                           "return c.scrollHeight - c.scrollTop - c.clientHeight < 8; }", arg=IDS.log_container)

    # A full re-render of the tab (the routes send one when a viewer reconnects) keeps following
    # at the tail, and keeps a reader who scrolled up where they were.
    def rerender(last: int) -> None:
        tab = render_logs_tab(IDS, log_lines=log_lines(1, last), log_url=f"{URLS.log}?job_id={JOB_ID}")
        push_page.stream.push(Div(tab, id=IDS.tab_logs, hx_swap_oob="true"))
        wait_for_last_line(page, last)

    rerender(190)
    assert log_geometry(page)["atBottom"]
    expect(jump).to_be_hidden()
    page.locator(f"#{IDS.log_container}").hover()
    page.mouse.wheel(0, -600)
    expect(jump).to_be_visible()
    page.wait_for_timeout(100)
    parked = log_geometry(page)["top"]
    rerender(200)
    assert log_geometry(page)["top"] == parked
    expect(jump).to_be_visible()


def test_log_keeps_line_limit_and_reader_place(push_page: PushPage):
    config = JobMonitorConfig(modal_title="Archive job", log_dom_limit=60)
    page = push_page.load(PageSetup(config=config)).page
    wait_for_modal_open(page)
    open_tab(page, "logs")

    push_lines(push_page.stream, 1, 300, burst=25)
    wait_for_last_line(page, 300)
    geometry = log_geometry(page)
    assert geometry["lines"] == 60, geometry
    assert page.locator(f"#{IDS.log_lines} [data-seq]").first.get_attribute("data-seq") == "241"

    # The reader scrolls to two thirds of the way down, so the first line in view is not among the
    # 20 that drop next; that line keeps its place on screen while the old lines go.
    page.locator(f"#{IDS.log_container}").evaluate("c => { c.scrollTop = (c.scrollHeight - c.clientHeight) * 2 / 3; }")
    expect(page.locator("[data-jm-log-jump]")).to_be_visible()
    page.wait_for_timeout(100)
    first_in_view = """id => { const c = document.getElementById(id); const top = c.getBoundingClientRect().top;
        for (const line of c.querySelectorAll('[data-seq]')) {
            const r = line.getBoundingClientRect();
            if (r.bottom > top) return {seq: line.dataset.seq, offset: r.top - top};
        } }"""
    before = page.evaluate(first_in_view, IDS.log_container)
    push_lines(push_page.stream, 301, 20)
    wait_for_last_line(page, 320)
    page.wait_for_timeout(100)
    after = page.evaluate(first_in_view, IDS.log_container)
    assert log_geometry(page)["lines"] == 60
    assert after["seq"] == before["seq"], (before, after)
    assert abs(after["offset"] - before["offset"]) <= 1, (before, after)


def test_log_lines_render_readably(push_page: PushPage):
    page = push_page.load().page
    wait_for_modal_open(page)
    open_tab(page, "logs")
    tqdm = "  0%|          | 0/10\r 50%|#####     | 5/10\r100%|##########| 10/10"
    lines = [
        LogLine(1, 1.0, "INFO", "\x1b[1;31mred\x1b[0m and \x1b[32mgreen\x1b[0m"),
        LogLine(2, 2.0, "INFO", tqdm, source="stdout"),
        LogLine(3, 3.0, "INFO", "w" * 10_000),
        LogLine(4, 4.0, "WARNING", "disk almost full"),
        LogLine(5, 5.0, "ERROR", "cannot write <archive>"),
        LogLine(6, 6.0, "INFO", "x" * 600),
    ]
    push_page.stream.push(render_log_append_oob(IDS, lines))
    wait_for_last_line(page, 6)

    def message(seq: int) -> str:
        return page.locator(f"#{IDS.log_lines} [data-seq='{seq}'] > span:last-child").inner_text()

    assert message(1) == "red and green"
    assert message(2) == "100%|##########| 10/10"
    assert message(3).endswith("… [cut 6000 characters]"), message(3)[-40:]
    assert message(5) == "cannot write <archive>"
    text = page.locator(f"#{IDS.log_lines}").inner_text()
    assert "\x1b" not in text and "[0m" not in text and "\r" not in text

    # Long lines wrap inside the box instead of widening it.
    container = page.locator(f"#{IDS.log_container}")
    assert container.evaluate("c => c.scrollWidth <= c.clientWidth"), "a long line overflows the log box"
    assert page.locator(f"#{IDS.log_lines} [data-seq='6']").evaluate("r => r.getBoundingClientRect().height") > 30

    # Warnings and errors stand out: their own background and edge colour, and their level in words.
    styles = page.evaluate("""id => Object.fromEntries([...document.querySelectorAll(`#${id} [data-seq]`)].map(
        row => [row.dataset.level, [getComputedStyle(row).backgroundColor, getComputedStyle(row).borderLeftColor]]))""",
                           IDS.log_lines)
    assert styles["warning"][0] != styles["info"][0]
    assert styles["error"][0] != styles["info"][0]
    assert styles["error"][0] != styles["warning"][0]
    assert styles["error"][1] != styles["warning"][1]
    assert page.locator(f"#{IDS.log_lines} [data-seq='4'] .badge").inner_text() == "WARNING"
    assert page.locator(f"#{IDS.log_lines} [data-seq='5'] .badge").inner_text() == "ERROR"
    assert page.locator(f"#{IDS.log_lines} [data-seq='2'] .badge").inner_text() == "OUT"


def visible_levels(page: Page) -> list[str]:
    return page.evaluate("""id => [...document.querySelectorAll(`#${id} [data-seq]`)]
        .filter(row => getComputedStyle(row).display !== 'none').map(row => row.dataset.level)""", IDS.log_lines)


def test_log_level_filter_covers_new_lines(push_page: PushPage):
    levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    setup = PageSetup(log_lines=[LogLine(i + 1, float(i), level, level.lower()) for i, level in enumerate(levels)])
    page = push_page.load(setup).page
    wait_for_modal_open(page)
    open_tab(page, "logs")
    select = page.locator("select[data-jm-log-filter]")
    assert visible_levels(page) == ["debug", "info", "warning", "error", "critical"]

    select.select_option("warning")
    assert visible_levels(page) == ["warning", "error", "critical"]
    push_page.stream.push(render_log_append_oob(IDS, [LogLine(6, 6.0, "INFO", "new info"),
                                                      LogLine(7, 7.0, "ERROR", "new error")]))
    wait_for_last_line(page, 7)
    assert visible_levels(page) == ["warning", "error", "critical", "error"]

    # A full re-render of the tab, as the routes send on reconnect, keeps the filter.
    lines = [LogLine(i, float(i), level, level.lower()) for i, level in enumerate(levels + ["INFO"], start=1)]
    push_page.stream.push(Div(render_logs_tab(IDS, log_lines=lines, log_url=f"{URLS.log}?job_id={JOB_ID}"),
                              id=IDS.tab_logs, hx_swap_oob="true"))
    page.wait_for_function("id => document.querySelectorAll(`#${id} [data-seq]`).length === 6", arg=IDS.log_lines)
    expect(page.locator("select[data-jm-log-filter]")).to_have_value("warning")
    assert visible_levels(page) == ["warning", "error", "critical"]

    page.locator("select[data-jm-log-filter]").select_option("info")
    assert visible_levels(page) == ["info", "warning", "error", "critical", "info"]
    page.locator("select[data-jm-log-filter]").select_option("all")
    assert visible_levels(page) == ["debug", "info", "warning", "error", "critical", "info"]
    link = page.get_by_role("link", name="Download full log")
    expect(link).to_have_attribute("href", f"{URLS.log}?job_id={JOB_ID}")


def test_log_filter_hiding_all_lines_says_so(push_page: PushPage):
    setup = PageSetup(log_lines=[LogLine(1, 1.0, "INFO", "first"), LogLine(2, 2.0, "DEBUG", "second")])
    page = push_page.load(setup).page
    wait_for_modal_open(page)
    open_tab(page, "logs")
    notice = page.locator("[data-jm-log-empty]")
    expect(notice).to_be_hidden()

    page.locator("select[data-jm-log-filter]").select_option("warning")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("No lines at this level yet")
    expect(notice).to_contain_text("the 2 other lines")

    # A warning that arrives under the filter shows, and the notice goes.
    push_page.stream.push(render_log_append_oob(IDS, [LogLine(3, 3.0, "WARNING", "careful")]))
    wait_for_last_line(page, 3)
    expect(notice).to_be_hidden()
    assert visible_levels(page) == ["warning"]

    page.locator("select[data-jm-log-filter]").select_option("all")
    expect(notice).to_be_hidden()


# --- the modal -----------------------------------------------------------------------------------


def test_tab_and_scroll_kept_across_updates(push_page: PushPage):
    push_page.page.set_viewport_size({"width": 900, "height": 480})
    snapshot = ResourceSnapshot(worker_pid=4242, cpu_percent=50.0, memory_rss_mb=300.0, cpu_count=2,
                                memory_total_mb=8192.0)
    page = push_page.load(PageSetup(resources=snapshot, history=[snapshot] * 3)).page
    wait_for_modal_open(page)
    open_tab(page, "resources")
    box = page.locator(f"#{IDS.modal} .modal-box")
    box.evaluate("b => { b.scrollTop = b.scrollHeight; }")
    scrolled = box.evaluate("b => b.scrollTop")
    assert scrolled > 0, "the test needs a modal box that scrolls"

    for number in range(1, 31):
        sample = ResourceSnapshot(worker_pid=4242, cpu_percent=float(number), memory_rss_mb=300.0 + number,
                                  cpu_count=2, memory_total_mb=8192.0)
        push_page.stream.push(
            progress_oob("running", number / 40, f"update {number}"),
            Div(render_resources_tab(sample, history=[snapshot] * 3 + [sample]), id=IDS.tab_resources,
                hx_swap_oob="true"),
            render_log_append_oob(IDS, log_lines(number, 1)),
            render_footer_oob(IDS, URLS, is_active=True, job_id=JOB_ID))
    expect(page.locator(f"#{IDS.tab_resources} [data-stat=cpu] [data-stat-value]")).to_have_text("30%")
    expect(page.locator(f"#{IDS.tab_button('resources')}")).to_be_checked()
    expect(page.locator(f"#{IDS.tab_panel('resources')}")).to_be_visible()
    expect(page.locator(f"#{IDS.tab_panel('progress')}")).to_be_hidden()
    assert abs(box.evaluate("b => b.scrollTop") - scrolled) <= 1

    # The server replaces the whole open modal (a second trigger attaching to the job does):
    # it stays open, on the same tab, scrolled to the same place.
    push_page.stream.push(render_test_modal(PageSetup(resources=snapshot), open_on_render=False, oob=True))
    page.wait_for_function("id => !document.querySelector(`#${id} [data-stat=cpu]`)?.textContent.includes('30%')",
                           arg=IDS.modal)
    assert modal_is_open(page)
    expect(page.locator(f"#{IDS.tab_button('resources')}")).to_be_checked()
    expect(page.locator(f"#{IDS.tab_panel('resources')}")).to_be_visible()
    assert abs(page.locator(f"#{IDS.modal} .modal-box").evaluate("b => b.scrollTop") - scrolled) <= 1


# Records what job_monitor.js asks of the keyboard-navigation coordinator.
KB_COORDINATOR_SCRIPT = """
window.kbCalls = [];
window.kbCoordinator = {
  pause: id => window.kbCalls.push("pause " + id),
  resume: id => window.kbCalls.push("resume " + id),
};
"""


def test_modal_closes_and_reopens(push_page: PushPage, page_log):
    push_page.page.add_init_script(KB_COORDINATOR_SCRIPT)
    page = push_page.load(PageSetup(kb_system_id="kb-main")).page
    wait_for_modal_open(page)
    dialog = page.get_by_role("dialog", name="Archive job")
    expect(dialog).to_be_visible()
    reopen = page.locator(f"#{IDS.trigger_slot} [data-jm-open-modal]")

    page.keyboard.press("Escape")
    wait_for_modal_closed(page)
    reopen.click()
    wait_for_modal_open(page)

    page.locator(f"#{IDS.modal} .modal-box button[aria-label='Close']").click()
    wait_for_modal_closed(page)
    reopen.click()
    wait_for_modal_open(page)

    page.locator(f"#{IDS.modal} [data-jm-cancel]").wait_for()
    page.mouse.click(8, 8)  # the backdrop, outside the modal box
    wait_for_modal_closed(page)

    reopen.click()
    wait_for_modal_open(page)
    page.get_by_role("button", name="Close", exact=True).last.click()
    wait_for_modal_closed(page)

    assert page.evaluate("() => kbCalls") == ["pause kb-main", "resume kb-main"] * 4
    page_log.assert_clean()


def test_modal_opened_twice_and_after_swap(push_page: PushPage, page_log):
    page = push_page.load().page
    wait_for_modal_open(page)
    page.evaluate("id => { jobMonitor.open(id); jobMonitor.open(id); }", IDS.modal)
    assert modal_is_open(page)

    # Replaced while open, with and without the open flag, and opened again after each swap.
    push_page.stream.push(render_test_modal(PageSetup(message="first swap"), open_on_render=True, oob=True))
    expect(page.locator(f"#{IDS.tab_progress}")).to_contain_text("first swap")
    assert modal_is_open(page)
    page.keyboard.press("Escape")
    wait_for_modal_closed(page)
    push_page.stream.push(render_test_modal(PageSetup(message="second swap"), open_on_render=False, oob=True))
    expect(page.locator(f"#{IDS.tab_progress}")).to_contain_text("second swap")
    assert not modal_is_open(page), "a closed modal opened by itself after a swap"
    page.locator(f"#{IDS.trigger_slot} [data-jm-open-modal]").click()
    wait_for_modal_open(page)
    page.evaluate("id => jobMonitor.open(id)", IDS.modal)
    page.evaluate("() => jobMonitor.open('no-such-modal')")
    assert modal_is_open(page)
    page_log.assert_clean()


def test_modal_works_from_keyboard(push_page: PushPage):
    page = push_page.load(PageSetup(open_on_render=False)).page
    opener = page.locator(f"#{IDS.trigger_slot} [data-jm-open-modal]")
    opener.focus()
    page.keyboard.press("Enter")
    wait_for_modal_open(page)
    assert page.evaluate("id => document.getElementById(id).contains(document.activeElement)", IDS.modal)

    # Tab reaches the tab bar; the arrow keys switch tabs.
    page.locator(f"#{IDS.tab_button('progress')}").focus()
    page.keyboard.press("ArrowRight")
    expect(page.locator(f"#{IDS.tab_button('logs')}")).to_be_checked()
    expect(page.locator(f"#{IDS.tab_panel('logs')}")).to_be_visible()
    page.keyboard.press("Tab")
    focused = page.evaluate("() => document.activeElement.matches('select[data-jm-log-filter]')")
    assert focused, page.evaluate("() => document.activeElement.outerHTML.slice(0, 120)")
    # The scrollable log is reachable too, so keyboard users can scroll it.
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == IDS.log_container

    page.keyboard.press("Escape")
    wait_for_modal_closed(page)
    assert page.evaluate("() => document.activeElement.hasAttribute('data-jm-open-modal')"), "focus did not return"


def test_focus_kept_when_controls_are_swapped(push_page: PushPage):
    "Focus lands on a live control when the element that had it is swapped out, and stays put otherwise."
    page = push_page.load(PageSetup(open_on_render=False)).page
    opener = page.locator(f"#{IDS.trigger_slot} [data-jm-open-modal]")
    opener.focus()

    # What the trigger response does: a new progress button and a modal that opens itself.
    button = render_job_progress_button(PageSetup().config, IDS)
    button.attrs["hx-swap-oob"] = "true"
    push_page.stream.push(button, render_test_modal(PageSetup(), open_on_render=True, oob=True))
    wait_for_modal_open(page)
    page.keyboard.press("Escape")
    wait_for_modal_closed(page)
    assert page.evaluate("() => document.activeElement.hasAttribute('data-jm-open-modal')"), \
        page.evaluate("() => document.activeElement.outerHTML.slice(0, 120)")

    # The Cancel button that has focus is swapped out by the job's last update.
    opener.click()
    wait_for_modal_open(page)
    page.locator(f"#{IDS.modal} [data-jm-cancel]").focus()
    push_page.stream.finish(*terminal_parts("cancelled"))
    expect(page.locator(f"#{IDS.modal} [data-jm-cancel]")).to_have_count(0)
    page.wait_for_function("id => document.getElementById(id).contains(document.activeElement)", arg=IDS.modal)
    assert page.evaluate("() => document.activeElement.tagName") == "BUTTON"

    # A click on plain text leaves focus where the browser puts it: nothing pulls it back.
    page.locator(f"#{IDS.tab_progress} [data-jm-progress]").click()
    before = page.evaluate("() => document.activeElement.outerHTML.slice(0, 80)")
    page.wait_for_timeout(300)
    assert page.evaluate("() => document.activeElement.outerHTML.slice(0, 80)") == before


# --- accessibility -------------------------------------------------------------------------------

# axe-core cannot compute colour contrast inside a <dialog> opened with showModal(): the dialog
# sits in the browser's top layer, which axe's element stack does not model, so every text node
# in it comes back "incomplete" (background overlapped). The structural rules run on the real
# modal; colour contrast runs on the same dialog opened with show() and its backdrop hidden,
# where axe can compute backgrounds.
AXE_STRUCTURE = """async () => {
  const result = await axe.run(document, {rules: {"color-contrast": {enabled: false}}});
  return result.violations.map(v => `${v.id}: ${v.help}\\n  ` + v.nodes.map(n => n.target.join(" ")).join("\\n  "));
}"""

AXE_CONTRAST = """async () => {
  const result = await axe.run(document, {runOnly: ["color-contrast"]});
  const failures = result.violations.flatMap(v => v.nodes.map(n => `${n.target.join(" ")}: ${n.failureSummary}`));
  // Nodes axe leaves incomplete because of a background image or gradient (daisyUI badges and
  // selects draw a subtle gradient) are measured here from their own background colour.
  const probe = document.createElement("canvas").getContext("2d", {willReadFrequently: true});
  const rgba = color => { probe.clearRect(0, 0, 1, 1); probe.fillStyle = "#000"; probe.fillStyle = color;
                          probe.fillRect(0, 0, 1, 1); return probe.getImageData(0, 0, 1, 1).data; };
  const luminance = ([r, g, b]) => [r, g, b].map(c => { c /= 255; return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; })
                                            .reduce((sum, c, i) => sum + c * [0.2126, 0.7152, 0.0722][i], 0);
  const unmeasured = [];
  for (const item of result.incomplete) {
    for (const node of item.nodes) {
      const key = (node.any[0] || {}).data?.messageKey;
      const element = document.querySelector(node.target[0]);
      if (!element || !["bgImage", "bgGradient"].includes(key)) { unmeasured.push(`${node.target.join(" ")}: ${key}`); continue; }
      let holder = element;
      while (holder && rgba(getComputedStyle(holder).backgroundColor)[3] === 0) holder = holder.parentElement;
      const fg = luminance(rgba(getComputedStyle(element).color)), bg = luminance(rgba(getComputedStyle(holder).backgroundColor));
      const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
      if (ratio < 4.5) failures.push(`${node.target.join(" ")}: contrast ${ratio.toFixed(2)} measured from its background colour`);
    }
  }
  return {failures, unmeasured, checked: result.passes.reduce((n, p) => n + p.nodes.length, 0)};
}"""


def audit(page: Page, label: str) -> None:
    "Run the structural and the colour-contrast audits on the open modal; fail with every finding."
    if not page.evaluate("() => typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE_PATH))
    structure = page.evaluate(AXE_STRUCTURE)
    assert not structure, f"{label}: axe found:\n" + "\n".join(structure)
    page.evaluate("""id => { const d = document.getElementById(id); d.close(); d.show();
                             d.querySelector('.modal-backdrop').hidden = true; }""", IDS.modal)
    try:
        contrast = page.evaluate(AXE_CONTRAST)
    finally:
        page.evaluate("""id => { const d = document.getElementById(id); d.close();
                                 d.querySelector('.modal-backdrop').hidden = false; jobMonitor.open(id); }""", IDS.modal)
    assert not contrast["failures"], f"{label}: low contrast:\n" + "\n".join(contrast["failures"])
    assert not contrast["unmeasured"], f"{label}: contrast not measured:\n" + "\n".join(contrast["unmeasured"])
    assert contrast["checked"] > 5, f"{label}: axe checked only {contrast['checked']} text nodes"


def rich_setup(theme: str) -> PageSetup:
    "A running job with every kind of log line and a resource history, for audits and screenshots."
    history = [ResourceSnapshot(worker_pid=4242, cpu_percent=40.0 + 35 * ((i * 7) % 5) / 4, cpu_count=4,
                                memory_rss_mb=620.0 + 9 * i, memory_total_mb=16384.0) for i in range(24)]
    messages = [("INFO", "Found 24 entries (25,165,824 bytes) in /data/source"), ("DEBUG", "xz preset 3"),
                ("INFO", "Added file-00.bin (1,048,576 bytes)"), ("INFO", "Added file-01.bin (1,048,576 bytes)"),
                ("WARNING", "file-02.bin changed while it was read"), ("INFO", "Added file-02.bin (1,048,576 bytes)"),
                ("ERROR", "Cannot read file-03.bin: permission denied"), ("INFO", "Added file-04.bin (1,048,576 bytes)")]
    lines = [LogLine(i, 1_733_300_000.0 + i * 0.37, level, text) for i, (level, text) in enumerate(messages, start=1)]
    lines.insert(1, LogLine(len(lines) + 1, 1_733_300_000.2, "INFO", "Packing /data/source into archive.tar.xz",
                            source="stdout"))
    return PageSetup(theme=theme, progress=0.42, message="Compressing 11 of 24 files: file-10.bin", elapsed_s=83.0,
                     log_lines=lines, resources=history[-1], history=history)


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_accessibility_audit(push_page: PushPage, theme: str):
    page = push_page.load(rich_setup(theme)).page
    wait_for_modal_open(page)
    assert page.evaluate("() => document.documentElement.dataset.theme") == theme
    page.locator("[data-jm-notify-toggle]").evaluate("b => b.hidden = false")
    for tab in ("progress", "logs", "resources"):
        open_tab(page, tab)
        audit(page, f"{theme} theme, {tab} tab")

    # The ended states bring alerts and other badge colours.
    open_tab(page, "progress")
    for status, error in (("cancelling", None), ("failed", "Disk full: /data/archive.tar.xz"), ("cancelled", None),
                          ("completed", None)):
        push_page.stream.push(progress_oob(status, 0.6, "Packing", ended=status != "cancelling", error=error))
        expect(page.locator(f"#{IDS.tab_progress} .badge[data-status]")).to_have_attribute("data-status", status)
        audit(page, f"{theme} theme, {status} job")


def test_status_changes_announced_politely(push_page: PushPage):
    page = push_page.load().page
    wait_for_modal_open(page)
    live = page.locator(f"#{IDS.live_region}")
    expect(live).to_have_attribute("role", "status")
    expect(live).to_have_attribute("aria-live", "polite")
    page.evaluate("""id => { window.liveChanges = 0;
        new MutationObserver(() => { window.liveChanges += 1; })
            .observe(document.getElementById(id), {childList: true, characterData: true, subtree: true}); }""",
                  IDS.live_region)

    # Progress alone is not announced: a screen reader would read every update.
    for number in range(5):
        push_page.stream.push(progress_oob("running", 0.3 + number / 10, f"step {number}"))
    expect(page.locator(f"#{IDS.tab_progress}")).to_contain_text("step 4")
    assert page.evaluate("() => liveChanges") == 0

    push_page.stream.push(progress_oob("cancelling", 0.8))
    expect(live).to_have_text("Cancelling job")
    push_page.stream.push(progress_oob("failed", 0.8, ended=True, error="Disk full"))
    expect(live).to_have_text("Job failed: Disk full")
    assert page.evaluate("() => liveChanges") == 2


def set_page_hidden(page: Page, hidden: bool) -> None:
    "Make the page report itself hidden or visible, as a background tab does, and fire visibilitychange."
    page.evaluate("""hidden => {
        Object.defineProperty(document, "hidden", {configurable: true, get: () => hidden});
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => hidden ? "hidden" : "visible"});
        document.dispatchEvent(new Event("visibilitychange"));
    }""", hidden)


# Records every notification the page creates.
NOTIFICATION_RECORDER_SCRIPT = """
window.notifications = [];
const RealNotification = window.Notification;
window.Notification = class extends RealNotification {
  constructor(title, options) { super(title, options); window.notifications.push({title, body: options?.body}); }
};
"""


def test_title_and_notification_on_outcome(push_page: PushPage, browser_context):
    browser_context.grant_permissions(["notifications"])
    push_page.page.add_init_script(NOTIFICATION_RECORDER_SCRIPT)
    page = push_page.load(PageSetup(progress=0.25)).page
    wait_for_modal_open(page)
    expect(page).to_have_title(f"25% · {BASE_TITLE}")
    push_page.stream.push(progress_oob("running", 0.6))
    expect(page).to_have_title(f"60% · {BASE_TITLE}")
    push_page.stream.push(progress_oob("running", -1.0))
    expect(page).to_have_title(f"Running · {BASE_TITLE}")

    # Opt in; the choice is kept for the next job.
    toggle = page.locator("[data-jm-notify-toggle]")
    expect(toggle).to_be_visible()
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true")
    expect(toggle).to_contain_text("Notifications on")

    # The job ends while the tab is in the background.
    set_page_hidden(page, True)
    push_page.stream.finish(*terminal_parts("failed", error="Disk full"))
    expect(page).to_have_title(f"Failed: Disk full · {BASE_TITLE}")
    page.wait_for_function("() => notifications.length > 0")
    assert page.evaluate("() => notifications") == [{"title": "Archive job: Failed: Disk full", "body": BASE_TITLE}]

    set_page_hidden(page, False)
    expect(page).to_have_title(BASE_TITLE)

    # A page that loads with the job already ended announces nothing.
    set_page_hidden(page, True)
    push_page.load(PageSetup(status="completed", progress=1.0))
    page.wait_for_timeout(300)
    assert page.evaluate("() => notifications") == []


def test_overlay_makes_covered_content_inert(push_page: PushPage):
    page = push_page.load(PageSetup(open_on_render=False)).page
    content = page.locator(f"#{CONTENT_ID}")
    expect(content).to_have_attribute("aria-busy", "true")
    expect(page.locator(f"#{IDS.overlay}")).to_be_visible()
    assert page.locator("#covered-input").evaluate("input => input.closest('[inert]') !== null")

    # Keyboard users cannot reach what the overlay covers.
    page.locator(f"#{IDS.trigger_slot} button").focus()
    for _ in range(3):
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.id") != "covered-input"

    push_page.stream.finish(*terminal_parts("completed"))
    expect(page.locator(f"#{IDS.trigger_slot} [data-jm-trigger]")).to_be_visible()
    expect(page.locator(f"#{IDS.overlay}")).to_be_hidden()
    expect(content).not_to_have_attribute("aria-busy", "true")
    expect(page.locator(f"#{CONTENT_ID} [inert]")).to_have_count(0)
    page.locator("#covered-input").focus()
    assert page.evaluate("() => document.activeElement.id") == "covered-input"


def test_resources_bars_charts_and_missing_figures(push_page: PushPage):
    cpu_only = [ResourceSnapshot(worker_pid=4242, cpu_percent=30.0 + i, memory_rss_mb=500.0 + i, cpu_count=4,
                                 memory_total_mb=16384.0) for i in range(6)]
    page = push_page.load(PageSetup(resources=cpu_only[-1], history=cpu_only)).page
    wait_for_modal_open(page)
    open_tab(page, "resources")
    panel = page.locator(f"#{IDS.tab_resources}")

    def value(stat: str) -> str:
        return panel.locator(f"[data-stat='{stat}'] [data-stat-value]").inner_text()

    assert value("pid") == "4242"
    assert value("cpu") == "35%"
    expect(panel.locator("[data-stat='cpu'] progress")).to_have_attribute("value", "9")
    assert value("gpu-memory") == "n/a" and value("gpu-load") == "n/a"
    expect(panel.locator("[data-stat='gpu-memory'] progress")).to_have_count(0)
    expect(panel.locator("svg[data-jm-sparkline]")).to_have_count(2)
    expect(panel.get_by_role("img", name=re.compile(r"^CPU over the last 6 samples"))).to_be_visible()

    # GPU figures as a system-monitor plugin reports them. This machine has no NVIDIA GPU, so
    # they are made up here; the tab renders them the same whatever produced them.
    with_gpu = [ResourceSnapshot(worker_pid=4242, cpu_percent=80.0, memory_rss_mb=2048.0, cpu_count=4,
                                 memory_total_mb=16384.0, gpu_memory_mb=6000.0 + 200 * i, gpu_index=0,
                                 gpu_name="NVIDIA H200", gpu_total_mb=8192.0, gpu_load_percent=60.0 + 5 * i)
                for i in range(5)]
    push_page.stream.push(Div(render_resources_tab(with_gpu[-1], history=with_gpu), id=IDS.tab_resources,
                              hx_swap_oob="true"))
    expect(panel.locator("[data-stat='gpu-load'] [data-stat-value]")).to_have_text("80%")
    assert value("gpu-memory") == "6.64 GB"
    expect(panel.locator("[data-stat='gpu-memory'] progress")).to_have_attribute("value", "83")
    expect(panel.locator("[data-stat='gpu-memory'] progress")).to_have_class(re.compile("progress-warning"))
    expect(panel.locator("svg[data-jm-sparkline]")).to_have_count(4)
    expect(panel).to_contain_text("GPU 0 (NVIDIA H200)")


# --- screenshots for the docs --------------------------------------------------------------------


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots_of_each_tab(push_page: PushPage, artifacts_dir: Path, theme: str):
    """Capture the modal on each tab and the page behind it. The pictures go to test-artifacts/screenshots/;
    with JM_UPDATE_DOC_IMAGES=1 they also replace the ones in nbs/images/ that the notebooks show."""
    push_page.page.set_viewport_size({"width": 1000, "height": 820})
    page = push_page.load(rich_setup(theme)).page
    wait_for_modal_open(page)
    folders = [artifacts_dir / "screenshots"]
    if os.environ.get("JM_UPDATE_DOC_IMAGES") == "1": folders.append(DOC_IMAGES_DIR)

    def capture(locator, name: str) -> None:
        page.mouse.move(0, 0)  # no hover highlight in the picture
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            locator.screenshot(path=str(folder / f"{name}.png"), animations="disabled")
        assert (folders[0] / f"{name}.png").stat().st_size > 5_000, name

    for tab in ("progress", "logs", "resources"):
        open_tab(page, tab)
        capture(page.locator(f"#{IDS.modal} .modal-box"), f"modal-{tab}-{theme}")

    # The page while the job runs: the progress button and the overlay over the content.
    page.keyboard.press("Escape")
    wait_for_modal_closed(page)
    capture(page.locator("#page-top"), f"page-running-{theme}")
