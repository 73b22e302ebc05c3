"""Run one benchmark scenario: a fresh app process, one steady job, N viewers, and the figures measured over a window.

Each scenario serves `benchmarks.app:create_bench_app` in its own process with
`tests.support.server.ServerProcess`, so the app's CPU time and memory are its
own: the worker is a child process whose time the kernel keeps apart until it
is reaped, and the viewers run in this process. Figures are taken over a
window that starts `warmup_s` after the job started and every viewer connected,
and ends `tail_s` before the job ends, so connecting and the job's end do not
count.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import httpx
import psutil

from benchmarks.clients import ViewerLog, run_polling_viewer, run_sse_viewer
from tests.support.server import LOOPBACK, ServerProcess

logger = logging.getLogger(__name__)

APP_FACTORY = "benchmarks.app:create_bench_app"
TICK_MESSAGE_RE = re.compile(r"tick (\d+) sent ([0-9.]+)")
MEMORY_SAMPLE_S = 0.1  # Seconds between two RSS samples of the app process


@dataclass
class Scenario:
    "One run of the app with one job and a number of viewers."
    name: str  # Short label, e.g. "monitor-10"
    mode: str  # "monitor": SSE viewers of the monitor's routes; "baseline": polling viewers; "queue-only": no monitor
    viewers: int  # Viewers connected while the job runs
    log_interval_s: float = 0.2  # Seconds between the job's log lines; 0 is an idle log
    log_burst: int = 0  # Lines the job logs at once when it starts
    monitor_config: Dict[str, Any] = field(default_factory=dict)  # JobMonitorConfig fields that differ from the defaults
    reuse_http_clients: bool = False  # Patch the plugin system's proxy to reuse its HTTP clients (see benchmarks/app.py)
    reuse_stats_client: bool = False  # Patch only the proxy's get_stats to reuse its client, for the latency it adds
    profile: bool = False  # Record the app with py-spy over the window; its CPU figures then include py-spy's pauses


@dataclass
class Settings:
    "Settings shared by every scenario of a run."
    duration_s: float  # Seconds each job runs
    warmup_s: float  # Seconds after the job start and the last viewer's connection before the window opens
    tail_s: float  # Seconds before the job's end at which the window closes
    progress_interval_s: float  # Seconds between two progress reports of the plugin
    progress_poll_interval_s: float  # The JobQueue's progress_poll_interval
    poll_interval_s: float  # Seconds between two requests of a baseline viewer
    work_dir: Path  # Folder for the scenarios' data folders, server logs and profiles


def percentiles(values: List[float]) -> Optional[Dict[str, float]]:
    "Return count, p50, p95 and max of `values`, or None when there are none."
    if not values: return None
    ordered = sorted(values)
    def at(q: float) -> float: return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"count": len(ordered), "p50": statistics.median(ordered), "p95": at(0.95), "max": ordered[-1]}


class MemorySampler:
    "Sample a process's RSS in a thread, keeping the maximum."

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try: self.max_rss = max(self.max_rss, self.process.memory_info().rss)
            except psutil.Error: return
            self._stop.wait(MEMORY_SAMPLE_S)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)


def _peak_rss_from_kernel(pid: int) -> Optional[int]:
    "Return the process's peak RSS (VmHWM) in bytes from /proc, or None where there is no /proc."
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"): return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _tree_cpu_seconds(processes: List[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try: total += _cpu_seconds(process)
        except psutil.Error: continue
    return total


def _session_cookie(client: httpx.Client, base_url: str) -> str:
    "Start a FastHTML session and return the Cookie header value that carries it."
    response = client.get(base_url + "/bench/session")
    response.raise_for_status()
    cookie = "; ".join(f"{name}={value}" for name, value in response.cookies.items())
    if not cookie: raise RuntimeError("GET /bench/session set no session cookie.")
    return cookie


def _start_job(client: httpx.Client, base_url: str, scenario: Scenario, cookie: str) -> str:
    "Start the scenario's job and return its id: through the monitor's trigger, or straight to the queue."
    if scenario.mode == "monitor":
        headers = {"HX-Request": "true", "Origin": base_url, "Cookie": cookie}
        response = client.post(base_url + "/jobs/trigger", headers=headers)
        response.raise_for_status()
        jobs = client.get(base_url + "/bench/jobs").json()
        if len(jobs) != 1: raise RuntimeError(f"Expected one job after the trigger, the queue has {jobs}.")
        return jobs[0]["id"]
    response = client.post(base_url + "/bench/submit")
    response.raise_for_status()
    return response.text


def _wait_for_job(client: httpx.Client, base_url: str, job_id: str, key: str, timeout_s: float) -> dict:
    "Poll the job list until the job's `key` field is set; return the job."
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in client.get(base_url + "/bench/jobs").json():
            if job["id"] == job_id and job.get(key) is not None: return job
        time.sleep(0.05)
    raise TimeoutError(f"Job {job_id} had no {key} within {timeout_s} s.")


def _start_profiler(pid: int, duration_s: float, output: Path) -> Optional[subprocess.Popen]:
    "Start py-spy on `pid` for `duration_s` seconds, writing collapsed stacks to `output`; None when py-spy is missing."
    exe = shutil.which("py-spy")
    if exe is None:
        logger.warning("py-spy is not installed, so scenario profiles are skipped: pip install py-spy")
        return None
    command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(duration_s))), "--rate", "200",
               "--format", "raw", "--output", str(output), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _drive_viewers(scenario: Scenario, settings: Settings, port: int, job_id: str, cookie: str,
                         started_at: float, process: psutil.Process, profile_path: Path) -> Dict[str, Any]:
    "Connect the viewers, measure the window, then wait for the job to end; return the window's raw figures."
    stop = asyncio.Event()
    logs = [ViewerLog() for _ in range(scenario.viewers)]
    if scenario.mode == "monitor":
        path = f"/jobs/progress?job_id={job_id}"
        tasks = [asyncio.create_task(run_sse_viewer(LOOPBACK, port, path, cookie, log, stop)) for log in logs]
    else:
        path = f"/baseline/poll?job_id={job_id}"
        tasks = [asyncio.create_task(run_polling_viewer(LOOPBACK, port, path, cookie, settings.poll_interval_s,
                                                        log, stop)) for log in logs]

    job_end = started_at + settings.duration_s
    connect_deadline = time.time() + 30.0
    while any(log.connected_at is None and log.error is None for log in logs) and time.time() < connect_deadline:
        await asyncio.sleep(0.02)
    connected = max([started_at] + [log.connected_at for log in logs if log.connected_at is not None])
    window_start = max(started_at, connected) + settings.warmup_s
    window_end = job_end - settings.tail_s
    if window_end - window_start < 1.0:
        raise RuntimeError(f"The window of {scenario.name} is {window_end - window_start:.1f} s long; "
                           "use a longer --duration or a shorter --warmup.")

    await asyncio.sleep(max(0.0, window_start - time.time()))
    workers = process.children(recursive=True)
    driver = psutil.Process()
    t0, cpu0, workers0, driver0 = time.time(), _cpu_seconds(process), _tree_cpu_seconds(workers), _cpu_seconds(driver)
    profiler = _start_profiler(process.pid, window_end - window_start, profile_path) if scenario.profile else None
    await asyncio.sleep(max(0.0, window_end - time.time()))
    t1, cpu1, workers1, driver1 = time.time(), _cpu_seconds(process), _tree_cpu_seconds(workers), _cpu_seconds(driver)

    # The monitor's viewers end on their own with the job; the pollers are stopped once it has ended.
    await asyncio.sleep(max(0.0, job_end - time.time()) + 0.5)
    if scenario.mode != "monitor": stop.set()
    pending = (await asyncio.wait(tasks, timeout=30.0))[1] if tasks else set()
    if pending:
        stop.set()
        await asyncio.wait(pending, timeout=5.0)
    if profiler is not None:
        _, stderr = await asyncio.to_thread(profiler.communicate)
        if profiler.returncode != 0: logger.warning("py-spy failed: %s", stderr.decode(errors="replace")[-500:])
    return {"window": (t0, t1), "app_cpu_s": cpu1 - cpu0, "worker_cpu_s": workers1 - workers0,
            "client_cpu_s": driver1 - driver0, "logs": logs}


def _queue_times(records: List[Tuple[str, float]]) -> Dict[int, Tuple[float, float]]:
    "Map each tick to (worker send time, time the queue first stored it as the job's progress)."
    out: Dict[int, Tuple[float, float]] = {}
    for message, queued_at in records:
        match = TICK_MESSAGE_RE.search(message or "")
        if match and int(match.group(1)) not in out: out[int(match.group(1))] = (float(match.group(2)), queued_at)
    return out


def latency_figures(logs: List[ViewerLog], ticks: Dict[int, Tuple[float, float]],
                    window: Tuple[float, float]) -> Dict[str, Any]:
    """Compute the latency figures of the viewers, in seconds, for the ticks the queue stored inside `window`.

    - `delivered`: for each tick a viewer received, its first receipt minus the time the queue stored it.
    - `freshness`: for each tick the queue stored, the first receipt of that tick or a newer one minus the
      time the queue stored it. Ticks that the stream skipped, because a newer one replaced them, count here.
    - `queue_pickup`: the time the queue stored a tick minus the worker's send time (set by the queue's poll interval).
    """
    start, end = window
    in_window = {tick: queued_at for tick, (_, queued_at) in ticks.items() if start <= queued_at < end}
    delivered, freshness = [], []
    for log in logs:
        first: Dict[int, float] = {}
        for received, tick in log.ticks:
            first.setdefault(tick, received)
        delivered += [first[t] - queued_at for t, queued_at in in_window.items() if t in first]
        # Receipts in time order, with the newest tick seen so far: the first receipt whose running
        # maximum reaches tick t is when the viewer first had t or something newer.
        times, newest, high = [], [], -1
        for received, tick in sorted(log.ticks):
            high = max(high, tick)
            times.append(received)
            newest.append(high)
        for t, queued_at in in_window.items():
            index = bisect.bisect_left(newest, t)
            if index < len(newest): freshness.append(times[index] - queued_at)
    pickup = [queued_at - sent for tick, (sent, queued_at) in ticks.items() if start <= queued_at < end]
    skipped = 0
    for log in logs:
        received = {tick for _, tick in log.ticks}
        skipped += sum(1 for t in in_window if t not in received)
    return {"delivered": percentiles(delivered), "freshness": percentiles(freshness),
            "queue_pickup": percentiles(pickup), "ticks_in_window": len(in_window),
            "skipped_per_viewer": skipped / len(logs) if logs else None}


def run_scenario(scenario: Scenario, settings: Settings) -> Dict[str, Any]:
    "Run one scenario in a fresh app process and return its figures."
    data_dir = Path(tempfile.mkdtemp(prefix=f"{scenario.name}-", dir=settings.work_dir))
    job = {"duration_s": settings.duration_s, "progress_interval_s": settings.progress_interval_s,
           "log_interval_s": scenario.log_interval_s, "log_burst": scenario.log_burst}
    kwargs = {"data_dir": str(data_dir), "job": job, "progress_poll_interval": settings.progress_poll_interval_s,
              "monitor_config": scenario.monitor_config, "reuse_http_clients": scenario.reuse_http_clients,
              "reuse_stats_client": scenario.reuse_stats_client}
    server = ServerProcess(APP_FACTORY, kwargs=kwargs, log_path=data_dir / "server.log", ready_path="/bench/ready")
    server.start()
    try:
        process = psutil.Process(server.process.pid)
        sampler = MemorySampler(process.pid).start()
        with httpx.Client(timeout=30.0) as client:
            cookie = _session_cookie(client, server.base_url)
            server_info = client.get(server.base_url + "/bench/server-info").json()
            time.sleep(1.0)
            idle_rss = process.memory_info().rss
            job_id = _start_job(client, server.base_url, scenario, cookie)
            started_at = _wait_for_job(client, server.base_url, job_id, "started_at", 30.0)["started_at"]
            profile_path = settings.work_dir / f"profile-{scenario.name}.txt"
            raw = asyncio.run(_drive_viewers(scenario, settings, server.port, job_id, cookie, started_at, process,
                                             profile_path))
            _wait_for_job(client, server.base_url, job_id, "completed_at", 30.0)
            records = client.get(server.base_url + "/bench/progress-times", params={"job_id": job_id}).json()
        sampler.stop()
        peak_rss = _peak_rss_from_kernel(process.pid) or sampler.max_rss
    finally:
        server.stop()

    t0, t1 = raw["window"]
    seconds = t1 - t0
    logs: List[ViewerLog] = raw["logs"]
    errors = sorted({log.error for log in logs if log.error})
    per_viewer_bytes = [log.bytes_between(t0, t1) * 60.0 / seconds for log in logs]
    per_viewer_messages = [sum(1 for t, _ in log.ticks if t0 <= t < t1) / seconds for log in logs]
    result = {
        **asdict(scenario),
        "job_id": job_id,
        "server_info": server_info,
        "window_s": seconds,
        "app_cpu_s_per_s": raw["app_cpu_s"] / seconds,
        "worker_cpu_s_per_s": raw["worker_cpu_s"] / seconds,
        "client_cpu_s_per_s": raw["client_cpu_s"] / seconds,
        "bytes_per_viewer_per_min": statistics.mean(per_viewer_bytes) if logs else None,
        "bytes_per_viewer_per_min_range": [min(per_viewer_bytes), max(per_viewer_bytes)] if logs else None,
        "updates_per_viewer_per_s": statistics.mean(per_viewer_messages) if logs else None,
        "latency": latency_figures(logs, _queue_times(records), (t0, t1)) if logs else None,
        "idle_rss_bytes": idle_rss,
        "peak_rss_bytes": peak_rss,
        "viewer_errors": errors,
        "viewers_done": sum(log.done for log in logs),
        "profile_path": str(profile_path) if scenario.profile and profile_path.exists() else None,
    }
    if errors: logger.warning("Scenario %s: %d viewer errors, e.g. %s", scenario.name, len(errors), errors[0])
    shutil.rmtree(data_dir, ignore_errors=True)
    return result
