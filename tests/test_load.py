"""Load: 100 viewers of one job for minutes, and 1,000 connect/disconnect cycles, against a real server process.

The app runs in a child process (`tests.support.app_harness:create_app`), so its
resident memory can be sampled on its own. The viewers all belong to one
session, as tabs of one browser: the routes never stream a job to another
session. What is checked is what matters under load: no errors, every viewer
gets the final update and `done`, memory stays flat, and nothing is left
behind (tasks, queue subscriptions, viewers, locks, sampler entries, counted
by the app's `/_test/stats`). Speed is not checked: the tests share a 2-core
machine with others.
"""
from __future__ import annotations

import asyncio
import re
import statistics
import threading
import time
from collections import Counter
from typing import List, Optional

import httpx
import psutil
import pytest

from tests.support.app_harness import PREFIX, STATS_PATH, SessionClient, job_id_of
from tests.support.server import ServerProcess, SSEParser
from tests.support.workers import worker_processes

VIEWERS = 100
JOB_SECONDS = 150  # The watched job runs this long: long enough for a memory trend, short enough for CI
RSS_SAMPLE_S = 5.0
RSS_WARM_UP_S = 30.0  # Samples before this are left out: imports, first renders and buffers fill up then
MAX_RSS_GROWTH_MB = 25.0  # Allowed rise from the first to the last third of the run (measured: see the report)
CYCLES = 1_000
STATS_SETTLE_S = 15.0  # Seconds the server gets to return to its baseline after the last cycle


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    "The harness app in a child process, shared by the module's tests."
    data_dir = tmp_path_factory.mktemp("load")
    config = {"sse_interval_s": 0.5, "heartbeat_s": 5.0, "resources_interval_s": 2.0}
    server = ServerProcess("tests.support.app_harness:create_app", {"data_dir": str(data_dir), "config": config},
                           ready_path="/whoami").start()
    yield server
    server.stop()
    assert worker_processes(data_dir) == [], "a worker process outlived the test server"


def server_log_problems(server) -> List[str]:
    "Return the lines of the server's log that report an error or a traceback."
    return [line for line in server.log_text().splitlines()
            if "Traceback" in line or " ERROR " in line or "Exception in ASGI" in line]


def stats(client: SessionClient) -> dict:
    return client.client.get(STATS_PATH).json()


class ViewerResult:
    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0
        self.final_status: Optional[str] = None
        self.done = False
        self.error: Optional[str] = None


async def watch(base_url: str, cookies: httpx.Cookies, job_id: str, result: ViewerResult) -> None:
    "Follow one job's stream to `done`, as a browser tab would, and record what arrived."
    parser = SSEParser()
    try:
        async with httpx.AsyncClient(base_url=base_url, cookies=cookies, timeout=httpx.Timeout(30.0, read=120.0)) \
                as client:
            async with client.stream("GET", PREFIX + "/progress", params={"job_id": job_id},
                                     headers={"Accept": "text/event-stream"}) as response:
                assert response.status_code == 200, response.status_code
                pending = ""
                async for chunk in response.aiter_text():
                    pending += chunk
                    *lines, pending = re.split(r"\r\n|\r|\n", pending)
                    for line in lines:
                        event = parser.feed(line)
                        if event is None: continue
                        result.events += 1
                        result.bytes += len(event.data)
                        if event.event == "done":
                            result.done = True
                            return
                        status = re.search(r'data-jm-progress="1" data-status="([a-z]+)"', event.data)
                        if status: result.final_status = status.group(1)
    except Exception as error:  # recorded and asserted on by the test
        result.error = f"{type(error).__name__}: {error}"


def run_viewers(base_url: str, cookies: httpx.Cookies, job_id: str, count: int) -> List[ViewerResult]:
    "Run `count` viewers of one job in one event loop of a background thread; return once all ended."
    results = [ViewerResult() for _ in range(count)]

    async def main():
        await asyncio.gather(*(watch(base_url, cookies, job_id, result) for result in results))

    asyncio.run(main())
    return results


def test_hundred_viewers_of_one_job(server):
    with SessionClient(server.base_url) as client:
        steps = []
        for second in range(JOB_SECONDS):
            steps += [["progress", second / JOB_SECONDS, f"second {second}"], ["log", "INFO", f"tick {second}"],
                      ["print", f"out {second}"], ["sleep", 1.0]]
        client.set_plan([steps])
        job_id = job_id_of(client.trigger())

        process = psutil.Process(server.process.pid)
        samples: List[tuple] = []
        stop = threading.Event()

        def sample_memory():
            started = time.monotonic()
            while not stop.is_set():
                samples.append((time.monotonic() - started, process.memory_info().rss / 2 ** 20))
                stop.wait(RSS_SAMPLE_S)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        try:
            results = run_viewers(server.base_url, client.client.cookies, job_id, VIEWERS)
        finally:
            stop.set()
            sampler.join(10)

        errors = [result.error for result in results if result.error]
        assert errors == [], f"{len(errors)} viewers failed: {Counter(errors).most_common(3)}"
        assert all(result.done for result in results), "a viewer did not get `done`"
        assert Counter(result.final_status for result in results) == {"completed": VIEWERS}
        assert server_log_problems(server) == []

        after = wait_for_baseline(client, lambda s: s["viewers"] == 0 and s["runners"] == 0)
        assert after["subscriptions"] == 0, after

    steady = [rss for elapsed, rss in samples if elapsed >= RSS_WARM_UP_S]
    assert len(steady) >= 9, f"too few memory samples: {samples}"
    third = len(steady) // 3
    first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
    summary = ", ".join(f"{elapsed:.0f}s {rss:.0f}MB" for elapsed, rss in samples)
    assert last - first < MAX_RSS_GROWTH_MB, f"RSS grew {last - first:.1f} MB: {summary}"


def wait_for_baseline(client: SessionClient, condition, timeout: float = STATS_SETTLE_S) -> dict:
    "Poll the server's stats until `condition` holds; return the last stats."
    deadline = time.monotonic() + timeout
    while True:
        current = stats(client)
        if condition(current): return current
        assert time.monotonic() < deadline, f"the server did not settle: {current}"
        time.sleep(0.2)


def test_thousand_connect_disconnect_cycles(server):
    with SessionClient(server.base_url) as client:
        client.set_plan([[["progress", 0.5, "holding"], ["wait_cancel", 600, "return"]]])
        job_id = job_id_of(client.trigger())
        with client.stream(job_id) as stream:  # wait until the job runs and its runner has settled
            stream.read_until(lambda event: 'data-status="running"' in event.data, timeout=30)
        time.sleep(1.0)
        before = stats(client)
        assert before["viewers"] == 0, before
        assert before["runners"] == 1, before
        rss_before = psutil.Process(server.process.pid).memory_info().rss / 2 ** 20

        last_id = None
        for cycle in range(CYCLES):
            mode = cycle % 4
            headers = {"Last-Event-ID": last_id} if mode == 2 and last_id else None
            target = job_id if mode != 3 else "not-a-job-of-this-session"
            stream = client.stream(target, headers=headers)
            try:
                if mode in (1, 2, 3):
                    event = stream.next_event(timeout=30)
                    last_id = event.id or last_id
            finally:
                stream.close()

        def settled(current: dict) -> bool:
            return (current["viewers"] == 0 and Counter(current["tasks"]) == Counter(before["tasks"])
                    and current["subscriptions"] == before["subscriptions"] and current["locks"] == 0)

        try:
            after = wait_for_baseline(client, settled)
        finally:
            assert client.cancel(job_id).status_code == 204
        assert after["runners"] == 1
        assert after["sampler_processes"] <= before["sampler_processes"]
        assert after["background_tasks"] == before["background_tasks"]
        rss_after = psutil.Process(server.process.pid).memory_info().rss / 2 ** 20
        assert rss_after - rss_before < MAX_RSS_GROWTH_MB, f"RSS {rss_before:.0f} -> {rss_after:.0f} MB"
        assert server_log_problems(server) == []
