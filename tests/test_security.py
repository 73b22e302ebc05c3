"""Security: sessions stay apart, cross-site requests are refused, no secret leaks, and the page needs no unsafe CSP.

- Another session can neither watch, cancel nor download the log of a job, and
  a guessed or malformed `job_id` gets the same empty response as a foreign one.
- trigger, cancel and outcome refuse requests that a page of another origin
  can send, also from a real browser on another 127.0.0.1 port (same site,
  other origin: the session cookie, SameSite=Lax, goes along).
- Canaries in the server's environment, the session signing key, a plugin
  secret (cjm-plugin-system's secret store, injected into the worker), the
  session and a job argument never appear in a response body, an SSE message,
  a log download or the server's log.
- `get_sse_headers()` pins htmx-ext-sse with an SRI hash (a changed file does
  not run) and, with `sse_ext_file=`, serves it from the app, so a page under
  `script-src 'self'` works.

FastHTML's sessions are signed, not encrypted, cookies: whatever an app puts in
`sess` travels to the browser in the cookie. That is FastHTML's design, so the
canary test reads bodies, streams and logs, not the cookie.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest
from fasthtml.common import FastHTML, Link, Meta, Script
from playwright.sync_api import Page, expect
from starlette.responses import FileResponse, HTMLResponse

from cjm_fasthtml_job_monitor.components.modal import (
    SSE_EXTENSION_CDN_URL, SSE_EXTENSION_SRI, SSE_EXTENSION_VERSION, get_sse_headers, sri_hash,
)
from tests.support.app_harness import (
    PREFIX, AppHarness, SessionClient, job_id_of, read_until_done, served_harness, session_clients,
)
from tests.support.browser import PageLog, assets
from tests.support.server import open_sse_stream
from tests.support.workers import worker_processes

NODE_MODULES = assets.DEFAULT_CACHE_DIR / "node_modules"
SSE_FILE = NODE_MODULES / "htmx-ext-sse" / "dist" / "sse.min.js"
HTMX_FILE = NODE_MODULES / "htmx.org" / "dist" / "htmx.min.js"
DAISYUI_FILE = NODE_MODULES / "daisyui" / "daisyui.css"
UI_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    data_dir = tmp_path_factory.mktemp("security")
    with served_harness(data_dir) as harness:
        yield harness


@pytest.fixture
def clients(harness: AppHarness):
    with session_clients(harness.server.base_url) as open_session:
        yield open_session


def queue_job_ids(harness: AppHarness) -> set:
    def collect():
        queue = harness.env.queue
        return {job.id for job in [*queue.get_history(), *queue.get_running_jobs(), *queue.get_pending()]}
    return harness.run(collect)


# --- sessions ------------------------------------------------------------------------------------


def test_foreign_and_guessed_job_ids(harness: AppHarness, clients):
    alice, bob = clients(), clients()
    alice.set_plan([[["log", "INFO", "alice-private-line"], ["progress", 0.5, "alice-private-stage"],
                     ["wait_cancel", 60, "return"]]])
    alice_job = job_id_of(alice.trigger())
    with alice.stream(alice_job) as stream:  # Alice's job runs and her stream shows her lines
        stream.read_until(lambda event: "alice-private-stage" in event.data, timeout=20)
        sequence_id = (stream.next_event(timeout=10).id or ":").split(":")[0]

    guesses = {
        "Alice's running job": alice_job,
        "a random uuid": str(uuid.uuid4()),
        "empty": "",
        "path traversal": "../../../etc/passwd",
        "markup": '"><script>alert(1)</script>',
        "10 kB": "a" * 10_000,
        "non-ASCII": "ålice-✓",
        "NUL": "a\x00b",
        "Alice's sequence id": sequence_id,
    }
    for name, job_id in guesses.items():
        with bob.stream(job_id) as stream:
            events = read_until_done(stream, timeout=10)
        text = "".join(event.data for event in events)
        assert [event.event for event in events] == ["message", "done"], name
        assert "alice-private" not in text, name
        assert alice_job not in text, name
        assert bob.cancel(job_id).status_code == 404, name
        assert bob.log(job_id).status_code == 404, name
    # A reconnect header with Alice's sequence gets nothing of hers either.
    with bob.stream(alice_job, headers={"Last-Event-ID": f"{sequence_id}:0"}) as stream:
        assert "alice-private" not in "".join(event.data for event in read_until_done(stream, timeout=10))
    assert bob.post(PREFIX + "/outcome").text == ""
    assert harness.tracker(bob.session_id) is None

    # Nothing Bob did touched Alice's job; her own cancel still works, and her log is hers.
    assert harness.env.service.get_job_view(alice_job).status == "running"
    download = alice.log(alice_job)
    assert download.status_code == 200
    assert "alice-private-line" in download.text
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-disposition"].startswith("attachment")
    assert alice.cancel(alice_job).status_code == 204


def test_tampered_session_cookie(harness: AppHarness, clients):
    alice, mallory = clients(), clients()
    alice.set_plan([[["wait_cancel", 60, "return"]]])
    alice_job = job_id_of(alice.trigger())
    try:
        alice_payload = alice.client.cookies.get("session_").split(".", 1)[0]
        mallory_cookie = mallory.client.cookies.get("session_")
        _, _, mallory_signature = mallory_cookie.partition(".")
        claim = base64.b64encode(json.dumps({"_workflow_session_id": alice.session_id}).encode()).decode()
        forgeries = {
            "Alice's payload, Mallory's signature": f"{alice_payload}.{mallory_signature}",
            "a new claim, Mallory's signature": f"{claim}.{mallory_signature}",
            "Mallory's cookie, signature flipped": mallory_cookie[:-2] + ("aa" if not mallory_cookie.endswith("aa")
                                                                          else "bb"),
            "garbage": "not-a-session",
        }
        for name, value in forgeries.items():
            with httpx.Client(base_url=harness.server.base_url, cookies={"session_": value}) as forger:
                assert forger.get("/whoami").text not in (alice.session_id, mallory.session_id), name
                assert forger.get(PREFIX + "/log", params={"job_id": alice_job}).status_code == 404, name
                with open_stream(forger, alice_job) as stream:
                    assert "data-jm-job" not in "".join(event.data for event in read_until_done(stream, 10)), name
    finally:
        alice.cancel(alice_job)


def open_stream(client: httpx.Client, job_id: str):
    return open_sse_stream(str(client.base_url).rstrip("/") + PREFIX + "/progress", client=client,
                           params={"job_id": job_id})


# --- cross-site requests --------------------------------------------------------------------------


def test_cross_site_requests_refused(harness: AppHarness, clients):
    client = clients()
    client.set_plan([[["wait_cancel", 60, "return"]]])
    base = client.base_url
    host = base.split("//", 1)[1]
    good = client.htmx_headers
    cases: Dict[str, Dict[str, str]] = {
        "plain form post, no headers": {},
        "form post with origin": {"Origin": base, "Sec-Fetch-Site": "same-origin"},
        "foreign origin": {**good, "Origin": "http://evil.example"},
        "other port, same host": {**good, "Origin": f"http://127.0.0.1:{int(host.split(':')[1]) + 1}",
                                  "Sec-Fetch-Site": "same-site"},
        "origin null (sandboxed frame)": {**good, "Origin": "null"},
        "fetch metadata cross-site": {**good, "Sec-Fetch-Site": "cross-site"},
        "fetch metadata same-site": {**good, "Sec-Fetch-Site": "same-site"},
        "foreign origin without fetch metadata": {"HX-Request": "true", "Origin": "http://evil.example"},
    }
    before = queue_job_ids(harness)
    for name, headers in cases.items():
        for path in ("/trigger", "/cancel", "/outcome"):
            response = client.client.post(PREFIX + path, headers=headers, content=b"x=1",
                                           params={"job_id": "x"} if path == "/cancel" else None)
            assert response.status_code == 403, f"{name}: POST {path} returned {response.status_code}"
    for path in ("/trigger", "/cancel", "/outcome"):
        assert client.client.get(PREFIX + path, headers=good).status_code in (404, 405), path
    assert queue_job_ids(harness) == before, "a refused request submitted a job"
    assert harness.tracker(client.session_id) is None

    # The same requests with this page's own headers are accepted.
    job_id = job_id_of(client.trigger())
    assert client.cancel(job_id).status_code == 204


def test_browser_csrf_from_other_origin(harness: AppHarness, clients, serve_app, page: Page):
    victim_page = harness.server.url("/")
    target = harness.server.url(PREFIX + "/trigger")
    attacker = FastHTML(default_hdrs=False, secret_key="attacker-secret")

    @attacker.get("/")
    def attack():
        return HTMLResponse(f"""<!doctype html><html><body>
<form id="f" method="post" action="{target}"><input name="x" value="1"></form>
<script>
  const results = window.results = [];
  const send = (options) => fetch("{target}", options).then(r => results.push(r.status), e => results.push(String(e)));
  Promise.all([
    send({{method: "POST", credentials: "include", mode: "no-cors"}}),
    send({{method: "POST", credentials: "include", headers: {{"HX-Request": "true"}}}}),
  ]).then(() => document.getElementById("f").submit());
</script></body></html>""")

    attacker_server = serve_app(attacker)
    page.goto(victim_page)  # the victim has a session with the app
    session_id = page.evaluate("() => fetch('/whoami').then(r => r.text())")
    harness.plans[session_id] = [[["print", "csrf job"]]]
    before = queue_job_ids(harness)
    responses: List[int] = []
    page.on("response", lambda response: responses.append(response.status)
            if response.url == target and response.request.method == "POST" else None)
    page.goto(attacker_server.url("/"))
    page.wait_for_url(target, timeout=UI_TIMEOUT_MS)  # the form post navigated to the app
    assert "Cross-site request rejected" in page.content()
    time.sleep(0.5)
    assert queue_job_ids(harness) == before, "a cross-origin page started a job"
    assert harness.tracker(session_id) is None
    assert responses and set(responses) <= {403}, responses


# --- secrets --------------------------------------------------------------------------------------


def test_no_secret_in_responses_or_logs(start_server_process, tmp_path: Path):
    canaries = {name: f"canary-{name}-{secrets.token_hex(8)}" for name in
                ("environment", "session-key", "plugin-secret", "session", "job-argument")}
    plugin = "jm-test-steps"
    worker_kwargs = {"worker_env_specs": {plugin: [{"name": "JM_PLUGIN_SECRET", "secret": True}]},
                     "secrets": {plugin: {"JM_PLUGIN_SECRET": canaries["plugin-secret"]}}}
    data_dir = tmp_path / "canary-data"
    server = start_server_process(
        "tests.support.app_harness:create_app",
        {"data_dir": str(data_dir), "secret_key": canaries["session-key"], "worker_kwargs": worker_kwargs},
        env={"JM_CANARY": canaries["environment"]}, ready_path="/whoami")
    bodies: List[str] = []
    with SessionClient(server.base_url) as client:
        client.set_session(api_token=canaries["session"])
        worker = worker_processes(data_dir)[0]
        assert worker.environ()["JM_PLUGIN_SECRET"] == canaries["plugin-secret"], "the secret did not reach the worker"
        assert worker.environ()["JM_CANARY"] == canaries["environment"]

        plans = [
            [["wait_cancel", 0, canaries["job-argument"]], ["log", "INFO", "working"], ["fail", "planned failure"]],
            [["print", "fine"], ["escaped", "log", "ERROR", "an error record"]],
            [["wait_cancel", 30, "raise"]],
        ]
        for index, steps in enumerate(plans):
            client.set_plan([steps])
            trigger = client.trigger()
            bodies.append(trigger.text)
            job_id = job_id_of(trigger)
            with client.stream(job_id) as stream:
                if index == 2:
                    stream.read_until(lambda event: 'data-status="running"' in event.data, timeout=20)
                    bodies.append(client.cancel(job_id).text)
                bodies += [event.data for event in read_until_done(stream)]
            bodies.append(client.log(job_id).text)
            bodies.append(client.page())
        for path in ("/trigger", "/cancel", "/outcome"):
            bodies.append(client.client.post(PREFIX + path, headers={"Origin": "http://evil.example"}).text)
        bodies.append(client.post(PREFIX + "/outcome").text)
        bodies.append(client.client.get("/_job_monitor/script").text)
    assert any("planned failure" in body for body in bodies), "the failing job's error never reached a response"
    assert any("Traceback" in body for body in bodies), "no traceback reached the log download"

    server.stop()
    server_log = server.log_text()
    assert "planned failure" in server_log, "the server log was not captured"
    for name, canary in canaries.items():
        leaks = [body[max(0, body.find(canary) - 80):body.find(canary) + 80] for body in bodies if canary in body]
        assert leaks == [], f"the {name} canary was sent to the browser: {leaks[:2]}"
        assert canary not in server_log, f"the {name} canary is in the server log"


def test_malformed_job_args_not_echoed(harness: AppHarness, clients, caplog: pytest.LogCaptureFixture):
    canary = f"canary-job-args-{secrets.token_hex(8)}"
    client = clients()
    harness.builder_outputs[client.session_id] = [(canary, {"api_key": canary})]
    caplog.set_level(logging.DEBUG)
    try:
        response = client.trigger()
    finally:
        del harness.builder_outputs[client.session_id]
    assert "could not be prepared" in response.text
    assert canary not in response.text
    assert [record.getMessage() for record in caplog.records if canary in record.getMessage()] == []


# --- the SSE extension: SRI and CSP ---------------------------------------------------------------


def test_sse_extension_pinned_with_sri():
    assert f"htmx-ext-sse@{SSE_EXTENSION_VERSION}/" in SSE_EXTENSION_CDN_URL
    assert re.fullmatch(r"\d+\.\d+\.\d+", SSE_EXTENSION_VERSION)
    assert sri_hash(SSE_FILE.read_bytes()) == SSE_EXTENSION_SRI
    script = get_sse_headers()[0]
    assert script.attrs["src"] == SSE_EXTENSION_CDN_URL
    assert script.attrs["integrity"] == SSE_EXTENSION_SRI
    assert script.attrs["crossorigin"] == "anonymous"

    local = get_sse_headers(sse_ext_file=SSE_FILE)[0]
    assert local.attrs["src"].startswith("/")
    assert local.attrs["integrity"] == SSE_EXTENSION_SRI


def test_sse_extension_file_checked(tmp_path: Path):
    changed = tmp_path / "sse.min.js"
    changed.write_bytes(SSE_FILE.read_bytes() + b"\n;window.__changed = true;")
    with pytest.raises(ValueError, match="is not htmx-ext-sse"):
        get_sse_headers(sse_ext_file=changed)


EVENT_SOURCE_COUNTER = """
(() => {
  const Real = window.EventSource;
  window.__eventSources = 0;
  window.EventSource = function (...args) { window.__eventSources += 1; return new Real(...args); };
  window.EventSource.prototype = Real.prototype;
})();
"""


def test_changed_cdn_file_does_not_run(harness: AppHarness, page: Page, page_log: PageLog):
    page.route(SSE_EXTENSION_CDN_URL, lambda route: route.fulfill(
        status=200, body=SSE_FILE.read_bytes() + b"\n;window.__changed = true;",
        headers={"Content-Type": "text/javascript", "Access-Control-Allow-Origin": "*"}))
    page.add_init_script(EVENT_SOURCE_COUNTER)
    page.goto(harness.server.url("/"))
    session_id = page.evaluate("() => fetch('/whoami').then(r => r.text())")
    harness.plans[session_id] = [[["sleep", 0.5]]]
    page.locator("[data-jm-trigger]").click()
    expect(page.locator("[sse-connect]")).to_have_count(1, timeout=UI_TIMEOUT_MS)
    page.wait_for_timeout(1000)
    assert page.evaluate("() => window.__changed === undefined"), "the changed extension ran"
    assert page.evaluate("() => window.__eventSources") == 0, "an event stream opened without the pinned extension"
    assert any("integrity" in text for text in page_log.console_errors), page_log.console_errors


class ContentSecurityPolicy:
    "ASGI middleware that adds a Content-Security-Policy header to every HTTP response."

    def __init__(self, app: Any, policy: str) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)

        async def send_with_policy(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"content-security-policy", self.policy.encode())]
            await send(message)
        await self.app(scope, receive, send_with_policy)


BASE_POLICY = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; ")
STYLE_INLINE = "style-src 'self' 'unsafe-inline'"
STYLE_STRICT = "style-src 'self' 'report-sample'"
ASSET_PATH = "/_test/asset"

VIOLATION_RECORDER = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = e.target && e.target.outerHTML ? e.target.outerHTML.slice(0, 120) : "";
  window.__csp.push(`${e.effectiveDirective} ${e.blockedURI} ${(e.sample || "").slice(0, 60)} ${where}`);
}, true);
"""


def serve_strict_app(serve_app, tmp_path: Path, style_policy: str):
    "Serve the harness app with local htmx, the app-served SSE extension and `style_policy` in a strict CSP."
    hdrs = [
        # htmx adds a <style> element for its indicators unless this setting is false, so a strict page sets it.
        Meta(name="htmx-config", content=json.dumps({"includeIndicatorStyles": False})),
        Link(rel="stylesheet", href=f"{ASSET_PATH}/daisyui"),
        Script(src=f"{ASSET_PATH}/htmx"),
        *get_sse_headers(sse_ext_file=SSE_FILE),
    ]
    harness = AppHarness(tmp_path / "csp-data", hdrs=hdrs)
    app = harness.build_app()
    files = {"htmx": (HTMX_FILE, "text/javascript"), "daisyui": (DAISYUI_FILE, "text/css")}

    @app.get(ASSET_PATH + "/{name}")
    def asset(name: str):
        path, media_type = files[name]
        return FileResponse(path, media_type=media_type)

    server = serve_app(ContentSecurityPolicy(app, BASE_POLICY + style_policy), ready_path="/whoami")
    harness.server = server
    return harness


def run_monitor_under_csp(harness: AppHarness, page: Page) -> List[str]:
    "Run a job from the page to its end and return the CSP violations the page reported."
    page.add_init_script(VIOLATION_RECORDER)
    page.goto(harness.server.url("/"))
    session_id = page.evaluate("() => fetch('/whoami').then(r => r.text())")
    harness.plans[session_id] = [[["progress", 0.5, "half way"], ["log", "INFO", "under a strict policy"],
                                  ["sleep", 1.0]]]
    page.locator("[data-jm-trigger]").click()
    ids = harness.ids
    page.wait_for_function("id => document.getElementById(id)?.open === true", arg=ids.modal, timeout=UI_TIMEOUT_MS)
    expect(page.locator("[data-jm-overlay]")).to_have_count(1)
    page.wait_for_function("id => document.querySelector(`#${id} [data-jm-progress]`)?.dataset.status === 'completed'",
                           arg=ids.tab_progress, timeout=UI_TIMEOUT_MS)
    expect(page.locator(f"#{ids.log_lines}")).to_contain_text("under a strict policy")
    expect(page.locator(f"#{ids.trigger_slot} [data-jm-trigger]")).to_be_visible()
    expect(page.locator("[data-jm-overlay]")).to_have_count(0)
    page.keyboard.press("Escape")
    page.wait_for_function("id => document.getElementById(id)?.open === false", arg=ids.modal)
    return page.evaluate("() => window.__csp")


def test_monitor_under_strict_script_policy(serve_app, tmp_path: Path, page: Page, page_log: PageLog):
    harness = serve_strict_app(serve_app, tmp_path, STYLE_INLINE)
    violations = run_monitor_under_csp(harness, page)
    assert violations == []
    page_log.assert_clean()
    assert page_log.from_cache == [], "the page loaded something from a CDN"


def test_monitor_under_strict_style_policy(serve_app, tmp_path: Path, page: Page):
    harness = serve_strict_app(serve_app, tmp_path, STYLE_STRICT)
    assert run_monitor_under_csp(harness, page) == []
