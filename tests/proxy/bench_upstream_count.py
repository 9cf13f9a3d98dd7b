"""Added latency of ``input_counting: "upstream"`` (run explicitly; not collected):

    .venv/bin/pytest -q -s -p no:cacheprovider tests/proxy/bench_upstream_count.py

One gateway (real uvicorn server, real PostgreSQL) in front of the Gemini fake
(tests/fakes/gemini.py) in the same event loop; sequential non-streamed
requests (c=1) through httpx, a key with an input limit. Four configurations in
the same run, compared by median: tiktoken counting (the baseline); upstream
counting with a cache miss on every request (a new prompt each time); upstream
counting with cache hits (one prompt); and cache misses against a counter that
takes 20 ms (a stand-in for the network round trip to the provider's counter,
which dominates in production).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx

from tests.fakes.gemini import FakeGemini
from tests.fakes.wire import serve_in_loop
from tests.proxy.conftest import ready_key

GEMINI = "gemini-2.5-flash"
ROUNDS = 200


async def _interleaved(app: Any, tokens: dict[str, str]) -> dict[str, list[float]]:
    """One request per configuration in turn, so load drift on a shared machine
    falls on every configuration alike."""
    out: dict[str, list[float]] = {name: [] for name in tokens}
    async with httpx.AsyncClient(base_url=app.url, timeout=10) as http:
        for i in range(ROUNDS + 20):
            for name, token in tokens.items():
                # Misses need a prompt never counted before; hits repeat one.
                prompt = "The same question" if name == "hit" else f"Question {name} {i}"
                body = {"model": GEMINI, "messages": [{"role": "user", "content": prompt}]}
                headers = {"Authorization": f"Bearer {token}"}
                started = time.perf_counter()
                response = await http.post("/v1/chat/completions", json=body, headers=headers)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, response.text
                if i >= 20:  # warm-up
                    out[name].append(elapsed * 1000)
    return out


def _summary(name: str, values: list[float], base: float | None) -> str:
    ordered = sorted(values)
    p50, p90 = statistics.median(ordered), ordered[int(len(ordered) * 0.9)]
    added = f"  added p50 {p50 - base:+.2f} ms" if base is not None else ""
    return f"{name:<34} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms{added}"


async def test_measure_upstream_counting_latency(gateway: Any) -> None:
    fake = FakeGemini()
    fake.script.output_tokens = 5
    async with serve_in_loop(fake.app()) as url:
        app = await gateway()
        for name, counting in (("tik", "tiktoken"), ("up", "upstream")):
            response = await app.admin.post(
                "/providers",
                json={
                    "name": name,
                    "kind": "gemini",
                    "base_url": url + "/v1beta",
                    "input_counting": counting,
                    "models": [{"name": GEMINI}],
                },
            )
            assert response.status_code == 201, response.text
        tik = await ready_key(app, provider="tik", model=GEMINI, input_limit=1000)
        up = await ready_key(app, provider="up", model=GEMINI, input_limit=1000)
        runs = await _interleaved(
            app, {"base": tik["token"], "miss": up["token"], "hit": up["token"]}
        )
        fake.script.count_delay = 0.020
        slow = await _interleaved(app, {"base": tik["token"], "slow": up["token"]})
        base = statistics.median(runs["base"])
        lines = [
            _summary("tiktoken (baseline)", runs["base"], None),
            _summary("upstream, cache miss", runs["miss"], base),
            _summary("upstream, cache hit", runs["hit"], base),
            _summary("tiktoken (baseline, 2nd run)", slow["base"], None),
            _summary(
                "upstream, miss, counter takes 20 ms", slow["slow"], statistics.median(slow["base"])
            ),
        ]
        print("\n" + "\n".join(lines))
        # Every miss asked the counter once; every hit did not.
        assert len(fake.count_requests.requests) == 2 * (ROUNDS + 20) + 1
