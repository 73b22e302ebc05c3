"""Faults around a job: a killed worker, an app restart, races, a plugin that ignores cancel, a lost plugin or queue, a failing store.

Each fault ends with the same three checks: the page shows clearly what
happened, the trigger comes back (nothing is left waiting), and exactly one
callback ran. The server is real (uvicorn on 127.0.0.1), the workers are real
`StepsPlugin` processes, and the faults are real: SIGKILL, `unload_plugin`,
`JobQueue.stop()`, an immutable database file, an exclusive SQLite lock.

Most tests share one module server. The restart test runs the app in a child
process, because it kills the server.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import psutil
import pytest
from playwright.sync_api import Page, expect

from tests.support.app_harness import (
    CONTENT_ID, AppHarness, SessionClient, job_id_of, read_until_done, served_harness, session_clients,
)
from tests.support.browser import PageLog
from tests.support.server import SSEEvent
from tests.support.workers import worker_processes

JOB_TIMEOUT_S = 60.0
FAILURE_SHOWN_S = 10.0  # The page shows a killed worker's failure within this many seconds (0.1-0.3 s measured)
UI_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("faults")
    with served_harness(data_dir, worker_kwargs={"cancel_timeout": 1.0}) as harness:
        yield harness


@pytest.fixture
def clients(harness: AppHarness):
    with session_clients(harness.server.base_url) as open_session:
        yield open_session


def wait_until(predicate: Callable[[], Any], timeout: float = JOB_TIMEOUT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value: return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def status_of(event: SSEEvent) -> Optional[str]:
    "Return the data-status of the progress tab in an SSE message, or None when it has none."
    marker = 'data-jm-progress="1" data-status="'
    if marker not in event.data: return None
    return event.data.split(marker, 1)[1].split('"', 1)[0]


def assert_idle_after(harness: AppHarness, client: SessionClient, events: List[SSEEvent]) -> None:
    "Check that the final update returned the page to idle and the session holds nothing."
    final = events[-2].data
    assert 'data-jm-trigger="1"' in final, "the final update did not bring the trigger back"
    assert f'<div hidden id="{harness.ids.overlay}" hx-swap-oob="true"></div>' in final
    assert harness.tracker(client.session_id) is None
    assert wait_until(lambda: harness.run(lambda: harness.hub().runner_for(client.session_id) is None), 10,
                      "the runner to end")
    page = client.page()
    assert 'data-running="false"' in page
    assert "sse-connect" not in page


def callbacks_of(harness: AppHarness, client: SessionClient) -> List[str]:
    return [call[0] for call in harness.calls_of(client.session_id)]


def wait_running(harness: AppHarness, job_id: str) -> None:
    "Wait until the job has started (it may also have ended already)."
    wait_until(lambda: harness.env.service.get_job_view(job_id).status not in ("pending",), 20, "the job to start")


# --- the worker -----------------------------------------------------------------------------------


def kill_until_failed(harness: AppHarness, job_id: str) -> float:
    "SIGKILL the job's worker until the job fails; return the monotonic time of the last kill."
    # cjm-plugin-system 0.0.46 treats a worker that died of SIGKILL as killed by the kernel's OOM killer when it reads
    # the exit code in time, and then runs the job again on a new worker, once. The second kill ends the job.
    killed_at = 0.0
    for _ in range(3):
        pid = wait_until(lambda: harness.env.worker_pid(), 20, "a worker")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        deadline = killed_at + FAILURE_SHOWN_S
        while time.monotonic() < deadline:
            view = harness.env.service.get_job_view(job_id)
            if view.is_terminal: return killed_at
            if harness.env.worker_pid() not in (None, pid) and view.status == "running": break  # retried
            time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not fail after its workers were killed")


def test_worker_killed_mid_job(harness: AppHarness, clients):
    client = clients()
    client.set_plan([[["progress", 0.3, "working"], ["sleep", 30]]])
    job_id = job_id_of(client.trigger())
    wait_running(harness, job_id)
    with client.stream(job_id) as stream:
        stream.read_until(lambda event: status_of(event) == "running", timeout=20)
        killed_at = kill_until_failed(harness, job_id)
        events = read_until_done(stream, timeout=FAILURE_SHOWN_S + 20)
        shown_after = time.monotonic() - killed_at
    assert status_of(events[-2]) == "failed"
    assert shown_after < FAILURE_SHOWN_S, f"the failure reached the page {shown_after:.1f} s after the kill"
    assert "killed by SIGKILL" in events[-2].data
    assert_idle_after(harness, client, events)
    assert callbacks_of(harness, client) == ["on_fail"]

    # The next job gets a fresh worker.
    client.set_plan([[["print", "after the kill"]]])
    job_id = job_id_of(client.trigger())
    with client.stream(job_id) as stream:
        assert status_of(read_until_done(stream)[-2]) == "completed"


def test_killed_worker_in_browser(harness: AppHarness, page: Page, page_log: PageLog):
    ids = harness.ids
    page.goto(harness.server.url("/"))
    session_id = page.evaluate("() => fetch('/whoami').then(r => r.text())")
    harness.plans[session_id] = [[["progress", 0.3, "working"], ["sleep", 30]]]
    page.locator("[data-jm-trigger]").click()
    page.wait_for_function("id => document.querySelector(`#${id} [data-jm-progress]`)?.dataset.percent === '30'",
                           arg=ids.tab_progress, timeout=UI_TIMEOUT_MS)
    expect(page.locator(f"#{CONTENT_ID} [data-jm-overlay]")).to_be_visible()
    job_id = page.locator(f"#{ids.modal}").get_attribute("data-jm-job")
    kill_until_failed(harness, job_id)

    page.wait_for_function("id => document.querySelector(`#${id} [data-jm-progress]`)?.dataset.status === 'failed'",
                           arg=ids.tab_progress, timeout=FAILURE_SHOWN_S * 1000)
    expect(page.locator(f"#{ids.tab_progress} .alert")).to_contain_text("killed by SIGKILL")
    expect(page.locator(f"#{ids.trigger_slot} [data-jm-trigger]")).to_be_visible()
    expect(page.locator(f"#{ids.overlay}")).to_be_hidden()
    expect(page.locator(f"#{CONTENT_ID} [inert]")).to_have_count(0)
    page_log.assert_clean()


# --- cancelling -----------------------------------------------------------------------------------


def test_cancel_racing_completion(harness: AppHarness, clients):
    generator = random.Random(20261204)
    for attempt in range(8):
        client = clients()
        duration = 0.4
        client.set_plan([[["sleep", duration]]])
        job_id = job_id_of(client.trigger())
        wait_running(harness, job_id)
        time.sleep(max(0.0, duration + generator.uniform(-0.25, 0.15)))
        cancel = client.cancel(job_id)
        assert cancel.status_code in (204, 404), cancel.text
        with client.stream(job_id) as stream:
            events = read_until_done(stream)
        status = status_of(events[-2])
        wait_until(lambda: harness.calls_of(client.session_id), 10, "the callback")
        time.sleep(0.3)  # a second callback would come right after the first
        calls = callbacks_of(harness, client)
        assert status in ("completed", "cancelled"), status
        assert calls == [{"completed": "on_complete", "cancelled": "on_cancel"}[status]], (attempt, status, calls)
        if cancel.status_code == 404: assert status == "completed"
        assert_idle_after(harness, client, events)


def test_cancel_between_jobs_of_sequence(harness: AppHarness, clients):
    client = clients()
    client.set_plan([[["sleep", 0.5]], [["print", "second"], ["sleep", 5]], [["print", "third"]]])
    job_id = job_id_of(client.trigger())
    wait_running(harness, job_id)
    time.sleep(0.45)
    assert client.cancel().status_code in (204, 404)
    with client.stream(job_id) as stream:
        events = read_until_done(stream)
    assert status_of(events[-2]) in ("cancelled", "completed")
    time.sleep(0.3)
    assert len(harness.calls_of(client.session_id)) == 1
    assert "third" not in "".join(event.data for event in events), "the sequence went on after the cancel"
    assert_idle_after(harness, client, events)


def test_plugin_ignoring_cancel(harness: AppHarness, clients):
    client = clients()
    client.set_plan([[["wait_cancel", 30, "ignore"]]])
    job_id = job_id_of(client.trigger())
    wait_running(harness, job_id)
    old_pid = harness.env.worker_pid()
    with client.stream(job_id) as stream:
        stream.read_until(lambda event: status_of(event) == "running", timeout=20)
        assert client.cancel(job_id).status_code == 204
        events = read_until_done(stream, timeout=JOB_TIMEOUT_S)
    statuses = [status_of(event) for event in events if status_of(event)]
    assert "cancelling" in statuses, statuses
    assert statuses[-1] == "cancelled", statuses
    assert statuses.index("cancelling") < len(statuses) - 1
    assert callbacks_of(harness, client) == ["on_cancel"]
    assert_idle_after(harness, client, events)
    assert wait_until(lambda: harness.env.worker_pid() not in (None, old_pid), 20, "the respawned worker")


# --- the plugin and the queue -------------------------------------------------------------------


def test_plugin_unloaded_mid_job(harness: AppHarness, clients):
    client = clients()
    client.set_plan([[["progress", 0.2, "working"], ["sleep", 30]]])
    job_id = job_id_of(client.trigger())
    wait_running(harness, job_id)
    manager, name = harness.env.manager, harness.env.name
    try:
        with client.stream(job_id) as stream:
            stream.next_event(timeout=10)
            harness.run(lambda: manager.unload_plugin(name))
            events = read_until_done(stream, timeout=FAILURE_SHOWN_S + 10)
        assert status_of(events[-2]) == "failed"
        assert "was unloaded while the job ran" in events[-2].data
        assert_idle_after(harness, client, events)
        assert callbacks_of(harness, client) == ["on_fail"]

        response = client.trigger()
        assert "is not loaded" in response.text
        assert 'data-jm-trigger="1"' in response.text
        assert harness.tracker(client.session_id) is None
    finally:
        metas = {meta.name: meta for meta in manager.discover_manifests()}
        assert harness.run(lambda: manager.load_plugin(metas[name]))


def test_plugin_disabled_mid_job(harness: AppHarness, clients):
    client = clients()
    client.set_plan([[["sleep", 1.0], ["print", "finished anyway"]]])
    job_id = job_id_of(client.trigger())
    wait_running(harness, job_id)
    manager, name = harness.env.manager, harness.env.name
    harness.run(lambda: manager.disable_plugin(name))
    try:
        with client.stream(job_id) as stream:
            events = read_until_done(stream)
        assert status_of(events[-2]) in ("completed", "failed")
        assert len(harness.calls_of(client.session_id)) == 1
        assert_idle_after(harness, client, events)
        response = client.trigger()
        assert "is disabled" in response.text
        assert 'data-jm-trigger="1"' in response.text
        assert harness.tracker(client.session_id) is None
    finally:
        harness.run(lambda: manager.enable_plugin(name))


def test_queue_stopped(harness: AppHarness, clients):
    running, waiting, late = clients(), clients(), clients()
    running.set_plan([[["sleep", 7]]])  # outlasts the 5 s the queue waits for running jobs when it stops
    waiting.set_plan([[["print", "never runs"]]])
    running_job = job_id_of(running.trigger())
    wait_running(harness, running_job)
    waiting_job = job_id_of(waiting.trigger())
    queue = harness.env.queue
    stopping = asyncio.run_coroutine_threadsafe(queue.stop(), harness.loop)
    try:
        with running.stream(running_job) as stream:
            events = read_until_done(stream, timeout=30)
        assert status_of(events[-2]) == "failed"
        assert "The job queue stopped before the job finished." in events[-2].data
        assert callbacks_of(harness, running) == ["on_fail"]
        assert_idle_after(harness, running, events)
        stopping.result(30)

        # A job that waits in the stopped queue shows why, and a cancel still ends it.
        with waiting.stream(waiting_job) as stream:
            stream.read_until(lambda event: "Waiting: the job queue is stopped" in event.data, timeout=15)
            assert waiting.cancel(waiting_job).status_code == 204
            events = read_until_done(stream)
        assert status_of(events[-2]) == "cancelled"
        assert callbacks_of(harness, waiting) == ["on_cancel"]
        assert_idle_after(harness, waiting, events)

        late.set_plan([[["print", "too late"]]])
        response = late.trigger()
        assert "The job queue is stopped" in response.text
        assert 'data-jm-trigger="1"' in response.text
        assert harness.tracker(late.session_id) is None
    finally:
        stopping.result(30)
        harness.run(queue.start)
    job_id = job_id_of(late.trigger())
    with late.stream(job_id) as stream:
        assert status_of(read_until_done(stream)[-2]) == "completed"


# --- the state store ------------------------------------------------------------------------------


@contextmanager
def read_only_file(path: Path) -> Iterator[None]:
    "Make `path` read-only for this process: mode 0444, and immutable (chattr +i) where this process is root."
    mode = path.stat().st_mode
    path.chmod(0o444)
    immutable = False
    try:
        if os.access(path, os.W_OK):  # root ignores file modes
            done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make {path} read-only for root: chattr failed: {done.stderr.strip()}")
            immutable = True
        yield
    finally:
        if immutable: subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def jobs_tagged(harness: AppHarness, tag: str, active_only: bool = False) -> List[str]:
    "Return the ids of the queue's jobs whose steps print `tag`, optionally only the pending and running ones."
    def find() -> List[str]:
        queue = harness.env.queue
        jobs = [*queue.get_running_jobs(), *queue.get_pending()]
        if not active_only: jobs += queue.get_history()
        return [job.id for job in jobs if ["print", tag] in list(job.kwargs.get("steps", []))]
    return harness.run(find)


def test_read_only_store(harness: AppHarness, clients):
    client, watcher = clients(), clients()
    watcher.set_plan([[["sleep", 1.5]]])
    watched_job = job_id_of(watcher.trigger())  # its tracker is written before the store turns read-only
    tag = f"read-only-{time.monotonic_ns()}"
    client.set_plan([[["print", tag], ["wait_cancel", 10, "return"]]])
    with read_only_file(harness.store.db_path):
        page = client.client.get("/")
        assert page.status_code == 200
        assert 'data-running="false"' in page.text

        response = client.trigger()
        assert response.status_code == 200
        assert "could not be saved" in response.text
        assert 'data-jm-trigger="1"' in response.text
        with client.stream() as stream:
            assert [event.event for event in read_until_done(stream, timeout=10)] == ["message", "done"]

        # A job already running still ends for its viewers, although its tracker cannot be removed.
        with watcher.stream(watched_job) as stream:
            events = read_until_done(stream)
        assert status_of(events[-2]) == "completed"
        assert 'data-jm-trigger="1"' in events[-2].data
    assert len(jobs_tagged(harness, tag)) == 1, "the refused trigger did not submit exactly one job"
    wait_until(lambda: not jobs_tagged(harness, tag, active_only=True), 15, "the refused job to be cancelled")
    # With the store writable again, the stale tracker goes at the next page load.
    assert 'data-running="false"' in watcher.page()
    assert harness.tracker(watcher.session_id) is None
    job_id = job_id_of(client.trigger())
    assert client.cancel(job_id).status_code == 204


def test_locked_store(harness: AppHarness, clients):
    client = clients()
    tag = f"locked-{time.monotonic_ns()}"
    client.set_plan([[["print", tag], ["wait_cancel", 10, "return"]]])
    blocker = sqlite3.connect(harness.store.db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        page = client.client.get("/", timeout=60)
        assert page.status_code == 200
        assert 'data-running="false"' in page.text
        response = client.trigger()
        assert "was not started because its state could not be read" in response.text
        assert "database is locked" in response.text
        assert 'data-jm-trigger="1"' in response.text
        assert time.monotonic() - started < 60
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert jobs_tagged(harness, tag) == [], "a job was submitted although the store could not be read"
    assert harness.tracker(client.session_id) is None
    job_id = job_id_of(client.trigger())
    assert client.cancel(job_id).status_code == 204


# --- the app restarts -----------------------------------------------------------------------------


def test_app_killed_and_restarted(start_server_process, tmp_path: Path, page: Page, page_log: PageLog):
    data_dir = tmp_path / "restart-data"
    server = start_server_process("tests.support.app_harness:create_app", {"data_dir": str(data_dir)},
                                  ready_path="/whoami")
    job_seconds = 8.0  # outlasts the restart

    page.goto(server.url("/"))
    page.evaluate("plan => fetch('/_test/plan', {method: 'POST', body: JSON.stringify(plan)})",
                  {"jobs": [[["progress", 0.2, "working"], ["sleep", job_seconds]]]})
    page.locator("[data-jm-trigger]").click()
    page.wait_for_function("() => document.querySelector('[data-jm-progress]')?.dataset.percent === '20'",
                           timeout=UI_TIMEOUT_MS)
    expect(page.locator("[data-jm-overlay]")).to_be_visible()
    workers = worker_processes(data_dir)
    assert len(workers) == 1

    server.restart(kill=True)  # SIGKILL, as a crash: no shutdown handler runs, the tracker stays
    try:
        # The open page reconnects to the new server, which no longer has the job: the page goes idle.
        expect(page.locator("[data-jm-trigger]")).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.locator("[data-jm-overlay]")).to_have_count(0)
        expect(page.locator(f"#{CONTENT_ID} [inert]")).to_have_count(0)
        expect(page.locator(f"#{CONTENT_ID}")).not_to_have_attribute("aria-busy", "true")
        # The modal, still open, no longer shows the lost job as running.
        expect(page.locator("[data-jm-progress]")).to_have_attribute("data-status", "unknown")
        expect(page.locator("[data-jm-progress]")).to_contain_text("The server no longer has this job")
        expect(page.locator("[data-jm-cancel]")).to_have_count(0)
        page.reload()
        expect(page.locator("[data-jm-trigger]")).to_be_visible()
        expect(page.locator("[data-jm-overlay]")).to_have_count(0)
        assert page.locator("[sse-connect]").count() == 0
        # The kill cuts the open event stream: the browser and htmx's SSE extension log that, and nothing else.
        assert page_log.page_errors == []
        assert page_log.blocked == []
        unexpected = [text for text in page_log.console_errors
                      if "/jobs/progress" not in text and not text.startswith("Event (")]
        assert unexpected == [], unexpected
    finally:
        # NOTE: the killed app's worker outlives it (cjm-plugin-system 0.0.46, see the demo's startup); end it here.
        for worker in workers:
            if worker.is_running(): worker.kill()


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    "A folder of incompressible files that takes the demo's archive plugin several seconds."
    folder = tmp_path_factory.mktemp("slow-source")
    generator = random.Random(11)
    for index in range(8):
        (folder / f"part-{index:02d}.bin").write_bytes(generator.randbytes(1024 * 1024))
    return folder


def test_demo_restart_stops_orphaned_worker(start_server_process, tmp_path: Path, slow_source: Path):
    data_dir = tmp_path / "demo-data"
    server = start_server_process("cjm_fasthtml_job_monitor.demo.app:create_demo_app",
                                  {"data_dir": str(data_dir), "sources": [str(slow_source)]})
    with SessionClient(server.base_url) as client:
        client.client.get("/")
        job_id_of(client.post("/jobs/trigger"))
        orphans = worker_processes(data_dir)
        assert len(orphans) == 1
        server.restart(kill=True)
        try:
            _, alive = psutil.wait_procs(orphans, timeout=5)
            assert alive == [], "the restarted demo left the killed demo's worker running"
            assert "left by an earlier run" in server.log_text()
            assert [proc.pid for proc in worker_processes(data_dir)] != [orphans[0].pid]
            assert "data-jm-trigger" in client.client.get("/").text
        finally:
            for worker in orphans:
                if worker.is_running(): worker.kill()
