"""Text from plugins, users and apps is shown as text only, and never breaks the event stream.

A real `StepsPlugin` worker reports each payload below as its status message,
logs it as a record, prints it and fails with it. The app's `on_fail` callback
returns it as a plain string and inside a `Div`, and `job_args_builder` raises
it. The HTML-level tests parse every response and every SSE message with an
HTML parser: no element, attribute or `hx-*` swap comes from the payload, and
the payload is there as text. The browser test runs the same in Chromium:
nothing executes, no request goes out, and the page shows the text.

The event-stream format ends a line only at CR, LF or CRLF (the HTML
standard's EventSource parser); U+2028, U+2029, U+0085 and form feeds stay
inside a line. `tests.support.server.split_sse_lines` splits the same way, so
these tests see the events a browser sees.
"""
from __future__ import annotations

import re
import time
from typing import Dict, List

import pytest
from fasthtml.common import Div, to_xml
from playwright.sync_api import Page, expect

from cjm_fasthtml_job_monitor.components.tabs.logs_tab import clean_log_text, render_log_line, render_logs_tab
from cjm_fasthtml_job_monitor.components.tabs.progress_tab import render_progress_tab
from cjm_fasthtml_job_monitor.components.tabs.resources_tab import render_resources_tab
from cjm_fasthtml_job_monitor.html_ids import JobMonitorHtmlIds
from cjm_fasthtml_job_monitor.models import MAX_ERROR_CHARS, MAX_MESSAGE_CHARS, LogLine, ResourceSnapshot
from cjm_fasthtml_job_monitor.routes.init import format_sse
from tests.support.app_harness import (
    PROBE_PATH, RESULTS_ID, AppHarness, Markup, SessionClient, job_id_of, parse_markup, read_until_done,
    served_harness,
)
from tests.support.browser import PageLog
from tests.support.server import iter_sse_lines

PROBE = PROBE_PATH + "/untrusted"

# Each payload tries one way out of the text. Markers (window.__jm_xss, the probe URL) show whether it worked.
PAYLOADS: Dict[str, str] = {
    "img onerror": f'<img src="{PROBE}/img" onerror="window.__jm_xss = 1">',
    "script after closing tags": "</span></p></div><script>window.__jm_xss = 2</script>",
    "htmx request on load": f'<div hx-get="{PROBE}/hx" hx-trigger="load" hx-swap="outerHTML">probe</div>',
    "out-of-band hijack": '<div id="jm-trigger-slot" hx-swap-oob="true">hijacked</div>',
    "svg onload": '<svg onload="window.__jm_xss = 3"><circle r="1"/></svg>',
    "attribute breakout": "\" onmouseover=\"window.__jm_xss = 4\" data-x='",
    "javascript url": '<a href="javascript:window.__jm_xss = 5">link</a>',
    "character references": "&lt;b&gt;not bold&lt;/b&gt; &amp; &#60;i&#62;",
    "sse field injection": "first\nevent: done\ndata: <b>injected</b>\n\nid: forged\nretry: 1",
    "carriage returns": "one\rtwo\r\nthree\n",
    "unicode separators": "a\u2028b\u2029c\u0085d\u000be\u000cf",
    "template syntax": "{{7*7}} ${7*7} <%= 7*7 %>",
}

# Tags and attributes that only an injection could add to the library's output.
FORBIDDEN_TAGS = {"script", "img", "iframe", "object", "embed", "style", "link", "meta", "base", "a"}
ALLOWED_HREF = re.compile(r"^/jobs/log\?job_id=")


def expected_text(payload: str, max_chars: int = 4000) -> str:
    "Return the payload as the page shows it: cleaned like a log line, with CR and CRLF sent as LF."
    return re.sub(r"\r\n|\r", "\n", clean_log_text(payload, max_chars))


def failing_plan(payload: str) -> List[list]:
    "One job that reports, logs, prints and fails with `payload`."
    return [[["report", 0.5, payload], ["log", "WARNING", payload], ["print", payload], ["sleep", 0.3],
             ["fail", payload]]]


def callback_output(payload: str):
    "An `on_fail` that returns the payload as a plain string and as the text of an out-of-band Div."
    return lambda name, job: [payload, Div(payload, id=RESULTS_ID, hx_swap_oob="true")]


def assert_only_library_markup(html: str, where: str) -> Markup:
    "Check that `html` contains no element or attribute that the payload could have added."
    markup = parse_markup(html)
    for tag, attrs in markup.elements:
        assert tag not in FORBIDDEN_TAGS or (tag == "a" and ALLOWED_HREF.match(attrs.get("href", ""))), \
            f"{where}: unexpected <{tag} {attrs}>"
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"{where}: <{tag}> has event handler attributes {handlers}"
        assert "hx-get" not in attrs, f"{where}: <{tag}> has hx-get"
        assert "hx-trigger" not in attrs, f"{where}: <{tag}> has hx-trigger {attrs['hx-trigger']!r}"
        assert "javascript:" not in attrs.get("href", ""), f"{where}: javascript URL in <{tag}>"
    swapped = [attrs.get("id") for _, attrs in markup.with_attribute("hx-swap-oob")]
    duplicated = {element_id for element_id in swapped if swapped.count(element_id) > 1}
    assert not duplicated, f"{where}: two out-of-band swaps target {duplicated}, so one of them came from text"
    return markup


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("untrusted")
    with served_harness(data_dir) as harness:
        yield harness


@pytest.fixture
def client(harness: AppHarness):
    with SessionClient(harness.server.base_url) as client:
        yield client


# --- SSE framing --------------------------------------------------------------------------------


FRAMING_CASES = {
    "LF": ("a\nb", "a\nb"),
    "CR": ("a\rb", "a\nb"),
    "CRLF": ("a\r\nb", "a\nb"),
    "mixed and doubled": ("a\r\r\n\nb\n\r", "a\n\n\nb\n\n"),
    "leading and trailing breaks": ("\na\n", "\na\n"),
    "blank line that would end the event": ("a\n\nevent: done", "a\n\nevent: done"),
    "field names at line starts": ("data: x\nid: 9\nretry: 1\n: comment", "data: x\nid: 9\nretry: 1\n: comment"),
    "U+2028 and U+2029": ("a\u2028b\u2029c", "a\u2028b\u2029c"),
    "NEL, VT and FF": ("a\u0085b\u000bc\u000cd", "a\u0085b\u000bc\u000cd"),
    "NUL": ("a\x00b", "a\x00b"),
    "lone surrogate": ("a\ud800b", "a\ufffdb"),
}


@pytest.mark.parametrize("case", FRAMING_CASES)
def test_sse_frame_keeps_one_event(case: str):
    data, delivered = FRAMING_CASES[case]
    frame = format_sse(data, event_id="seq:1")
    frame.encode("utf-8")  # a frame always encodes
    events = list(iter_sse_lines(frame + format_sse("", event="done")))
    assert [event.event for event in events] == ["message", "done"], events
    assert events[0].data == delivered
    assert events[0].id == "seq:1"
    assert events[0].retry is None


# --- components: every place that shows text from a plugin ---------------------------------------


@pytest.mark.parametrize("name", PAYLOADS)
def test_components_render_text(name: str):
    payload = PAYLOADS[name]
    ids = JobMonitorHtmlIds("jm")
    rendered = {
        "progress message and error": render_progress_tab(ids, "failed", 0.5, payload, 1.0, 2.0,
                                                          error_message=payload, label=payload, now=3.0),
        "log line level and message": render_log_line(LogLine(seq=1, ts=1.0, level=payload, message=payload)),
        "plain log text": render_logs_tab(ids, payload),
        "GPU name from a system-monitor plugin": render_resources_tab(ResourceSnapshot(
            worker_pid=1, cpu_percent=1.0, memory_rss_mb=1.0, gpu_name=payload, gpu_index=0, gpu_memory_mb=1.0,
            gpu_total_mb=2.0)),
    }
    for where, element in rendered.items():
        markup = assert_only_library_markup(to_xml(element), where)
        # The log view cleans control characters; the other places show the text as it came.
        shown = [payload.split("\n")[0].strip(), expected_text(payload).split("\n")[0].strip()]
        assert any(text in markup.text for text in shown), where


# --- through a real worker: the HTML of every message ------------------------------------------


@pytest.mark.parametrize("name", PAYLOADS)
def test_payload_shown_as_text(harness: AppHarness, client: SessionClient, name: str):
    payload = PAYLOADS[name]
    client.set_plan(failing_plan(payload))
    harness.callback_outputs[client.session_id] = callback_output(payload)

    trigger = client.trigger()
    assert trigger.status_code == 200
    assert_only_library_markup(trigger.text, "trigger response")
    job_id = job_id_of(trigger)
    with client.stream(job_id) as stream:
        events = read_until_done(stream)
    page = client.page()
    body = page[page.index("<main"):page.index("</main>")]

    assert [event.event for event in events[:-1]] == ["message"] * (len(events) - 1), \
        f"an event other than 'message' before 'done': {[event.event for event in events]}"
    assert events[-1].event == "done"
    assert all(event.id and event.id != "forged" for event in events), [event.id for event in events]
    texts = [assert_only_library_markup(event.data, f"SSE message {i}").text for i, event in enumerate(events)]
    assert_only_library_markup(body, "page")
    everything = "\n".join(texts)

    message = expected_text(payload, MAX_MESSAGE_CHARS)
    error = expected_text(payload, MAX_ERROR_CHARS)
    record = expected_text(payload)
    assert message in everything, "the status message is missing as text"
    assert record in everything, "the log record is missing as text"
    for line in (line for line in re.split(r"\r\n|\r|\n", payload) if clean_log_text(line).strip()):
        assert expected_text(line) in everything, f"the printed line {line!r} is missing as text"
    assert error in texts[-2], "the error message is missing from the final message"
    outcomes = _attribute_values(events[-2].data, "data-outcome")
    assert len(outcomes) == 1, outcomes
    assert outcomes[0].startswith("Failed: "), outcomes
    assert error.strip()[:200] in outcomes[0], "the page title's outcome is not the error text"
    callback_text = expected_text(payload, 10**6).replace("\n", "")
    assert callback_text in texts[-2].replace("\n", ""), "the callback's output is missing as text"
    assert harness.probe_hits == []


def _attribute_values(html: str, name: str) -> List[str]:
    return [attrs[name].strip() for _, attrs in parse_markup(html).with_attribute(name)]


@pytest.mark.parametrize("name", ["img onerror", "out-of-band hijack", "attribute breakout"])
def test_builder_error_shown_as_text(harness: AppHarness, client: SessionClient, name: str):
    payload = PAYLOADS[name]
    harness.builder_errors[client.session_id] = ValueError(payload)
    try:
        response = client.trigger()
    finally:
        del harness.builder_errors[client.session_id]
    markup = assert_only_library_markup(response.text, "trigger response")
    assert payload in markup.text
    assert harness.tracker(client.session_id) is None


def test_malformed_job_args_not_echoed(harness: AppHarness, client: SessionClient):
    payload = PAYLOADS["img onerror"]
    harness.builder_outputs[client.session_id] = [(payload, {"steps": payload})]
    try:
        response = client.trigger()
    finally:
        del harness.builder_outputs[client.session_id]
    markup = assert_only_library_markup(response.text, "trigger response")
    assert "must be an (args, kwargs) pair" in markup.text
    assert "got tuple of (str, dict)" in markup.text
    assert "onerror" not in response.text


# --- in the browser ------------------------------------------------------------------------------


BROWSER_CASES = ["img onerror", "script after closing tags", "htmx request on load", "out-of-band hijack",
                 "svg onload", "attribute breakout", "javascript url", "sse field injection", "unicode separators"]


def test_browser_runs_nothing(harness: AppHarness, page: Page, page_log: PageLog):
    dialogs: List[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    probe_requests: List[str] = []
    page.on("request", lambda request: probe_requests.append(request.url) if PROBE in request.url else None)

    combined = "\n".join(PAYLOADS[name] for name in BROWSER_CASES)
    steps = [["report", 0.4, combined], ["sleep", 1.5]]
    steps += [["log", "ERROR", PAYLOADS[name]] for name in BROWSER_CASES]
    steps += [["print", PAYLOADS[name]] for name in BROWSER_CASES]
    steps += [["sleep", 0.5], ["fail", combined + "<script>alert(1)</script>"]]
    page.goto(harness.server.url("/"))
    session_id = page.evaluate("() => fetch('/whoami').then(r => r.text())")
    harness.plans[session_id] = [steps]
    harness.callback_outputs[session_id] = callback_output(combined)
    ids = harness.ids

    page.locator("[data-jm-trigger]").click()
    page.wait_for_function(
        """([id, text]) => document.querySelector(`#${id} [data-jm-progress] > p`)?.textContent === text""",
        arg=[ids.tab_progress, expected_text(combined, MAX_MESSAGE_CHARS)], timeout=15_000)

    page.wait_for_function(
        "id => document.querySelector(`#${id} [data-jm-progress]`)?.dataset.status === 'failed'",
        arg=ids.tab_progress, timeout=30_000)
    error = expected_text(combined + "<script>alert(1)</script>", MAX_ERROR_CHARS)
    alert_text = page.locator(f"#{ids.tab_progress} .alert").evaluate("element => element.textContent")
    assert error in alert_text

    shown = page.evaluate("""id => [...document.querySelectorAll(`#${id} [data-seq] > span:last-child`)]
                                   .map(span => span.textContent)""", ids.log_lines)
    for name in BROWSER_CASES:
        assert expected_text(PAYLOADS[name]) in shown, f"log record {name!r} not shown as text: {shown}"
    results = page.locator(f"#{RESULTS_ID}").evaluate("element => element.textContent")
    assert results == combined
    expect(page.locator(f"#{ids.trigger_slot} [data-jm-trigger]")).to_be_visible()

    injected = page.evaluate("""() => ({
        flag: window.__jm_xss ?? null,
        elements: document.querySelectorAll(
            "main img, main script, main iframe, [onerror], [onload], [onmouseover], [hx-get], a[href^='javascript']"
        ).length,
        slots: document.querySelectorAll("[id='jm-trigger-slot']").length,
    })""")
    assert injected == {"flag": None, "elements": 0, "slots": 1}
    time.sleep(0.5)  # an hx-trigger="load" request would have been sent by now
    assert probe_requests == []
    assert harness.probe_hits == []
    assert dialogs == []
    page_log.assert_clean()
