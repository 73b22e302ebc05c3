"""End-to-end browser tests of the modal with the routes and real plugin workers.

`test_demo_modal_round_trip` drives the demo app, which archives a folder with a
real worker. `test_worker_output_and_failure` serves the routes over the
scripted `StepsPlugin` worker, to check what a failing job with coloured output,
progress bars and warnings looks like. The push-app tests in
`test_browser_modal.py` cover each behaviour deterministically; these check that
the routes and real workers produce the same.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from fasthtml.common import Div, H1, Main, P, Title, fast_app
from playwright.sync_api import Page, expect

from cjm_plugin_system.core.config import CJMConfig, reset_config, set_config
from cjm_plugin_system.core.manager import PluginManager
from cjm_plugin_system.core.queue import JobQueue
from cjm_workflow_state.state_store import SQLiteWorkflowStateStore

from cjm_fasthtml_job_monitor.demo.app import create_demo_app
from cjm_fasthtml_job_monitor.demo.plugin import write_plugin_manifest
from cjm_fasthtml_job_monitor.html_ids import JobMonitorHtmlIds
from cjm_fasthtml_job_monitor.models import JobMonitorConfig
from cjm_fasthtml_job_monitor.routes.init import (check_inflight_job, get_workflow_session_id,
                                                  init_job_monitor_routes)
from cjm_fasthtml_job_monitor.services.monitor import JobMonitorService
from tests.support.browser import PageLog
from tests.support.plugins import StepsPlugin
from tests.support.workers import kill_worker_processes
from tests.test_browser_modal import AXE_PATH, audit, page_headers, to_seconds

SOURCE_FILES = 10  # Files of 1 MiB that xz cannot shrink: a demo job of a few seconds here
JOB_TIMEOUT_MS = 90_000
UI_TIMEOUT_MS = 15_000


def wait_for_modal_open(page: Page, ids: JobMonitorHtmlIds) -> None:
    page.wait_for_function(
        """id => { const d = document.getElementById(id); const box = d?.querySelector(".modal-box");
                   return d?.open === true && box !== null && getComputedStyle(box).opacity === "1"; }""",
        arg=ids.modal, timeout=UI_TIMEOUT_MS)


def wait_for_status(page: Page, ids: JobMonitorHtmlIds, status: str, timeout: float = JOB_TIMEOUT_MS) -> None:
    page.wait_for_function(
        "([id, status]) => document.querySelector(`#${id} [data-jm-progress]`)?.dataset.status === status",
        arg=[ids.tab_progress, status], timeout=timeout)


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("modal-source")
    generator = random.Random(20261205)
    for index in range(SOURCE_FILES):
        (folder / f"file-{index:02d}.bin").write_bytes(generator.randbytes(1024 * 1024))
    return folder


def test_demo_modal_round_trip(page: Page, page_log: PageLog, serve_app, tmp_path: Path, source_folder: Path):
    app = create_demo_app(tmp_path / "demo-data", [source_folder], progress_poll_interval=0.3)
    server = serve_app(app)
    ids: JobMonitorHtmlIds = app.state.job_monitor["ids"]
    page.goto(server.url("/"))
    base_title = page.title()

    page.locator("[data-jm-trigger]").click()
    wait_for_modal_open(page, ids)
    page.wait_for_function("() => /^\\d+% · /.test(document.title)", timeout=UI_TIMEOUT_MS)

    # The chosen tab survives the real updates and a close and reopen.
    page.locator(f"#{ids.tab_button('logs')}").click()
    expect(page.locator(f"#{ids.log_lines}")).to_contain_text(f"Found {SOURCE_FILES} files and folders",
                                                              timeout=UI_TIMEOUT_MS)
    percent = page.locator(f"#{ids.tab_progress} [data-jm-progress]").get_attribute("data-percent")
    page.wait_for_function("([id, before]) => document.querySelector(`#${id} [data-jm-progress]`).dataset.percent !== before",
                           arg=[ids.tab_progress, percent], timeout=UI_TIMEOUT_MS)
    expect(page.locator(f"#{ids.tab_button('logs')}")).to_be_checked()
    page.keyboard.press("Escape")
    page.wait_for_function("id => document.getElementById(id).open === false", arg=ids.modal)
    page.locator(f"#{ids.trigger_slot} [data-jm-open-modal]").click()
    wait_for_modal_open(page, ids)
    expect(page.locator(f"#{ids.tab_panel('logs')}")).to_be_visible()

    # The whole log downloads for this session.
    href = page.get_by_role("link", name="Download full log").get_attribute("href")
    response = page.request.get(server.url(href))
    assert response.status == 200, response.status
    assert f"Found {SOURCE_FILES} files and folders" in response.text()

    page.add_script_tag(path=str(AXE_PATH))
    audit(page, "demo, logs tab while running")

    # The end: the outcome in the tab and the live region, the title back, the timer stopped.
    wait_for_status(page, ids, "completed")
    expect(page.locator(f"#{ids.live_region}")).to_have_text("Job completed")
    expect(page).to_have_title(base_title)
    expect(page.locator("[data-jm-trigger]")).to_be_visible()
    frozen = page.locator(f"#{ids.elapsed}").inner_text()
    page.wait_for_timeout(1200)
    assert page.locator(f"#{ids.elapsed}").inner_text() == frozen
    assert to_seconds(frozen) >= 1
    assert page.evaluate("() => jobMonitor.activeTimers()") == 0
    page_log.assert_clean()


# --- the routes over a scripted worker ------------------------------------------------------------


STEPS_CONTENT_ID = "steps-content"
FAILING_STEPS = [
    ["log", "INFO", "Starting the steps job"],
    ["print", "\x1b[1;32mgreen\x1b[0m and \x1b[31mred\x1b[0m"],
    ["print", "  0%|          | 0/10\r 50%|#####     | 5/10\r100%|##########| 10/10"],
    ["progress", 0.3, "Step 1 of 3"],
    ["log", "WARNING", "Disk almost full"],
    ["sleep", 1.2],
    ["log", "ERROR", "Cannot write the archive"],
    ["progress", 0.6, "Step 2 of 3"],
    ["sleep", 1.0],
    ["fail", "Disk full"],
]


def create_steps_app(data_dir: Path, steps: list):
    "Serve the routes over a StepsPlugin worker that runs `steps` for every job."
    data_dir.mkdir(parents=True, exist_ok=True)
    set_config(CJMConfig(data_dir=data_dir))
    write_plugin_manifest(data_dir, StepsPlugin)
    manager = PluginManager(search_paths=[data_dir / "manifests"])
    queue = JobQueue(manager, progress_poll_interval=0.1, cancel_timeout=1.0)
    service = JobMonitorService(queue, manager)
    store = SQLiteWorkflowStateStore(data_dir / "workflow_state.db")
    config = JobMonitorConfig(modal_title="Steps job", trigger_icon="play", progress_label="View progress")
    router, urls, ids = init_job_monitor_routes(
        service, StepsPlugin.plugin_name, store, "steps", "run", "tracker", prefix="/jobs",
        overlay_target_id=STEPS_CONTENT_ID, config=config,
        job_args_builder=lambda *_: [((), {"steps": steps})])

    async def startup():
        metas = [m for m in manager.discover_manifests() if m.name == StepsPlugin.plugin_name]
        if not metas or not manager.load_plugin(metas[0]):
            raise RuntimeError(f"Loading {StepsPlugin.plugin_name} from {data_dir} failed.")
        await queue.start()

    async def shutdown():
        await service.aclose()
        await queue.stop()
        manager.unload_all()
        kill_worker_processes(data_dir)
        reset_config()

    app, rt = fast_app(pico=False, surreal=False, default_hdrs=False, hdrs=page_headers(), htmlkw={"lang": "en"},
                       secret_key="steps-test-secret", on_startup=[startup], on_shutdown=[shutdown])
    router.to_app(app)

    @rt("/")
    def index(sess):
        session_id = get_workflow_session_id(sess)
        button, overlay, modal, _ = check_inflight_job(service, StepsPlugin.plugin_name, store, "steps", session_id,
                                                       "run", "tracker", config, ids, urls)
        content = Div(P("Covered while a job runs."), overlay, id=STEPS_CONTENT_ID, cls="relative card p-6 min-h-48")
        return Title("Steps"), Main(Div(H1("Steps", cls="text-2xl font-bold"), button, cls="flex justify-between"),
                                    content, modal, Div(id=ids.callback_slot), cls="max-w-3xl mx-auto p-6")

    app.state.ids = ids
    return app


def test_worker_output_and_failure(page: Page, page_log: PageLog, serve_app, tmp_path: Path):
    app = create_steps_app(tmp_path / "steps-data", FAILING_STEPS)
    server = serve_app(app)
    ids: JobMonitorHtmlIds = app.state.ids
    page.goto(server.url("/"))
    page.locator("[data-jm-trigger]").click()
    wait_for_modal_open(page, ids)
    page.locator(f"#{ids.tab_button('logs')}").click()

    lines = page.locator(f"#{ids.log_lines}")
    expect(lines).to_contain_text("Cannot write the archive", timeout=UI_TIMEOUT_MS)
    messages = page.evaluate("""id => [...document.querySelectorAll(`#${id} [data-seq]`)].map(
        row => [row.dataset.level, row.querySelector(':scope > span:last-child').textContent])""", ids.log_lines)
    texts = [text for _, text in messages]
    assert "green and red" in texts, messages
    assert "100%|##########| 10/10" in texts, messages
    assert ["warning", "Disk almost full"] in messages
    assert ["error", "Cannot write the archive"] in messages
    assert not any("\x1b" in text or "\r" in text for text in texts), messages

    # The failure: its badge, its message, the announcement, and the covered content free again.
    wait_for_status(page, ids, "failed")
    page.locator(f"#{ids.tab_button('progress')}").click()
    expect(page.locator(f"#{ids.tab_progress} .alert")).to_contain_text(re.compile("Disk full"))
    expect(page.locator(f"#{ids.tab_progress} .badge[data-status]")).to_have_text("Failed")
    expect(page.locator(f"#{ids.live_region}")).to_contain_text("Job failed")
    expect(page.locator(f"#{STEPS_CONTENT_ID} [inert]")).to_have_count(0)
    expect(page.locator(f"#{ids.modal_footer} [data-jm-cancel]")).to_have_count(0)
    page_log.assert_clean()
