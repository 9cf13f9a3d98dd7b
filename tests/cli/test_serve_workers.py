"""``aigw serve --workers 2``: each worker listens on a socket of its own, so a
burst of new connections spreads over both instead of landing on whichever
worker woke first. One such gateway serves the module's tests (a start of two
workers is ~5 s of CPU)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import process_env
from tests.support import AIGW_BIN, Gateway, start_gateway

CONNECTIONS = 64


@pytest.fixture(scope="module")
def two_workers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("two-workers")
    gateway = start_gateway(
        process_env(database_url, root / "data"), root / "gateway.log", workers=2
    )
    try:
        yield gateway
    finally:
        gateway.stop()


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _sockets(port: int, state: str) -> dict[str, str]:
    """inode -> state of the TCP sockets whose local port is *port*, in *state*."""
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            found[fields[9]] = state
    return found


def _held_by(pid: int, inodes: set[str]) -> set[str]:
    held = set()
    for fd in os.scandir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(fd.path)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held.add(target[8:-1])
    return held


async def _burst(port: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open CONNECTIONS keep-alive connections at once; one request on each."""

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        return reader, writer

    return await asyncio.gather(*(one() for _ in range(CONNECTIONS)))


@pytest.mark.timeout(240)
def test_each_worker_accepts_on_its_own_socket(two_workers: Gateway) -> None:
    gateway = two_workers
    port = int(gateway.url.rsplit(":", 1)[1])
    # /healthz answers once the first worker is up; wait for both (a busy machine
    # takes a while to start a worker). 0A: LISTEN.
    deadline = time.monotonic() + 150
    while True:
        workers = [p for p in _children(gateway.proc.pid) if "multiprocessing.spawn" in _cmd(p)]
        listening = set(_sockets(port, "0A"))
        if (len(workers) == 2 and len(listening) == 2) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(workers) == 2, workers
    # Two listening sockets, one per worker (uvicorn alone shares one between them).
    assert len(listening) == 2, listening
    assert [len(_held_by(p, listening)) for p in workers] == [1, 1]

    async def spread() -> list[int]:
        conns = await _burst(port)
        try:
            established = set(_sockets(port, "01"))
            return [len(_held_by(p, established)) for p in workers]
        finally:
            for _, writer in conns:
                writer.close()

    held = asyncio.run(spread())
    assert sum(held) == CONNECTIONS
    # The kernel hashes connections over the sockets: far from all on one worker.
    assert min(held) >= CONNECTIONS // 8, held


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_second_gateway_on_the_port_still_refuses(two_workers: Gateway, tmp_path: Path) -> None:
    """SO_REUSEPORT would let another process join the port: the start-up check binds
    without it, so a second `aigw serve` on the same port exits instead."""
    gateway = two_workers
    port = gateway.url.rsplit(":", 1)[1]
    done = subprocess.run(
        [str(AIGW_BIN), "serve", "--host", "127.0.0.1", "--port", port, "--workers", "2"],
        env={**gateway.env, "AIGW_DATA_DIR": str(tmp_path / "other")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "already in use" in done.stderr
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
        pass  # the first one still serves
