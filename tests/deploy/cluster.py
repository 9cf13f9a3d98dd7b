"""Three ``aigw serve`` processes on one PostgreSQL behind HAProxy, for the replica
harness (:mod:`tests.deploy.replicas`).

The balancer health-checks ``/readyz`` and is asked over its stats socket what it
thinks of each replica, so the harness can tell *when* it stopped sending to a
draining one. :meth:`Cluster.restart` is one step of a rolling restart,
instrumented: SIGTERM, then when ``/readyz`` turned 503, when the balancer marked
the replica down, when the listener closed and when the process exited; then a
new process on the same port, and the wait until the balancer marks it up.

Health checks: a replica is marked down after two failed checks 250 ms apart
(``fall 2``), and a check fails when ``/readyz`` is not 200 within ``timeout
check``. With ``fall 1`` and the default check timeout (``inter``, 300 ms), one
slow ``/readyz`` on a loaded machine marked a healthy replica down; two at once,
while the third was restarting, left the balancer with no server (503 to the
client): the failure the harness used to show.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ADMIN_TOKEN, ENCRYPTION_KEYS, TOKEN_PEPPER
from tests.fakes import FakeUpstream, start_fake_upstream
from tests.support import Gateway, free_port, stop_process, wait_http

# Seconds /readyz answers 503 before the listener closes (AIGW_SHUTDOWN_DRAIN);
# the balancer needs at most ~fall x inter plus a check's duration to notice.
DRAIN_SECONDS = 2.0

_HAPROXY_CFG = """\
global
    maxconn 4096
    log stdout format raw local0
    stats socket {socket} mode 600 level admin
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout check 2s
    # Only what the gateway cannot have started on: a connection that failed,
    # or one it closed (idle keep-alive) before reading the request. Never a
    # response timeout: a chat completion must not be sent twice.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
frontend aigw
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 250ms fastinter 250ms downinter 250ms fall 2 rise 2
{servers}
"""


@dataclass
class Restart:
    """One step of a rolling restart; times in seconds after the SIGTERM."""

    name: str
    at: float = 0.0  # time.monotonic() of the SIGTERM
    not_ready: float | None = None  # first 503 from /readyz
    balancer_down: float | None = None  # HAProxy marked it down
    listener_closed: float | None = None  # first refused connection
    exited: float | None = None
    exit_code: int | None = None
    balancer_up: float | None = None  # the new process, marked up

    @property
    def drained_before_close(self) -> bool:
        """/readyz turned 503 and the balancer stopped sending before the listener
        closed. (Which of the first two the harness saw first says nothing: the
        balancer's own check may see the 503 before the harness's probe does.)"""
        closed = self.listener_closed
        return (
            closed is not None
            and self.not_ready is not None
            and self.balancer_down is not None
            and max(self.not_ready, self.balancer_down) < closed
        )

    def line(self) -> str:
        def at(value: float | None) -> str:
            return "never" if value is None else f"{value:.2f}s"

        return (
            f"{self.name}: readyz 503 at {at(self.not_ready)}, balancer down at "
            f"{at(self.balancer_down)}, listener closed at {at(self.listener_closed)}, "
            f"exited {self.exit_code} at {at(self.exited)}, new process up at {at(self.balancer_up)}"
        )


@dataclass
class Cluster:
    url: str  # the balancer
    gateways: list[Gateway]
    fake: FakeUpstream
    database_url: str
    root: Path
    haproxy: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def stats_socket(self) -> Path:
        return self.root / "haproxy.sock"

    @property
    def haproxy_log(self) -> Path:
        return self.root / "haproxy.log"

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )

    def balancer_status(self) -> dict[str, str]:
        """``{server name: status}`` from HAProxy (``UP``, ``DOWN``, ``UP 1/2`` …)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        name, status = header.index("svname"), header.index("status")
        rows = (line.split(",") for line in lines[1:] if line)
        return {row[name]: row[status] for row in rows if row[name] not in ("FRONTEND", "BACKEND")}

    def wait_balancer(self, name: str, status: str, timeout: float = 30.0) -> float:
        """Wait until HAProxy reports *name* as exactly *status*; returns when."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.balancer_status().get(name) == status:
                return time.monotonic()
            time.sleep(0.02)
        raise TimeoutError(f"HAProxy did not mark {name} {status} within {timeout}s")

    def restart(self, index: int) -> Restart:
        """SIGTERM replica *index*, watch it drain and exit, start a new one on its
        port and wait until the balancer sends to it again."""
        old, name = self.gateways[index], f"gw{index}"
        port = int(old.url.rsplit(":", 1)[1])
        start = time.monotonic()
        step = Restart(name, at=start)
        old.proc.send_signal(signal.SIGTERM)
        with httpx.Client(timeout=1.0) as probe:
            while old.proc.poll() is None and time.monotonic() - start < 60:
                now = time.monotonic() - start
                if step.balancer_down is None and self.balancer_status()[name].startswith(
                    ("DOWN", "MAINT")
                ):
                    step.balancer_down = now
                if step.listener_closed is None:
                    try:
                        # A new connection each time: a closed listener refuses it.
                        answer = probe.get(f"{old.url}/readyz", headers={"connection": "close"})
                        if answer.status_code == 503 and step.not_ready is None:
                            step.not_ready = time.monotonic() - start
                    except httpx.ConnectError:
                        step.listener_closed = time.monotonic() - start
                    except (httpx.TimeoutException, httpx.TransportError):
                        # Accepted by the kernel as the listener closed, then reset:
                        # the next probe's connect is refused.
                        pass
                time.sleep(0.01)
        step.exit_code = stop_process(old.proc, grace=30)
        step.exited = time.monotonic() - start
        self.gateways[index] = start_replica(self.env, self.root / f"{name}.log", port)
        # A loaded 2-core machine took up to 17 s to start a gateway.
        step.balancer_up = self.wait_balancer(name, "UP", timeout=90) - start
        return step


def start_replica(env: dict[str, str], log: Path, port: int) -> Gateway:
    """``aigw serve`` on a fixed port (the balancer's config names it)."""
    handle = log.open("ab")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("aigw")), "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", timeout=60, proc=proc)
    except Exception:
        stop_process(proc)
        raise
    return Gateway(url=url, admin_token=ADMIN_TOKEN, proc=proc, log_path=log, env=env)


@contextmanager
def cluster(database_url: str, replicas: int = 3) -> Iterator[Cluster]:
    """*replicas* gateways on *database_url* behind HAProxy, a fake upstream; every
    process stopped by its pid on the way out."""
    haproxy = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )
    if haproxy is None:
        raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
    root = Path(tempfile.mkdtemp(prefix="aigw-replicas-"))
    env = {
        "AIGW_DATABASE_URL": database_url,
        "AIGW_DATA_DIR": str(root / "data"),
        "AIGW_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIGW_ENCRYPTION_KEYS": ENCRYPTION_KEYS,
        "AIGW_TOKEN_PEPPER": TOKEN_PEPPER,
        "AIGW_SHUTDOWN_DRAIN": str(DRAIN_SECONDS),
        "AIGW_BUDGET_OUTPUT_SLICE": "16",
        "AIGW_USAGE_FLUSH_INTERVAL": "0.1",
    }
    fake = start_fake_upstream()
    gateways: list[Gateway] = []
    proc = None
    try:
        # One after another: each start migrates the database.
        for index in range(replicas):
            gateways.append(start_replica(env, root / f"gw{index}.log", free_port()))
        port = free_port()
        servers = "\n".join(
            f"    server gw{i} {g.url.removeprefix('http://')} check"
            for i, g in enumerate(gateways)
        )
        config = root / "haproxy.cfg"
        config.write_text(
            _HAPROXY_CFG.format(port=port, servers=servers, socket=root / "haproxy.sock")
        )
        log = (root / "haproxy.log").open("ab")
        proc = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=log, stderr=log)
        log.close()
        c = Cluster(f"http://127.0.0.1:{port}", gateways, fake, database_url, root, proc, env)
        wait_http(f"{c.url}/healthz", timeout=20, proc=proc)
        for index in range(replicas):
            c.wait_balancer(f"gw{index}", "UP")
        yield c
    finally:
        if proc is not None:
            stop_process(proc, grace=5)
        for gateway in gateways:
            gateway.stop()
        fake.stop()
