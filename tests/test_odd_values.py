"""Odd values never raise: progress, timestamps, statuses and stored trackers that the design does not expect.

Each kind is pinned at three levels where it can occur: the pure functions
(`normalize_progress`, `to_epoch`, `job_to_view`), the components that render
them, and a real server with a real `StepsPlugin` worker. Over the worker's
JSON transport, NaN and infinities arrive as null (cjm-plugin-system 0.0.46),
so the service and component tables cover them as Python floats.

Expected rendering: a progress value that carries a fraction is clamped to
0-100 %; one that does not (NaN, infinities, -1, None, a string, a bool) gives
an indeterminate bar. A missing start time shows "—", a start in the future
0:00. An unknown status renders as "Unknown" and is followed like a running
job. A tracker that is not this release's format is removed and the page is
idle.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from types import SimpleNamespace
from typing import Any, List, Optional

import pytest
from fasthtml.common import to_xml

from cjm_fasthtml_job_monitor.components.modal import render_job_modal, render_sse_response
from cjm_fasthtml_job_monitor.components.tabs.logs_tab import render_log_line
from cjm_fasthtml_job_monitor.components.tabs.progress_tab import compute_elapsed, format_duration, render_progress_tab
from cjm_fasthtml_job_monitor.html_ids import JobMonitorHtmlIds
from cjm_fasthtml_job_monitor.models import JobMonitorConfig, JobMonitorUrls, JobView, LogLine, normalize_progress
from cjm_fasthtml_job_monitor.routes import init as routes_module
from cjm_fasthtml_job_monitor.routes.init import TRACKER_FORMAT
from cjm_fasthtml_job_monitor.services.monitor import job_to_view, to_epoch
from tests.support.app_harness import (
    STATE_KEY, STEP_ID, WORKFLOW_ID, AppHarness, SessionClient, job_id_of, parse_markup, read_until_done,
    served_harness,
)

IDS = JobMonitorHtmlIds("jm")
URLS = JobMonitorUrls(trigger="/jobs/trigger", progress="/jobs/progress", cancel="/jobs/cancel", log="/jobs/log")
NOW = 1_800_000_000.0
INDETERMINATE = None

# value -> the fraction normalize_progress returns (None: indeterminate)
PROGRESS_CASES = [
    (0.0, 0.0), (0.25, 0.25), (1.0, 1.0), (1, 1.0), (0, 0.0),
    (-1.0, INDETERMINATE), (-1, INDETERMINATE),
    (-0.5, 0.0), (-2, 0.0), (-1e308, 0.0), (-(10 ** 400), 0.0),
    (1.5, 1.0), (5, 1.0), (1e308, 1.0), (10 ** 400, 1.0),
    (float("nan"), INDETERMINATE), (float("inf"), INDETERMINATE), (float("-inf"), INDETERMINATE),
    (None, INDETERMINATE), ("0.5", INDETERMINATE), ("abc", INDETERMINATE), ("", INDETERMINATE),
    (True, INDETERMINATE), (False, INDETERMINATE), ([0.5], INDETERMINATE), ({"p": 1}, INDETERMINATE),
    (Fraction(1, 3), 1 / 3), (5e-324, 5e-324),
]

TIME_CASES = {  # started_at value -> elapsed text the progress tab shows while running at NOW
    "missing": (None, "—"),
    "NaN": (float("nan"), "—"),
    "infinite": (float("inf"), "—"),
    "string": ("2026-01-01T00:00:00Z", "—"),
    "bool": (True, "—"),
    "one hour in the future": (NOW + 3600, "0:00"),
    "far future": (1e18, "0:00"),
    "far past": (0.0, "500000:00:00"),
    "ordinary": (NOW - 75, "1:15"),
}

STATUS_CASES = {  # status value -> what normalize_status makes of it
    "running": "running", " Completed ": "completed", "FAILED": "failed", "paused": "unknown",
    "": "unknown", None: "unknown", 3: "unknown", "<b>cancelled</b>": "unknown",
}


def progress_bar(html: str) -> dict:
    "Return the attributes of the job progress bar in `html`."
    bars = [attrs for tag, attrs in parse_markup(html).elements if tag == "progress" and attrs.get("id") == IDS.progress_bar]
    assert len(bars) == 1, f"expected one progress bar, found {len(bars)}"
    return bars[0]


def bar_percent(html: str) -> Optional[int]:
    "Return the bar's value in percent, or None for an indeterminate bar, checking that it is a valid one."
    bar = progress_bar(html)
    assert bar.get("max") == "100"
    if "value" not in bar: return None
    value = int(bar["value"])
    assert 0 <= value <= 100, bar
    return value


# --- pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, fraction", PROGRESS_CASES, ids=[repr(v)[:20] for v, _ in PROGRESS_CASES])
def test_normalize_progress_table(value: Any, fraction: Optional[float]):
    result = normalize_progress(value)
    if fraction is None:
        assert result is None
    else:
        assert result == pytest.approx(fraction)
        assert 0.0 <= result <= 1.0


def test_to_epoch_table():
    aware = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cases = [
        (aware, aware.timestamp()), (aware.replace(tzinfo=None), aware.timestamp()),
        (aware.astimezone(timezone(timedelta(hours=5))), aware.timestamp()), (12.5, 12.5), (7, 7.0),
        (None, None), (float("nan"), None), (float("inf"), None), (True, None), ("2026-01-01", None), (b"1", None),
    ]
    for value, expected in cases:
        assert to_epoch(value) == expected, value


def test_job_view_of_odd_jobs():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    base = dict(id="j", plugin_instance_id="p", status="running", progress=0.5, status_message="m",
                submitted_at=t0, started_at=t0, completed_at=None, error=None, result=None,
                cancel_requested_at=None, cancel_phase=None)
    for value, fraction in PROGRESS_CASES:
        view = job_to_view(SimpleNamespace(**{**base, "progress": value}), no_report=())
        assert view.progress == (None if fraction is None else pytest.approx(fraction)), value
    for status, expected in STATUS_CASES.items():
        assert job_to_view(SimpleNamespace(**{**base, "status": status})).status == expected, status
    for message in (None, 42, ["a"], "x" * 100_000, "\ud800"):
        view = job_to_view(SimpleNamespace(**{**base, "status_message": message}), no_report=())
        view.message.encode("utf-8")
        assert len(view.message) < 1100
    future = SimpleNamespace(**{**base, "started_at": datetime.now(timezone.utc) + timedelta(hours=1)})
    assert job_to_view(future).elapsed_s(now=time.time()) == 0.0
    missing = SimpleNamespace(id="j")  # a job object with nothing else on it
    view = job_to_view(missing)
    assert (view.status, view.progress, view.started_at, view.error) == ("unknown", None, None, None)


# --- components ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "running", "cancelling", "completed", "failed", "cancelled",
                                    "paused", None])
def test_progress_tab_odd_progress(status: Optional[str]):
    for value, fraction in PROGRESS_CASES:
        html = to_xml(render_progress_tab(IDS, status, value, "msg", NOW - 10, None, now=NOW, eta_s=value))
        percent = bar_percent(html)
        if status == "completed":
            assert percent == 100
        elif fraction is None:
            assert percent in (None, 0), f"{value!r}: {percent}"  # an ended job shows an empty bar
        else:
            assert percent == int(fraction * 100), f"{value!r}: {percent}"


def test_progress_tab_huge_int_times():
    for argument in ("started_at", "completed_at", "now", "eta_s"):
        values = {"started_at": NOW - 10, "completed_at": None, "now": NOW, "eta_s": None, argument: 10 ** 400}
        bar_percent(to_xml(render_progress_tab(IDS, "running", 0.5, "msg", values["started_at"],
                                               values["completed_at"], now=values["now"], eta_s=values["eta_s"])))


@pytest.mark.parametrize("case", TIME_CASES)
def test_progress_tab_odd_times(case: str):
    started_at, shown = TIME_CASES[case]
    for completed_at in (None, float("nan"), "later", NOW - 10 ** 12):
        html = to_xml(render_progress_tab(IDS, "running", 0.5, "", started_at, completed_at, now=NOW))
        elapsed = [attrs for tag, attrs in parse_markup(html).elements if attrs.get("id") == IDS.elapsed]
        assert len(elapsed) == 1
        text = html.split(f'id="{IDS.elapsed}"')[1].split(">", 1)[1].split("<", 1)[0]
        if completed_at is None or not isinstance(completed_at, float) or math.isnan(completed_at):
            assert text == shown, (case, completed_at, text)
        else:
            assert text in (shown, "0:00"), (case, completed_at, text)
        seconds = elapsed[0].get("data-elapsed-s", "")
        assert seconds == "" or float(seconds) >= 0
    assert format_duration(started_at if isinstance(started_at, float) else None) is not None
    assert compute_elapsed(started_at, None, NOW) is None or compute_elapsed(started_at, None, NOW) >= 0


def test_modal_and_update_with_odd_values():
    config = JobMonitorConfig()
    statuses, times = list(STATUS_CASES), [started for started, _ in TIME_CASES.values()]
    # Every progress value, every status and every time at least once, in rotating combinations.
    for index in range(max(len(PROGRESS_CASES), len(statuses), len(times))):
        value = PROGRESS_CASES[index % len(PROGRESS_CASES)][0]
        eta = value if not isinstance(value, int) or abs(value) < 2 ** 1000 else None
        status, started_at = statuses[index % len(statuses)], times[index % len(times)]
        modal = to_xml(render_job_modal(config, IDS, URLS, job_id="j", status=status, progress_value=value,
                                        status_message=None, started_at=started_at, completed_at=started_at,
                                        now=NOW, eta_s=eta))
        bar_percent(modal)
        update = to_xml(render_sse_response(IDS, URLS, status=status, progress_value=value, started_at=started_at,
                                            include_footer=True, now=NOW))
        bar_percent(update)


def test_log_line_with_odd_times():
    for ts in (None, float("nan"), float("inf"), -1e20, 1e20, 0.0, NOW + 10 ** 9, "noon"):
        line = LogLine(seq=1, ts=ts, level="INFO", message="x")
        assert line.format().endswith("INFO     x")
        html = to_xml(render_log_line(line))
        assert ">x<" in html
    for level in ("", None, "weird-level", "<b>", "WARNING" * 100):
        html = to_xml(render_log_line(LogLine(seq=1, ts=NOW, level=level, message="y")))
        assert ">y<" in html


def test_job_view_elapsed_with_odd_times():
    assert JobView("j", "p", "running", None, started_at=NOW + 60).elapsed_s(now=NOW) == 0.0
    assert JobView("j", "p", "completed", 1.0, started_at=NOW, completed_at=NOW - 60).elapsed_s(now=NOW) == 0.0


# --- a real server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("odd-values")
    with served_harness(data_dir) as harness:
        yield harness


@pytest.fixture
def client(harness: AppHarness):
    with SessionClient(harness.server.base_url) as client:
        yield client


@pytest.fixture
def library_errors(caplog: pytest.LogCaptureFixture):
    "Records of level ERROR or above that the library logged during the test."
    caplog.set_level(logging.WARNING, logger="cjm_fasthtml_job_monitor")
    return lambda: [r.getMessage() for r in caplog.records
                    if r.name.startswith("cjm_fasthtml_job_monitor") and r.levelno >= logging.ERROR]


# value reported by the plugin -> percent the bar shows (None: indeterminate). NaN and infinities
# reach the queue as None over the worker's JSON, so they end up indeterminate as well.
WORKER_REPORTS = [
    ("nan", None), ("inf", None), ("-inf", None), (-0.5, 0), (-2, 0), (1.5, 100), (5, 100), (None, None),
    ("abc", None), ("0.5", None), (True, None), (-1, None), (0.42, 42),
]


def test_odd_progress_through_worker(harness: AppHarness, client: SessionClient, library_errors):
    steps: List[list] = []
    for index, (value, _) in enumerate(WORKER_REPORTS):
        steps += [["report", value, f"report-{index}"], ["sleep", 0.4]]
    client.set_plan([steps])
    job_id = job_id_of(client.trigger())
    with client.stream(job_id) as stream:
        events = read_until_done(stream)

    # While the status stays the same the stream swaps the bar and the message on their own, and only what
    # changed: replay the events in order and read the bar shown when each report's message arrives.
    seen, bar_on_page = {}, "unset"
    for event in events:
        if f'id="{IDS.progress_bar}"' in event.data:
            bar_on_page = bar_percent(event.data)
        for index, (value, percent) in enumerate(WORKER_REPORTS):
            if f">report-{index}<" in event.data:
                seen[index] = bar_on_page
    missing = [WORKER_REPORTS[i][0] for i in range(len(WORKER_REPORTS)) if i not in seen]
    assert not missing, f"no update showed the reports of {missing}; the poll may have missed them"
    for index, (value, percent) in enumerate(WORKER_REPORTS):
        assert seen[index] == percent, f"report {value!r}: bar {seen[index]} %, expected {percent}"
    assert 'data-status="completed"' in events[-2].data
    assert library_errors() == []


def test_unknown_status_and_future_start(harness: AppHarness, client: SessionClient, library_errors):
    client.set_plan([[["progress", 0.3, "working"], ["wait_cancel", 20, "return"]]])
    job_id = job_id_of(client.trigger())
    service = harness.env.service
    deadline = time.monotonic() + 15
    while service.get_job_view(job_id).progress != pytest.approx(0.3):
        assert time.monotonic() < deadline, "the job did not report its progress"
        time.sleep(0.05)

    job = harness.env.queue.get_job(job_id)
    real_status = job.status

    def set_status(status: Any) -> None:
        job.status = status
        job.started_at = datetime.now(timezone.utc) + timedelta(hours=1)  # a clock that jumped back

    # A status from a newer plugin system: the queue's own code never sees it, only the monitor does.
    harness.run(lambda: set_status("paused"))
    try:
        assert service.get_job_view(job_id).status == "unknown"
        page = client.page()
        assert 'data-running="true"' in page
        with client.stream(job_id) as stream:
            first = stream.next_event(timeout=10).data
    finally:
        harness.run(lambda: set_status(real_status))
    assert bar_percent(first) == 30
    assert 'data-status="running"' in first
    assert f'id="{IDS.elapsed}"' in first and ">0:00<" in first
    with client.stream(job_id) as stream:
        assert client.cancel(job_id).status_code == 204
        events = read_until_done(stream)
    assert 'data-status="cancelled"' in events[-2].data
    assert harness.tracker(client.session_id) is None
    assert library_errors() == []


OLD_AND_MALFORMED_TRACKERS = {
    "0.0.12 format": {"job_id": "0d2d6f5e-6f7a-4c3b-9a52-5b8f3c1d9e00"},
    "format 1": {"format": 1, "job_id": "j", "job_ids": ["j"], "index": 0, "total": 1},
    "format as string": {"format": "2", "job_id": "j", "job_ids": ["j"], "index": 0, "total": 1},
    "job ids not a list": {"format": TRACKER_FORMAT, "job_id": "j", "job_ids": "j", "index": 0, "total": 1},
    "job ids not strings": {"format": TRACKER_FORMAT, "job_id": 1, "job_ids": [1], "index": 0, "total": 1},
    "index out of range": {"format": TRACKER_FORMAT, "job_id": "j", "job_ids": ["j"], "index": 5, "total": 1},
    "negative index": {"format": TRACKER_FORMAT, "job_id": "j", "job_ids": ["j"], "index": -1, "total": 1},
    "total zero": {"format": TRACKER_FORMAT, "job_id": "j", "job_ids": ["j"], "index": 0, "total": 0},
    "job id mismatch": {"format": TRACKER_FORMAT, "job_id": "k", "job_ids": ["j"], "index": 0, "total": 1},
    "unknown job": {"format": TRACKER_FORMAT, "job_id": "j", "job_ids": ["j"], "index": 0, "total": 1},
    "outcome html not a string": {"format": TRACKER_FORMAT, "outcome_html": ["<b>x</b>"]},
    "a string": "job-123",
    "a number": 42,
    "a list": ["j"],
    "empty dict": {},
    "deeply nested": {"format": TRACKER_FORMAT, "job_ids": [[[[[]]]]], "index": {"a": None}},
}


@pytest.mark.parametrize("case", OLD_AND_MALFORMED_TRACKERS)
def test_odd_tracker_gives_idle_page(harness: AppHarness, client: SessionClient, case: str, library_errors):
    harness.store.update_step_state(WORKFLOW_ID, client.session_id, STEP_ID,
                                    {STATE_KEY: OLD_AND_MALFORMED_TRACKERS[case]})
    response = client.client.get("/")
    assert response.status_code == 200
    assert 'data-running="false"' in response.text
    assert "data-jm-trigger" in response.text
    assert "sse-connect" not in response.text
    assert harness.tracker(client.session_id) in (None, OLD_AND_MALFORMED_TRACKERS[case])

    with client.stream("j") as stream:
        events = read_until_done(stream, timeout=10)
    assert [event.event for event in events] == ["message", "done"]
    assert harness.tracker(client.session_id) is None

    harness.store.update_step_state(WORKFLOW_ID, client.session_id, STEP_ID,
                                    {STATE_KEY: OLD_AND_MALFORMED_TRACKERS[case]})
    client.set_plan([[["print", "fresh job"]]])
    job_id = job_id_of(client.trigger())
    with client.stream(job_id) as stream:
        assert 'data-status="completed"' in read_until_done(stream)[-2].data
    assert library_errors() == []


def test_corrupt_state_row(harness: AppHarness, client: SessionClient, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.ERROR, logger=routes_module.logger.name)
    key = f"{WORKFLOW_ID}:{client.session_id}"
    harness.store.update_step_state(WORKFLOW_ID, client.session_id, STEP_ID, {STATE_KEY: None})
    with sqlite3.connect(harness.store.db_path) as connection:
        connection.execute("UPDATE workflow_state SET state_json = '{\"steps\": [' WHERE flow_session_key = ?",
                           (key,))
    try:
        page = client.client.get("/")
        assert page.status_code == 200
        assert 'data-running="false"' in page.text

        client.set_plan([[["sleep", 5]]])
        before = harness.run(lambda: len(harness.env.queue.get_history()))
        response = client.trigger()
        assert response.status_code == 200
        assert "was not started because its state could not be read" in response.text
        assert "JSONDecodeError" in response.text
        assert "data-jm-trigger" in response.text
        with client.stream() as stream:
            assert [event.event for event in read_until_done(stream, timeout=10)] == ["message", "done"]
        # No job was submitted for a session whose state cannot be read.
        assert harness.run(lambda: harness.env.queue.get_running_jobs() + harness.env.queue.get_pending()) == []
        assert harness.run(lambda: len(harness.env.queue.get_history())) == before
        assert any("JSONDecodeError" in record.getMessage() for record in caplog.records)
    finally:
        with sqlite3.connect(harness.store.db_path) as connection:
            connection.execute("DELETE FROM workflow_state WHERE flow_session_key = ?", (key,))
