"""Helpers shared by the test suite: real servers as subprocesses, free ports, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
AIGW_BIN = Path(sys.executable).with_name("aigw")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after *grace* seconds; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


@dataclass
class Gateway:
    """A real ``aigw serve`` process on a free port."""

    url: str
    admin_token: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(repr=False)
    # Where this view of the log starts: a gateway shared by several tests hands
    # each one a view from the size the log had when the test began.
    log_offset: int = 0

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.admin_headers, timeout=30.0)

    def logs(self) -> str:
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")

    def from_here(self) -> Gateway:
        """The same process, its logs() showing only what it writes from now on."""
        return replace(self, log_offset=self.log_path.stat().st_size)

    def stop(self, grace: float = 15.0) -> int:
        return stop_process(self.proc, grace)


def start_gateway(env: dict[str, str], log_path: Path, *, workers: int = 1) -> Gateway:
    port = free_port()
    full_env = {**os.environ, **env}
    handle = log_path.open("ab")
    proc = subprocess.Popen(
        [
            str(AIGW_BIN),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    handle.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", timeout=60.0, proc=proc)
    except Exception:
        stop_process(proc)
        raise RuntimeError(
            f"gateway failed to start:\n{log_path.read_text(errors='replace')[-4000:]}"
        ) from None
    return Gateway(
        url=url,
        admin_token=full_env["AIGW_ADMIN_TOKEN"],
        proc=proc,
        log_path=log_path,
        env=full_env,
    )
