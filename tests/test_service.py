"""JobMonitorService against real cjm-plugin-system workers.

One module-scoped environment serves every test: two workers of the scripted
test plugin (`tests.support.plugins`), one of which the kill test gets killed and
respawned. Only the NVIDIA GPU is faked (no GPU exists on the machines these
tests run on); everything else is the real queue, workers and stores.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from contextlib import aclosing
from types import SimpleNamespace
from typing import Any, Callable, List

import psutil
import pytest
import pytest_asyncio

from cjm_plugin_system.core.queue import JobEvent, JobEventType

from cjm_fasthtml_job_monitor.models import JobView
from cjm_fasthtml_job_monitor.services.monitor import (
    JobMonitorService, PluginNotAvailableError, job_to_view,
)
from tests.support.plugins import KillableStepsPlugin, StepsPlugin
from tests.support.workers import worker_env, worker_processes

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEPS = StepsPlugin.plugin_name
KILLABLE = KillableStepsPlugin.plugin_name
JOB_TIMEOUT_S = 15.0  # Upper bound for any test job; the jobs themselves take a second or two
CPU_TOLERANCE_PERCENT = 25.0  # Mean of a reader's CPU figures vs. the worker's CPU time over the same 1.8 s
REPORT_HOLD_S = 1.0  # Seconds a job keeps a report, so that a 0.1 s progress poll reads it even on a busy machine
RSS_TOLERANCE_MB = 5.0  # RSS moves between two reads of a live process tree; this covers it here


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("service")
    async with worker_env(data_dir, StepsPlugin, KillableStepsPlugin, cancel_timeout=0.5) as running:
        yield running
    assert worker_processes(data_dir) == [], "a worker process outlived the test environment"


async def run_job(env, steps: List[list], plugin: str = STEPS) -> str:
    "Submit a job through the service and wait for it to end."
    return await env.run_job(plugin, steps=steps, timeout_s=JOB_TIMEOUT_S)


async def run_logging_job(env, steps: List[list]) -> str:
    "Run a job whose logging records must all reach the store, again if the worker failed to store one."
    for _ in range(3):
        job_id = await run_job(env, steps)
        if env.log_write_failures(job_id) == 0: return job_id
    raise AssertionError("The worker failed to store a logging record in three runs in a row.")


async def collect_views(service: JobMonitorService, job_id: str) -> List[JobView]:
    return [view async for view in service.watch_job(job_id)]


async def progress_payloads(queue, job_id: "asyncio.Future[str]") -> List[tuple]:
    "Collect the (progress, message) pairs of a job's PROGRESS_CHANGED events until it ends."
    pairs = []
    async with aclosing(queue.all_events()) as events:
        async for event in events:
            if event.job_id != await job_id: continue
            if event.type == JobEventType.PROGRESS_CHANGED:
                pairs.append((event.payload["progress"], event.payload["status_message"]))
            elif event.type == JobEventType.STATE_TRANSITION and "job_snapshot" in event.payload:
                return pairs
    return pairs


async def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, description: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline: raise AssertionError(f"Timed out after {timeout} s waiting for {description}.")
        await asyncio.sleep(0.02)


async def read_whole_log(service: JobMonitorService, job_id: str) -> List[Any]:
    "Read a job's log incrementally until the cursor says it is complete."
    lines, cursor = [], None
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while cursor is None or not cursor.complete:
        assert time.monotonic() < deadline, f"The log of job {job_id} never became complete."
        batch, cursor = service.read_job_log(job_id, cursor)
        lines.extend(batch)
        await asyncio.sleep(0.05)
    return lines


# Jobs and views

async def test_submit_unknown_plugin_raises(env):
    with pytest.raises(PluginNotAvailableError, match="not loaded"):
        await env.service.submit_job("jm-test-missing", steps=[])


async def test_completed_job_view(env):
    job_id = await env.service.submit_job(STEPS, steps=[["progress", 0.5, "Half way"], ["sleep", REPORT_HOLD_S],
                                                        ["progress", 0.9, "Almost"]])
    views = await collect_views(env.service, job_id)
    final = views[-1]
    assert ("running", 0.5, "Half way") in [(v.status, v.progress, v.message) for v in views]
    assert (final.status, final.progress, final.message) == ("completed", 1.0, "Completed")
    assert final.result == {"steps": 3}
    assert isinstance(final.started_at, float)
    assert final.started_at <= final.completed_at <= time.time()


async def test_failed_job_carries_error(env):
    job_id = await run_job(env, [["fail", "disk on fire"]])
    view = env.service.get_job_view(job_id)
    assert view.status == "failed"
    assert view.error is not None
    assert view.error.category == "fatal"
    assert "disk on fire" in view.error.message


async def test_second_job_hides_leftover_progress(env):
    """The worker keeps the first job's last report; the second job's first poll must not show it."""
    leftover = (1.0, "Packed 5 files into first.tar.xz")
    await run_job(env, [["progress", *leftover]])
    assert env.manager.get_plugin(STEPS).get_progress() == {"progress": 1.0, "message": leftover[1]}

    submitted = asyncio.get_running_loop().create_future()
    polled = asyncio.create_task(progress_payloads(env.queue, submitted))
    await asyncio.sleep(0)  # subscribe before the job can start
    job_id = await env.service.submit_job(STEPS, steps=[["sleep", REPORT_HOLD_S], ["progress", 0.5, "Second job"],
                                                        ["sleep", REPORT_HOLD_S]])
    submitted.set_result(job_id)
    views = await collect_views(env.service, job_id)
    polled_pairs = await asyncio.wait_for(polled, JOB_TIMEOUT_S)

    assert leftover in polled_pairs, "the queue no longer polls the leftover report: the guard went untested"
    seen = [(v.status, v.progress, v.message) for v in views]
    assert all(v.message != leftover[1] for v in views), seen
    assert ("running", None, "Starting") in seen
    assert ("running", 0.5, "Second job") in seen


async def test_job_queued_behind_another_hides_leftover(env):
    """A job submitted while another runs inherits the report that one leaves, read once it ends."""
    first = await env.service.submit_job(STEPS, steps=[["sleep", 0.3], ["progress", 1.0, "First job done"]])
    second = await env.service.submit_job(STEPS, steps=[["sleep", 0.5], ["progress", 0.5, "Second job"],
                                                        ["sleep", REPORT_HOLD_S]])
    views = await collect_views(env.service, second)
    await env.queue.wait_for_job(first, timeout=JOB_TIMEOUT_S)
    seen = [(v.status, v.progress, v.message) for v in views]
    assert all(v.message != "First job done" for v in views), seen
    assert ("running", 0.5, "Second job") in seen
    assert seen[-1] == ("completed", 1.0, "Completed")


# Cancelling

async def test_cancel_pending_job(env):
    blocker = await env.service.submit_job(STEPS, steps=[["wait_cancel", 10, "return"]])
    pending = await env.service.submit_job(STEPS, steps=[["print", "never runs"]])
    assert env.service.get_job_view(pending).status == "pending"
    assert await env.service.cancel_job(pending)
    assert env.service.get_job_view(pending).status == "cancelled"
    assert await env.service.cancel_job(blocker)
    await env.queue.wait_for_job(blocker, timeout=JOB_TIMEOUT_S)


@pytest.mark.parametrize("on_cancel", ["raise", "return"])
async def test_cancel_running_job(env, on_cancel):
    # A distinct message per job: a first report equal to the previous job's last one reads as "Starting".
    waiting = f"Waiting to {on_cancel}"
    job_id = await env.service.submit_job(STEPS, steps=[["progress", 0.2, waiting], ["wait_cancel", 10, on_cancel]])
    views: List[JobView] = []

    async def follow():
        async for view in env.service.watch_job(job_id):
            views.append(view)
            if view.message == waiting and view.status == "running":
                assert await env.service.cancel_job(job_id)

    await asyncio.wait_for(follow(), JOB_TIMEOUT_S)
    statuses = [v.status for v in views]
    assert "cancelling" in statuses
    assert views[-1].status == "cancelled"
    assert views[-1].error is None
    queue_status = env.queue.get_job(job_id).status.value
    assert queue_status == ("failed" if on_cancel == "raise" else "cancelled"), "the queue recorded another status"


async def test_cancel_ignored_kills_worker(env):
    old_pid = env.worker_pid(KILLABLE)
    job_id = await env.service.submit_job(KILLABLE, steps=[["progress", 0.1, "Busy"], ["wait_cancel", 30, "ignore"]])
    await wait_until(lambda: env.service.get_job_view(job_id).message == "Busy", description="the first report")

    samples, errors = [], []
    stop = asyncio.Event()

    def sample_until_stopped():
        while not stop.is_set():
            try: samples.append(env.service.get_resource_snapshot(KILLABLE))
            except Exception as e: errors.append(e)  # any exception fails the test below
            time.sleep(0.05)

    sampler = asyncio.create_task(asyncio.to_thread(sample_until_stopped))
    assert await env.service.cancel_job(job_id)
    views = await asyncio.wait_for(collect_views(env.service, job_id), JOB_TIMEOUT_S)
    stop.set()
    await sampler

    assert views[-1].status == "cancelled"
    new_pid = env.worker_pid(KILLABLE)
    assert new_pid != old_pid
    assert errors == []
    assert {s.worker_pid for s in samples if s is not None} <= {old_pid, new_pid}
    assert env.service.get_resource_snapshot(KILLABLE).worker_pid == new_pid

    psutil.Process(new_pid).kill()
    await wait_until(lambda: env.manager.get_plugin(KILLABLE).process.poll() is not None, description="the worker to die")
    assert env.service.get_resource_snapshot(KILLABLE) is None, "a dead worker's last sample was served from the cache"


# Logs

async def test_consecutive_jobs_keep_their_own_logs(env):
    first = await run_logging_job(env, [["print", "first: stdout"], ["log", "INFO", "first: record"]])
    second = await run_logging_job(env, [["log", "WARNING", "second: record"], ["print", "second: stdout"]])

    first_lines = await read_whole_log(env.service, first)
    second_lines = await read_whole_log(env.service, second)
    # Sorted: stdout is stamped when the host captures it, so a print and a record a few
    # microseconds apart can come out in either order.
    assert sorted((l.source, l.level, l.message) for l in first_lines) == [
        ("log", "INFO", "first: record"), ("stdout", "INFO", "first: stdout")]
    assert sorted((l.source, l.level, l.message) for l in second_lines) == [
        ("log", "WARNING", "second: record"), ("stdout", "INFO", "second: stdout")]
    assert [l.seq for l in second_lines] == [1, 2]


async def test_incremental_reads_lose_and_repeat_nothing(env):
    steps = []
    for i in range(15):
        steps += [["print", f"out {i}"], ["log", "INFO", f"log {i}"], ["sleep", 0.03]]

    for _ in range(3):  # again if the worker failed to store a record (see run_logging_job)
        job_id = await env.service.submit_job(STEPS, steps=steps)
        incremental, cursor, reads = [], None, 0
        while cursor is None or not cursor.complete:
            batch, cursor = env.service.read_job_log(job_id, cursor, limit=4)
            incremental.extend(batch)
            reads += 1
            await asyncio.sleep(0.05)
            assert reads < 500, "the log never became complete"
        if env.log_write_failures(job_id) == 0: break

    whole, _ = env.service.read_job_log(job_id)
    expected = sorted([f"out {i}" for i in range(15)] + [f"log {i}" for i in range(15)])
    assert sorted(l.message for l in incremental) == expected
    assert sorted(l.message for l in whole) == expected
    assert [l.seq for l in incremental] == list(range(1, 31))
    assert [l.ts for l in whole] == sorted(l.ts for l in whole)


async def test_failed_job_log_has_traceback(env):
    job_id = await run_logging_job(env, [["log", "ERROR", "about to fail"], ["fail", "broken step"]])
    lines = await read_whole_log(env.service, job_id)
    assert ("log", "ERROR", "about to fail") in [(l.source, l.level, l.message) for l in lines]
    assert any(l.source == "stdout" and "RuntimeError: broken step" in l.message for l in lines)


async def test_job_that_never_ran_has_empty_complete_log(env):
    blocker = await env.service.submit_job(STEPS, steps=[["wait_cancel", 10, "return"]])
    pending = await env.service.submit_job(STEPS, steps=[["print", "never runs"]])
    lines, cursor = env.service.read_job_log(pending)
    assert (lines, cursor.complete) == ([], False)
    await env.service.cancel_job(pending)
    lines, cursor = env.service.read_job_log(pending, cursor)
    assert (lines, cursor.complete) == ([], True)
    await env.service.cancel_job(blocker)
    await env.queue.wait_for_job(blocker, timeout=JOB_TIMEOUT_S)


async def test_get_logs_returns_recent_text(env):
    await run_logging_job(env, [["print", "recent stdout line"], ["log", "WARNING", "recent record line"]])
    # The host stores stdout when its pump thread reads the worker's pipe, which can lag behind the job's end.
    await wait_until(lambda: "recent stdout line" in env.service.get_logs(STEPS, lines=10), description="stdout")
    text = env.service.get_logs(STEPS, lines=10)
    assert "WARNING  recent record line" in text
    assert len(text.splitlines()) <= 10
    assert "recent record line" in env.service.get_logs(STEPS, lines=10, current_session_only=False)


# Resources

async def test_snapshot_covers_worker_tree(env):
    job_id = await env.service.submit_job(STEPS, steps=[["child", 30], ["progress", 0.5, "Child started"],
                                                        ["wait_cancel", 30, "return"]])
    await wait_until(lambda: env.service.get_job_view(job_id).message == "Child started", description="the child")
    snapshot = env.service.get_resource_snapshot(STEPS)
    worker = psutil.Process(env.worker_pid())
    tree = [worker] + worker.children(recursive=True)
    psutil_rss_mb = sum(p.memory_info().rss for p in tree) / 2**20

    assert snapshot.worker_pid == worker.pid
    assert snapshot.process_count == len(tree) >= 2
    assert abs(snapshot.memory_rss_mb - psutil_rss_mb) <= RSS_TOLERANCE_MB
    assert snapshot.gpu_memory_mb is None  # no NVIDIA GPU here
    await env.service.cancel_job(job_id)
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)


async def test_cpu_stable_under_two_readers(env):
    job_id = await env.service.submit_job(STEPS, steps=[["progress", 0.1, "Spinning"], ["spin", 3.5]])
    await wait_until(lambda: env.service.get_job_view(job_id).message == "Spinning", description="the spin")
    # CPU is measured since the previous sample, which an earlier test took long ago: take one now.
    env.service.get_resource_snapshot(STEPS)
    worker = psutil.Process(env.worker_pid())
    start_cpu, start_wall = sum(worker.cpu_times()[:2]), time.monotonic()

    def read_cpu() -> List[float]:
        figures = []
        for _ in range(6):
            time.sleep(0.3)
            figures.append(env.service.get_resource_snapshot(STEPS).cpu_percent)
        return figures

    readers = await asyncio.gather(asyncio.to_thread(read_cpu), asyncio.to_thread(read_cpu))
    # The worker's CPU over the same period, measured independently. The machine may be shared,
    # so the spin can get less than a core: compare with this, not with 100 %.
    true_percent = 100.0 * (sum(worker.cpu_times()[:2]) - start_cpu) / (time.monotonic() - start_wall)
    for figures in readers:
        assert all(0.0 <= cpu <= 100.0 * psutil.cpu_count() + 10.0 for cpu in figures), readers
        assert abs(sum(figures) / len(figures) - true_percent) <= CPU_TOLERANCE_PERCENT, (readers, true_percent)
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)


async def test_snapshot_of_unloaded_plugin_is_none(env):
    assert env.service.get_resource_snapshot("jm-test-missing") is None


class FakeNvml:
    "Stand-in for `pynvml` with one 24 GiB GPU on which the process `pid` holds 1 GiB: no NVIDIA GPU exists here."
    class NVMLError(Exception): pass

    def __init__(self, pid): self.pid = pid
    def nvmlInit(self): pass
    def nvmlDeviceGetCount(self): return 1
    def nvmlDeviceGetHandleByIndex(self, index): return f"gpu{index}"
    def nvmlDeviceGetComputeRunningProcesses(self, handle): return [SimpleNamespace(pid=self.pid, usedGpuMemory=2**30)]
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle): return []
    def nvmlDeviceGetMemoryInfo(self, handle): return SimpleNamespace(total=24 * 2**30)
    def nvmlDeviceGetUtilizationRates(self, handle): return SimpleNamespace(gpu=37)
    def nvmlDeviceGetName(self, handle): return b"NVIDIA Fake 24GB"


class NoDriverNvml:
    "Stand-in for `pynvml` without an NVIDIA driver, raising what the real module raises on this GPU-less machine."
    class NVMLError(Exception): pass
    class NVMLError_LibraryNotFound(NVMLError): pass

    def __init__(self): self.init_calls = 0

    def nvmlInit(self):
        self.init_calls += 1
        raise self.NVMLError_LibraryNotFound("NVML Shared Library Not Found")


class ManagerWithSysmon:
    "The real plugin manager, except that `get_plugin(name)` of the system-monitor name returns a fake."
    def __init__(self, manager, name, sysmon): self._manager, self._name, self._sysmon = manager, name, sysmon
    def get_plugin(self, name): return self._sysmon if name == self._name else self._manager.get_plugin(name)
    def __getattr__(self, attr): return getattr(self._manager, attr)


async def test_nvml_fills_gpu_fields(env):
    service = JobMonitorService(env.queue, env.manager, nvml_module=FakeNvml(env.worker_pid()))
    snapshot = service.get_resource_snapshot(STEPS)
    assert (snapshot.gpu_index, snapshot.gpu_name) == (0, "NVIDIA Fake 24GB")
    assert (snapshot.gpu_memory_mb, snapshot.gpu_total_mb, snapshot.gpu_load_percent) == (1024.0, 24576.0, 37.0)


async def test_missing_nvml_logged_once(env, caplog):
    nvml = NoDriverNvml()
    service = JobMonitorService(env.queue, env.manager, nvml_module=nvml, resource_min_interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="cjm_fasthtml_job_monitor.services.monitor"):
        snapshots = [service.get_resource_snapshot(STEPS) for _ in range(3)]
    assert all(s is not None and s.gpu_memory_mb is None and s.gpu_name is None for s in snapshots)
    assert nvml.init_calls == 1
    messages = [r.getMessage() for r in caplog.records if "NVML is not available" in r.getMessage()]
    assert len(messages) == 1
    assert "LibraryNotFound" in messages[0]


async def test_sysmon_used_without_nvml(env):
    # No system-monitor plugin can report a GPU on this machine, so a fake object replaces its proxy.
    pid = env.worker_pid()
    sysmon = SimpleNamespace(
        list_processes=lambda: [{"pid": pid, "gpu_memory_mb": 512.0, "gpu_index": 1}, {"pid": 1, "gpu_memory_mb": 9.0}],
        get_system_status=lambda: {"gpu_type": "NVIDIA", "gpu_total_memory_mb": 24576.0, "gpu_load_percent": 12.0})
    manager = ManagerWithSysmon(env.manager, "fake-sysmon", sysmon)
    service = JobMonitorService(env.queue, manager, "fake-sysmon", nvml_module=NoDriverNvml())
    snapshot = service.get_resource_snapshot(STEPS)
    assert (snapshot.gpu_memory_mb, snapshot.gpu_index, snapshot.gpu_name) == (512.0, 1, "NVIDIA")
    assert (snapshot.gpu_total_mb, snapshot.gpu_load_percent) == (24576.0, 12.0)


async def test_failing_sysmon_logged_once(env, caplog):
    def broken(): raise ConnectionError("sysmon worker is gone")
    manager = ManagerWithSysmon(env.manager, "fake-sysmon", SimpleNamespace(list_processes=broken))
    service = JobMonitorService(env.queue, manager, "fake-sysmon", nvml_module=NoDriverNvml(),
                                resource_min_interval_s=0.0)
    with caplog.at_level(logging.WARNING, logger="cjm_fasthtml_job_monitor.services.monitor"):
        snapshots = [service.get_resource_snapshot(STEPS) for _ in range(3)]
    assert all(s is not None and s.gpu_memory_mb is None for s in snapshots)
    warnings = [r.getMessage() for r in caplog.records if "System monitor plugin" in r.getMessage()]
    assert len(warnings) == 1
    assert "sysmon worker is gone" in warnings[0]


# Watching

async def test_watch_finished_job_yields_snapshot(env):
    job_id = await run_job(env, [["print", "done"]])
    views = await collect_views(env.service, job_id)
    assert [v.status for v in views] == ["completed"]
    assert env.service.count_event_subscriptions(job_id) == 0


async def test_watch_stopped_early_unsubscribes(env):
    job_id = await env.service.submit_job(STEPS, steps=[["wait_cancel", 30, "return"]])

    closed = env.service.watch_job(job_id)
    await anext(closed)
    assert env.service.count_event_subscriptions(job_id) == 1
    await closed.aclose()
    assert env.service.count_event_subscriptions(job_id) == 0

    async def consume():
        async for _ in env.service.watch_job(job_id): pass
    task = asyncio.create_task(consume())
    await wait_until(lambda: env.service.count_event_subscriptions(job_id) == 1, description="the subscription")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert env.service.count_event_subscriptions(job_id) == 0

    async for _ in env.service.watch_job(job_id): break  # no aclose(): closed when garbage collected
    gc.collect()
    await wait_until(lambda: env.service.count_event_subscriptions(job_id) == 0, description="the finalizer")
    await env.service.cancel_job(job_id)
    await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    assert env.service.count_event_subscriptions() == 0


async def test_watch_recovers_from_dropped_events(env, caplog):
    """The queue drops events past 100 per subscriber; the watcher must still reach the terminal state.

    The real poller emits at most one event per poll, too slowly to overflow the buffer
    in a short test, so the test publishes the overflow itself through the queue's own
    emission path while the consumer is paused.
    """
    job_id = await env.service.submit_job(STEPS, steps=[["progress", 0.3, "Working"], ["sleep", 0.5]])
    watcher = env.service.watch_job(job_id)
    first = await anext(watcher)
    with caplog.at_level(logging.WARNING):
        for i in range(150):
            env.queue._publish_event(JobEvent(type=JobEventType.PROGRESS_CHANGED, job_id=job_id,
                                              plugin_instance_id=STEPS, payload={"progress": 0.3, "status_message": "x"}))
        await env.queue.wait_for_job(job_id, timeout=JOB_TIMEOUT_S)
    assert any("dropped event" in r.getMessage() for r in caplog.records), "the flood did not overflow the buffer"

    rest = [view async for view in watcher]
    assert first.status in ("pending", "running")
    assert rest[-1].status == "completed"
    assert env.service.count_event_subscriptions(job_id) == 0


async def test_view_matches_job_to_view(env):
    job_id = await run_job(env, [["progress", 0.4, "x"]])
    job = env.queue.get_job(job_id)
    assert env.service.get_job_view(job_id) == job_to_view(job)
    assert env.service.get_job_view("no-such-job") is None
