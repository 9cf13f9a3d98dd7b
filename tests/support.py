"""Helpers shared by the test suite: real servers as subprocesses, free ports, waiting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
AIGW_BIN = Path(sys.executable).with_name("aigw")
# Seconds each start_gateway() of this process took until the gateway answered,
# counting only starts that ran alone (no other start of this process overlapping
# them): what the next start on its own will likely take on this machine, at its
# present load. Starts made together (tests/budgets/test_processes.py starts two
# or three at once) each took up to twice as long, and the rollover test's wait,
# sized from these, grew with them (53 s instead of ~25 s, issue 15).
START_SECONDS: list[float] = []
_starts = threading.Lock()
_starts_in_flight = 0
_starts_begun = 0


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


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP *port* (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields[1] is "address:port" in hex, fields[3] the state: 0A is LISTEN.
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _process_tree(pid: int) -> list[int]:
    """*pid* and its children (uvicorn's workers, each with a socket of its own)."""
    tree = [pid]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                tree.append(int(entry.name))
    return tree


def listens_on(pid: int, port: int) -> bool:
    """Whether *pid* (or one of its children) holds a socket listening on *port*.
    Without /proc (not Linux) it cannot tell, and says yes."""
    if not Path("/proc/net/tcp").exists():
        return True
    inodes = _listening_inodes(port)
    for member in _process_tree(pid):
        try:
            fds = list(os.scandir(f"/proc/{member}/fd"))
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return True
    return False


class PortTaken(RuntimeError):
    """The free port went to another program before the gateway bound it."""


def _wait_own_healthz(proc: subprocess.Popen[bytes], url: str, port: int, timeout: float) -> None:
    """Wait until *proc* answers ``/healthz`` on *port* itself.

    :func:`free_port` only finds a port that was free a moment ago: on a machine
    running other suites, another server can take it first. Then something
    else answers on it (once, a fake upstream's 404 passed for a gateway that
    was exiting with "already in use"), so an answer counts only while the
    socket is this process's.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            if code == 2:  # `aigw serve` refuses a busy address with exit code 2
                raise PortTaken(f"port {port} was taken before the gateway bound it")
            raise RuntimeError(f"process exited with {code} before {url} answered")
        try:
            answered = httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError as exc:
            answered, last = False, exc
        if answered and listens_on(proc.pid, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


def start_gateway(env: dict[str, str], log_path: Path, *, workers: int = 1) -> Gateway:
    global _starts_in_flight, _starts_begun
    with _starts:
        alone, number = _starts_in_flight == 0, _starts_begun
        _starts_in_flight += 1
        _starts_begun += 1
    try:
        gateway, seconds = _start_gateway(env, log_path, workers=workers)
    finally:
        with _starts:
            _starts_in_flight -= 1
            alone = alone and _starts_begun == number + 1
    if alone:
        START_SECONDS.append(seconds)
    return gateway


def _start_gateway(
    env: dict[str, str], log_path: Path, *, workers: int = 1
) -> tuple[Gateway, float]:
    full_env = {**os.environ, **env}
    began = time.monotonic()
    for attempt in range(3):
        port = free_port()
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
            _wait_own_healthz(proc, url, port, timeout=60.0)
        except PortTaken:
            # Exit 2 is also aigw serve's refusal of its configuration (a key ring
            # that cannot open the stored key codes, say): say so at once rather
            # than start it twice more (~2.5 s of CPU each) and blame the port.
            said = log_path.read_text(errors="replace")[-4000:]
            if "cannot serve:" not in said:
                raise RuntimeError(f"gateway refused to start (exit 2):\n{said}") from None
            if attempt < 2:
                continue
            raise
        except Exception:
            stop_process(proc)
            raise RuntimeError(
                f"gateway failed to start:\n{log_path.read_text(errors='replace')[-4000:]}"
            ) from None
        gateway = Gateway(
            url=url,
            admin_token=full_env["AIGW_ADMIN_TOKEN"],
            proc=proc,
            log_path=log_path,
            env=full_env,
        )
        return gateway, time.monotonic() - began
    raise AssertionError("unreachable")
