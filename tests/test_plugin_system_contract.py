"""Contract tests: each cjm-plugin-system call that the monitor service makes, against a real worker.

cjm-plugin-system changes its API between releases (0.0.46 removed
`get_plugin_logs` and turned timestamps into datetimes). Each test here pins
one call or one value shape that `services/monitor` relies on. Its failure message
names the call and what changed, so an upgrade that breaks the service fails
here first and points at the code to update.
"""
from __future__ import annotations

import asyncio
import inspect
import sqlite3
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any, List

import pytest
import pytest_asyncio

from cjm_plugin_system.core.queue import Job, JobEventType, JobQueue

from cjm_fasthtml_job_monitor.services.monitor import QUEUE_INITIAL_PROGRESS, count_event_subscriptions
from tests.support.plugins import StepsPlugin
from tests.support.workers import worker_env, worker_processes

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEPS = StepsPlugin.plugin_name
JOB_TIMEOUT_S = 15.0  # Upper bound for a test job; each takes well under a second


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("contract")
    async with worker_env(data_dir, StepsPlugin, cancel_timeout=0.5) as running:
        yield running
    assert worker_processes(data_dir) == [], "a worker process outlived the test environment"


LOGGED_STEPS = [["print", "contract stdout 1"], ["log", "INFO", "contract record 1"],
                ["print", "contract stdout 2"], ["log", "WARNING", "contract record 2"]]


async def run_logging_job(env, steps: List[list]) -> str:
    "Run a job whose logging records must all reach the store, again if the worker failed to store one."
    for _ in range(3):
        job_id = await env.run_job(STEPS, steps=steps, timeout_s=JOB_TIMEOUT_S)
        if env.log_write_failures(job_id) == 0: return job_id
    raise AssertionError("The worker failed to store a logging record in three runs in a row.")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def logged_job(env):
    "A finished job that printed two lines and logged two records, all of them stored."
    job_id = await run_logging_job(env, LOGGED_STEPS)
    # The host stores stdout when its pump thread reads the worker's pipe, which can lag behind the job's end.
    session = env.manager.get_plugin(STEPS).worker_session_id
    deadline = asyncio.get_running_loop().time() + 5.0
    while "contract stdout 2" not in [c.content for c in env.manager.diagnostics_store.query_chunks(worker_session_id=session)]:
        assert asyncio.get_running_loop().time() < deadline, "the worker's print() output never reached the store"
        await asyncio.sleep(0.05)
    return job_id


def accepts(func: Any, *names: str) -> bool:
    params = inspect.signature(func).parameters
    return all(name in params for name in names)


def is_aware_datetime(value: Any) -> bool:
    return isinstance(value, datetime) and value.utcoffset() == timedelta(0)


# PluginManager and the worker proxy

async def test_get_plugin_returns_proxy_with_process(env):
    proxy = env.manager.get_plugin(STEPS)
    assert proxy is not None, "PluginManager.get_plugin(name) no longer returns the loaded plugin's proxy"
    assert env.manager.get_plugin("jm-test-missing") is None, \
        "PluginManager.get_plugin(name) no longer returns None for a plugin that is not loaded"
    process = getattr(proxy, "process", None)
    assert process is not None, "RemotePluginProxy.process is gone: the service samples the worker by its pid"
    assert isinstance(process.pid, int), "RemotePluginProxy.process.pid is no longer an int"
    assert process.poll() is None, "RemotePluginProxy.process.poll() no longer reports a live worker as None"


async def test_proxy_has_worker_session_id(env):
    session = getattr(env.manager.get_plugin(STEPS), "worker_session_id", None)
    assert isinstance(session, str), \
        "RemotePluginProxy.worker_session_id is no longer a str: the service reads a job's stdout by worker session"
    assert session, "RemotePluginProxy.worker_session_id is empty for a running worker"


async def test_proxy_get_progress_shape(env):
    info = env.manager.get_plugin(STEPS).get_progress()
    assert isinstance(info, dict), f"RemotePluginProxy.get_progress() no longer returns a dict: got {info!r}"
    assert {"progress", "message"} <= set(info), \
        f"RemotePluginProxy.get_progress() no longer returns the keys 'progress' and 'message': got {info!r}"


async def test_proxy_has_system_monitor_methods(env):
    proxy = env.manager.get_plugin(STEPS)
    for method in ("list_processes", "get_system_status"):
        assert callable(getattr(proxy, method, None)), \
            f"RemotePluginProxy.{method}() is gone: the service's system-monitor GPU fallback calls it"


async def test_get_plugin_diagnostics_returns_text(env):
    assert accepts(env.manager.get_plugin_diagnostics, "limit"), \
        "PluginManager.get_plugin_diagnostics(name, limit) no longer accepts limit"
    await run_logging_job(env, [["log", "WARNING", "contract diagnostics record"]])
    text = env.manager.get_plugin_diagnostics(STEPS, limit=20)
    assert isinstance(text, str), "PluginManager.get_plugin_diagnostics(name, limit) no longer returns text"
    assert "contract diagnostics record" in text, \
        "PluginManager.get_plugin_diagnostics(name, limit) no longer includes the plugin's logging records"


# JobQueue: jobs

async def test_submit_returns_job_id(env):
    assert accepts(JobQueue.submit, "priority"), "JobQueue.submit(plugin, *args, priority, **kwargs) no longer accepts priority"
    job_id = await env.queue.submit(STEPS, priority=1, steps=[])
    assert isinstance(job_id, str), f"JobQueue.submit() no longer returns the job id as a str: got {job_id!r}"
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)


async def test_new_job_initial_progress(env):
    job = Job(id="j", plugin_instance_id="p", args=(), kwargs={})
    assert (job.progress, job.status_message) == QUEUE_INITIAL_PROGRESS, \
        "Job's initial (progress, status_message) changed: update QUEUE_INITIAL_PROGRESS, the 'no report yet' value"


async def test_get_job_fields_of_completed_job(env):
    job_id = await env.queue.submit(STEPS, steps=[["progress", 0.5, "half"]])
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    job = env.queue.get_job(job_id)
    assert job is not None, "JobQueue.get_job(job_id) no longer returns a finished job"
    assert getattr(job.status, "value", None) == "completed", \
        f"JobQueue.get_job().status is no longer a JobStatus enum with value 'completed': got {job.status!r}"
    for name in ("submitted_at", "started_at", "completed_at"):
        assert is_aware_datetime(getattr(job, name)), \
            f"Job.{name} is no longer a timezone-aware UTC datetime: got {getattr(job, name)!r}; update to_epoch"
    assert job.plugin_instance_id == STEPS, "Job.plugin_instance_id no longer names the plugin"
    assert job.result == {"steps": 1}, "Job.result no longer carries the plugin's return value"
    assert isinstance(job.progress, float), "Job.progress is no longer a float"
    for name in ("status_message", "cancel_requested_at", "cancel_phase", "error"):
        assert hasattr(job, name), f"Job.{name} is gone: job_to_view reads it"
    assert env.queue.get_job("no-such-job") is None, "JobQueue.get_job(job_id) no longer returns None for an unknown id"


async def test_failed_job_error_fields(env):
    job_id = await env.queue.submit(STEPS, steps=[["fail", "contract failure"]])
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    job = env.queue.get_job(job_id)
    assert job.status.value == "failed", f"A plugin exception no longer ends the job as failed: got {job.status!r}"
    for name in ("category", "message", "original_exc_repr"):
        assert isinstance(getattr(job.error, name, None), str), \
            f"Job.error.{name} is no longer a str: the view's error summary reads it"
    assert "contract failure" in job.error.message, "Job.error.message no longer carries the exception's message"


async def test_cancel_through_check_cancel(env):
    job_id = await env.queue.submit(STEPS, steps=[["wait_cancel", 10, "raise"]])
    await asyncio.sleep(0.3)
    assert await env.queue.cancel(job_id) is True, "JobQueue.cancel(job_id) no longer returns True for a running job"
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    job = env.queue.get_job(job_id)
    assert job.cancel_requested_at is not None, "JobQueue.cancel() no longer sets Job.cancel_requested_at"
    if job.status.value == "failed":
        assert job.error.original_exc_repr.startswith("PluginCancelledError"), \
            ("A plugin raising through check_cancel() ends failed, but Job.error.original_exc_repr no longer "
             f"starts with 'PluginCancelledError' ({job.error.original_exc_repr!r}): the view would call it failed")
    else:
        assert job.status.value == "cancelled", f"A job cancelled through check_cancel() ended {job.status!r}"
    assert await env.queue.cancel(job_id) is False, "JobQueue.cancel(job_id) no longer returns False for a finished job"
    assert await env.queue.cancel("no-such-job") is False, "JobQueue.cancel(job_id) no longer returns False for an unknown id"


async def test_active_job_listings(env):
    blocker = await env.queue.submit(STEPS, steps=[["wait_cancel", 10, "return"]])
    pending = await env.queue.submit(STEPS, steps=[])
    await asyncio.sleep(0.3)
    assert blocker in [job.id for job in env.queue.get_running_jobs()], \
        "JobQueue.get_running_jobs() no longer lists the running job"
    assert pending in [job.id for job in env.queue.get_pending()], \
        "JobQueue.get_pending() no longer lists a job waiting behind another on the same plugin"
    await env.queue.cancel(blocker)
    finished = await env.queue.wait_for_job(pending, timeout=JOB_TIMEOUT_S)
    assert finished.id == pending, "JobQueue.wait_for_job(job_id, timeout) no longer returns the finished job"
    assert blocker in [job.id for job in env.queue.get_history()], \
        "JobQueue.get_history() no longer lists finished jobs"


# JobQueue: logs

async def test_get_job_diagnostics_after_seq(env, logged_job):
    assert accepts(env.queue.get_job_diagnostics, "limit", "after_seq"), \
        "JobQueue.get_job_diagnostics(job_id, limit, after_seq) no longer accepts limit and after_seq"
    records = env.queue.get_job_diagnostics(logged_job, limit=10)
    assert [r.message for r in records] == ["contract record 1", "contract record 2"], \
        "JobQueue.get_job_diagnostics(job_id) no longer returns exactly the job's logging records, oldest first"
    first = records[0]
    assert isinstance(first.seq, int), "DiagnosticRecord.seq is no longer an int: the log cursor stores it"
    assert is_aware_datetime(first.ts), f"DiagnosticRecord.ts is no longer a UTC datetime: got {first.ts!r}"
    assert first.level == "INFO", f"DiagnosticRecord.level is no longer the level name: got {first.level!r}"
    assert first.logger_name == "jm_test_plugin", f"DiagnosticRecord.logger_name changed: got {first.logger_name!r}"
    for name in ("exc_text", "worker_session_id"):
        assert hasattr(first, name), f"DiagnosticRecord.{name} is gone: the log reader uses it"
    later = env.queue.get_job_diagnostics(logged_job, limit=10, after_seq=first.seq)
    assert [r.message for r in later] == ["contract record 2"], \
        "JobQueue.get_job_diagnostics(job_id, limit, after_seq) no longer returns only records after after_seq"
    assert len(env.queue.get_job_diagnostics(logged_job, limit=1)) == 1, \
        "JobQueue.get_job_diagnostics(job_id, limit) no longer honours limit"


async def test_query_chunks_by_session(env, logged_job):
    store = env.manager.diagnostics_store
    assert accepts(store.query_chunks, "worker_session_id", "after_seq", "limit", "descending"), \
        "diagnostics_store.query_chunks(worker_session_id, after_seq, limit, descending) changed its parameters"
    session = env.queue.get_job_diagnostics(logged_job, limit=1)[0].worker_session_id
    chunks = store.query_chunks(worker_session_id=session)
    contents = [c.content for c in chunks]
    for line in ("contract stdout 1", "contract stdout 2"):
        assert line in contents, "diagnostics_store.query_chunks(worker_session_id) no longer returns the worker's print() output"
    first = [c for c in chunks if c.content == "contract stdout 1"][-1]  # the last run, when a run was repeated
    assert isinstance(first.seq, int), "StreamChunk.seq is no longer an int: the log cursor stores it"
    assert is_aware_datetime(first.ts), f"StreamChunk.ts is no longer a UTC datetime: got {first.ts!r}"
    after = [c.content for c in store.query_chunks(worker_session_id=session, after_seq=first.seq)]
    assert "contract stdout 1" not in after, "diagnostics_store.query_chunks(..., after_seq) returns chunks up to after_seq"
    assert "contract stdout 2" in after, "diagnostics_store.query_chunks(..., after_seq) no longer returns chunks after after_seq"
    newest = store.query_chunks(worker_session_id=session, limit=1, descending=True)
    assert newest[0].seq == max(c.seq for c in chunks), \
        "diagnostics_store.query_chunks(..., limit=1, descending=True) no longer returns the newest chunk"


async def test_query_records_by_session(env, logged_job):
    store = env.manager.diagnostics_store
    assert accepts(store.query_records, "worker_session_id", "limit", "descending"), \
        "diagnostics_store.query_records(worker_session_id, limit, descending) changed its parameters"
    session = env.manager.get_plugin(STEPS).worker_session_id
    newest = store.query_records(worker_session_id=session, limit=1, descending=True)
    assert len(newest) == 1, "diagnostics_store.query_records(worker_session_id, limit=1) no longer honours limit"
    assert newest[0].worker_session_id == session, \
        "diagnostics_store.query_records(worker_session_id) no longer filters by worker session"


def executed_sql(store: Any, query: Any) -> List[str]:
    "Run `query()` and return the SQL statements the store executed, with their parameters filled in."
    statements: List[str] = []
    query()  # opens the store's connection
    connection = getattr(store, "_connection", None)
    assert isinstance(connection, sqlite3.Connection), \
        "LocalDiagnosticsStore._connection is no longer its sqlite3 connection: update executed_sql in this test"
    connection.set_trace_callback(statements.append)
    try:
        query()
    finally:
        connection.set_trace_callback(None)
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")]


async def test_log_queries_use_an_index(env, logged_job):
    """The log cursor's reads must not scan whole tables, or their cost grows with the store."""
    store = env.manager.diagnostics_store
    session = env.manager.get_plugin(STEPS).worker_session_id
    queries = {
        "JobQueue.get_job_diagnostics(job_id, limit, after_seq)":
            lambda: env.queue.get_job_diagnostics(logged_job, limit=100, after_seq=1),
        "diagnostics_store.query_chunks(worker_session_id, after_seq, limit)":
            lambda: store.query_chunks(worker_session_id=session, after_seq=1, limit=100),
    }
    with sqlite3.connect(store.db_path) as connection:
        for call, query in queries.items():
            statements = executed_sql(store, query)
            assert statements, f"{call} no longer runs a SELECT on {store.db_path}: the store changed backend"
            plan = " | ".join(row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {statements[0]}"))
            assert "USING INDEX" in plan or "USING INTEGER PRIMARY KEY" in plan, \
                f"{call} no longer uses an index ({plan}): reading a log would cost more as the store grows"


# JobQueue: events

async def test_events_stream_shapes(env):
    job_id = await env.queue.submit(STEPS, steps=[["sleep", 0.2], ["progress", 0.4, "contract progress"],
                                                  ["wait_cancel", 10, "return"]])
    seen: List[Any] = []

    async def follow():
        async with aclosing(env.queue.events(job_id)) as events:
            async for event in events:
                seen.append(event)
                if event.type == JobEventType.PROGRESS_CHANGED and event.payload.get("status_message") == "contract progress":
                    await env.queue.cancel(job_id)
                if event.type == JobEventType.STATE_TRANSITION and "job_snapshot" in event.payload:
                    return

    await asyncio.wait_for(follow(), JOB_TIMEOUT_S)
    types = [event.type for event in seen]
    assert all(event.job_id == job_id for event in seen), "JobQueue.events(job_id) no longer filters by job"
    transitions = [event.payload for event in seen if event.type == JobEventType.STATE_TRANSITION]
    assert {"from": "pending", "to": "running"} in transitions, \
        f"STATE_TRANSITION payloads are no longer {{'from', 'to'}} status strings: got {transitions!r}"
    assert transitions[-1]["to"] == "cancelled", "A plugin returning early on cancel no longer ends 'cancelled'"
    progress = [event.payload for event in seen if event.type == JobEventType.PROGRESS_CHANGED]
    assert {"progress": 0.4, "status_message": "contract progress"} in progress, \
        f"PROGRESS_CHANGED payloads are no longer {{'progress', 'status_message'}}: got {progress!r}"
    assert JobEventType.CANCEL_PHASE_CHANGED in types, "JobQueue no longer emits CANCEL_PHASE_CHANGED on a cancel"


async def test_subscription_table_layout(env):
    assert count_event_subscriptions(env.queue) == 0
    job_id = await env.queue.submit(STEPS, steps=[["sleep", 0.3]])
    events = env.queue.events(job_id)
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0)
    assert count_event_subscriptions(env.queue, job_id) == 1, \
        "JobQueue._subscribers no longer keys subscriptions as 'job:<id>': update count_event_subscriptions"
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert count_event_subscriptions(env.queue, job_id) == 0, \
        "JobQueue.events() no longer removes its subscription when its consumer is cancelled"
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
