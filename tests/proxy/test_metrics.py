"""/metrics: counts by outcome, tokens, rejections, bounded labels, optional token."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from aigw.metrics import Metrics
from aigw.usage.entry import UsageEntry
from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_requests_tokens_and_rejections_are_exported(gateway: Any, upstream: Any) -> None:
    app = await gateway()
    await create_provider(app.admin, upstream.url)
    key = await ready_key(app, alias="metrics-key", output_limit=5)
    client = sdk(app, key["token"])
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(Exception):
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        await http.get("/v1/models", headers={"Authorization": "Bearer nope"})
        text = (await http.get("/metrics")).text
    assert (
        'aigw_proxy_requests_total{alias="metrics-key",model="gpt-4o-mini",outcome="truncated",status="200"} 1.0'
        in text
    )
    assert 'aigw_proxy_rejections_total{alias="metrics-key",reason="output_limit"} 1.0' in text
    assert 'aigw_proxy_rejections_total{alias="",reason="bad_token"} 1.0' in text
    assert (
        'aigw_proxy_tokens_total{alias="metrics-key",direction="output",model="gpt-4o-mini"}'
        in text
    )
    assert "aigw_upstream_ttfb_seconds_bucket" in text


async def test_metrics_token(gateway: Any) -> None:
    app = await gateway(metrics_token="metrics-secret-0123456789")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        ok = await http.get(
            "/metrics", headers={"Authorization": "Bearer metrics-secret-0123456789"}
        )
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")


def test_alias_labels_are_bounded() -> None:
    metrics = Metrics(max_aliases=2)
    for alias in ("a", "b", "c", "d", "a"):
        metrics.observe(
            UsageEntry(
                request_id="r",
                api_key_id=uuid.uuid4(),
                alias=alias,
                provider="p",
                model="m",
                outcome="completed",
                status_code=200,
                input_limit=0,
                output_limit=0,
                usage_limit="reject",
                input_tokens=1,
            )
        )
    text = metrics.render().decode()
    assert 'alias="a"' in text and 'alias="b"' in text
    assert 'alias="c"' not in text and 'alias="d"' not in text
    assert (
        'aigw_proxy_requests_total{alias="other",model="m",outcome="completed",status="200"} 2.0'
        in text
    )
