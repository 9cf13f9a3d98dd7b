"""Large bodies are counted in worker processes (issue 10, item 1), against a real
``aigw serve``:

* an idle gateway holds no worker process: the first large body starts one,
  and it exits again after ``AIGW_COUNT_PROCESS_IDLE`` seconds without another;
* a flood of large bodies past ``AIGW_COUNT_QUEUE`` is answered 503
  ``counting_busy`` with ``Retry-After`` at once, rather than piling up;
* a large body that passes is forwarded byte for byte (or with the gateway's
  edits, made in a worker), and its exact count reaches the usage record (the
  answer does not wait for it: a body under its limit by its bytes alone is
  counted after the answer starts, so the header is only there if it was done);
* a small body holding a PDF (whose streams can inflate to 16 MiB) is counted
  in a worker too, whatever its size, and so is a large ``/v1/embeddings`` body;
* with ``AIGW_COUNT_WARM``, a worker is started and warmed once the gateway is
  ready, before any large body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import FakeUpstream
from tests.reliability.conftest import gateway_environment, unique
from tests.reliability.test_file_inputs import make_pdf
from tests.support import Gateway, start_gateway

MODEL = "gpt-4o-mini"
# 150k one-token numbers in tiny messages: ~5 MB, well past the 256 KiB threshold.
TINY = [{"role": "user", "content": str(i % 10)} for i in range(150_000)]


def _workers(pid: int) -> list[int]:
    """The worker processes *pid* spawned (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def gateway(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("workers-gateway")
    env = gateway_environment(
        database_url,
        root / "data",
        AIGW_MAX_BODY_BYTES=str(8 * 1024 * 1024),
        AIGW_COUNT_QUEUE="1",
        AIGW_COUNT_PROCESS_IDLE="3",
    )
    started = start_gateway(env, root / "gateway.log")
    try:
        yield started
    finally:
        started.stop()


def _key(gateway: Gateway, fake: FakeUpstream, **limits: Any) -> str:
    return _created_key(gateway, fake, **limits)[0]


def _created_key(gateway: Gateway, fake: FakeUpstream, **limits: Any) -> tuple[str, str]:
    provider = unique("workers")
    with gateway.admin() as admin:
        created = admin.post(
            "/providers",
            json={"name": provider, "base_url": fake.url, "models": [{"name": MODEL}]},
        )
        assert created.status_code == 201, created.text
        key = admin.post(
            "/apikeys",
            json={
                "alias": unique("k"),
                "provider": provider,
                "model": MODEL,
                "key_code": "sk-workers",
                "status": "enabled",
                "usage_limit": "reject",
                **limits,
            },
        )
        assert key.status_code == 201, key.text
        token: str = key.json()["token"]
        key_id: str = key.json()["id"]
    deadline = time.monotonic() + 5
    while (
        httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
    ).status_code != 200:
        assert time.monotonic() < deadline, "the key never reached the key cache"
        time.sleep(0.05)
    return token, key_id


def test_an_idle_gateway_starts_a_worker_only_for_a_large_body(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    token = _key(gateway, fake, input_limit=1_000, output_limit=0)
    headers = {"Authorization": f"Bearer {token}"}
    small = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert small.status_code == 200, small.text
    assert _workers(gateway.proc.pid) == []
    large = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": MODEL, "messages": TINY},
        headers=headers,
        timeout=60,
    )
    assert large.status_code == 400, large.text
    assert large.json()["error"]["code"] == "input_token_limit_exceeded"
    # 150,000 messages of 3 + 1 ("user") + 1 (a digit) tokens, plus 3: a hand count.
    assert "at least" not in large.json()["error"]["message"]
    assert "750003 tokens" in large.json()["error"]["message"]
    assert _workers(gateway.proc.pid), "no worker process counted the large body"
    # Idle for AIGW_COUNT_PROCESS_IDLE (3 s): the worker exits again.
    deadline = time.monotonic() + 15
    while _workers(gateway.proc.pid):
        assert time.monotonic() < deadline, "the idle worker never exited"
        time.sleep(0.2)


def test_a_large_body_that_passes_is_forwarded_with_its_exact_count(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    # No input limit, an output limit: the gateway must add max_tokens and
    # include_usage to a body it never parsed itself.
    token, key_id = _created_key(gateway, fake, input_limit=0, output_limit=50)
    body = {"model": MODEL, "messages": TINY, "stream": True, "stream_options": {"x": 1}}
    before = fake.stats()["chat_requests"]
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    ) as response:
        assert response.status_code == 200, response.read()
        counted = response.headers.get("x-aigw-input-tokens")
        assert counted in (None, "750003"), counted
        b"".join(response.iter_bytes())
    # 150,000 messages of 3 + 1 ("user") + 1 (a digit) tokens, plus 3: a hand count.
    deadline = time.monotonic() + 30
    with gateway.admin() as admin:
        while True:
            totals = admin.get(f"/apikeys/{key_id}/usage").json()["totals"]
            if totals["requests"] == 1:
                break
            assert time.monotonic() < deadline, "the request was never recorded"
            time.sleep(0.2)
    assert totals["input_tokens"] == 750003
    assert fake.stats()["chat_requests"] == before + 1
    sent = fake.last_request()["body"]
    assert len(sent["messages"]) == len(TINY)
    assert sent["max_tokens"] == 50
    assert sent["stream_options"] == {"x": 1, "include_usage": True}


async def test_a_flood_of_large_bodies_is_answered_503_not_queued(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    token = _key(gateway, fake, input_limit=1_000, output_limit=0)
    raw = json.dumps({"model": MODEL, "messages": TINY}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
        responses = await asyncio.gather(
            *(http.post("/v1/chat/completions", content=raw, headers=headers) for _ in range(6))
        )
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) <= {400, 503}, statuses
    busy = [response for response in responses if response.status_code == 503]
    assert busy, statuses
    for response in busy:
        assert response.json()["error"]["code"] == "counting_busy"
        assert response.headers["retry-after"] == "1"
    assert 400 in statuses
    assert os.path.exists(f"/proc/{gateway.proc.pid}")


def test_a_large_body_does_not_wait_behind_the_previous_ones_record_count(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    # Admitted on its size bound (no input limit), each body's exact count runs
    # after its answer, for the record. A back-to-back client's next large body
    # must be parsed at once, not queued behind that count: with the module's
    # AIGW_COUNT_QUEUE=1, a count holding the parsing workers' only place would
    # answer it 503 counting_busy.
    token, key_id = _created_key(gateway, fake, input_limit=0, output_limit=0)
    raw = json.dumps({"model": MODEL, "messages": TINY}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    statuses = []
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        for _ in range(3):
            response = http.post("/v1/chat/completions", content=raw, headers=headers)
            statuses.append((response.status_code, response.text[:200]))
    assert [status for status, _ in statuses] == [200, 200, 200], statuses
    # The counts reach the records (150,000 messages of 3 + 1 ("user") + 1 (a
    # digit) tokens, plus 3: a hand count); the first always, a later one unless
    # the record's workers, their queue as short as the module sets it, were busy.
    deadline = time.monotonic() + 60
    with gateway.admin() as admin:
        while True:
            totals = admin.get(f"/apikeys/{key_id}/usage").json()["totals"]
            if totals["requests"] == 3 and totals["input_tokens"] in (750003, 1500006, 2250009):
                break
            assert time.monotonic() < deadline, f"the counts never reached the record: {totals}"
            time.sleep(0.2)


def _no_workers(gateway: Gateway) -> None:
    """Wait for the workers an earlier test started to exit (AIGW_COUNT_PROCESS_IDLE)."""
    deadline = time.monotonic() + 20
    while _workers(gateway.proc.pid):
        assert time.monotonic() < deadline, "the idle worker never exited"
        time.sleep(0.2)


class _Probe:
    """/healthz asked in a loop from a thread while a test posts; the slowest
    answers are printed, not asserted (the machine is shared)."""

    def __init__(self, url: str) -> None:
        self.url, self.times, self.stop = url, list[float](), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                started = time.perf_counter()
                http.get(f"{self.url}/healthz")
                self.times.append(time.perf_counter() - started)
                time.sleep(0.002)

    def __enter__(self) -> _Probe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        slowest = sorted(self.times)[-3:]
        print(f"/healthz: {len(self.times)} probes, slowest {slowest}; load {os.getloadavg()}")


def test_a_small_body_holding_a_pdf_is_counted_in_a_worker(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    # 15 MiB of zeros in a Flate stream: ~15 KB compressed, a body under the
    # 32 KiB the gateway counts on its event loop, and ~100 ms of inflating.
    compressor = zlib.compressobj(9)
    zeros = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(15)) + compressor.flush()
    data = "data:application/pdf;base64," + base64.b64encode(make_pdf(["x"], stream=zeros)).decode()
    content = [
        {"type": "text", "text": "Summarize."},
        {"type": "file", "file": {"filename": "doc.pdf", "file_data": data}},
    ]
    raw = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]})
    assert len(raw) < 32 * 1024
    token = _key(gateway, fake, input_limit=1_000, output_limit=0, usage_limit="use_anyway")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    _no_workers(gateway)
    with _Probe(gateway.url), httpx.Client(base_url=gateway.url, timeout=60) as http:
        for _ in range(5):
            response = http.post("/v1/chat/completions", content=raw, headers=headers)
            assert response.status_code == 200, response.text
            # Over the limit by the inflated zeros alone (one token a byte at most).
            assert response.headers["x-aigw-limit-exceeded"] == "input"
            assert _workers(gateway.proc.pid), "the body holding a PDF was counted in the gateway"


def test_a_large_embeddings_body_is_counted_in_a_worker(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    # 80,000 one-token strings: ~320 KB, past the 256 KiB threshold.
    raw = json.dumps({"model": MODEL, "input": ["7"] * 80_000})
    assert len(raw) > 256 * 1024
    token = _key(gateway, fake, input_limit=1_000, output_limit=0)
    _no_workers(gateway)
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        content=raw,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400, response.text
    # A string counts as its tokens, with no per-item overhead: 80,000 by hand.
    assert "The input is 80000 tokens" in response.json()["error"]["message"]
    assert _workers(gateway.proc.pid), "the large embeddings body was counted in the gateway"


def test_a_warm_gateway_starts_its_worker_once_ready(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream
) -> None:
    root = tmp_path_factory.mktemp("warm-gateway")
    env = gateway_environment(database_url, root / "data", AIGW_COUNT_WARM="true")
    warm = start_gateway(env, root / "gateway.log")
    try:
        deadline = time.monotonic() + 30
        while not _workers(warm.proc.pid):
            assert time.monotonic() < deadline, "no worker was started once the gateway was ready"
            time.sleep(0.2)
    finally:
        warm.stop()
