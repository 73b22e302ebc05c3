"""Hostile log content: bytes that are not UTF-8, huge lines, bursts, ANSI escapes and carriage returns.

A real `StepsPlugin` worker prints and logs each kind. The stream must keep
going and end with its final update. The server keeps at most one buffer of
rendered lines per sequence (`log_dom_limit`), and the browser keeps at most
that many lines in the page and stays responsive. The full-log download has
every line, unchanged. Bounds on time are generous on purpose: the tests run on
a shared 2-core machine, so they check that nothing stalls, not how fast.
"""
from __future__ import annotations

import html
import re
import threading
import time
from typing import Dict, List, Tuple

import pytest
from playwright.sync_api import Page

from cjm_fasthtml_job_monitor.models import JobMonitorConfig
from tests.support.app_harness import AppHarness, SessionClient, job_id_of, read_until_done, served_harness
from tests.support.browser import PageLog
from tests.support.server import SSEEvent

DOM_LIMIT = 300  # Lines the page and the server's buffer keep; small, so a burst overflows it many times
BURST_LINES = 30_000  # Lines one print burst writes
BURST_RECORDS = 3_000  # Logging records written right after it
LONG_LINE = 300_000  # Characters in one printed line
MAX_EVENT_BYTES = 1_500_000  # Bound on one SSE message: a buffer of rendered lines and the tabs
MAX_STALL_S = 15.0  # Max seconds without an event, or of event loop delay, under the burst on a loaded CI machine
MAX_TIMER_LAG_MS = 2_000  # Max extra delay of a 50 ms page timer during the burst (about 300 ms on 2 cores)

# name -> (step that writes it, text the log view shows). Bytes go through `write_bytes` as Latin-1.
LOG_CASES: Dict[str, Tuple[list, str]] = {
    "invalid UTF-8": (["write_bytes", "bad \xff\xfe\xc3( end\n"], "bad \ufffd\ufffd\ufffd( end"),
    "truncated UTF-8 sequence": (["write_bytes", "cut \xe2\x82\n"], "cut \ufffd"),
    "ANSI colours and title": (["print", "\x1b[1;31mred\x1b[0m plain \x1b]0;title\x07"], "red plain "),
    "carriage-return frames": (["print", "10%\r50%\r100%"], "100%"),
    "controls": (["print", "a\tb\x07c\x08d"], "a\tb\u2407c\u2408d"),
    "lone surrogate in a record": (["escaped", "log", "WARNING", "sur\\udcffrogate"], None),
    "markup-looking text": (["print", "<b>not bold</b> &amp;"], "<b>not bold</b> &amp;"),
    "long line": (["print_long", "x", LONG_LINE], "x" * 4000 + f"… [cut {LONG_LINE - 4000} characters]"),
}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("log-content")
    config = JobMonitorConfig(sse_interval_s=0.2, heartbeat_s=1.0, resources_interval_s=2.0, log_dom_limit=DOM_LIMIT,
                              log_lines=DOM_LIMIT)
    with served_harness(data_dir, config=config) as harness:
        yield harness


@pytest.fixture
def client(harness: AppHarness):
    with SessionClient(harness.server.base_url) as client:
        yield client


# A line is <div class="jm-line" data-seq=...><time>..</time><span class="badge ..">LEVEL</span><span>text</span></div>
LINE_TEXT_RE = re.compile(r'data-seq="\d+"[^>]*>.*?</span><span>([^<]*)</span></div>', re.S)


def shown_lines(events: List[SSEEvent]) -> List[str]:
    "Return the message text of every log line element in the events, in order."
    return [html.unescape(text) for event in events for text in LINE_TEXT_RE.findall(event.data)]


def test_log_content_table(harness: AppHarness, client: SessionClient):
    steps = [step for step, _ in LOG_CASES.values()] + [["log", "INFO", "table-end"]]
    client.set_plan([steps])
    job_id = job_id_of(client.trigger())
    with client.stream(job_id) as stream:
        events = read_until_done(stream)
    assert 'data-status="completed"' in events[-2].data
    sizes = [len(event.data.encode()) for event in events]
    assert max(sizes) < 200_000, f"an SSE message of {max(sizes)} bytes: the long line was not cut"

    shown = shown_lines(events)
    for name, (_, text) in LOG_CASES.items():
        if text is not None:
            assert text in shown, f"{name}: {text[:80]!r} not among the lines shown: {[s[:80] for s in shown]}"
    assert "table-end" in shown
    assert not any("\x1b" in line or "\r" in line for line in shown)

    download = client.log(job_id)
    assert download.status_code == 200
    text = download.content.decode("utf-8")  # strict: the download is valid UTF-8
    assert "x" * LONG_LINE in text, "the download cut the long line"
    assert "bad \ufffd\ufffd\ufffd( end" in text
    assert "table-end" in text


def test_burst_stays_bounded(harness: AppHarness, client: SessionClient):
    steps = [["print_many", "burst", BURST_LINES], ["log_many", "INFO", "record", BURST_RECORDS],
             ["log", "INFO", "burst-end"], ["sleep", 0.5]]
    client.set_plan([steps])
    job_id = job_id_of(client.trigger())

    samples: Dict[str, List[float]] = {"buffered": [], "loop_lag": []}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            started = time.monotonic()
            stats = harness.stats()
            samples["loop_lag"].append(time.monotonic() - started)
            samples["buffered"].append(max(stats["channel_log_lines"].values(), default=0))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    arrivals: List[float] = []
    events: List[SSEEvent] = []
    try:
        with client.stream(job_id) as stream:
            while not events or events[-1].event != "done":
                events.append(stream.next_event(timeout=MAX_STALL_S))
                arrivals.append(time.monotonic())
    finally:
        stop.set()
        sampler.join(10)

    assert 'data-status="completed"' in events[-2].data
    assert max(samples["buffered"]) <= DOM_LIMIT, f"the server buffered {max(samples['buffered'])} rendered lines"
    assert max(samples["loop_lag"]) < MAX_STALL_S, f"the event loop stalled for {max(samples['loop_lag']):.1f} s"
    sizes = [len(event.data.encode()) for event in events]
    assert max(sizes) < MAX_EVENT_BYTES, f"an SSE message of {max(sizes)} bytes"

    download = client.log(job_id).text
    last = download.rstrip("\n").rsplit("\n", 1)[-1]
    shown = shown_lines(events)
    assert last.endswith(" " + shown[-1]), f"the live view ends at {shown[-1]!r}, the log at {last!r}"
    numbers = {int(n) for n in re.findall(r" burst (\d+)$", download, re.M)}
    records = {int(n) for n in re.findall(r" record (\d+)$", download, re.M)}
    assert len(numbers) == BURST_LINES, f"the download has {len(numbers)} of {BURST_LINES} printed lines"
    assert len(records) == BURST_RECORDS, f"the download has {len(records)} of {BURST_RECORDS} records"


MEASURE_SCRIPT = """
([linesId]) => {
  const stats = {maxLag: 0, maxLines: 0, ticks: 0};
  let last = performance.now();
  window.__jmStats = stats;
  window.__jmTimer = setInterval(() => {
    const now = performance.now();
    stats.maxLag = Math.max(stats.maxLag, now - last - 50);
    last = now;
    stats.ticks += 1;
    const lines = document.getElementById(linesId);
    if (lines) stats.maxLines = Math.max(stats.maxLines, lines.childElementCount);
  }, 50);
}
"""


def test_browser_responsive_during_burst(harness: AppHarness, page: Page, page_log: PageLog):
    ids = harness.ids
    page.goto(harness.server.url("/"))
    session_id = page.evaluate("() => fetch('/whoami').then(r => r.text())")
    harness.plans[session_id] = [[["sleep", 1.0], ["print_many", "burst", BURST_LINES],
                                  ["log_many", "INFO", "record", BURST_RECORDS], ["log", "INFO", "burst-end"],
                                  ["sleep", 0.5]]]
    page.locator("[data-jm-trigger]").click()
    page.locator(f"#{ids.tab_button('logs')}").click()
    page.evaluate(MEASURE_SCRIPT, [ids.log_lines])

    page.wait_for_function(
        "id => document.querySelector(`#${id} [data-jm-progress]`)?.dataset.status === 'completed'",
        arg=ids.tab_progress, timeout=120_000)
    page.wait_for_timeout(300)
    stats = page.evaluate("() => { clearInterval(window.__jmTimer); return window.__jmStats; }")
    final = page.evaluate("""id => [...document.querySelectorAll(`#${id} [data-seq] > span:last-child`)]
                                   .map(span => span.textContent)""", ids.log_lines)

    assert stats["ticks"] > 10, stats
    assert stats["maxLag"] < MAX_TIMER_LAG_MS, f"a 50 ms timer ran {stats['maxLag']:.0f} ms late during the burst"
    assert stats["maxLines"] <= DOM_LIMIT, f"the page held {stats['maxLines']} log lines"
    assert len(final) <= DOM_LIMIT
    # Stdout lines are stamped when the host reads them, later than the records written after them, so the
    # end of the log in time order is whatever the download ends with.
    download = page.evaluate("() => fetch(document.querySelector('a[download]').href).then(r => r.text())")
    last = download.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.endswith(" " + final[-1]), f"the page ends at {final[-1]!r}, the log at {last!r}"
    page_log.assert_clean()
