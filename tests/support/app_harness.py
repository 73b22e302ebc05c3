"""An app that mounts the job monitor routes over scripted test workers, for fault, load and security tests.

`AppHarness` builds a FastHTML app whose startup loads real `StepsPlugin`
workers in a data folder (see `tests.support.workers.worker_env`) and mounts
one set of routes at `/jobs`. Each session sets its own plan, the list of jobs
that its next trigger submits, with `POST /_test/plan`, so tests that share one
server do not share state. The app also serves:

- `/`: the page, rendered with `check_inflight_job`;
- `/whoami`: the caller's workflow session id;
- `/_test/stats`: JSON counts of the event loop's tasks, the queue's event
  subscriptions, runners, viewers and locks, for leak checks;
- `/_test/probe/...`: records every request, so an injected `hx-get` or
  `<img src>` that fired shows up in `probe_hits`;
- `/_test/session`: stores JSON values in the caller's session.

Serve it in a thread with `ThreadedServer(harness.build_app())`, or in a child
process with `ServerProcess("tests.support.app_harness:create_app", {...})`.
`SessionClient` is one browser session over httpx.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import httpx
from fasthtml.common import H1, Div, FastHTML, Link, Main, P, Script, Title
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cjm_workflow_state.state_store import SQLiteWorkflowStateStore

from cjm_fasthtml_job_monitor.components.modal import get_sse_headers
from cjm_fasthtml_job_monitor.models import JobMonitorConfig
from cjm_fasthtml_job_monitor.routes import init as routes_module
from cjm_fasthtml_job_monitor.routes.init import check_inflight_job, get_workflow_session_id, init_job_monitor_routes
from tests.support import plugins as plugins_module
from tests.support.server import SSEEvent, SSEStream, ThreadedServer, open_sse_stream
from tests.support.workers import worker_env, worker_processes

WORKFLOW_ID, STEP_ID, STATE_KEY = "harness", "run", "tracker"
PREFIX = "/jobs"
CONTENT_ID = "content"
RESULTS_ID = "results"
PLAN_PATH = "/_test/plan"
STATS_PATH = "/_test/stats"
PROBE_PATH = "/_test/probe"
SESSION_PATH = "/_test/session"

HTMX_URL = "https://cdn.jsdelivr.net/npm/htmx.org@2.0.7/dist/htmx.min.js"
DAISYUI_URL = "https://cdn.jsdelivr.net/npm/daisyui@5.8.1/daisyui.css"
TAILWIND_URL = "https://cdn.jsdelivr.net/npm/@tailwindcss/browser@4.3.3/dist/index.global.js"

JOB_ID_RE = re.compile(r'data-jm-job="([^"]+)"')


def default_headers() -> list:
    "Page headers: daisyUI, Tailwind and htmx from the CDN (the browser fixture serves them from the cache)."
    return [Link(rel="stylesheet", href=DAISYUI_URL), Script(src=TAILWIND_URL), Script(src=HTMX_URL),
            *get_sse_headers()]


class AppHarness:
    "The test app's shared state: per-session plans, recorded callback calls and probe hits, and its event loop."

    def __init__(
        self,
        data_dir: Path,  # Empty folder for the workers' stores and the workflow state store
        plugin_classes: Sequence[type] = (plugins_module.StepsPlugin,),  # Loaded in order; jobs go to the first
        *,
        config: Optional[JobMonitorConfig] = None,  # Monitor config; default: fast pushes and short heartbeats
        hdrs: Optional[list] = None,  # Page headers; default: `default_headers()`
        secret_key: str = "app-harness-secret",  # Key that signs the session cookie
        worker_kwargs: Optional[dict] = None,  # Further `worker_env` arguments
        route_kwargs: Optional[dict] = None,  # Further `init_job_monitor_routes` arguments
    ) -> None:
        self.data_dir = Path(data_dir)
        self.plugin_classes = list(plugin_classes)
        self.config = config or JobMonitorConfig(sse_interval_s=0.1, heartbeat_s=1.0, resources_interval_s=1.0)
        self.hdrs = default_headers() if hdrs is None else hdrs
        self.secret_key = secret_key
        self.worker_kwargs = worker_kwargs or {}
        self.route_kwargs = route_kwargs or {}
        self.store = SQLiteWorkflowStateStore(self.data_dir / "workflow_state.db")
        self.plans: Dict[str, List[list]] = {}  # session id -> one list of steps per job
        self.builder_errors: Dict[str, Exception] = {}  # session id -> exception job_args_builder raises
        self.builder_outputs: Dict[str, Any] = {}  # session id -> raw value job_args_builder returns
        self.callback_outputs: Dict[str, Callable[[str, Any], Any]] = {}  # session id -> fn(callback, payload)
        self.calls: List[tuple] = []  # (callback name, session id, payload)
        self.probe_hits: List[str] = []  # Paths requested under PROBE_PATH
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.env: Any = None  # WorkerEnv, set at startup
        self.urls: Any = None
        self.ids: Any = None
        self._lock = threading.Lock()

    # --- access from the test thread ----------------------------------------------------------

    def run(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        "Call `fn` in the server's event loop (awaiting an awaitable result) and return its result."
        async def call() -> Any:
            result = fn()
            return (await result) if inspect.isawaitable(result) else result
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def calls_of(self, session_id: str) -> List[tuple]:
        with self._lock:
            return [call for call in self.calls if call[1] == session_id]

    def tracker(self, session_id: str) -> Any:
        return self.store.get_step_state(WORKFLOW_ID, session_id, STEP_ID).get(STATE_KEY)

    def hub(self) -> Any:
        return routes_module._HUBS[self.env.service][(WORKFLOW_ID, STEP_ID, STATE_KEY)]

    def stats(self) -> dict:
        "Return `collect_stats()` from the event loop."
        return self.run(self.collect_stats)

    def collect_stats(self) -> dict:
        "Count what the routes and the service hold; call in the event loop."
        hub = self.hub()
        runners = [*hub.runners.values(), *hub.finished.values()]
        service = self.env.service
        tasks = sorted(_task_name(task) for task in asyncio.all_tasks() if task is not asyncio.current_task())
        return {
            "tasks": tasks,
            "subscriptions": service.count_event_subscriptions(),
            "runners": len(hub.runners),
            "finished": len(hub.finished),
            "viewers": sum(runner.channel.viewers for runner in runners),
            "locks": len(hub.locks),
            "sampler_processes": len(service._sampler._procs),
            "background_tasks": len(service._background),
            "channel_log_lines": {runner.job_id: len(runner.channel.log_lines) for runner in runners},
        }

    # --- the app ------------------------------------------------------------------------------

    def _record(self, name: str, session_id: Optional[str], payload: Any) -> None:
        with self._lock:
            self.calls.append((name, session_id, payload))

    def _callbacks(self) -> dict:
        def make(name: str, payload_of: Callable[[Any], Any]):
            async def callback(first, request, sess):
                session_id = get_workflow_session_id(sess) if sess is not None else None
                self._record(name, session_id, payload_of(first))
                custom = self.callback_outputs.get(session_id)
                if custom is not None: return custom(name, first)
                return [Div(name, id=RESULTS_ID, hx_swap_oob="true")]
            return callback
        return dict(on_complete=make("on_complete", lambda results: results),
                    on_cancel=make("on_cancel", lambda job: getattr(job, "id", None)),
                    on_fail=make("on_fail", lambda job: getattr(job, "id", None)))

    def _job_args_builder(self, state_store: Any, workflow_id: str, session_id: str) -> Any:
        if session_id in self.builder_errors: raise self.builder_errors[session_id]
        if session_id in self.builder_outputs: return self.builder_outputs[session_id]
        return [((), {"steps": steps}) for steps in self.plans.get(session_id, [[]])]

    def _mount(self, app: FastHTML, env: Any) -> None:
        router, self.urls, self.ids = init_job_monitor_routes(
            env.service, env.name, self.store, WORKFLOW_ID, STEP_ID, STATE_KEY, prefix=PREFIX,
            overlay_target_id=CONTENT_ID, job_args_builder=self._job_args_builder, config=self.config,
            **self._callbacks(), **self.route_kwargs)
        router.to_app(app)

    def build_app(self) -> FastHTML:
        "Create the app; its startup loads the workers and mounts the routes, its shutdown unloads them."
        harness = self

        async def lifespan(app):  # FastHTML takes an async generator function here
            async with worker_env(harness.data_dir, *harness.plugin_classes, **harness.worker_kwargs) as env:
                harness.env, harness.loop = env, asyncio.get_running_loop()
                harness._mount(app, env)
                yield

        app = FastHTML(secret_key=self.secret_key, lifespan=lifespan, default_hdrs=False, hdrs=self.hdrs,
                       htmlkw={"lang": "en"})

        @app.get("/whoami")
        def whoami(sess):
            return get_workflow_session_id(sess)

        @app.get("/")
        def page(sess):  # synchronous, as in the demo: FastHTML runs it in a worker thread
            session_id = get_workflow_session_id(sess)
            button, overlay, modal, running = check_inflight_job(
                harness.env.service, harness.env.name, harness.store, WORKFLOW_ID, session_id, STEP_ID, STATE_KEY,
                harness.config, harness.ids, harness.urls)
            content = Div(P("Covered while a job runs."), overlay, id=CONTENT_ID, cls="relative card p-6 min-h-48")
            return Title("Harness"), Main(
                Div(H1("Harness"), button, cls="flex justify-between"), content, modal,
                Div(id=harness.ids.callback_slot), Div(id=RESULTS_ID), data_running=str(running).lower())

        @app.post(PLAN_PATH)
        async def set_plan(request: Request, sess):
            session_id = get_workflow_session_id(sess)
            harness.plans[session_id] = (await request.json())["jobs"]
            return Response(status_code=204)

        @app.post(SESSION_PATH)
        async def set_session(request: Request, sess):
            for key, value in (await request.json()).items(): sess[key] = value
            return Response(status_code=204)

        @app.get(STATS_PATH)
        def stats():
            return JSONResponse(harness.run(harness.collect_stats))

        @app.route(PROBE_PATH + "/{rest:path}", methods=["GET", "POST"])
        def probe(request: Request):
            with harness._lock:
                harness.probe_hits.append(request.url.path)
            return Response("probe", media_type="text/plain")

        return app


def _task_name(task: "asyncio.Task") -> str:
    "Name a task by its coroutine's qualified name, which is stable across runs (the task's own name is not)."
    coroutine = task.get_coro()
    return getattr(coroutine, "__qualname__", type(coroutine).__name__)


def create_app(
    data_dir: str,  # Empty folder for the stores
    plugins: Sequence[str] = ("StepsPlugin",),  # Class names in tests.support.plugins
    config: Optional[dict] = None,  # JobMonitorConfig fields
    secret_key: str = "app-harness-secret",  # Key that signs the session cookie
    worker_kwargs: Optional[dict] = None,  # Further `worker_env` arguments (JSON values)
) -> FastHTML:
    "Build the harness app from JSON arguments, for `ServerProcess('tests.support.app_harness:create_app', {...})`."
    classes = [getattr(plugins_module, name) for name in plugins]
    monitor_config = JobMonitorConfig(**config) if config is not None else None
    harness = AppHarness(Path(data_dir), classes, config=monitor_config, secret_key=secret_key,
                         worker_kwargs=worker_kwargs)
    app = harness.build_app()
    app.state.harness = harness
    return app


class SessionClient:
    "One browser session: an httpx client with its own session cookie, sending the requests a page sends."

    def __init__(self, base_url: str, cookies: Optional[httpx.Cookies] = None, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=timeout, cookies=cookies)
        whoami = self.client.get("/whoami")
        self.session_id = whoami.text if whoami.status_code == 200 else ""  # apps other than the harness have none

    def tab(self) -> "SessionClient":
        "Return another tab of this browser: a second client with the same session cookie."
        return SessionClient(self.base_url, cookies=self.client.cookies)

    @property
    def htmx_headers(self) -> dict:
        return {"HX-Request": "true", "Origin": self.base_url, "Sec-Fetch-Site": "same-origin"}

    def set_plan(self, jobs: List[list]) -> None:
        "Set the jobs (one list of steps each) that this session's next trigger submits."
        response = self.client.post(PLAN_PATH, content=json.dumps({"jobs": jobs}))
        assert response.status_code == 204, response.text

    def set_session(self, **values: Any) -> None:
        assert self.client.post(SESSION_PATH, content=json.dumps(values)).status_code == 204

    def post(self, path: str, headers: Optional[dict] = None, **kwargs: Any) -> httpx.Response:
        return self.client.post(path, headers=self.htmx_headers if headers is None else headers, **kwargs)

    def trigger(self) -> httpx.Response:
        return self.post(PREFIX + "/trigger")

    def cancel(self, job_id: str = "") -> httpx.Response:
        return self.post(PREFIX + "/cancel", params={"job_id": job_id})

    def log(self, job_id: str) -> httpx.Response:
        return self.client.get(PREFIX + "/log", params={"job_id": job_id})

    def page(self) -> str:
        return self.client.get("/").text

    def stream(self, job_id: str = "", headers: Optional[dict] = None) -> SSEStream:
        return open_sse_stream(self.base_url + PREFIX + "/progress", client=self.client, params={"job_id": job_id},
                               headers=headers)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "SessionClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@contextmanager
def served_harness(data_dir: Path, **harness_kwargs: Any) -> Iterator["AppHarness"]:
    "Serve an `AppHarness` on 127.0.0.1; on exit stop it and check that no worker process outlived it."
    harness = AppHarness(data_dir, **harness_kwargs)
    harness.server = ThreadedServer(harness.build_app(), ready_path="/whoami").start()
    try:
        yield harness
    finally:
        harness.server.stop()
    assert worker_processes(data_dir) == [], "a worker process outlived the test server"


@contextmanager
def session_clients(base_url: str) -> Iterator[Callable[[], SessionClient]]:
    "Yield a function that opens a new browser session on `base_url`; every session it opened is closed on exit."
    opened: List[SessionClient] = []

    def open_session() -> SessionClient:
        opened.append(SessionClient(base_url))
        return opened[-1]

    try:
        yield open_session
    finally:
        for client in opened: client.close()


def job_id_of(response: httpx.Response) -> str:
    "Return the job id that a trigger response's modal connects to."
    match = JOB_ID_RE.search(response.text)
    assert match is not None, f"no job id in the response: {response.text[:400]!r}"
    return match.group(1)


def read_until_done(stream: SSEStream, timeout: float = 60.0) -> List[SSEEvent]:
    "Return the stream's events up to and including `done`."
    return stream.read_until(lambda event: event.event == "done", timeout=timeout)


@dataclass
class Markup:
    "The elements and the text of an HTML fragment, as a browser's parser would split them."
    elements: List[tuple] = field(default_factory=list)  # (tag, {attribute: value}) in document order
    text: str = ""  # All text nodes joined, with character references decoded

    def with_attribute(self, name: str) -> List[tuple]:
        return [(tag, attrs) for tag, attrs in self.elements if name in attrs]

    def ids(self) -> List[str]:
        return [attrs["id"] for _, attrs in self.elements if attrs.get("id")]


class _MarkupParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.markup = Markup()
        self._text: List[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.markup.elements.append((tag, {name: value or "" for name, value in attrs}))

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def parse_markup(html: str) -> Markup:
    "Parse an HTML fragment into its elements and text with the standard library's HTML parser."
    parser = _MarkupParser()
    parser.feed(html)
    parser.close()
    parser.markup.text = "".join(parser._text)
    return parser.markup
