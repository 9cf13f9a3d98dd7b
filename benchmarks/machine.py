"""What the numbers were measured on: CPU, kernel, Python, versions, commit."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.targets import PG_ADMIN_URL, ROOT, litellm_installed, litellm_version

PACKAGES = [
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "aiohttp",
    "httpx",
    "httpx-aiohttp",
    "tiktoken",
    "orjson",
    "pydantic",
    "sqlalchemy",
    "asyncpg",
]


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout or done.stderr).strip()


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _meminfo_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return 0.0


def _hypervisor() -> str:
    for line in _run(["lscpu"]).splitlines():
        if line.startswith("Hypervisor vendor:"):
            return line.split(":", 1)[1].strip()
    return "none reported"


def _postgres() -> str:
    async def version() -> str:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    try:
        return "PostgreSQL " + asyncio.run(version())
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def _wrk_version(wrk: str) -> str:
    first = (_run([wrk, "-v"]).splitlines() or ["wrk ?"])[0]  # "wrk debian/4.1.0-3+b2 [epoll] …"
    parts = first.split()
    return " ".join(parts[:2]) if len(parts) >= 2 else first


def describe() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "-"
    try:
        aigw_version = importlib.metadata.version("aigw")
    except importlib.metadata.PackageNotFoundError:
        aigw_version = "?"
    wrk = shutil.which("wrk")
    commit = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    return {
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "hypervisor": _hypervisor(),
        "memory_gib": _meminfo_gib(),
        "kernel": platform.release(),
        "os": _run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]) or platform.platform(),
        "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "aigw": f"{aigw_version} at {commit}" + (" (src has uncommitted changes)" if dirty else ""),
        "litellm": litellm_version() if litellm_installed() else "not installed",
        "wrk": _wrk_version(wrk) if wrk else "not installed",
        "postgresql": _postgres(),
    }
