"""The demo's command line, run as a real process: `python -m cjm_fasthtml_job_monitor.demo`.

Each test starts the demo in a child process on 127.0.0.1, on a port the kernel
picked, with a data dir under pytest's tmp_path and the pinned front-end files
from the asset cache. The tests check the exit status, the one-line error
messages, how the demo stops on SIGINT and SIGTERM with a job running and its
event stream open, and that no plugin worker of the test's data dir is left
afterwards. Jobs archive small folders of incompressible bytes, so a job runs
for a few seconds here.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import httpx
import psutil
import pytest

from tests.support.app_harness import SessionClient, job_id_of, read_until_done
from tests.support.server import REPO_ROOT, SSEEvent, wait_until_responding
from tests.support.workers import worker_processes

PROG = "python -m cjm_fasthtml_job_monitor.demo"
BANNER = "Job monitor demo on http://"
START_TIMEOUT_S = 60.0  # Seconds until the demo prints its banner: imports, worker start, on a loaded 2-core VM
STOP_LIMIT_S = 10.0  # Seconds a stop signal may take with a job running and its event stream open
JOB_TIMEOUT_S = 90.0  # Seconds a small archive job may take end to end
SLOW_SOURCE_FILES = 10  # Files of 1 MiB that xz cannot shrink: several seconds of work at the demo's preset


def free_port() -> int:
    "Return a port on 127.0.0.1 that the kernel picked and that nothing listens on now."
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_random_files(folder: Path, count: int, size: int, seed: int) -> None:
    "Fill `folder` with `count` files of `size` random bytes."
    folder.mkdir(parents=True, exist_ok=True)
    generator = random.Random(seed)
    for index in range(count):
        (folder / f"part-{index:02d}.bin").write_bytes(generator.randbytes(size))


def demo_command(port: int, data_dir: Path, sources: List[Path], *extra: str) -> List[str]:
    command = [sys.executable, "-m", "cjm_fasthtml_job_monitor.demo", "--port", str(port),
               "--data-dir", str(data_dir), "--assets", str(REPO_ROOT / ".cache" / "assets")]
    for source in sources:
        command += ["--source", str(source)]
    return command + list(extra)


def run_demo(*args: str) -> subprocess.CompletedProcess:
    "Run the demo with `args` to completion; for arguments that make it exit at once."
    return subprocess.run([sys.executable, "-m", "cjm_fasthtml_job_monitor.demo", *args], cwd=REPO_ROOT,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def end_workers(data_dir: Path) -> List[int]:
    "Kill the worker processes of `data_dir` that are still alive; return their PIDs."
    workers = worker_processes(data_dir)
    for worker in workers:
        try: worker.kill()
        except psutil.NoSuchProcess: pass
    psutil.wait_procs(workers, timeout=5)
    return [worker.pid for worker in workers]


class DemoProcess:
    "A demo started in a child process; stdout and stderr go to one log file."

    def __init__(self, data_dir: Path, sources: List[Path], log_path: Path, port: Optional[int] = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(demo_command(self.port, data_dir, sources), cwd=REPO_ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "backslashreplace")

    def wait_ready(self) -> "DemoProcess":
        "Wait for the banner, which the demo prints once it listens and its worker is loaded."
        deadline = time.monotonic() + START_TIMEOUT_S
        while BANNER not in self.output():
            if self.process.poll() is not None:
                raise AssertionError(f"The demo exited with {self.process.returncode} before it was ready:\n"
                                     f"{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"The demo printed no banner within {START_TIMEOUT_S} s:\n{self.output()}")
            time.sleep(0.1)
        wait_until_responding(self.base_url + "/", timeout=10, is_alive=lambda: self.process.poll() is None)
        return self

    def stop(self, *signals: signal.Signals, gap_s: float = 0.3) -> tuple[Optional[int], float]:
        "Send `signals` `gap_s` apart; return the exit status (None after STOP_LIMIT_S) and the seconds it took."
        started = time.monotonic()
        for index, sig in enumerate(signals):
            if index: time.sleep(gap_s)
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=STOP_LIMIT_S - (time.monotonic() - started))
        except subprocess.TimeoutExpired:
            code = None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator:
    "Start demos: `start_demo(data_dir, sources)`; each is killed after the test, with its data dir's workers."
    demos: List[DemoProcess] = []

    def start(data_dir: Path, sources: List[Path], port: Optional[int] = None) -> DemoProcess:
        log_path = tmp_path / f"demo-{len(demos)}.log"
        demo = DemoProcess(data_dir, sources, log_path, port)
        demos.append(demo)
        return demo.wait_ready()

    yield start
    for demo in demos:
        demo.kill()
    for data_dir in {demo.data_dir for demo in demos}:
        end_workers(data_dir)


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    "A folder that takes the demo's archive plugin several seconds."
    folder = tmp_path_factory.mktemp("slow-source")
    write_random_files(folder, SLOW_SOURCE_FILES, 1024 * 1024, seed=5)
    return folder


def start_job(demo: DemoProcess) -> tuple[SessionClient, str]:
    "Load the page and press Run in a new session; return the session's client and the job id."
    client = SessionClient(demo.base_url)
    assert client.client.get("/").status_code == 200
    return client, job_id_of(client.post("/jobs/trigger"))


def last_line(stream: bytes) -> str:
    lines = stream.decode("utf-8", "backslashreplace").strip().splitlines()
    return lines[-1] if lines else ""


# --- Arguments that are rejected before anything starts ------------------------------------------


def test_data_dir_that_is_a_file(tmp_path: Path):
    file = tmp_path / "file.txt"
    file.write_text("not a folder")
    result = run_demo("--data-dir", str(file), "--source", str(tmp_path))
    assert result.returncode == 2
    assert last_line(result.stderr) == f"{PROG}: error: --data-dir {file}: is not a folder"


def test_data_dir_that_cannot_be_created(tmp_path: Path):
    file = tmp_path / "file.txt"
    file.write_text("not a folder")
    result = run_demo("--data-dir", str(file / "data"), "--source", str(tmp_path))
    assert result.returncode == 2
    assert last_line(result.stderr) == f"{PROG}: error: --data-dir {file / 'data'}: cannot be created: Not a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_data_dir_read_only(tmp_path: Path):
    data_dir = tmp_path / "read-only"
    data_dir.mkdir(mode=0o500)
    try:
        result = run_demo("--data-dir", str(data_dir), "--source", str(tmp_path))
    finally:
        data_dir.chmod(0o700)
    assert result.returncode == 2
    assert last_line(result.stderr) == f"{PROG}: error: --data-dir {data_dir}: is not writable: Permission denied"


@pytest.mark.parametrize("case", ["missing", "file"])
def test_bad_source(tmp_path: Path, case: str):
    source = tmp_path / case
    if case == "file": source.write_text("not a folder")
    problem = {"missing": "not found", "file": "is not a folder"}[case]
    result = run_demo("--data-dir", str(tmp_path / "data"), "--source", str(source))
    assert result.returncode == 2
    assert last_line(result.stderr) == f"{PROG}: error: --source {source}: {problem}"
    assert not (tmp_path / "data").exists(), "the data dir was created although the arguments were rejected"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list an unreadable folder")
def test_unreadable_source(tmp_path: Path):
    source = tmp_path / "unreadable"
    source.mkdir(mode=0o000)
    try:
        result = run_demo("--data-dir", str(tmp_path / "data"), "--source", str(source))
    finally:
        source.chmod(0o700)
    assert result.returncode == 2
    assert last_line(result.stderr) == f"{PROG}: error: --source {source}: is not readable: Permission denied"


@pytest.mark.parametrize("port", ["0", "65536", "web"])
def test_bad_port(tmp_path: Path, port: str):
    result = run_demo("--port", port, "--data-dir", str(tmp_path / "data"), "--source", str(tmp_path))
    assert result.returncode == 2
    port_text = port if port.isdigit() else repr(port)
    assert last_line(result.stderr) == (f"{PROG}: error: argument --port: invalid port {port_text}: "
                                        "expected a number from 1 to 65535")


def test_port_in_use(tmp_path: Path):
    data_dir = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(demo_command(port, data_dir, [tmp_path]), cwd=REPO_ROOT, capture_output=True,
                                timeout=60, stdin=subprocess.DEVNULL)
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 1
    assert stderr.strip() == (f"{PROG}: error: port {port} on 127.0.0.1 is already in use. "
                              "Stop the program that uses it, or pass another --port.")
    assert BANNER.encode() not in result.stdout
    assert worker_processes(data_dir) == [], "the demo started a worker although it could not listen"


# --- One demo per data dir -----------------------------------------------------------------------


def test_second_demo_on_data_dir_rejected(start_demo, tmp_path: Path):
    data_dir, source = tmp_path / "data", tmp_path / "source"
    source.mkdir()
    first = start_demo(data_dir, [source])
    first_workers = [worker.pid for worker in worker_processes(data_dir)]
    assert len(first_workers) == 1

    second = subprocess.run(demo_command(free_port(), data_dir, [source]), cwd=REPO_ROOT,
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode == 1
    assert last_line(second.stderr) == (f"{PROG}: error: --data-dir {data_dir} is in use by another demo "
                                        f"(PID {first.process.pid}). Stop that demo, or pass another --data-dir.")
    assert BANNER.encode() not in second.stdout
    assert [worker.pid for worker in worker_processes(data_dir)] == first_workers
    assert httpx.get(first.base_url + "/").status_code == 200

    # A demo that was killed holds no lock: the next one on the data dir starts.
    first.kill()
    end_workers(data_dir)
    third = start_demo(data_dir, [source])
    assert third.stop(signal.SIGINT)[0] == 0


# --- Stopping with a job running and a page open -------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_cancels_job(start_demo, tmp_path: Path, slow_source: Path, sig: signal.Signals):
    data_dir = tmp_path / "data"
    demo = start_demo(data_dir, [slow_source])
    client, job_id = start_job(demo)
    stream = client.stream(job_id)
    events: List[SSEEvent] = [stream.next_event(timeout=10)]
    assert len(worker_processes(data_dir)) == 1

    code, seconds = demo.stop(sig)
    output = demo.output()
    assert code == 0, f"the demo did not exit with 0 within {STOP_LIMIT_S} s (status {code}):\n{output}"
    assert seconds < STOP_LIMIT_S
    events += read_until_done(stream, timeout=5)
    assert any('data-status="cancelled"' in event.data for event in events), "the page never saw the cancel"
    assert "Cancelled 1 job(s) because the demo is stopping" in output
    assert "Traceback" not in output
    assert "Exception in ASGI application" not in output
    assert worker_processes(data_dir) == [], "a worker outlived the demo"
    assert list((data_dir / "archives").iterdir()) == [], "the cancelled job left a file in archives/"
    stream.close()
    client.close()


def test_second_sigint_stops_without_traceback(start_demo, tmp_path: Path, slow_source: Path):
    data_dir = tmp_path / "data"
    demo = start_demo(data_dir, [slow_source])
    client, job_id = start_job(demo)
    stream = client.stream(job_id)
    stream.next_event(timeout=10)

    code, seconds = demo.stop(signal.SIGINT, signal.SIGINT)
    output = demo.output()
    assert code == 0, f"the demo did not exit with 0 within {STOP_LIMIT_S} s (status {code}):\n{output}"
    assert "Already stopping (SIGINT again)" in output
    assert "Traceback" not in output
    assert "Demo stopped; workers unloaded" in output
    assert worker_processes(data_dir) == [], "a worker outlived the demo"
    stream.close()
    client.close()


# --- Jobs --------------------------------------------------------------------------------------------


def run_sequence(demo: DemoProcess) -> tuple[SessionClient, str, List[SSEEvent]]:
    "Press Run and read the sequence's event stream to its end; return the client, the first job id and the events."
    client, job_id = start_job(demo)
    with client.stream(job_id) as stream:
        events = read_until_done(stream, timeout=JOB_TIMEOUT_S)
    return client, job_id, events


def test_names_not_valid_utf8(start_demo, tmp_path: Path):
    source = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    (source / os.fsdecode(b"d\xe9j\xe0")).mkdir(parents=True)
    (source / os.fsdecode(b"r\xe9sum\xe9.txt")).write_bytes(b"a Latin-1 file name\n")
    (source / os.fsdecode(b"d\xe9j\xe0/\xff\xfe.bin")).write_bytes(os.urandom(4096))
    (source / "plain.txt").write_bytes(b"an ASCII file name\n")
    data_dir = tmp_path / "data"
    demo = start_demo(data_dir, [source])

    client, job_id, events = run_sequence(demo)
    assert any('data-status="completed"' in event.data for event in events)
    page = client.client.get("/")
    assert page.status_code == 200
    assert "/caf\\xe9" in page.text
    assert f"caf\ufffd.tar.xz</strong><span> from {tmp_path.resolve()}/caf\\xe9:" in page.text
    log = client.client.get("/jobs/log", params={"job_id": job_id})
    assert log.status_code == 200
    assert "Logging error" not in log.text
    assert "Added r\\xe9sum\\xe9.txt" in log.text
    assert "Logging error" not in demo.output()

    with tarfile.open(data_dir / "archives" / "caf\ufffd.tar.xz") as archive:
        names = sorted(os.fsencode(name) for name in archive.getnames())
    assert names == [b"d\xe9j\xe0", b"d\xe9j\xe0/\xff\xfe.bin", b"plain.txt", b"r\xe9sum\xe9.txt"]
    client.close()
    assert demo.stop(signal.SIGINT)[0] == 0


def test_same_folder_names_get_own_archives(start_demo, tmp_path: Path):
    first, second = tmp_path / "a" / "data", tmp_path / "b" / "data"
    write_random_files(first, 2, 1000, seed=1)
    write_random_files(second, 3, 1000, seed=2)
    data_dir = tmp_path / "demo-data"
    demo = start_demo(data_dir, [first, second])

    client, _, events = run_sequence(demo)
    assert any('data-status="completed"' in event.data for event in events)
    assert client.client.cookies.get(f"cjm_job_monitor_demo_{demo.port}") is not None
    archives = data_dir / "archives"
    assert sorted(path.name for path in archives.iterdir()) == ["data-2.tar.xz", "data.tar.xz"]
    for archive_name, folder in (("data.tar.xz", first), ("data-2.tar.xz", second)):
        with tarfile.open(archives / archive_name) as archive:
            assert sorted(archive.getnames()) == sorted(path.name for path in folder.iterdir())
    page = client.client.get("/").text
    shown_archives = archives.resolve()
    assert f"{shown_archives / 'data.tar.xz'}</strong><span> from {first.resolve()}:" in page
    assert f"{shown_archives / 'data-2.tar.xz'}</strong><span> from {second.resolve()}:" in page
    client.close()
    assert demo.stop(signal.SIGINT)[0] == 0
