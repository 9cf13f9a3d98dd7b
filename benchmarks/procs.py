"""Processes the harness starts: pinned, watched through /proc, always stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree(pid: int) -> list[int]:
    """pid and all its live descendants."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


@dataclass(frozen=True)
class CpuReading:
    """CPU time of a set of processes, two ways; subtract two readings to get seconds.

    ``ticks`` is utime + stime from /proc/<pid>/stat (whole process, exited
    threads included, 10 ms resolution); ``runtime`` sums the schedulers'
    nanosecond run time of the live threads (/proc/<pid>/task/*/schedstat).
    A delta uses ``runtime`` unless ``ticks`` says threads that ran have since
    exited, so short runs stay precise and no CPU goes missing.
    """

    ticks: float
    runtime: float

    def __sub__(self, other: CpuReading) -> float:
        ticks = self.ticks - other.ticks
        runtime = self.runtime - other.runtime
        if ticks > runtime * 1.05 + 3 / CLK_TCK:
            return ticks
        return runtime


def cpu_reading(pids: Sequence[int]) -> CpuReading:
    ticks = 0
    runtime = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
            for task in os.scandir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    runtime += int(Path(task.path, "schedstat").read_text().split()[0])
        except OSError:
            continue
    return CpuReading(ticks / CLK_TCK, runtime / 1e9)


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size summed over the processes (shared pages count once per process)."""
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


def core_times() -> dict[int, tuple[int, int, int]]:
    """Per CPU: (busy, steal, total) jiffies from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            name, *values = line.split()
            v = [int(x) for x in values]
            idle = v[3] + v[4]
            total = sum(v[:8])
            out[int(name[3:])] = (total - idle, v[7], total)
    return out


def core_busy(before: dict, after: dict) -> dict[int, float]:
    """Fraction of each CPU busy between two ``core_times()`` (steal counts as busy)."""
    busy = {}
    for cpu, (b1, _s1, t1) in after.items():
        b0, _s0, t0 = before.get(cpu, (0, 0, 0))
        busy[cpu] = round((b1 - b0) / (t1 - t0), 3) if t1 > t0 else 0.0
    return busy


def core_steal(before: dict, after: dict) -> dict[int, float]:
    """Fraction of each CPU's time the hypervisor gave to someone else."""
    steal = {}
    for cpu, (_b1, s1, t1) in after.items():
        _b0, s0, t0 = before.get(cpu, (0, 0, 0))
        steal[cpu] = round((s1 - s0) / (t1 - t0), 4) if t1 > t0 else 0.0
    return steal


def _die_with_parent() -> None:
    """In the child: SIGKILL when the harness dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ProcessError(RuntimeError):
    pass


@dataclass
class Proc:
    """A started process; ``stop()`` ends it and every descendant, by pid."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    known: dict[int, int] = field(default_factory=dict)  # pid -> start time

    @property
    def pid(self) -> int:
        return self.popen.pid

    def pids(self) -> list[int]:
        if self.popen.poll() is not None:
            return []
        found = tree(self.pid)
        for p in found:
            if p not in self.known:
                start = _start_time(p)
                if start is not None:
                    self.known[p] = start
        return found

    def pin(self, cpu: int) -> int:
        """Move every thread of the process tree onto one CPU; new threads inherit it."""
        moved = 0
        for p in self.pids():
            try:
                tids = [int(t.name) for t in os.scandir(f"/proc/{p}/task")]
            except OSError:
                continue
            for tid in tids:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(tid, {cpu})
                    moved += 1
        return moved

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu(self) -> CpuReading:
        return cpu_reading(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the root, then SIGKILL whatever is left of it and its descendants.

        Descendants are remembered with their start time, so a pid the kernel
        has since handed to someone else is never signalled.
        """
        self.pids()
        with contextlib.suppress(ProcessLookupError):
            if self.popen.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.popen.poll() is not None and not self._leftovers():
                break
            time.sleep(0.05)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        for p in self._leftovers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)

    def _leftovers(self) -> list[int]:
        return [
            p
            for p, start in self.known.items()
            if p != self.pid and _start_time(p) == start and _state(p) not in (None, "Z")
        ]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22: starttime


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


class Procs:
    """Every process the harness started; ``stop_all()`` in a ``finally``."""

    def __init__(self, workdir: Path, all_cpus: set[int]) -> None:
        self.workdir = workdir
        self.all_cpus = all_cpus  # for unpinned children of a pinned harness
        self.started: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log = log_path.open("wb")
        full_env = dict(os.environ)
        full_env.update(env or {})

        def pin() -> None:
            os.sched_setaffinity(0, {cpu} if cpu is not None else self.all_cpus)
            _die_with_parent()

        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            preexec_fn=pin,  # the harness is single-threaded when it starts processes
        )
        log.close()
        proc = Proc(name, popen, log_path)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()
        self.started.clear()


def wait_http(
    proc: Proc, url: str, timeout: float, headers: Mapping[str, str] | None = None
) -> None:
    """Until ``url`` answers 2xx; raise with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ProcessError(
                f"{proc.name} exited with {proc.popen.returncode} before it was ready:\n"
                + proc.log_tail()
            )
        try:
            request = urllib.request.Request(url, headers=dict(headers or {}))
            with urllib.request.urlopen(request, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ProcessError(
        f"{proc.name} not ready at {url} after {timeout:.0f}s ({last}):\n" + proc.log_tail()
    )
