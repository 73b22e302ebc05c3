"""Serve ASGI apps on 127.0.0.1 for tests, and read Server-Sent Events over httpx.

`ThreadedServer` runs an app with uvicorn in a background thread of the test
process. `ServerProcess` runs an app factory in a child process, for tests that
restart or kill the server. Both listen on 127.0.0.1 only and run the app's
startup and shutdown handlers (uvicorn's lifespan protocol).

Run as a module, this file is the child side of `ServerProcess`:
`python -m tests.support.server --factory MODULE:CALLABLE --kwargs JSON --port N --ready-file FILE`.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import httpx
import uvicorn

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]

logger = logging.getLogger(__name__)


def wait_until_responding(url: str, timeout: float = 30.0, is_alive: Callable[[], bool] = lambda: True) -> None:
    "Poll `url` until it returns any HTTP response; raise TimeoutError after `timeout` seconds."
    deadline = time.monotonic() + timeout
    last_error: Optional[Exception] = None
    while time.monotonic() < deadline:
        if not is_alive():
            raise RuntimeError(f"The server for {url} stopped before it responded (last error: {last_error!r}).")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.TransportError as error:
            last_error = error
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not respond within {timeout} s (last error: {last_error!r}).")


class _RecordingHandler(logging.Handler):
    "A logging handler that keeps formatted records, to explain a failed start or stop."

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


_RECORDED_LOGGERS = ("", "uvicorn")


class _LoopbackURLs:
    "URLs of a server listening on 127.0.0.1 at `self.port`."
    port: Optional[int]

    @property
    def base_url(self) -> str:
        "The server's root URL, such as http://127.0.0.1:PORT."
        if self.port is None:
            raise RuntimeError("The server has not started; call start() first.")
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str = "/") -> str:
        "Return the absolute URL of `path` on this server."
        return self.base_url + (path if path.startswith("/") else "/" + path)


class ThreadedServer(_LoopbackURLs):
    """An ASGI app served by uvicorn on a free 127.0.0.1 port, in a background thread.

    `start()` returns once the app's startup handlers ran and the server responds
    to HTTP, and `stop()` returns once its shutdown handlers ran. Use it as a
    context manager to get both.
    """

    def __init__(
        self,
        app: Any,  # ASGI app, e.g. a FastHTML app
        startup_timeout: float = 60.0,  # Seconds to wait for startup handlers and the first response
        shutdown_timeout: float = 30.0,  # Seconds to wait for open responses and shutdown handlers
        ready_path: str = "/",  # Path polled until the server responds (any status counts)
    ) -> None:
        self.app = app
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.ready_path = ready_path
        self.port: Optional[int] = None
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._log = _RecordingHandler()


    @property
    def log_lines(self) -> list[str]:
        "Log lines from uvicorn and the app's loggers recorded while the server ran."
        return list(self._log.lines)

    def start(self) -> "ThreadedServer":
        "Start the server and wait until its startup handlers ran and it responds to HTTP."
        # Port 0 lets the kernel pick a free port, with no window for another process to take it.
        config = uvicorn.Config(
            self.app, host=LOOPBACK, port=0, lifespan="on", log_level="warning",
            timeout_graceful_shutdown=max(1, int(self.shutdown_timeout / 2)),
        )
        self._server = uvicorn.Server(config)
        # uvicorn's loggers do not propagate to the root logger, so the handler goes on both.
        for name in _RECORDED_LOGGERS:
            logging.getLogger(name).addHandler(self._log)
        self._thread = threading.Thread(target=self._run, name="test-uvicorn", daemon=True)
        self._thread.start()

        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._detach_log()
                raise RuntimeError(
                    f"The app failed to start ({self._error!r}). Server log:\n" + "\n".join(self._log.lines))
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"The app did not start within {self.startup_timeout} s. Server log:\n"
                                   + "\n".join(self._log.lines))
            time.sleep(0.02)

        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        wait_until_responding(self.url(self.ready_path), max(1.0, deadline - time.monotonic()), self._thread.is_alive)
        return self

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as error:  # uvicorn raises SystemExit when a startup handler fails
            self._error = error

    def stop(self) -> None:
        "Stop the server and wait until its shutdown handlers ran; raise if it does not stop in time."
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(self.shutdown_timeout)
        if self._thread.is_alive():
            # Cancels responses that are still open, such as endless event streams.
            self._server.force_exit = True
            self._thread.join(10.0)
        self._detach_log()
        if self._thread.is_alive():
            raise TimeoutError(f"The server on port {self.port} did not stop within {self.shutdown_timeout + 10} s.")

    def _detach_log(self) -> None:
        for name in _RECORDED_LOGGERS:
            logging.getLogger(name).removeHandler(self._log)

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


class ServerProcess(_LoopbackURLs):
    """An app factory served by uvicorn in a child process on 127.0.0.1.

    The child is `python -m tests.support.server`; it imports `factory`
    ("module:callable"), calls it with `kwargs` to get the app and serves it.
    `restart()` serves a fresh app on the same port, so an open page can reload.
    The child runs in its own process group so that `kill()` also ends the
    processes the app started, such as plugin workers.
    """

    def __init__(
        self,
        factory: str,  # "module:callable" returning an ASGI app; the module must be importable from the repo root
        kwargs: Optional[dict] = None,  # JSON-serialisable keyword arguments for the factory
        log_path: Optional[Path] = None,  # File for the child's stdout and stderr (default: a temp file)
        env: Optional[dict] = None,  # Extra environment variables for the child
        startup_timeout: float = 60.0,  # Seconds to wait for startup handlers and the first response
        shutdown_timeout: float = 30.0,  # Seconds to wait after SIGTERM before SIGKILL
        ready_path: str = "/",  # Path polled until the server responds (any status counts)
    ) -> None:
        self.factory = factory
        self.kwargs = kwargs or {}
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.ready_path = ready_path
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="test-server-")) / "server.log"
        self.log_path = Path(log_path)


    def log_text(self) -> str:
        "Return what the child wrote to stdout and stderr so far."
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_running(self) -> bool:
        "Check whether the child process is still running."
        return self.process is not None and self.process.poll() is None

    def start(self) -> "ServerProcess":
        "Start the child and wait until the app's startup handlers ran and it responds to HTTP."
        if self.is_running():
            raise RuntimeError(f"The server process {self.process.pid} is already running.")
        ready_file = self.log_path.with_suffix(".port")
        ready_file.unlink(missing_ok=True)
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = [
            sys.executable, "-m", "tests.support.server", "--factory", self.factory,
            "--kwargs", json.dumps(self.kwargs), "--port", str(self.port or 0), "--ready-file", str(ready_file),
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

        deadline = time.monotonic() + self.startup_timeout
        while not ready_file.exists():
            if not self.is_running():
                raise RuntimeError(f"The server process exited with code {self.process.returncode} before it "
                                   f"started. Its log ({self.log_path}):\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"The server process did not start within {self.startup_timeout} s. "
                                   f"Its log ({self.log_path}):\n{self.log_text()}")
            time.sleep(0.05)

        self.port = int(ready_file.read_text())
        wait_until_responding(self.url(self.ready_path), max(1.0, deadline - time.monotonic()), self.is_running)
        return self

    def stop(self) -> int:
        "Stop the child with SIGTERM so that the app's shutdown handlers run; return its exit code."
        if self.process is None:
            return 0
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(self.shutdown_timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Server process %s ignored SIGTERM for %s s; killing it", self.process.pid,
                               self.shutdown_timeout)
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        "Kill the child's process group at once with SIGKILL, as a crash would; no shutdown handler runs."
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def restart(self, kill: bool = False) -> "ServerProcess":
        "Stop (or with `kill`, kill) the child and start a new one on the same port."
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


@dataclass
class SSEEvent:
    "One dispatched Server-Sent Event, with the fields of its block."
    event: str = "message"  # The `event:` field, or "message" when the block had none
    data: str = ""  # The `data:` lines joined with "\n"
    id: Optional[str] = None  # The `id:` field of this block, or None
    retry: Optional[int] = None  # The `retry:` field in milliseconds, or None


_SSE_LINE_END = re.compile(r"\r\n|\r|\n")


def split_sse_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Split decoded event-stream text into lines, as the HTML standard's EventSource does.

    Only CRLF, LF and CR end a line. `str.splitlines()` and httpx's `iter_lines()`
    also split on U+2028, U+0085, form feeds and more, which a browser keeps
    inside the line, so a parser fed by them would see events a browser never sees.
    Text after the last line ending is yielded as a last line when the chunks end.
    """
    pending = ""
    for chunk in chunks:
        pending += chunk
        # A trailing CR waits for the next chunk: it may be the first half of a CRLF.
        held = "\r" if pending.endswith("\r") else ""
        pieces = _SSE_LINE_END.split(pending[:-1] if held else pending)
        pending = pieces.pop() + held
        yield from pieces
    if pending:
        yield from _SSE_LINE_END.split(pending.removesuffix("\r"))


class SSEParser:
    """An incremental parser for the text/event-stream format of the HTML standard.

    Feed it one line at a time, without the line ending; a blank line ends a
    block. Blocks without data dispatch no event, but their `id:` still sets
    `last_event_id`, as a browser's EventSource does.
    """

    def __init__(self) -> None:
        self.last_event_id: Optional[str] = None
        self.comments: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self._event, self._data, self._id, self._retry = None, [], None, None

    def feed(self, line: str) -> Optional[SSEEvent]:
        "Parse one line; return the event it completes, or None."
        if line == "":
            if not self._data:
                self._reset()
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
            self._reset()
            return event
        if line.startswith(":"):
            self.comments.append(line[1:].lstrip(" "))
            return None

        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = self.last_event_id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None


class _StreamClosed:
    "Queue marker that the stream ended; carries the error that ended it, if any."

    def __init__(self, error: Optional[BaseException]) -> None:
        self.error = error


class SSEStream:
    """An open text/event-stream response, read by a background thread into a queue.

    Open it with `open_sse_stream`. `next_event(timeout)` returns the next event
    or raises TimeoutError; a timeout leaves the stream usable.
    """

    def __init__(self, client: httpx.Client, response: httpx.Response, own_client: bool) -> None:
        self.client = client
        self.response = response
        self.parser = SSEParser()
        self._own_client = own_client
        self._queue: "queue.Queue[SSEEvent | _StreamClosed]" = queue.Queue()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="test-sse-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        error: Optional[BaseException] = None
        try:
            for line in split_sse_lines(self.response.iter_text()):
                event = self.parser.feed(line)
                if event is not None:
                    self._queue.put(event)
        except Exception as exc:  # a closed socket ends the thread; the error is kept for the reader
            error = exc
        self._queue.put(_StreamClosed(error))

    @property
    def comments(self) -> list[str]:
        "Comment lines received so far (keep-alives), without the leading colon."
        return list(self.parser.comments)

    def next_event(self, timeout: float = 10.0) -> SSEEvent:
        "Return the next event; raise TimeoutError after `timeout` seconds, EOFError if the stream ended."
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"No server-sent event from {self.response.url} within {timeout} s.") from None
        if isinstance(item, _StreamClosed):
            self._queue.put(item)  # later calls see the end too
            detail = f" ({item.error!r})" if item.error and not self._closed else ""
            raise EOFError(f"The event stream from {self.response.url} ended{detail}.")
        return item

    def read_events(self, count: int, timeout: float = 10.0) -> list[SSEEvent]:
        "Return the next `count` events; raise TimeoutError if they do not all arrive within `timeout` seconds."
        deadline = time.monotonic() + timeout
        events = []
        while len(events) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Got {len(events)} of {count} server-sent events from {self.response.url} "
                                   f"within {timeout} s: {events!r}")
            events.append(self.next_event(remaining))
        return events

    def read_until(self, predicate: Callable[[SSEEvent], bool], timeout: float = 10.0) -> list[SSEEvent]:
        "Return the events up to and including the first one matching `predicate`, within `timeout` seconds."
        deadline = time.monotonic() + timeout
        events = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"No matching server-sent event from {self.response.url} within {timeout} s; "
                                   f"got {events!r}")
            events.append(self.next_event(remaining))
            if predicate(events[-1]):
                return events

    def close(self) -> None:
        "Close the connection so that the server sees the client leave, and stop the reader thread."
        self._closed = True
        # Closing a socket does not wake a thread blocked reading it, but shutting it down does.
        network_stream = self.response.extensions.get("network_stream")
        sock = network_stream.get_extra_info("socket") if network_stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.response.close()
        self._reader.join(5.0)
        if self._own_client:
            self.client.close()

    def __enter__(self) -> "SSEStream":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def open_sse_stream(
    url: str,  # Absolute URL of the event stream
    client: Optional[httpx.Client] = None,  # Client to use, e.g. one carrying a session cookie; None makes one
    headers: Optional[dict] = None,  # Extra request headers, e.g. {"Last-Event-ID": "7"}
    params: Optional[dict] = None,  # Query parameters
    connect_timeout: float = 10.0,  # Seconds to wait for the response headers
) -> SSEStream:
    "Send a GET to an event stream and return the open `SSEStream`; raise if the response is not an event stream."
    own_client = client is None
    if client is None:
        client = httpx.Client()
    request_headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **(headers or {})}
    # No read timeout: an idle stream is normal, and next_event applies its own timeout.
    timeout = httpx.Timeout(connect_timeout, read=None)
    request = client.build_request("GET", url, headers=request_headers, params=params, timeout=timeout)
    response = client.send(request, stream=True)

    content_type = response.headers.get("content-type", "")
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        body = response.read().decode(errors="replace")[:500]
        response.close()
        if own_client:
            client.close()
        raise AssertionError(f"GET {url} returned {response.status_code} with content-type {content_type!r}, "
                             f"not an event stream. Body: {body!r}")
    return SSEStream(client, response, own_client)


def iter_sse_lines(text: str) -> Iterator[SSEEvent]:
    "Parse a complete event-stream body, such as a recorded response, into events."
    parser = SSEParser()
    for line in split_sse_lines([text]):
        event = parser.feed(line)
        if event is not None:
            yield event
    event = parser.feed("")
    if event is not None:
        yield event


class _ReportingServer(uvicorn.Server):
    "A uvicorn server that writes its port to a file once startup handlers ran and it listens."

    def __init__(self, config: uvicorn.Config, ready_file: Path) -> None:
        super().__init__(config)
        self.ready_file = ready_file

    async def startup(self, sockets: Optional[list] = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit or not self.servers:
            return
        port = self.servers[0].sockets[0].getsockname()[1]
        partial = self.ready_file.with_suffix(".tmp")
        partial.write_text(str(port))
        partial.replace(self.ready_file)  # atomic, so the parent never reads a half-written port


def _serve_factory(argv: Optional[list[str]] = None) -> None:
    "Import an app factory, build the app and serve it until SIGTERM or SIGINT; the child side of ServerProcess."
    parser = argparse.ArgumentParser(prog="python -m tests.support.server")
    parser.add_argument("--factory", required=True, help="MODULE:CALLABLE that returns the ASGI app")
    parser.add_argument("--kwargs", default="{}", help="JSON object of keyword arguments for the factory")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--ready-file", type=Path, required=True, help="file to write the port to once serving")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, _, attribute = args.factory.partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    app = factory(**json.loads(args.kwargs))
    config = uvicorn.Config(app, host=LOOPBACK, port=args.port, lifespan="on", log_level="info",
                            timeout_graceful_shutdown=5)
    asyncio.run(_ReportingServer(config, args.ready_file).serve())


if __name__ == "__main__":
    _serve_factory()
