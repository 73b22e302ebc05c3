"""The FastHTML app that the benchmarks serve: the monitor's routes, a polling baseline and a few control routes.

`create_bench_app` is an app factory for `tests.support.server.ServerProcess`, so
that the app runs in a process of its own and its CPU and memory can be read
apart from the worker's and the clients'. Routes:

- `/jobs/...`: `init_job_monitor_routes` as an app mounts it (trigger, SSE progress, cancel, log).
- `GET /baseline/poll?job_id=`: the way earlier job monitors worked. Each request
  re-renders the progress tab and the logs tab with the last `log_lines` lines
  of the plugin's log, read with `JobMonitorService.get_logs`.
- `/bench/...`: control routes for the driver (session cookie, direct submit,
  job list, and the time at which the queue held each progress report).
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
from fasthtml.common import Div, FastHTML, fast_app, to_xml
from starlette.responses import JSONResponse, Response

from cjm_plugin_system.core.config import CJMConfig, reset_config, set_config
from cjm_plugin_system.core.manager import PluginManager
from cjm_plugin_system.core.proxy import RemotePluginProxy
from cjm_plugin_system.core.queue import JobEventType, JobQueue
from cjm_workflow_state.state_store import SQLiteWorkflowStateStore

from cjm_fasthtml_job_monitor.components.tabs.logs_tab import render_logs_tab
from cjm_fasthtml_job_monitor.components.tabs.progress_tab import render_progress_tab
from cjm_fasthtml_job_monitor.demo.plugin import write_plugin_manifest
from cjm_fasthtml_job_monitor.models import JobMonitorConfig
from cjm_fasthtml_job_monitor.routes.init import get_workflow_session_id, init_job_monitor_routes
from cjm_fasthtml_job_monitor.services.monitor import JobMonitorService

from benchmarks.plugin import PLUGIN_NAME, SteadyJobPlugin

logger = logging.getLogger(__name__)

WORKFLOW_ID, STEP_ID, STATE_KEY = "bench", "steady", "job_tracker"
CONTENT_ID = "bench-content"


def _silence_access_log() -> None:
    "Stop uvicorn's per-request access log, which would add a log write to every baseline poll."
    # uvicorn checks `hasHandlers()` on this logger when it builds each connection's protocol.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


def reuse_worker_http_clients(stats_only: bool = False) -> None:
    """Patch cjm-plugin-system's worker proxy in this process to keep one HTTP client per proxy.

    This is an experiment for a proposed upstream fix, not a part of the library. In cjm-plugin-system
    0.0.46, `RemotePluginProxy.get_progress_async` builds a new `httpx.AsyncClient`, and with it an SSL
    context, for every progress poll. `get_stats` builds a new `httpx.Client` for every resource sample.
    Both run synchronously in the event loop. With `stats_only`, only `get_stats` is patched.
    """
    def progress_or_default(response: httpx.Response) -> Dict[str, Any]:
        return response.json() if response.status_code == 200 else {"progress": 0.0, "message": ""}

    async def get_progress_async(self) -> Dict[str, Any]:
        client = self.__dict__.get("_bench_async_client")
        if client is None: client = self._bench_async_client = httpx.AsyncClient(timeout=2)
        try:
            return progress_or_default(await client.get(f"{self.base_url}/progress"))
        except httpx.ConnectError:
            return {"progress": 0.0, "message": ""}

    def get_stats(self) -> Dict[str, Any]:
        client = self.__dict__.get("_bench_client")
        if client is None: client = self._bench_client = httpx.Client()
        return client.get(f"{self.base_url}/stats").json()

    RemotePluginProxy.get_stats = get_stats
    if not stats_only: RemotePluginProxy.get_progress_async = get_progress_async


def _render_baseline(service: JobMonitorService, config: JobMonitorConfig, ids: Any, log_url: str,
                     job_id: str) -> Optional[str]:
    "Render the progress tab and the logs tab with the plugin's last `log_lines` lines, or None for an unknown job."
    view = service.get_job_view(job_id)
    if view is None: return None
    logs = service.get_logs(PLUGIN_NAME, lines=config.log_lines)
    progress = render_progress_tab(
        ids, view.status, -1.0 if view.progress is None else view.progress, view.message, view.started_at,
        view.completed_at, error_message=view.error.message if view.error else None, now=time.time())
    logs_tab = render_logs_tab(ids, logs, log_url=log_url, dom_limit=config.log_dom_limit)
    # Serialised without indentation, as the monitor's routes serialise what they stream.
    return (to_xml(Div(progress, id=ids.tab_progress), indent=False)
            + to_xml(Div(logs_tab, id=ids.tab_logs, hx_swap_oob="true"), indent=False))


def create_bench_app(
    data_dir: str,  # Empty folder for the plugin system's stores, the manifest and the state store
    job: Dict[str, Any],  # Keyword arguments of `SteadyJobPlugin.execute` for every job the app starts
    progress_poll_interval: float = 0.1,  # Seconds between the queue's progress polls
    monitor_config: Optional[Dict[str, Any]] = None,  # `JobMonitorConfig` fields that differ from the defaults
    reuse_http_clients: bool = False,  # Apply `reuse_worker_http_clients` in this process
    reuse_stats_client: bool = False,  # Apply `reuse_worker_http_clients(stats_only=True)`; ignored with reuse_http_clients
) -> FastHTML:  # The app; its startup handler loads the plugin and starts the queue
    "Create the benchmark app over a real worker of `SteadyJobPlugin`."
    if reuse_http_clients: reuse_worker_http_clients()
    elif reuse_stats_client: reuse_worker_http_clients(stats_only=True)
    data_dir_path = Path(data_dir).resolve()
    data_dir_path.mkdir(parents=True, exist_ok=True)
    set_config(CJMConfig(data_dir=data_dir_path))
    write_plugin_manifest(data_dir_path, SteadyJobPlugin)
    manager = PluginManager(search_paths=[data_dir_path / "manifests"])
    queue = JobQueue(manager, progress_poll_interval=progress_poll_interval, cancel_timeout=5.0)
    service = JobMonitorService(queue, manager)
    store = SQLiteWorkflowStateStore(data_dir_path / "workflow_state.db")
    config = JobMonitorConfig(**(monitor_config or {}))

    router, urls, ids = init_job_monitor_routes(
        service, PLUGIN_NAME, store, WORKFLOW_ID, STEP_ID, STATE_KEY, prefix="/jobs", overlay_target_id=CONTENT_ID,
        job_args_builder=lambda state_store, workflow_id, session_id: [((), dict(job))], config=config)

    # job id -> [(status message, epoch seconds at which the queue set the job's progress)]
    progress_times: Dict[str, List[tuple]] = defaultdict(list)
    background: List[asyncio.Task] = []

    async def record_progress_times() -> None:
        # The queue builds the event right after it assigns job.progress, in the same synchronous step,
        # so the event's timestamp is the moment the job's progress field changed.
        async for event in queue.all_events():
            if event.type == JobEventType.PROGRESS_CHANGED:
                message = event.payload.get("status_message", "")
                progress_times[event.job_id].append((message, event.timestamp.timestamp()))

    async def startup() -> None:
        _silence_access_log()
        metas = [m for m in manager.discover_manifests() if m.name == PLUGIN_NAME]
        if not metas or not manager.load_plugin(metas[0]):
            raise RuntimeError(f"Loading the benchmark plugin {PLUGIN_NAME!r} from {data_dir_path} failed.")
        await queue.start()
        background.append(asyncio.create_task(record_progress_times()))

    async def shutdown() -> None:
        for unfinished in queue.get_running_jobs() + queue.get_pending():
            await queue.cancel(unfinished.id)
        for task in background: task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await service.aclose()
        await queue.stop()
        manager.unload_all()
        reset_config()

    app, rt = fast_app(pico=False, surreal=False, default_hdrs=False, on_startup=[startup], on_shutdown=[shutdown],
                       key_fname=str(data_dir_path / ".sesskey"))
    router.to_app(app)

    @rt("/bench/ready")
    def ready():
        return Response("ok", media_type="text/plain")

    @rt("/bench/server-info")
    async def server_info():
        # uvicorn imports only the HTTP protocol module it selected, so the loaded one is the one in use.
        parsers = {"uvicorn.protocols.http.httptools_impl": "httptools", "uvicorn.protocols.http.h11_impl": "h11"}
        loop = type(asyncio.get_running_loop())
        return JSONResponse({"event_loop": f"{loop.__module__}.{loop.__qualname__}",
                             "http_parser": ", ".join(name for module, name in parsers.items() if module in sys.modules)})

    @rt("/bench/session")
    def session(sess):
        return Response(get_workflow_session_id(sess), media_type="text/plain")

    @rt("/bench/submit", methods=["post"])
    async def submit():
        job_id = await service.submit_job(PLUGIN_NAME, **job)
        return Response(job_id, media_type="text/plain")

    @rt("/bench/jobs")
    def jobs():
        found = [*queue.get_running_jobs(), *queue.get_pending(), *queue.get_history()]
        return JSONResponse([{"id": job_.id, "status": getattr(job_.status, "value", str(job_.status)),
                              "started_at": job_.started_at.timestamp() if job_.started_at else None,
                              "completed_at": job_.completed_at.timestamp() if job_.completed_at else None}
                             for job_ in found])

    @rt("/bench/progress-times")
    def progress_times_route(job_id: str):
        return JSONResponse(progress_times.get(job_id, []))

    log_url_prefix = urls.log

    @rt("/baseline/poll")
    def baseline_poll(job_id: str):
        # A plain `def`: FastHTML runs it in a worker thread, as it would an earlier monitor's polling route.
        html = _render_baseline(service, config, ids, f"{log_url_prefix}?job_id={job_id}", job_id)
        if html is None: return Response("No job with that id.", status_code=404, media_type="text/plain")
        return Response(html, media_type="text/html; charset=utf-8")

    return app
