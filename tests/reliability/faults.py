"""Helpers for the fault and load tests: a streaming client that classifies what it
saw, usage-record lookups, and a process's open file descriptors and sockets."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson

from aigw.proxy.counting import Encoders

_ENCODERS: Encoders | None = None


def count_tokens(text: str) -> int:
    """Output tokens as the gateway counts them for gpt-4o-mini (o200k_base)."""
    global _ENCODERS
    if _ENCODERS is None:
        _ENCODERS = Encoders.load()
    return len(_ENCODERS.get("o200k_base").encode_ordinary(text))


@dataclass
class Seen:
    """What one client saw of one request."""

    status: int = 0
    request_id: str | None = None
    stream: bool = False
    done: bool = False  # a stream ended with [DONE]
    error_event: dict[str, Any] | None = None  # a final data: {"error": ...}
    error: dict[str, Any] | None = None  # a non-200 answer's OpenAI envelope
    content: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    events: int = 0
    started: float = 0.0
    first_event_at: float | None = None
    last_data_at: float | None = None
    ended: float = 0.0
    transport_error: str | None = None

    @property
    def outcome(self) -> str:
        if self.transport_error:
            return f"transport:{self.transport_error}"
        if self.status == 200 and (not self.stream or self.done):
            return "ok"
        if self.status == 200 and self.error_event is not None:
            return f"event:{self.error_event.get('code')}"
        if self.status != 200 and self.error is not None:
            return f"{self.status}:{self.error.get('code')}"
        return f"unmapped:{self.status}"


async def chat(
    client: httpx.AsyncClient,
    token: str,
    body: dict[str, Any],
    *,
    abort_after: int | None = None,
) -> Seen:
    """POST /v1/chat/completions and read the answer; with *abort_after*, close the
    connection after that many SSE data events (0: right after the headers)."""
    seen = Seen(stream=bool(body.get("stream")), started=time.perf_counter())
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as response:
            seen.status = response.status_code
            seen.headers = dict(response.headers)
            seen.request_id = response.headers.get("x-aigw-request-id")
            if response.status_code != 200:
                data = await response.aread()
                try:
                    seen.error = orjson.loads(data)["error"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    seen.error = None
                return seen
            if not seen.stream:
                data = await response.aread()
                payload = orjson.loads(data)
                seen.content = payload["choices"][0]["message"].get("content") or ""
                return seen
            if abort_after == 0:
                return seen
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.perf_counter()
                seen.first_event_at = seen.first_event_at or now
                data = line[6:]
                if data == "[DONE]":
                    seen.done = True
                    break
                event = orjson.loads(data)
                if "error" in event:
                    seen.error_event = event["error"]
                    break
                seen.last_data_at = now
                seen.events += 1
                for choice in event.get("choices") or []:
                    seen.content += (choice.get("delta") or {}).get("content") or ""
                if abort_after is not None and seen.events >= abort_after:
                    return seen
    except httpx.HTTPError as exc:
        seen.transport_error = type(exc).__name__
    finally:
        seen.ended = time.perf_counter()
    return seen


async def usage_by_request(db: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(db)
    try:
        rows = await conn.fetch("SELECT * FROM usage_records")
    finally:
        await conn.close()
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["request_id"], []).append(dict(row))
    return out


async def wait_usage_count(db: str, expected: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        conn = await asyncpg.connect(db)
        try:
            count = int(await conn.fetchval("SELECT count(*) FROM usage_records"))
        finally:
            await conn.close()
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.1)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_sockets(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
