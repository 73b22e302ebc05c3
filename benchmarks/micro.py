"""In-process timings: rendering an update and the modal, and one log-tail read with a small and a huge log.

Rendering uses the library's components the way the SSE routes use them
(`routes/init.py`, `_SequenceRunner.render_*` and `update_since`). While the
status stays the same, an update carries only the changed parts of the
progress tab. The largest such update of the logging job is its bar, message
and estimate as out-of-band swaps plus two new log lines as an out-of-band
append, framed as one SSE message. A status change sends the whole progress
tab. The log-tail timings use a real worker, queue and `JobMonitorService`,
with records inserted straight into the plugin system's diagnostics store
(SQLite) for two jobs that run at once.
"""
from __future__ import annotations

import asyncio
import gc
import sqlite3
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from fasthtml.common import Div, to_xml

from cjm_plugin_system.core.diagnostics_store import DiagnosticRecord

from cjm_fasthtml_job_monitor.components.modal import render_job_modal
from cjm_fasthtml_job_monitor.components.tabs.logs_tab import render_log_line, render_logs_tab
from cjm_fasthtml_job_monitor.components.tabs.progress_tab import (
    _PROGRESS_PARTS, _progress_state, _render_progress_part, render_progress_tab,
)
from cjm_fasthtml_job_monitor.components.tabs.resources_tab import _render_stat_update, render_resources_tab
from cjm_fasthtml_job_monitor.html_ids import JobMonitorHtmlIds
from cjm_fasthtml_job_monitor.models import JobMonitorConfig, JobMonitorUrls, LogLine, ResourceSnapshot
from cjm_fasthtml_job_monitor.routes.init import format_sse
from cjm_fasthtml_job_monitor.services.monitor import LogCursor

from benchmarks.plugin import SecondSteadyJobPlugin, SteadyJobPlugin
from tests.support.workers import worker_env

INSERT_BATCH = 50_000  # Records per INSERT transaction when filling the store
RECORD_AGE_S = 5.0  # Age of inserted records; older than the service's settle delay, so a read returns them at once


def time_calls(function: Callable[[int], Any], repeat: int, warmup: int = 20) -> Dict[str, float]:
    "Call `function(i)` `repeat` times after `warmup` calls; return the median and p95 of one call in seconds."
    # NOTE: each figure comes from one batch of calls, so other work on the machine during that batch shifts it.
    # Compare figures of different runs together with their load averages.
    for i in range(warmup): function(i)
    samples = []
    for i in range(repeat):
        start = time.perf_counter()
        function(i)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {"count": repeat, "p50": statistics.median(samples), "p95": samples[int(0.95 * (repeat - 1))]}


def _snapshot(pid: int, at: float) -> ResourceSnapshot:
    return ResourceSnapshot(worker_pid=pid, cpu_percent=12.5, memory_rss_mb=142.0, timestamp=at, cpu_count=2,
                            memory_total_mb=8192.0, process_count=1)


def render_timings(repeat: int) -> Dict[str, Dict[str, float]]:
    "Time the render of one update, of its parts, of the full modal and of one baseline poll response."
    ids, config = JobMonitorHtmlIds("jm"), JobMonitorConfig()
    urls = JobMonitorUrls(trigger="/jobs/trigger", progress="/jobs/progress", cancel="/jobs/cancel",
                          log="/jobs/log", outcome="/jobs/outcome")
    started = time.time() - 30.0
    history = [_snapshot(4242, started + 2 * i) for i in range(15)]  # 30 s of samples, one every 2 s

    def line(seq: int) -> LogLine:
        return LogLine(seq=seq, ts=started + seq * 0.2, level="INFO", source="log", logger="jm_bench_steady",
                       message=f"line {seq}: processed item {seq} of the batch ({seq * 0.2:.1f} s into the job)")

    def compact(element: Any) -> str:
        return to_xml(element, indent=False)  # as the routes serialise what they stream

    def progress_fragment(i: int) -> str:
        tab = render_progress_tab(ids, "running", (i % 1000) / 1000, f"tick {i} sent {time.time():.6f}", started,
                                  None, now=time.time(), eta_s=30.0 + i % 60)
        return compact(Div(tab, id=ids.tab_progress, hx_swap_oob="true"))

    def progress_parts(i: int) -> str:
        state = _progress_state("running", (i % 1000) / 1000, f"tick {i} sent {time.time():.6f}",
                                eta_s=30.0 + i % 60)
        parts = []
        for name in _PROGRESS_PARTS:
            part = _render_progress_part(ids, state, name)
            part.attrs["hx-swap-oob"] = "true"
            parts.append(compact(part))
        return "".join(parts)

    def log_append(i: int) -> str:
        rendered = "".join(compact(render_log_line(line(2 * i + k))) for k in (1, 2))
        return f'<div hx-swap-oob="beforeend:#{ids.log_lines}">{rendered}</div>'

    def update(i: int) -> bytes:
        return format_sse(f"<div>{progress_parts(i)}{log_append(i)}</div>", event_id=f"bench:{2 * i + 2}").encode()

    def status_update(i: int) -> bytes:
        return format_sse(f"<div>{progress_fragment(i)}</div>", event_id=f"bench:{2 * i + 2}").encode()

    def resources_fragment(i: int) -> str:
        tab = render_resources_tab(history[-1], history=history, ids=ids)
        return compact(Div(tab, id=ids.tab_resources, hx_swap_oob="true"))

    def resources_update(i: int) -> str:
        return "".join(compact(part) for name in ("cpu", "ram")
                       for part in _render_stat_update(ids, history[-1], history, name))

    def modal(i: int) -> str:
        return to_xml(render_job_modal(
            config, ids, urls, job_id="0f0e5848-5963-4976-9e0d-d0b1dd32cb8b", status="running",
            progress_value=0.5, status_message=f"tick {i} sent {time.time():.6f}", started_at=started,
            resources=history[-1], history=history, log_url="/jobs/log?job_id=x", now=time.time(), eta_s=30.0))

    tail_text = "\n".join(line(seq).format() for seq in range(1, config.log_lines + 1))

    def baseline_response(i: int) -> str:
        tab = render_progress_tab(ids, "running", 0.5, f"tick {i} sent {time.time():.6f}", started, None,
                                  now=time.time())
        logs = render_logs_tab(ids, tail_text, log_url="/jobs/log?job_id=x", dom_limit=config.log_dom_limit)
        return to_xml(Div(tab, id=ids.tab_progress)) + to_xml(Div(logs, id=ids.tab_logs, hx_swap_oob="true"))

    calls = {"update": (update, repeat), "status_update": (status_update, repeat),
             "progress_parts": (progress_parts, repeat), "log_line": (lambda i: compact(render_log_line(line(i))), repeat),
             "resources_update": (resources_update, max(50, repeat // 5)),
             "resources_fragment": (resources_fragment, max(50, repeat // 5)),
             "modal": (modal, max(50, repeat // 5)), "baseline_response": (baseline_response, max(50, repeat // 5))}
    timings = {}
    for name, (function, count) in calls.items():
        timings[name] = time_calls(function, count)
        output = function(1)
        timings[name]["bytes"] = len(output if isinstance(output, bytes) else output.encode())
    return timings


def _fill_records(db_path: Path, job_id: str, session: str, first: int, count: int) -> None:
    "Insert `count` logging records of `job_id` straight into the diagnostics database, numbered from `first`."
    ts = (datetime.now(timezone.utc) - timedelta(seconds=RECORD_AGE_S)).isoformat()
    connection = sqlite3.connect(db_path, timeout=30.0)
    try:
        for start in range(first, first + count, INSERT_BATCH):
            stop = min(start + INSERT_BATCH, first + count)
            rows = [(ts, session, job_id, "INFO", "jm_bench_steady", f"line {n}: processed item {n} of the batch", None)
                    for n in range(start, stop)]
            connection.executemany("INSERT INTO records (ts, worker_session_id, job_id, level, logger_name, message, "
                                   "exc_text) VALUES (?,?,?,?,?,?,?)", rows)
            connection.commit()
    finally:
        connection.close()


def _summary(samples: List[float]) -> Dict[str, float]:
    ordered = sorted(samples)
    return {"count": len(ordered), "p50": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))]}


def _append_line(store: Any, job_id: str, session: str) -> None:
    store.append_record(DiagnosticRecord(message="one new line", logger_name="jm_bench_steady", job_id=job_id,
                                         worker_session_id=session,
                                         ts=datetime.now(timezone.utc) - timedelta(seconds=RECORD_AGE_S)))


def _time_tail_reads(env: Any, jobs: List[Tuple[str, str, str]], repeat: int) -> Dict[str, Dict[str, Any]]:
    """Time tail reads of several running jobs, alternating between them so that drift in the machine's load hits all.

    For each (label, job id, worker session): a read that finds nothing new, one that returns the one record
    added just before it, and the baseline's `get_logs` read of the plugin's last lines.
    """
    store = env.manager.diagnostics_store
    cursors = {}
    for label, job_id, _ in jobs:
        last = store.query_records(job_id=job_id, limit=1, descending=True)[0].seq
        # A cursor just before the last record, read once, gives a cursor at the tail with the stdout fields set.
        _, cursors[label] = env.service.read_job_log(job_id, LogCursor(record_seq=last - 1))

    samples: Dict[str, Dict[str, List[float]]] = {label: {"tail_read_nothing_new": [], "tail_read_one_line": [],
                                                          "baseline_get_logs": []} for label, _, _ in jobs}
    log_lines = JobMonitorConfig().log_lines
    for round_ in range(repeat):
        order = jobs if round_ % 2 == 0 else jobs[::-1]
        for label, job_id, session in order:
            start = time.perf_counter()
            lines, cursors[label] = env.service.read_job_log(job_id, cursors[label])
            samples[label]["tail_read_nothing_new"].append(time.perf_counter() - start)
            assert not lines, f"expected no new line at the tail of job {job_id}, got {len(lines)}"

            _append_line(store, job_id, session)
            start = time.perf_counter()
            lines, cursors[label] = env.service.read_job_log(job_id, cursors[label])
            samples[label]["tail_read_one_line"].append(time.perf_counter() - start)
            assert len(lines) == 1, f"expected the one new line of job {job_id}, got {len(lines)}"

            plugin = env.queue.get_job(job_id).plugin_instance_id
            start = time.perf_counter()
            env.service.get_logs(plugin, lines=log_lines)
            samples[label]["baseline_get_logs"].append(time.perf_counter() - start)
    return {label: {name: _summary(values) for name, values in figures.items()} for label, figures in samples.items()}


async def _start_idle_job(env: Any, plugin: str) -> Tuple[str, str]:
    "Submit a long job that logs nothing to `plugin`, wait until it runs, and return its id and worker session."
    job_id = await env.service.submit_job(plugin, duration_s=3600.0, progress_interval_s=1.0, log_interval_s=0.0)
    deadline = time.monotonic() + 30.0
    while env.queue.get_job(job_id).started_at is None:
        if time.monotonic() > deadline: raise TimeoutError(f"Job {job_id} of {plugin} did not start within 30 s.")
        await asyncio.sleep(0.05)
    return job_id, env.manager.get_plugin(plugin).worker_session_id


def _checkpoint(db_path: Path) -> None:
    "Move the write-ahead log into the database, as SQLite's automatic checkpoints do over a long-lived store."
    connection = sqlite3.connect(db_path, timeout=30.0)
    try: connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally: connection.close()


async def log_tail_timings(
    sizes: List[int],  # Stored records of each job, at most two sizes, e.g. [100, 1_000_000]
    repeat: int,  # Timed reads per figure
    progress_poll_interval: float,  # The JobQueue's progress_poll_interval
) -> Dict[str, Any]:  # Per size: timings of the tail reads and the seconds the fill took
    "Run one job per size at the same time, fill each one's log to its size, and time `read_job_log` at the tail."
    plugins = [SteadyJobPlugin, SecondSteadyJobPlugin][:len(sizes)]
    if len(plugins) < len(sizes): raise ValueError(f"At most {len(plugins)} log sizes can be timed, got {sizes}.")
    fill_seconds: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="jm-bench-logtail-") as tmp:
        async with worker_env(Path(tmp), *plugins, progress_poll_interval=progress_poll_interval) as env:
            store = env.manager.diagnostics_store
            # The queue runs a job of a plugin without a resource profile alone. A short first job of each
            # plugin records that profile, so that the two long jobs below can run at the same time.
            for plugin in env.names:
                await env.run_job(plugin, duration_s=0.2, progress_interval_s=0.1, log_interval_s=0.0)
            jobs = []
            for size, plugin in zip(sizes, env.names):
                job_id, session = await _start_idle_job(env, plugin)
                store.append_record(DiagnosticRecord(message="line 0", job_id=job_id, worker_session_id=session,
                                                     ts=datetime.now(timezone.utc) - timedelta(seconds=RECORD_AGE_S)))
                fill_start = time.perf_counter()
                await asyncio.to_thread(_fill_records, store.db_path, job_id, session, 1, size - 1)
                fill_seconds[str(size)] = time.perf_counter() - fill_start
                jobs.append((str(size), job_id, session))
            await asyncio.to_thread(_checkpoint, store.db_path)
            gc.collect()
            timings = await asyncio.to_thread(_time_tail_reads, env, jobs, repeat)
            for _, job_id, _ in jobs: await env.service.cancel_job(job_id)
    return {size: {**figures, "fill_s": fill_seconds[size]} for size, figures in timings.items()}
