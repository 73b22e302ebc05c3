"""Fixtures shared by the test suites: a throwaway HOME, servers on 127.0.0.1 and an offline Chromium page.

Browser fixtures: `page` (a fresh Chromium page whose CDN requests are served
from the asset cache and whose other off-loopback requests are aborted) and
`page_log` (what that page logged). Server fixtures: `serve_app(app)` runs an
app in a thread; `start_server_process(factory, kwargs)` runs one in a child
process that a test can restart or kill. Both are stopped after the test.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.support.browser import (ARTIFACTS_DIR, PageLog, assets, attach_page_log, launch_chromium,
                                   new_offline_context)
from tests.support.server import ServerProcess, ThreadedServer

_HOME_VARIABLES = ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME")
_original_environment: dict[str, str | None] = {}
_test_home: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    "Point HOME and the XDG folders at a temporary folder, so that no test writes into the real home."
    global _test_home
    _test_home = Path(tempfile.mkdtemp(prefix="cjm-test-home-"))
    targets = {"HOME": _test_home, "XDG_CONFIG_HOME": _test_home / ".config",
               "XDG_CACHE_HOME": _test_home / ".cache", "XDG_DATA_HOME": _test_home / ".local" / "share"}
    for name in _HOME_VARIABLES:
        _original_environment[name] = os.environ.get(name)
        os.environ[name] = str(targets[name])


def pytest_unconfigure(config: pytest.Config) -> None:
    "Restore HOME and the XDG variables and remove the temporary home."
    for name, value in _original_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if _test_home is not None:
        shutil.rmtree(_test_home, ignore_errors=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    "Keep each phase's report on the test item, so fixtures can save artifacts when a test failed."
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


def _artifact_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid).strip("_")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    "The test-artifacts/ folder at the repository root, for screenshots and logs."
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def asset_cache() -> Path:
    "The asset cache folder, with every pinned package installed (npm runs only for missing ones)."
    # npm reads its settings from the real HOME, which the tests otherwise hide.
    env = {**os.environ, **{name: value for name, value in _original_environment.items() if value is not None}}
    try:
        assets.install_assets(assets.DEFAULT_CACHE_DIR, env=env)
    except RuntimeError as error:
        pytest.fail(f"The asset cache is incomplete and npm could not fill it: {error}\n"
                    f"Run `python tools/assets.py` with access to the npm registry.")
    return assets.DEFAULT_CACHE_DIR


@pytest.fixture
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    "Headless Debian Chromium, started for one test."
    # Function scope on purpose: while Playwright's sync API is started, its event loop
    # counts as running in this thread, and asyncio tests after it would fail to start theirs.
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = launch_chromium(playwright, tmp_path_factory.mktemp("chromium-profile"))
    except FileNotFoundError as error:
        playwright.stop()
        pytest.fail(str(error))
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def serve_app() -> Iterator[Callable[..., ThreadedServer]]:
    "Start an ASGI app on 127.0.0.1 in a thread: `server = serve_app(app)`; it is stopped after the test."
    servers: list[ThreadedServer] = []

    def start(app: Any, **options: Any) -> ThreadedServer:
        server = ThreadedServer(app, **options)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def start_server_process(request: pytest.FixtureRequest,
                         artifacts_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    "Start an app factory in a child process: `server = start_server_process('module:factory', {...})`."
    servers: list[ServerProcess] = []

    def start(factory: str, kwargs: dict | None = None, **options: Any) -> ServerProcess:
        server = ServerProcess(factory, kwargs, **options)
        servers.append(server)
        return server.start()

    yield start
    for index, server in enumerate(reversed(servers)):
        server.stop()
        if _test_failed(request):
            log_copy = artifacts_dir / "failures" / f"{_artifact_name(request)}-server{index}.log"
            log_copy.parent.mkdir(parents=True, exist_ok=True)
            log_copy.write_text(server.log_text())


@pytest.fixture
def page_log() -> PageLog:
    "What the `page` fixture's page logged: console errors, page errors, blocked and cached requests."
    return PageLog()


@pytest.fixture
def browser_context(chromium: Any, asset_cache: Path, page_log: PageLog,
                    serve_app: Callable[..., ThreadedServer],
                    start_server_process: Callable[..., ServerProcess]) -> Iterator[Any]:
    "A fresh browser context that serves CDN requests from the asset cache and aborts other off-loopback ones."
    # Depending on the server fixtures makes pytest close the context (and its event
    # streams) before it stops the servers, so no stop waits on an open stream.
    context = new_offline_context(chromium, page_log, asset_cache)
    yield context
    context.close()


@pytest.fixture
def page(browser_context: Any, page_log: PageLog, request: pytest.FixtureRequest,
         artifacts_dir: Path) -> Iterator[Any]:
    "A page in `browser_context`; on failure its screenshot and log go to test-artifacts/failures/."
    page = browser_context.new_page()
    page.set_default_timeout(15_000)
    attach_page_log(page, page_log)
    yield page
    if _test_failed(request) and not page.is_closed():
        failures = artifacts_dir / "failures"
        failures.mkdir(parents=True, exist_ok=True)
        name = _artifact_name(request)
        try:
            page.screenshot(path=str(failures / f"{name}.png"), full_page=True)
        except Exception as error:  # a crashed page cannot be captured; the log still is
            page_log.console.append(f"(screenshot failed: {error!r})")
        page_log.write(failures / f"{name}.log")
    page.close()
