"""Load: wrk for throughput and c=1 latency, a raw asyncio client for the rest.

wrk (C, one thread, pinned to the load core) drives the req/s, streams/s and
c=1 latency runs: it needs a few microseconds of CPU per request, so the core
it shares with the fake upstream stays mostly free. wrk cannot see the first
byte of a stream, keep 1,000 slow streams open in waves, or read JSON, so a
small asyncio client on httptools does those (its own overhead is the same for
every target and cancels out of "added" figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httptools

WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d,\"read\":%d," ..
    "\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d," ..
    "\"max_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def lua_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[\n{text}]{eq}]"


@dataclass(frozen=True)
class Call:
    """One kind of request against one target."""

    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    method: str = "POST"

    def raw(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        if self.method != "GET" or self.body:
            lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


def ensure_wrk() -> str | None:
    """The wrk binary, installing Debian's package when we are root and it is missing."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    for argv in (
        ["apt-get", "install", "-y", "-qq", "wrk"],
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "wrk"],
    ):
        subprocess.run(argv, capture_output=True, timeout=300, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def run_wrk(
    wrk: str,
    call: Call,
    *,
    connections: int,
    duration: float,
    cpu: int | None,
    workdir: Path,
    timeout: float = 30.0,
) -> dict:
    script = workdir / "wrk-request.lua"
    lines = [f"wrk.method = {lua_string(call.method)}"]
    lines += [f"wrk.headers[ {lua_string(k)} ] = {lua_string(v)}" for k, v in call.headers]
    lines.append(f"wrk.body = {lua_string(call.body.decode())}")
    script.write_text("\n".join(lines) + "\n" + WRK_DONE)
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={int(timeout)}s",
        "-s",
        str(script),
        call.url,
    ]

    def pin() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + timeout + 30,
        preexec_fn=pin,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            out = json.loads(line[8:])
            out["errors"] = sum(out[k] for k in ("connect", "read", "write", "status", "timeout"))
            return out
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")


# --- the asyncio client -------------------------------------------------------


@dataclass
class Response:
    status: int = 0
    started: float = 0.0
    first_data: float | None = None  # the first body bytes holding an SSE "data:" (or any body)
    ended: float = 0.0
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode(errors="replace")
        return None

    @property
    def ttfb(self) -> float:
        return (self.first_data or self.ended) - self.started

    @property
    def total(self) -> float:
        return self.ended - self.started


class _Conn(asyncio.Protocol):
    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.response = Response()
        self.parts: list[bytes] = []
        self.tail = b""
        self.keep_alive = True
        self.closed = False
        self.on_first: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError(f"bad response: {exc}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.response.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.response.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        if self.response.first_data is None:
            if not self.sse or b"data:" in self.tail + body:
                self.response.first_data = time.perf_counter()
                if self.on_first is not None:
                    self.on_first()
            else:
                self.tail = body[-4:]

    def on_message_complete(self) -> None:
        self.response.ended = time.perf_counter()
        self.response.body = b"".join(self.parts)
        self.keep_alive = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.response)

    async def send(self, raw: bytes) -> Response:
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.response = Response(started=time.perf_counter())
        self.parts = []
        self.tail = b""
        assert self.transport is not None
        self.transport.write(raw)
        return await self.waiter


class Client:
    """One keep-alive connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int, sse: bool = False) -> None:
        self.host, self.port, self.sse = host, port, sse
        self.conn: _Conn | None = None

    async def request(
        self, raw: bytes, timeout: float = 60.0, on_first: Callable[[], None] | None = None
    ) -> Response:
        if self.conn is None or self.conn.closed or not self.conn.keep_alive:
            await self.close()
            loop = asyncio.get_running_loop()
            _, self.conn = await loop.create_connection(
                lambda: _Conn(self.sse), self.host, self.port
            )
        self.conn.on_first = on_first
        try:
            return await asyncio.wait_for(self.conn.send(raw), timeout)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()
        self.conn = None


async def sequential(call: Call, n: int, sse: bool, timeout: float = 60.0) -> list[Response]:
    """n requests one after another on one connection (c=1)."""
    client = Client(call.host, call.port, sse)
    raw = call.raw()
    try:
        return [await client.request(raw, timeout) for _ in range(n)]
    finally:
        await client.close()


@dataclass
class Batch:
    responses: list[Response] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0


async def closed_loop(
    call: Call,
    concurrency: int,
    *,
    count: int | None = None,
    duration: float | None = None,
    sse: bool = False,
    timeout: float = 60.0,
) -> Batch:
    """``concurrency`` connections sending back to back, ``count`` requests or for ``duration``."""
    raw = call.raw()
    batch = Batch()
    remaining = [count if count is not None else 1 << 62]
    deadline = time.perf_counter() + duration if duration is not None else float("inf")

    async def worker() -> None:
        client = Client(call.host, call.port, sse)
        try:
            while remaining[0] > 0 and time.perf_counter() < deadline:
                remaining[0] -= 1
                try:
                    batch.responses.append(await client.request(raw, timeout))
                except (OSError, TimeoutError, ConnectionError) as exc:
                    batch.failures.append(type(exc).__name__ + ": " + str(exc)[:120])
        finally:
            await client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    batch.wall = time.perf_counter() - t0
    return batch


@dataclass
class Wave:
    opened: int = 0
    completed: int = 0
    failures: list[str] = field(default_factory=list)
    peak_concurrent: int = 0
    wall: float = 0.0


async def slow_stream_wave(
    call: Call,
    streams: int,
    *,
    timeout: float,
    sample: Callable[[int], None],
    interval: float = 0.2,
    expect: Callable[[Response], bool],
) -> Wave:
    """``streams`` concurrent streams on their own connections; ``sample(active)`` meanwhile."""
    wave = Wave()
    raw = call.raw()
    active = [0]

    async def one() -> None:
        client = Client(call.host, call.port, sse=True)
        counted = [False]

        def first() -> None:
            counted[0] = True
            active[0] += 1
            wave.peak_concurrent = max(wave.peak_concurrent, active[0])

        try:
            response = await client.request(raw, timeout=timeout, on_first=first)
            if response.status == 200 and expect(response):
                wave.completed += 1
            else:
                wave.failures.append(f"HTTP {response.status}: {response.body[:120]!r}")
        except (OSError, TimeoutError, ConnectionError) as exc:
            wave.failures.append(type(exc).__name__ + ": " + str(exc)[:120])
        finally:
            if counted[0]:
                active[0] -= 1
            await client.close()

    async def sampler(done: asyncio.Event) -> None:
        while not done.is_set():
            sample(active[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), interval)

    done = asyncio.Event()
    t0 = time.perf_counter()
    sampling = asyncio.create_task(sampler(done))
    tasks = []
    for _ in range(streams):  # opened in small steps, like clients arriving
        tasks.append(asyncio.create_task(one()))
        wave.opened += 1
        if wave.opened % 50 == 0:
            await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    done.set()
    await sampling
    wave.wall = time.perf_counter() - t0
    return wave


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank on sorted data, p in [0, 100]."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
