"""Every way a file reaches each endpoint gets the same answer on a ``reject``
key with an input limit (issue 10, item 2), through a real server and raw httpx:

* text the gateway can count or bound (inline base64 data, a PDF or plain
  text; a Messages ``text`` or ``content`` document source) that passes the
  limit: 400 ``input_token_limit_exceeded``;
* a file it cannot see (``file_id``, ``file_url``; a Messages ``url`` or
  ``file`` source) or cannot bound (a zip container): 400
  ``input_not_countable``, whatever its size.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests/proxy/conftest.py)
from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.responses import FakeResponses, start_fake_responses
from tests.fakes.wire import serve_in_loop
from tests.proxy.conftest import (  # noqa: F401
    InLoopUpstream,
    create_provider,
    gateway,
    ready_key,
    upstream,
)
from tests.reliability.test_file_inputs import CLAUDE, HIDDEN, JSON, LIMIT, MODEL, make_pdf

EXCEEDED = "input_token_limit_exceeded"
NOT_COUNTABLE = "input_not_countable"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", HIDDEN)
    return out.getvalue()


PDF = _b64(make_pdf([HIDDEN]))
PLAIN = _b64(HIDDEN.encode())
ZIP = _b64(_zip())

# (endpoint, source kind, the file as that endpoint takes it, expected code)
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("chat", "base64 pdf", {"file_data": f"data:application/pdf;base64,{PDF}"}, EXCEEDED),
    ("chat", "base64 text", {"file_data": f"data:text/plain;base64,{PLAIN}"}, EXCEEDED),
    ("chat", "base64 zip", {"file_data": f"data:application/zip;base64,{ZIP}"}, NOT_COUNTABLE),
    ("chat", "file_id", {"file_id": "file-abc123"}, NOT_COUNTABLE),
    ("chat", "file_url", {"file_url": "https://example.com/doc.pdf"}, NOT_COUNTABLE),
    ("responses", "base64 pdf", {"file_data": f"data:application/pdf;base64,{PDF}"}, EXCEEDED),
    ("responses", "base64 text", {"file_data": f"data:text/plain;base64,{PLAIN}"}, EXCEEDED),
    (
        "responses",
        "base64 zip",
        {"file_data": f"data:application/zip;base64,{ZIP}"},
        NOT_COUNTABLE,
    ),
    ("responses", "file_id", {"file_id": "file-abc123"}, NOT_COUNTABLE),
    ("responses", "file_url", {"file_url": "https://example.com/doc.pdf"}, NOT_COUNTABLE),
    (
        "messages",
        "base64 pdf",
        {"type": "base64", "media_type": "application/pdf", "data": PDF},
        EXCEEDED,
    ),
    (
        "messages",
        "base64 zip",
        {"type": "base64", "media_type": "application/pdf", "data": ZIP},
        NOT_COUNTABLE,
    ),
    ("messages", "url", {"type": "url", "url": "https://example.com/doc.pdf"}, NOT_COUNTABLE),
    ("messages", "file_id", {"type": "file", "file_id": "file_011abc"}, NOT_COUNTABLE),
    ("messages", "text", {"type": "text", "media_type": "text/plain", "data": HIDDEN}, EXCEEDED),
    (
        "messages",
        "content",
        {"type": "content", "content": [{"type": "text", "text": HIDDEN}]},
        EXCEEDED,
    ),
]


def _request(endpoint: str, file: dict[str, Any]) -> tuple[str, bytes]:
    if endpoint == "chat":
        part = {"type": "file", "file": {"filename": "doc", **file}}
        content = [{"type": "text", "text": "Summarize."}, part]
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}]}
        return "/v1/chat/completions", orjson.dumps(body)
    if endpoint == "responses":
        part = {"type": "input_file", "filename": "doc", **file}
        body = {"model": MODEL, "input": [{"role": "user", "content": [part]}]}
        return "/v1/responses", orjson.dumps(body)
    block = {"type": "document", "source": file}
    content = [block, {"type": "text", "text": "Sum up."}]
    body = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": content}]}
    return "/v1/messages", orjson.dumps(body)


@pytest.fixture
async def upstreams(
    upstream: InLoopUpstream,
) -> AsyncIterator[dict[str, tuple[str, str, Any]]]:
    responses: FakeResponses
    responses, runner = await start_fake_responses()
    anthropic = FakeAnthropic()
    async with serve_in_loop(anthropic.app()) as url:
        yield {
            "chat": (upstream.url, "openai", upstream),
            "responses": (responses.url, "openai", responses),
            "messages": (url + "/v1", "anthropic", anthropic),
        }
    await runner.cleanup()


def _sent(fake: Any) -> int:
    return len(fake.recorded.requests) if isinstance(fake, FakeAnthropic) else len(fake.requests)


@pytest.mark.parametrize(
    ("endpoint", "kind", "file", "code"),
    CASES,
    ids=[f"{endpoint}-{kind}" for endpoint, kind, _, _ in CASES],
)
async def test_each_file_source_gets_its_code(
    gateway: Any,
    upstreams: dict[str, tuple[str, str, Any]],
    endpoint: str,
    kind: str,
    file: dict[str, Any],
    code: str,
) -> None:
    url, provider_kind, fake = upstreams[endpoint]
    model = CLAUDE if endpoint == "messages" else MODEL
    # The bound is the subject here, counted in this process (a body holding a
    # file goes to a worker process by default: test_counting_workers.py).
    app = await gateway(count_processes=0)
    await create_provider(app.admin, url, kind=provider_kind, models=(model,))
    key = await ready_key(app, model=model, input_limit=LIMIT)
    path, body = _request(endpoint, file)
    headers = {**JSON, "Authorization": f"Bearer {key['token']}", "x-api-key": key["token"]}
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
        response = await http.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == code, response.text[:300]
    assert _sent(fake) == 0
