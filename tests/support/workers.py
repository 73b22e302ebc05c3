"""Real cjm-plugin-system workers in a temporary data folder, for tests.

`worker_env` is the one entry point. It writes a manifest per plugin class into
a fresh data folder and points the plugin system's config at that folder, so
nothing is written under `$HOME`. Then it loads the plugins, starts a
`JobQueue`, and yields a `WorkerEnv` with the manager, the queue and a
`JobMonitorService`. On exit it stops the service and the queue, unloads the
plugins, kills any worker process of that data folder that is still alive, and
restores the config::

    from tests.support.plugins import StepsPlugin
    from tests.support.workers import worker_env

    async def test_something(tmp_path):
        async with worker_env(tmp_path, StepsPlugin) as env:
            job_id = await env.service.submit_job(env.name, steps=[["print", "hi"]])
            await env.queue.wait_for_job(job_id, timeout=10)

Spawning a worker takes about 0.6 s, so share one `worker_env` across the
tests of a module where they do not interfere (a module-scoped fixture with
`loop_scope="module"`). `worker_processes(data_dir)` lists the worker
processes of a data folder, for checks that nothing was left behind.
"""
from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Dict, List, Optional

import psutil

from cjm_plugin_system.core.config import CJMConfig, reset_config, set_config
from cjm_plugin_system.core.manager import PluginManager
from cjm_plugin_system.core.queue import JobQueue

from cjm_fasthtml_job_monitor.demo.plugin import write_plugin_manifest
from cjm_fasthtml_job_monitor.services.monitor import JobMonitorService

logger = logging.getLogger(__name__)

WORKER_MODULE = "cjm_plugin_system.core.worker"  # Module that every worker process runs
KILL_WAIT_S = 3.0  # Seconds to wait for a leftover worker to exit after terminate, then after kill
JOB_TIMEOUT_S = 15.0  # Default seconds `WorkerEnv.run_job` waits for a job to end
LOGGING_ERROR_MARKER = "--- Logging error ---"  # First line Python's logging prints when a handler fails to write


@dataclass
class WorkerEnv:
    "Plugin manager, started job queue and monitor service over workers in one data folder."
    data_dir: Path  # Plugin system data folder (manifests, databases)
    manager: PluginManager
    queue: JobQueue
    service: JobMonitorService
    names: List[str] = field(default_factory=list)  # Loaded plugin names, in the order given

    @property
    def name(self) -> str:
        "Name of the first plugin, for the common one-plugin case."
        return self.names[0]

    def worker_pid(self, name: Optional[str] = None) -> Optional[int]:
        "Return the PID of a plugin's current worker, or None when it has none."
        proxy = self.manager.get_plugin(name or self.name)
        process = getattr(proxy, "process", None)
        return process.pid if process is not None else None

    async def run_job(self, plugin: str, *args: Any, timeout_s: float = JOB_TIMEOUT_S, **kwargs: Any) -> str:
        "Submit a job through the service, wait until it ends and return its ID."
        job_id = await self.service.submit_job(plugin, *args, **kwargs)
        await self.queue.wait_for_job(job_id, timeout=timeout_s)
        return job_id

    def log_write_failures(self, job_id: str) -> int:
        "Count the logging records that the worker failed to store during a finished job."
        # The worker's log handler writes each record to SQLite. When a write fails, logging prints the
        # error to stderr, and the worker's pipe carries it into the job's stdout. This was seen once,
        # under a load average of about 8 on two cores (cjm-plugin-system 0.0.46).
        lines, _ = self.service.read_job_log(job_id, limit=100_000)
        return sum(LOGGING_ERROR_MARKER in line.message for line in lines)


def worker_processes(data_dir: Path) -> List[psutil.Process]:
    "List the live worker processes whose diagnostics database lies in `data_dir`."
    marker = str(Path(data_dir).resolve())
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if WORKER_MODULE not in (proc.info["cmdline"] or []):
                continue
            if proc.environ().get("CJM_DIAGNOSTICS_DB", "").startswith(marker):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_worker_processes(data_dir: Path) -> List[int]:
    "Terminate, then kill, the worker processes of `data_dir`; return the PIDs that were still alive."
    procs = worker_processes(data_dir)
    for proc in procs:
        logger.warning("Worker %d of %s outlived its plugin manager; terminating it", proc.pid, data_dir)
        try: proc.terminate()
        except psutil.NoSuchProcess: pass
    _, alive = psutil.wait_procs(procs, timeout=KILL_WAIT_S)
    for proc in alive:
        try: proc.kill()
        except psutil.NoSuchProcess: pass
    psutil.wait_procs(alive, timeout=KILL_WAIT_S)
    return [proc.pid for proc in procs]


def add_worker_env_specs(
    manifest_path: Path,  # Manifest written by `write_plugin_manifest`
    specs: List[Dict[str, Any]],  # Entries such as {"name": "API_KEY", "secret": True}
) -> None:
    "Add `worker_env` entries to a manifest; the manager puts them in the worker's environment, secrets from its store."
    manifest = json.loads(Path(manifest_path).read_text())
    manifest["code"]["worker_env"] = list(specs)
    Path(manifest_path).write_text(json.dumps(manifest, indent=2))


@asynccontextmanager
async def worker_env(
    data_dir: Path,  # Empty folder for manifests and databases, e.g. pytest's tmp_path
    *plugin_classes: type,  # ToolCapability subclasses importable by a worker (defined in a module, not a test)
    progress_poll_interval: float = 0.1,  # Seconds between the queue's progress polls
    cancel_timeout: float = 1.0,  # Seconds the queue waits for a cooperative cancel before killing the worker
    queue_kwargs: Optional[Dict[str, Any]] = None,  # Further `JobQueue` arguments
    service_kwargs: Optional[Dict[str, Any]] = None,  # Further `JobMonitorService` arguments
    worker_env_specs: Optional[Dict[str, List[Dict[str, Any]]]] = None,  # Plugin name -> manifest `worker_env` entries
    secrets: Optional[Dict[str, Dict[str, str]]] = None,  # Plugin name -> {variable: value} put in the secret store
) -> AsyncIterator[WorkerEnv]:  # The running environment; torn down on exit
    "Load `plugin_classes` as real workers under `data_dir` and run a queue and a monitor service over them."
    data_dir = Path(data_dir).resolve()
    manager: Optional[PluginManager] = None
    queue: Optional[JobQueue] = None
    service: Optional[JobMonitorService] = None
    set_config(CJMConfig(data_dir=data_dir))
    try:
        for cls in plugin_classes:
            path = write_plugin_manifest(data_dir, cls)
            name = cls.plugin_name if hasattr(cls, "plugin_name") else cls().name
            if worker_env_specs and name in worker_env_specs: add_worker_env_specs(path, worker_env_specs[name])
        manager = PluginManager(search_paths=[data_dir / "manifests"])
        for plugin, values in (secrets or {}).items():
            for variable, value in values.items(): manager.secret_store.set_secret(plugin, variable, value)
        metas = {meta.name: meta for meta in manager.discover_manifests()}
        names = [cls.plugin_name if hasattr(cls, "plugin_name") else cls().name for cls in plugin_classes]
        for name in names:
            if name not in metas:
                raise RuntimeError(f"Manifest of plugin {name!r} not found in {data_dir / 'manifests'}.")
            if not manager.load_plugin(metas[name]):
                raise RuntimeError(f"Loading plugin {name!r} failed; see the worker output in {data_dir}.")
        queue = JobQueue(manager, progress_poll_interval=progress_poll_interval,
                         cancel_timeout=cancel_timeout, **(queue_kwargs or {}))
        await queue.start()
        service = JobMonitorService(queue, manager, **(service_kwargs or {}))
        yield WorkerEnv(data_dir=data_dir, manager=manager, queue=queue, service=service, names=names)
    finally:
        if service is not None: await service.aclose()
        if queue is not None: await queue.stop()
        if manager is not None: manager.unload_all()
        kill_worker_processes(data_dir)
        reset_config()
