"""Viewers for the benchmarks: SSE readers and polling clients over raw HTTP/1.1 sockets on 127.0.0.1.

The clients read the socket themselves, not through an HTTP library. They count
every byte the server sends: status line, headers, chunk framing and body. They
are also cheap enough for 100 of them to share one event loop. Each receipt is
stamped with `time.time()` when its bytes are read.
"""
from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

TICK_RE = re.compile(rb"tick (\d+) sent")  # Status message of `SteadyJobPlugin`'s progress reports


@dataclass
class ViewerLog:
    "What one viewer received."
    reads: List[Tuple[float, int]] = field(default_factory=list)  # (time.time(), bytes) per socket read
    ticks: List[Tuple[float, int]] = field(default_factory=list)  # (time.time(), newest tick) per message that had one
    messages: int = 0  # SSE messages or poll responses received
    connected_at: Optional[float] = None  # When the response headers arrived
    done: bool = False  # True once the stream sent its `done` event
    error: Optional[str] = None  # Error that stopped the viewer early, or None

    def bytes_between(self, start: float, end: float) -> int:
        "Sum the bytes read in [start, end)."
        return sum(n for t, n in self.reads if start <= t < end)


def _request(method: str, path: str, host: str, port: int, cookie: str, accept: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", f"Accept: {accept}", "HX-Request: true",
             "Connection: keep-alive"]
    if cookie: lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _HttpReader:
    "Read HTTP/1.1 responses from a socket, logging every read in a `ViewerLog`."

    def __init__(self, reader: asyncio.StreamReader, log: ViewerLog):
        self.reader, self.log, self.buffer = reader, log, bytearray()

    async def _fill(self) -> float:
        data = await self.reader.read(65536)
        now = time.time()
        if not data: raise ConnectionError("The server closed the connection.")
        self.log.reads.append((now, len(data)))
        self.buffer += data
        return now

    async def read_until(self, marker: bytes) -> Tuple[bytes, float]:
        "Return the bytes up to and including `marker`, and the time of the read that completed them."
        now = time.time()
        while (index := self.buffer.find(marker)) < 0: now = await self._fill()
        out = bytes(self.buffer[:index + len(marker)])
        del self.buffer[:index + len(marker)]
        return out, now

    async def read_exact(self, size: int) -> Tuple[bytes, float]:
        now = time.time()
        while len(self.buffer) < size: now = await self._fill()
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out, now

    async def read_headers(self) -> Tuple[int, dict]:
        head, _ = await self.read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers

    async def read_chunk(self) -> Tuple[Optional[bytes], float]:
        "Return the next chunk of a chunked body, or None after the last one."
        size_line, now = await self.read_until(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await self.read_until(b"\r\n")
            return None, now
        data, now = await self.read_exact(size + 2)
        return data[:-2], now


def _newest_tick(data: bytes) -> Optional[int]:
    ticks = [int(m) for m in TICK_RE.findall(data)]
    return max(ticks) if ticks else None


async def run_sse_viewer(
    host: str,  # Server address, 127.0.0.1
    port: int,  # Server port
    path: str,  # Path and query of the event stream
    cookie: str,  # Cookie header value shared with the page that started the job
    log: ViewerLog,  # Filled with what arrives
    stop: asyncio.Event,  # Set to close the stream early
) -> None:
    "Read one event stream until its `done` event, the server closing it, or `stop`."
    writer = None
    stopper = asyncio.ensure_future(stop.wait())
    try:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(_request("GET", path, host, port, cookie, "text/event-stream"))
        http = _HttpReader(reader, log)
        status, headers = await http.read_headers()
        log.connected_at = time.time()
        if status != 200 or "chunked" not in headers.get("transfer-encoding", ""):
            log.error = f"GET {path} returned {status} with headers {headers}, not a chunked event stream."
            return
        pending = b""
        while True:
            chunk_task = asyncio.ensure_future(http.read_chunk())
            done, _ = await asyncio.wait({chunk_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if chunk_task not in done:
                chunk_task.cancel()
                return
            chunk, now = chunk_task.result()
            if chunk is None: return
            pending += chunk
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                if block.startswith(b":"): continue  # a heartbeat comment
                log.messages += 1
                tick = _newest_tick(block)
                if tick is not None: log.ticks.append((now, tick))
                if b"event: done" in block:
                    log.done = True
                    return
    except (ConnectionError, OSError, ValueError) as e:
        log.error = f"{type(e).__name__}: {e}"
    finally:
        stopper.cancel()
        if writer is not None: writer.close()


async def run_polling_viewer(
    host: str,  # Server address, 127.0.0.1
    port: int,  # Server port
    path: str,  # Path and query polled
    cookie: str,  # Cookie header value
    interval_s: float,  # Seconds between the starts of two requests
    log: ViewerLog,  # Filled with what arrives
    stop: asyncio.Event,  # Set to stop polling
    phase_s: Optional[float] = None,  # Delay before the first request; None picks one at random in [0, interval_s)
) -> None:
    "Poll `path` at a fixed rate over one keep-alive connection until `stop` is set."
    writer = None
    try:
        await asyncio.sleep(random.uniform(0, interval_s) if phase_s is None else phase_s)
        reader, writer = await asyncio.open_connection(host, port)
        http = _HttpReader(reader, log)
        log.connected_at = time.time()
        next_at = time.monotonic()
        while not stop.is_set():
            writer.write(_request("GET", path, host, port, cookie, "text/html"))
            status, headers = await http.read_headers()
            body, now = await http.read_exact(int(headers.get("content-length", "0")))
            if status != 200:
                log.error = f"GET {path} returned {status}: {body[:200]!r}"
                return
            log.messages += 1
            tick = _newest_tick(body)
            if tick is not None: log.ticks.append((now, tick))
            next_at += interval_s
            delay = next_at - time.monotonic()
            if delay < 0: next_at = time.monotonic()  # behind: the next request goes out at once
            try:
                await asyncio.wait_for(stop.wait(), max(delay, 0.0))
            except asyncio.TimeoutError:
                pass
    except (ConnectionError, OSError, ValueError) as e:
        log.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None: writer.close()
