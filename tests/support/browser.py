"""Drive Debian's Chromium with Playwright, offline: CDN requests come from the asset cache.

Every request to a host other than 127.0.0.1 is intercepted. Requests to a CDN
are served from the npm packages that `tools/assets.py` installed; every
other one is aborted and recorded, so a page that reaches out fails its test
instead of hanging. `PageLog` collects console errors, uncaught page errors and
those blocked requests for tests to assert on.
"""
from __future__ import annotations

import importlib.util
import mimetypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, Request, Route

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
CHROMIUM_PATH = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))

# Without the background-networking flags Chromium opens connections of its own
# (updates, sync, safe browsing). The host resolver rule makes every host name
# but 127.0.0.1 fail to resolve, which also covers WebSockets, which page routes do not see.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]

ALLOWED_HOSTS = {"127.0.0.1"}

# fasthtml-js is published only on GitHub (jsDelivr's /gh/ mirror), not on npm,
# and FastHTML's default headers load it in every page. Its 1.0.12 file only
# defines helpers ($, $$, $E, $H, proc_htmx) and runs nothing on load. The stand-in
# defines none of them, so a page that calls one fails with a ReferenceError.
STAND_IN_SCRIPTS = {
    "https://cdn.jsdelivr.net/gh/answerdotai/fasthtml-js@1.0.12/fasthtml.js":
        "/* Test stand-in for fasthtml-js 1.0.12, which is not on npm: it defines nothing. */\n",
}


def _load_assets_module():
    "Import tools/assets.py, which is a script and not part of any package."
    spec = importlib.util.spec_from_file_location("_cjm_test_assets", REPO_ROOT / "tools" / "assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


assets = _load_assets_module()


@dataclass
class PageLog:
    "What one browser context's pages logged and requested, for assertions."
    console: list[str] = field(default_factory=list)  # Every console message as "type: text"
    console_errors: list[str] = field(default_factory=list)  # Console messages of type "error"
    page_errors: list[str] = field(default_factory=list)  # Uncaught exceptions in the page
    blocked: list[str] = field(default_factory=list)  # Off-loopback URLs aborted: no cached file or stand-in matched
    from_cache: list[str] = field(default_factory=list)  # CDN URLs served from the asset cache
    stand_ins: list[str] = field(default_factory=list)  # CDN URLs served with a stand-in script
    failed_requests: list[str] = field(default_factory=list)  # "URL: error" for requests that failed, aborts included

    def problems(self) -> list[str]:
        "Return console errors, page errors and blocked requests, one line each."
        return ([f"console error: {text}" for text in self.console_errors]
                + [f"page error: {text}" for text in self.page_errors]
                + [f"blocked request: {url}" for url in self.blocked])

    def assert_clean(self) -> None:
        "Raise AssertionError listing every console error, page error and blocked request."
        problems = self.problems()
        assert not problems, "The page logged problems:\n" + "\n".join(problems)

    def write(self, path: Path) -> None:
        "Write the whole log as text to `path`."
        sections = [("console", self.console), ("page errors", self.page_errors), ("blocked", self.blocked),
                    ("from cache", self.from_cache), ("stand-ins", self.stand_ins),
                    ("failed requests", self.failed_requests)]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n\n".join(f"## {title}\n" + "\n".join(lines) for title, lines in sections) + "\n")


def is_allowed_url(url: str) -> bool:
    "Check whether `url` may go to the network: only 127.0.0.1, and browser-internal schemes."
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return parts.hostname in ALLOWED_HOSTS


def launch_chromium(playwright: Playwright, profile_dir: Path) -> Browser:
    "Launch headless Chromium from CHROMIUM_PATH with HOME and the XDG folders under `profile_dir`."
    if not CHROMIUM_PATH.is_file():
        raise FileNotFoundError(f"Chromium was not found at {CHROMIUM_PATH}; install it with "
                                f"`apt-get install -y chromium` or set CHROMIUM_PATH.")
    profile_dir = Path(profile_dir)
    # Chromium writes its NSS database and caches under HOME and the XDG folders.
    env = {**os.environ, "HOME": str(profile_dir), "XDG_CONFIG_HOME": str(profile_dir / "config"),
           "XDG_CACHE_HOME": str(profile_dir / "cache"), "XDG_DATA_HOME": str(profile_dir / "data")}
    return playwright.chromium.launch(executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS, env=env,
                                      headless=True)


def _handle_off_loopback(route: Route, log: PageLog, cache_dir: Path) -> None:
    "Serve an off-loopback request from the asset cache or a stand-in, or abort it."
    url = route.request.url
    path = assets.local_path_for_url(url, cache_dir)
    headers = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"}
    if path is not None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        log.from_cache.append(url)
        route.fulfill(status=200, path=path, headers={**headers, "Content-Type": content_type})
        return
    if url in STAND_IN_SCRIPTS:
        log.stand_ins.append(url)
        route.fulfill(status=200, body=STAND_IN_SCRIPTS[url],
                      headers={**headers, "Content-Type": "text/javascript"})
        return
    log.blocked.append(url)
    route.abort("blockedbyclient")


def new_offline_context(browser: Browser, log: PageLog, cache_dir: Path = assets.DEFAULT_CACHE_DIR,
                        **context_options) -> BrowserContext:
    "Create a browser context whose off-loopback requests go to `_handle_off_loopback`."
    options = {"viewport": {"width": 1280, "height": 900}, "service_workers": "block", **context_options}
    context = browser.new_context(**options)
    context.route(lambda url: not is_allowed_url(url), lambda route: _handle_off_loopback(route, log, cache_dir))
    return context


def attach_page_log(page: Page, log: PageLog) -> None:
    "Record the page's console messages, uncaught errors and failed requests in `log`."

    def on_console(message: ConsoleMessage) -> None:
        text = message.text
        location = message.location or {}
        if location.get("url"):
            text += f" ({location['url']}:{location.get('lineNumber', '?')})"
        log.console.append(f"{message.type}: {text}")
        if message.type == "error":
            log.console_errors.append(text)

    def on_request_failed(request: Request) -> None:
        log.failed_requests.append(f"{request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: log.page_errors.append(f"{error.name}: {error.message}\n{error.stack}"))
    page.on("requestfailed", on_request_failed)


def save_screenshot(page: Page, name: str, full_page: bool = True, directory: Optional[Path] = None) -> Path:
    "Save a PNG of the page as test-artifacts/NAME.png and return its path."
    directory = Path(directory or ARTIFACTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
