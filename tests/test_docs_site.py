"""Tests of the documentation: the static site builds, its pages and links work in Chromium, and the guides' code runs.

The guides show code that a reader copies into files: a code cell whose first
line (after any `#|` directives) is `# file: NAME.py` is a piece of that file.
`notebook_files` assembles those files as the tutorial instructs the reader,
and the tests run them: the tutorial's app and the landing page's example are
served on 127.0.0.1 and driven in Chromium, and the plugin guide's plugins run
on real cjm-plugin-system workers in a temporary data dir.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from cjm_plugin_system.core.config import CJMConfig, reset_config, set_config
from cjm_plugin_system.core.manager import PluginManager
from cjm_plugin_system.core.queue import JobQueue

from cjm_fasthtml_job_monitor.demo.plugin import write_plugin_manifest
from cjm_fasthtml_job_monitor.models import normalize_status
from cjm_fasthtml_job_monitor.services.monitor import JobMonitorService
from tests.support.browser import PageLog, save_screenshot

REPO_ROOT = Path(__file__).resolve().parent.parent
NBS_DIR = REPO_ROOT / "nbs"
GUIDES_DIR = NBS_DIR / "guides"
SITE_SCRIPT = REPO_ROOT / "tools" / "site.py"
FILE_MARKER = re.compile(r"^# file: (\S+\.py)\s*$")
JOB_TIMEOUT_MS = 60_000
UI_TIMEOUT_MS = 15_000


def _load_site_module() -> ModuleType:
    "Import tools/site.py, which is a script and not part of any package."
    spec = importlib.util.spec_from_file_location("_cjm_docs_site", SITE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look up their module while the class is created
    spec.loader.exec_module(module)
    return module


site = _load_site_module()


def code_cells(notebook: Path) -> list[tuple[dict, str]]:
    "Return each code cell of `notebook` as (directives, source without the directive lines)."
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [site.split_directives("".join(cell["source"])) for cell in cells if cell["cell_type"] == "code"]


def notebook_files(notebook: Path) -> dict[str, str]:
    "Assemble the files a guide tells the reader to write, from its `# file: NAME.py` cells, in order."
    parts: dict[str, list[str]] = {}
    for _, source in code_cells(notebook):
        first, _, rest = source.partition("\n")
        match = FILE_MARKER.match(first)
        if match:
            parts.setdefault(match.group(1), []).append(rest.strip("\n"))
    return {name: "\n\n\n".join(pieces) + "\n" for name, pieces in parts.items()}


def write_project(notebook: Path, folder: Path) -> list[str]:
    "Write the files of `notebook` into `folder`; return their names."
    files = notebook_files(notebook)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return sorted(files)


def forget_modules(*names: str) -> None:
    "Remove modules imported from a test's temporary folder, so the next test imports its own copy."
    for name in names:
        sys.modules.pop(name, None)


# --- The site -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    "The site built by `python tools/site.py` into a temporary folder."
    out = tmp_path_factory.mktemp("site") / "_docs"
    result = subprocess.run([sys.executable, str(SITE_SCRIPT), "--out", str(out)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"tools/site.py failed:\n{result.stdout}\n{result.stderr}"
    assert "warning" not in result.stderr, f"tools/site.py warned:\n{result.stderr}"
    return out


def static_site_app(folder: Path):
    "An ASGI app that serves `folder` as static files, index.html for folders."
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    return Starlette(routes=[Mount("/", app=StaticFiles(directory=folder, html=True))])


# Every notebook passes nbdev's docs processing, which runs only the cells that export, import or call
# show_doc: a hidden test cell that imports something must not use names from cells nbdev skips.
# A notebook that cannot be fixed at once goes here, with the reason, until it is.
NBDEV_PROCESSING_KNOWN_FAILURES: set = set()


def test_notebooks_pass_nbdev_docs_processing():
    result = subprocess.run([sys.executable, str(SITE_SCRIPT), "--check-nbdev"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    failures = {}
    passed = set()
    for line in result.stdout.splitlines():
        match = re.match(r"^nbdev-check: (ok|FAILED) nbs/(\S+?)(?:: (.*))?$", line)
        if match and match.group(1) == "ok":
            passed.add(match.group(2))
        elif match:
            failures[match.group(2)] = match.group(3)
    assert set(site.find_notebooks(NBS_DIR)) == passed | set(failures), result.stdout + result.stderr
    new_failures = {notebook: error for notebook, error in failures.items()
                    if notebook not in NBDEV_PROCESSING_KNOWN_FAILURES}
    assert new_failures == {}, "nbdev-docs would fail on these notebooks:\n" + "\n".join(
        f"nbs/{notebook}: {error}" for notebook, error in new_failures.items())


def test_site_has_a_page_per_notebook(built_site: Path):
    notebooks = site.find_notebooks(NBS_DIR)
    assert "index.ipynb" in notebooks
    assert "guides/tutorial.ipynb" in notebooks
    for notebook in notebooks:
        page = built_site / (notebook[: -len(".ipynb")] + ".html")
        assert page.is_file(), f"no page for nbs/{notebook}"
    assert (built_site / "site.css").is_file()


def test_sidebar_lists_every_notebook():
    pages = [site.read_page(NBS_DIR, notebook) for notebook in site.find_notebooks(NBS_DIR)]
    _, missing = site.read_navigation(pages)
    assert missing == [], f"add these notebooks to nbs/sidebar.yml: {missing}"


def test_guides_are_not_exported():
    for notebook in sorted(GUIDES_DIR.glob("*.ipynb")):
        for directives, _ in code_cells(notebook):
            assert "default_exp" not in directives, f"{notebook.name} exports a module"
            assert not {"export", "exporti", "exports"} & directives.keys(), f"{notebook.name} exports code"


def test_site_applies_nbdev_cell_rules(built_site: Path):
    models = (built_site / "models.html").read_text(encoding="utf-8")
    assert 'id="jobmonitorconfig"' in models, "the API documentation of JobMonitorConfig is missing"
    assert "nbdev_export" not in models, "a hidden cell was rendered"
    assert "#|" not in models, "a directive line was rendered"
    tutorial = (built_site / "guides" / "tutorial.html").read_text(encoding="utf-8")
    assert 'href="writing_plugins.html"' in tutorial, "links to other notebooks must point at their pages"
    data_flow = (built_site / "guides" / "data_flow.html").read_text(encoding="utf-8")
    assert '<details class="diagram-text" open>' in data_flow, "the plain-text diagram must be shown"
    assert 'class="mermaid-source"' in data_flow


def test_site_renders_markdown_features():
    page = site.Page(source="guides/example.ipynb", title="Example", summary="")
    renderer = site.Renderer(page, {"render_job_modal": "components/modal.html#render_job_modal"})
    output = renderer.render("## A heading\n\n| a | b |\n|---|---|\n| 1 | `render_job_modal` |\n\n"
                             "[next](other.ipynb#part) ![chart](images/chart.png)\n")
    assert '<h2 id="a-heading">' in output
    assert "<table>" in output
    assert '<a class="symbol" href="../components/modal.html#render_job_modal">' in output
    assert 'href="other.html#part"' in output
    assert renderer.images == ["guides/images/chart.png"]


def test_site_links_in_browser(page: Page, page_log: PageLog, serve_app, built_site: Path):
    server = serve_app(static_site_app(built_site))
    failed_responses: list[str] = []
    page.on("response", lambda response: failed_responses.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)

    expected_pages = {path.relative_to(built_site).as_posix() for path in built_site.rglob("*.html")}
    page_ids: dict[str, set[str]] = {}
    anchors: list[tuple[str, str, str]] = []  # (linking page, target page, fragment)
    to_visit = ["index.html"]
    while to_visit:
        path = to_visit.pop()
        if path in page_ids:
            continue
        response = page.goto(server.url("/" + path))
        assert response is not None and response.status == 200, f"{path}: status {response and response.status}"
        page.wait_for_load_state("load")

        broken_images = page.evaluate(
            "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
        assert broken_images == [], f"{path}: images that did not load: {broken_images}"
        stylesheet_rules = page.evaluate("() => [...document.styleSheets].reduce((n, s) => n + s.cssRules.length, 0)")
        assert stylesheet_rules > 0, f"{path}: the stylesheet did not load"

        page_ids[path] = set(page.evaluate("() => [...document.querySelectorAll('[id]')].map(e => e.id)"))
        for href in page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)"):
            parts = urlsplit(href)
            if parts.hostname != "127.0.0.1":
                continue  # external: the site's own links are what this test follows
            target = parts.path.lstrip("/") or "index.html"
            if target.endswith("/"):
                target += "index.html"
            assert target.endswith(".html"), f"{path}: internal link to a non-page {href}"
            to_visit.append(target)
            if parts.fragment:
                anchors.append((path, target, parts.fragment))

    missing_pages = sorted(set(page_ids) - expected_pages)
    assert missing_pages == [], f"links to pages that were not built: {missing_pages}"
    unreachable = sorted(expected_pages - set(page_ids))
    assert unreachable == [], f"pages no link leads to: {unreachable}"
    broken_anchors = [f"{source} -> {target}#{fragment}" for source, target, fragment in anchors
                      if fragment not in page_ids.get(target, set())]
    assert broken_anchors == [], "links to missing anchors:\n" + "\n".join(broken_anchors)
    assert failed_responses == [], "requests that failed:\n" + "\n".join(failed_responses)
    page_log.assert_clean()


# --- The tutorial's app ---------------------------------------------------------------------------


TRIGGER = "[data-jm-trigger]"
PROGRESS = "[data-jm-progress]"


def wait_for_terminal_status(page: Page, tab_progress_id: str) -> str:
    "Wait until the progress tab shows a finished job and return its status."
    selector = f"#{tab_progress_id} {PROGRESS}"
    page.wait_for_function("selector => document.querySelector(selector)?.dataset.terminal === '1'",
                           arg=selector, timeout=JOB_TIMEOUT_MS)
    return page.locator(selector).get_attribute("data-status")


@pytest.fixture
def tutorial_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, list[Path], Path]]:
    "The tutorial's app.py and checksum_plugin.py, imported from a temporary project folder."
    project = tmp_path / "project"
    names = write_project(GUIDES_DIR / "tutorial.ipynb", project)
    assert names == ["app.py", "checksum_plugin.py"], names

    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    (photos / "notes.txt").write_text("hello\n")
    (photos / "2024" / "big.bin").write_bytes(bytes(range(256)) * 12_000)
    music = tmp_path / "music"
    music.mkdir()
    for index in range(3):
        (music / f"track-{index}.txt").write_text(f"track {index}\n" * 1000)
    data_dir = tmp_path / "checksum-data"

    monkeypatch.setenv("CHECKSUM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CHECKSUM_FOLDERS", f"{photos}:{music}")
    monkeypatch.syspath_prepend(str(project))
    forget_modules("app", "checksum_plugin")
    try:
        module = importlib.import_module("app")
        yield module, [photos, music], data_dir
    finally:
        reset_config()
        forget_modules("app", "checksum_plugin")


def sha256_lines(folder: Path) -> list[str]:
    "Return the `<hex digest>  <path>` lines the tutorial's plugin writes for `folder`."
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return [f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(folder).as_posix()}"
            for path in files]


def test_tutorial_app_runs_sequence(page: Page, page_log: PageLog, serve_app, tutorial_app):
    module, folders, data_dir = tutorial_app
    ids = module.ids
    server = serve_app(module.app)
    page.goto(server.url("/"))
    results = page.locator(f"#{module.RESULTS_ID}")
    expect(results).to_contain_text("No checksums yet")

    page.locator(f"#{ids.trigger_slot} {TRIGGER}").click()
    expect(page.locator(f"#{ids.modal}")).to_be_visible(timeout=UI_TIMEOUT_MS)
    status = wait_for_terminal_status(page, ids.tab_progress)
    save_screenshot(page, "docs-tutorial-completed")
    assert status == "completed"

    expect(results).to_contain_text("2 files", timeout=UI_TIMEOUT_MS)
    expect(results).to_contain_text("3 files")
    for folder in folders:
        written = (data_dir / f"{folder.name}.sha256").read_text(encoding="utf-8").splitlines()
        assert written == sha256_lines(folder)
    assert list(data_dir.glob("*.partial")) == []

    page.locator(f"#{ids.tab_button('logs')}").click()
    expect(page.locator(f"#{ids.log_lines}")).to_contain_text("Hashed track-2.txt", timeout=UI_TIMEOUT_MS)

    # The results were saved in the session's state, so a reload shows them.
    page.reload()
    expect(results).to_contain_text("3 files")
    expect(page.locator(f"#{ids.trigger_slot} {TRIGGER}")).to_be_visible()
    page_log.assert_clean()


# --- The landing page's example -------------------------------------------------------------------


INDEX_TEST_PLUGIN = '''\
"""A stand-in for the plugin named "my-plugin" in the landing page's example."""
from cjm_plugin_system.core.capability import ToolCapability


class MyPlugin(ToolCapability):
    @property
    def name(self): return "my-plugin"

    @property
    def version(self): return "0.0.1"

    def get_config_schema(self): return {"type": "object", "properties": {}}

    def get_current_config(self): return {}

    def initialize(self, config=None): pass

    def execute(self, path):
        self.report_progress(0.5, f"Reading {path}")
        return {"path": path}
'''


@pytest.fixture
def index_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    "The landing page's example app, run in a temporary working directory with a `my-plugin` manifest."
    examples = [source for directives, source in code_cells(NBS_DIR / "index.ipynb")
                if "init_job_monitor_routes(" in source]
    assert len(examples) == 1, "expected one example app in nbs/index.ipynb"
    project = tmp_path / "project"
    project.mkdir()
    (project / "index_example.py").write_text(examples[0], encoding="utf-8")
    (project / "my_plugin.py").write_text(INDEX_TEST_PLUGIN, encoding="utf-8")
    monkeypatch.chdir(project)  # the example keeps its state store and session key in the working directory
    monkeypatch.syspath_prepend(str(project))
    forget_modules("index_example", "my_plugin")

    data_dir = tmp_path / "cjm-data"
    set_config(CJMConfig(data_dir=data_dir))
    try:
        write_plugin_manifest(data_dir, "my_plugin:MyPlugin")
        yield importlib.import_module("index_example")
    finally:
        reset_config()
        forget_modules("index_example", "my_plugin")


def test_index_example_runs_job(page: Page, page_log: PageLog, serve_app, index_example):
    ids = index_example.ids
    server = serve_app(index_example.app)
    page.goto(server.url("/"))
    page.locator(f"#{ids.trigger_slot} {TRIGGER}").click()
    expect(page.locator(f"#{ids.modal}")).to_be_visible(timeout=UI_TIMEOUT_MS)
    assert wait_for_terminal_status(page, ids.tab_progress) == "completed"
    expect(page.locator(f"#{ids.trigger_slot} {TRIGGER}")).to_be_visible(timeout=UI_TIMEOUT_MS)
    page_log.assert_clean()


# --- The plugin guide's cancel table --------------------------------------------------------------


async def wait_until_reporting(service: JobMonitorService, job_id: str, timeout: float = 30.0) -> None:
    "Wait until the job runs and its plugin has reported progress of its own."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = service.get_job_view(job_id)
        if view is not None and view.status == "running" and view.progress:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not report progress within {timeout} s: {service.get_job_view(job_id)}")


def worker_pid(manager: PluginManager, plugin_name: str) -> int:
    return manager.get_plugin(plugin_name).process.pid


async def test_plugin_guide_cancel_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    project = tmp_path / "project"
    assert write_project(GUIDES_DIR / "writing_plugins.ipynb", project) == ["cancel_styles.py"]
    monkeypatch.syspath_prepend(str(project))
    forget_modules("cancel_styles")
    data_dir = tmp_path / "cjm-data"
    set_config(CJMConfig(data_dir=data_dir))
    manager = PluginManager(search_paths=[data_dir / "manifests"])
    queue = JobQueue(manager, progress_poll_interval=0.2, cancel_timeout=2.0)
    service = JobMonitorService(queue, manager)
    try:
        for class_name in ("RaisingWriter", "ReturningWriter", "IgnoringWriter"):
            write_plugin_manifest(data_dir, f"cancel_styles:{class_name}")
        for meta in manager.discover_manifests():
            assert manager.load_plugin(meta), f"loading {meta.name} failed"
        await queue.start()

        # The guide's table: plugin -> (status the queue records, status the monitor shows).
        table = {
            "slow-writer-raising": ("failed", "cancelled"),
            "slow-writer-returning": ("cancelled", "cancelled"),
            "slow-writer-ignoring": ("cancelled", "cancelled"),
        }
        for plugin_name, (queue_status, monitor_status) in table.items():
            output = tmp_path / f"{plugin_name}.txt"
            pid_before = worker_pid(manager, plugin_name)
            job_id = await service.submit_job(plugin_name, output=str(output), lines=3000, delay_s=0.01)
            await wait_until_reporting(service, job_id)
            assert await service.cancel_job(job_id)
            job = await queue.wait_for_job(job_id, timeout=60)

            assert normalize_status(job.status) == queue_status, plugin_name
            assert service.get_job_view(job_id).status == monitor_status, plugin_name
            assert not output.exists(), f"{plugin_name} wrote its output although it was cancelled"
            partial = output.with_name(output.name + ".partial")
            if plugin_name == "slow-writer-ignoring":
                assert partial.exists(), "a killed worker cannot clean up, so its partial file stays"
                assert worker_pid(manager, plugin_name) != pid_before, "the worker was not replaced"
                continue
            assert not partial.exists(), f"{plugin_name} left its partial file"
            if plugin_name == "slow-writer-raising":
                assert f"Plugin '{plugin_name}' cancelled by operator" in job.error.message
                stop_line = "Cancelled; removed"
            else:
                assert job.result is None
                stop_line = "Stopped after"

            await asyncio.sleep(0.6)  # lets the job's last log records settle in the diagnostics store
            lines, _ = service.read_job_log(job_id)
            messages = [(line.level, line.message) for line in lines]
            assert ("INFO", f"Writing 3000 lines to {output}") in messages
            assert any(level == "WARNING" and stop_line in text for level, text in messages), messages
            assert not any("Wrote line" in text for _, text in messages), "DEBUG records reached the log"
    finally:
        await service.aclose()
        await queue.stop()
        manager.unload_all()
        reset_config()
        forget_modules("cancel_styles")
