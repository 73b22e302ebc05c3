"""End-to-end tests of the demo app in Chromium: run a job to completion, cancel one, reload during one.

The demo archives a folder with a real plugin worker. The source folder here contains
24 files of 1 MiB of pseudo-random bytes, which xz cannot shrink, so one job takes
about 15 s on a 2-core machine: long enough to watch progress, cancel and reload.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Page, expect

from cjm_fasthtml_job_monitor.demo.app import CONTENT_ID, RESULTS_ID, create_demo_app
from cjm_fasthtml_job_monitor.html_ids import JobMonitorHtmlIds
from tests.support.browser import PageLog, save_screenshot

SOURCE_FILES = 24
SOURCE_FILE_BYTES = 1024 * 1024
JOB_TIMEOUT_MS = 120_000  # about 15 s per job when idle, so 120 s leaves room for a loaded machine
UI_TIMEOUT_MS = 15_000

# The page's data attributes, as the components render them.
TRIGGER = "[data-jm-trigger]"
PROGRESS = "[data-jm-progress]"
CANCEL = "[data-jm-cancel]"


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    "A folder of incompressible files for the demo to archive."
    folder = tmp_path_factory.mktemp("archive-source")
    generator = random.Random(20261204)
    for index in range(SOURCE_FILES):
        (folder / f"file-{index:02d}.bin").write_bytes(generator.randbytes(SOURCE_FILE_BYTES))
    return folder


@pytest.fixture
def demo(serve_app, tmp_path: Path, source_folder: Path):
    "The demo app served on 127.0.0.1 with a fresh data folder; returns (server, ids, data_dir)."
    data_dir = tmp_path / "demo-data"
    app = create_demo_app(data_dir, [source_folder], progress_poll_interval=0.5)
    server = serve_app(app)
    ids: JobMonitorHtmlIds = app.state.job_monitor["ids"]
    return server, ids, data_dir


def read_progress(page: Page, ids: JobMonitorHtmlIds) -> dict:
    "Return the progress tab's status, percent, terminal flag, stage message and elapsed text."
    return page.locator(f"#{ids.tab_progress} {PROGRESS}").evaluate(
        """element => ({
            status: element.dataset.status,
            percent: Number(element.dataset.percent),
            terminal: element.dataset.terminal === "1",
            message: (element.querySelector("p") || {}).textContent || "",
            elapsed: (document.getElementById("%s") || {}).textContent || "",
        })""" % ids.elapsed)


def wait_for_progress(page: Page, ids: JobMonitorHtmlIds, condition: str, timeout: float = JOB_TIMEOUT_MS) -> None:
    "Wait until `condition`, a JS expression over `element` (the progress block), is true."
    page.wait_for_function(
        """([selector, condition]) => {
            const element = document.querySelector(selector);
            return element !== null && Function("element", "return " + condition)(element);
        }""",
        arg=[f"#{ids.tab_progress} {PROGRESS}", condition], timeout=timeout)


def elapsed_seconds(text: str) -> int:
    "Convert an elapsed time shown as M:SS or H:MM:SS to seconds."
    seconds = 0
    for part in text.strip().split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def modal_is_open(page: Page, ids: JobMonitorHtmlIds) -> bool:
    return page.evaluate("id => document.getElementById(id)?.open === true", ids.modal)


def wait_for_modal(page: Page, ids: JobMonitorHtmlIds) -> None:
    "Wait until the modal dialog is open and its box finished daisyUI's fade-in, so screenshots show it."
    page.wait_for_function(
        """id => {
            const dialog = document.getElementById(id);
            const box = dialog?.querySelector(".modal-box");
            return dialog?.open === true && box !== null && getComputedStyle(box).opacity === "1";
        }""",
        arg=ids.modal, timeout=UI_TIMEOUT_MS)


def expect_idle_page(page: Page, ids: JobMonitorHtmlIds) -> None:
    "Check the page shows no job: the trigger button is back and no overlay covers the content."
    expect(page.locator(f"#{ids.trigger_slot} {TRIGGER}")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.locator(f"#{ids.trigger_slot} {TRIGGER}")).to_contain_text("Run")
    # While no job runs, the overlay's slot contains a hidden placeholder.
    expect(page.locator(f"#{ids.overlay}")).to_be_hidden(timeout=UI_TIMEOUT_MS)
    expect(page.locator(f"#{CONTENT_ID}")).not_to_have_attribute("aria-busy", "true")
    expect(page.locator(f"#{CONTENT_ID} [inert]")).to_have_count(0)


def expect_running_page(page: Page, ids: JobMonitorHtmlIds) -> None:
    "Check the page shows a running job: the progress button and an overlay over the content panel."
    progress_button = page.locator(f"#{ids.trigger_slot} button")
    expect(progress_button).to_contain_text("View progress", timeout=UI_TIMEOUT_MS)
    expect(page.locator(f"#{ids.trigger_slot} {TRIGGER}")).to_have_count(0)

    overlay = page.locator(f"#{CONTENT_ID} #{ids.overlay}")
    expect(overlay).to_be_visible(timeout=UI_TIMEOUT_MS)
    overlay_box = overlay.bounding_box()
    content_box = page.locator(f"#{CONTENT_ID}").bounding_box()
    for key in ("x", "y", "width", "height"):
        assert abs(overlay_box[key] - content_box[key]) <= 2, (
            f"the overlay does not cover the content panel: {key} {overlay_box[key]} vs {content_box[key]}")


def start_job(page: Page, ids: JobMonitorHtmlIds) -> None:
    "Click Run and wait for the running state and the open modal."
    page.locator(f"#{ids.trigger_slot} {TRIGGER}").click()
    expect_running_page(page, ids)
    wait_for_modal(page, ids)


def open_tab(page: Page, ids: JobMonitorHtmlIds, name: str) -> None:
    page.locator(f"#{ids.tab_button(name)}").click()
    expect(page.locator(f"#{ids.tab_panel(name)}")).to_be_visible()


def worker_pids() -> set[int]:
    "Return the pids of the plugin worker processes that this test process started."
    workers = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "cjm_plugin_system.core.worker" in " ".join(child.cmdline()):
                workers.add(child.pid)
        except psutil.Error:
            continue
    return workers


def test_demo_page_with_local_assets(page: Page, page_log: PageLog, serve_app, tmp_path: Path,
                                     source_folder: Path, asset_cache: Path):
    # The demo's --assets mode reads the same node_modules layout that tools/assets.py fills.
    app = create_demo_app(tmp_path / "demo-data", [source_folder], assets_dir=asset_cache)
    ids: JobMonitorHtmlIds = app.state.job_monitor["ids"]
    server = serve_app(app)
    page.goto(server.url("/"))
    expect_idle_page(page, ids)
    assert page.evaluate("htmx.version") == "2.0.7"
    background = page.locator(f"#{ids.trigger_slot} {TRIGGER}").evaluate(
        "element => getComputedStyle(element).backgroundColor")
    assert background not in ("", "rgba(0, 0, 0, 0)", "transparent"), "daisyUI's button style did not apply"
    page_log.assert_clean()
    assert page_log.from_cache == [], "with assets_dir the page should load nothing from a CDN"
    assert page_log.stand_ins == []


def test_run_to_completion(page: Page, page_log: PageLog, demo, source_folder: Path):
    server, ids, data_dir = demo
    page.goto(server.url("/"))
    expect_idle_page(page, ids)
    assert not modal_is_open(page, ids)

    start_job(page, ids)

    # Progress: the percentage and the stage message advance, and the elapsed time ticks.
    wait_for_progress(page, ids, "Number(element.dataset.percent) > 0", UI_TIMEOUT_MS * 2)
    first = read_progress(page, ids)
    assert first["status"] == "running"
    assert re.search(r"Compressing \d+ of 24 files", first["message"]), first
    wait_for_progress(page, ids, f"Number(element.dataset.percent) > {first['percent']}")
    # The stage message names the file being packed, so it changes when the next file starts.
    wait_for_progress(page, ids, f"element.querySelector('p')?.textContent !== {json.dumps(first['message'])}",
                      UI_TIMEOUT_MS)
    page.wait_for_function(
        "([id, before]) => document.getElementById(id)?.textContent !== before",
        arg=[ids.elapsed, first["elapsed"]], timeout=UI_TIMEOUT_MS)
    second = read_progress(page, ids)
    assert second["percent"] > first["percent"]
    assert second["message"] != first["message"], "the stage message did not change"
    assert second["elapsed"] != first["elapsed"], "the elapsed time did not tick"
    assert re.fullmatch(r"\d+:\d\d", second["elapsed"]), second["elapsed"]
    save_screenshot(page, "browser-flow-progress-tab")

    # Logs: this job's lines, from the plugin's logger and its flushed prints.
    open_tab(page, ids, "logs")
    log_lines = page.locator(f"#{ids.log_lines}")
    expect(log_lines).to_contain_text(f"Found {SOURCE_FILES} files and folders", timeout=UI_TIMEOUT_MS)
    expect(log_lines).to_contain_text(f"Packing {source_folder}")
    expect(log_lines).to_contain_text(re.compile(r"Added file-\d\d\.bin"), timeout=UI_TIMEOUT_MS)
    save_screenshot(page, "browser-flow-logs-tab")

    # Resources: the worker's pid, CPU and RAM.
    open_tab(page, ids, "resources")
    panel = page.locator(f"#{ids.tab_resources}")
    pid_value = panel.locator("[data-stat=pid] [data-stat-value]")
    expect(pid_value).to_have_text(re.compile(r"^\s*\d+\s*$"), timeout=UI_TIMEOUT_MS)
    assert int(pid_value.inner_text()) in worker_pids(), "the pid shown is not a worker of this server"
    expect(panel.locator("[data-stat=cpu] [data-stat-value]")).to_have_text(re.compile(r"\d+(\.\d+)?\s*%"))
    expect(panel.locator("[data-stat=ram] [data-stat-value]")).to_have_text(re.compile(r"\d+(\.\d+)?\s*[KMG]B"))
    save_screenshot(page, "browser-flow-resources-tab")

    # Completion: COMPLETED in the modal, the overlay gone, the trigger back, the results shown.
    open_tab(page, ids, "progress")
    wait_for_progress(page, ids, "element.dataset.terminal === '1'")
    final = read_progress(page, ids)
    assert final["status"] == "completed", final
    assert final["percent"] == 100
    expect(page.locator(f"#{ids.tab_progress}")).to_contain_text(re.compile("completed", re.IGNORECASE))
    assert modal_is_open(page, ids), "the modal should stay open to show the outcome"
    expect(page.locator(f"#{ids.modal_footer} {CANCEL}")).to_have_count(0)
    save_screenshot(page, "browser-flow-completed")
    expect_idle_page(page, ids)
    expect(page.locator(f"#{RESULTS_ID}")).to_contain_text(f"{SOURCE_FILES} files")
    assert (data_dir / "archives" / f"{source_folder.name}.tar.xz").is_file()

    page_log.assert_clean()


def test_cancel_mid_job(page: Page, page_log: PageLog, demo, source_folder: Path):
    server, ids, data_dir = demo
    page.goto(server.url("/"))
    start_job(page, ids)
    wait_for_progress(page, ids, "Number(element.dataset.percent) >= 5", UI_TIMEOUT_MS * 2)

    page.locator(f"#{ids.modal_footer} {CANCEL}").click()
    wait_for_progress(page, ids, "element.dataset.terminal === '1'", UI_TIMEOUT_MS * 2)
    final = read_progress(page, ids)
    assert final["status"] == "cancelled", final
    assert final["percent"] < 100
    expect(page.locator(f"#{ids.tab_progress}")).to_contain_text(re.compile("cancelled", re.IGNORECASE))
    save_screenshot(page, "browser-flow-cancelled")
    expect_idle_page(page, ids)

    open_tab(page, ids, "logs")
    expect(page.locator(f"#{ids.log_lines}")).to_contain_text("Cancelled after", timeout=UI_TIMEOUT_MS)
    archives = data_dir / "archives"
    assert not list(archives.glob("*.partial")), "the cancelled job left a partial archive"
    assert not (archives / f"{source_folder.name}.tar.xz").exists()

    page_log.assert_clean()


def test_reload_mid_job(page: Page, page_log: PageLog, demo):
    server, ids, _ = demo
    page.goto(server.url("/"))
    start_job(page, ids)
    wait_for_progress(page, ids, "Number(element.dataset.percent) >= 5", UI_TIMEOUT_MS * 2)
    before = read_progress(page, ids)

    page.reload()
    expect_running_page(page, ids)
    save_screenshot(page, "browser-flow-reloaded-page")
    # The reloaded page renders the modal closed; the progress button opens it.
    assert not modal_is_open(page, ids)
    page.locator(f"#{ids.trigger_slot} button").click()
    wait_for_modal(page, ids)
    save_screenshot(page, "browser-flow-reloaded-modal")

    # The reloaded modal opens a new event stream and keeps updating.
    wait_for_progress(page, ids, f"Number(element.dataset.percent) > {before['percent']}", UI_TIMEOUT_MS * 2)
    after = read_progress(page, ids)
    assert after["status"] == "running", after
    assert elapsed_seconds(after["elapsed"]) >= elapsed_seconds(before["elapsed"]), (
        f"the elapsed time went back after the reload: {before['elapsed']} before, {after['elapsed']} after")
    elapsed_before = after["elapsed"]
    page.wait_for_function("([id, before]) => document.getElementById(id)?.textContent !== before",
                           arg=[ids.elapsed, elapsed_before], timeout=UI_TIMEOUT_MS)

    wait_for_progress(page, ids, "element.dataset.terminal === '1'")
    assert read_progress(page, ids)["status"] == "completed"
    expect_idle_page(page, ids)

    # A reload ends the first page's event stream, which Chromium records as an aborted request, not an error.
    page_log.assert_clean()
