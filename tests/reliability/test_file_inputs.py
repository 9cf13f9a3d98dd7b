"""``file`` content parts (issue 10, item 2) through a real server (the app under
uvicorn) and raw httpx, with PDFs built here by hand.

OpenAI bills a PDF's extracted text plus an image of each page ("File inputs"
guide). A Flate-compressed content stream inflates to far more text than its
base64 tokenizes into, so counting the part's JSON text lets ~40k tokens past
a small input limit; a file referenced by ``file_id`` cannot be seen at all.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests/proxy/conftest.py)
from __future__ import annotations

import base64
import os
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from aigw.proxy.counting.files import INFLATE_STATS, MAX_INFLATED_BYTES
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.billing import load_encoding
from tests.fakes.responses import FakeResponses, start_fake_responses
from tests.fakes.wire import serve_in_loop
from tests.proxy.conftest import (  # noqa: F401
    InLoopUpstream,
    create_provider,
    gateway,
    ready_key,
    upstream,
)

MODEL = "gpt-4o"
CLAUDE = "claude-sonnet-4-5"
JSON = {"content-type": "application/json"}
# OpenAI's image rule for gpt-4o (platform.openai.com "Images and vision",
# "Calculating costs"): 85 + 170 per 512 px tile; the largest image after
# scaling (2048 x 768) is 8 tiles: 1,445 tokens, whatever the detail.
PAGE_IMAGE_TOKENS = 85 + 170 * 8
# 4,000 sentences of 10 words: at least 40,000 tokens (a word is at least one token).
HIDDEN = "The quick brown fox jumps over the lazy dog again. " * 4_000
# Room for one page image and the message, far under HIDDEN.
LIMIT = PAGE_IMAGE_TOKENS + 1_000


def make_pdf(page_texts: list[str], *, stream: bytes | None = None) -> bytes:
    """A minimal valid PDF: one page per text, each with a Flate-compressed
    content stream showing that text (or *stream* as the only content, as is)."""
    objects: list[bytes] = []
    page_ids = [3 + 2 * i for i in range(len(page_texts))]
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = b" ".join(b"%d 0 R" % i for i in page_ids)
    objects.append(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids)))
    for index, text in enumerate(page_texts):
        content = (
            stream
            if stream is not None
            else zlib.compress(b"BT /F1 12 Tf 72 720 Td (" + text.encode() + b") Tj ET", 9)
        )
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R >>"
            % (page_ids[index] + 1)
        )
        objects.append(
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(content)
            + content
            + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def file_part(pdf: bytes) -> dict[str, Any]:
    data = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    return {"type": "file", "file": {"filename": "doc.pdf", "file_data": data}}


def chat(*parts: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "Summarize."}, *parts]
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]})


@pytest.fixture
def fake(upstream: InLoopUpstream) -> InLoopUpstream:
    return upstream


@pytest.fixture
async def app(gateway: Any, fake: InLoopUpstream) -> Any:
    # The bound is the subject here, counted in this process (a body holding a
    # file goes to a worker process by default: test_counting_workers.py).
    app = await gateway(count_processes=0)
    await create_provider(app.admin, fake.url, models=(MODEL,))
    return app


async def post(app: Any, token: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
        return await http.post(
            "/v1/chat/completions",
            content=body,
            headers={**JSON, "Authorization": f"Bearer {token}"},
        )


def test_hidden_pdf_text_is_large_and_its_base64_small() -> None:
    pdf = make_pdf([HIDDEN])
    assert len(HIDDEN.split()) >= 40_000
    assert len(base64.b64encode(pdf)) < 4_000


async def test_compressed_pdf_text_past_the_input_limit_is_refused(
    app: Any, fake: InLoopUpstream
) -> None:
    key = await ready_key(app, model=MODEL, input_limit=LIMIT)
    response = await post(app, key["token"], chat(file_part(make_pdf([HIDDEN]))))
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "input_token_limit_exceeded"
    assert not fake.requests


def zeros_bomb(mebibytes: int) -> bytes:
    """*mebibytes* MiB of zeros as one zlib stream, built without compressing them
    all: each MiB is a raw deflate segment ended by a full flush (no history
    crosses it), so every segment is the same bytes, repeated; then the final
    block and the Adler-32 of n zeros (a = 1, b = n mod 65521)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    size = mebibytes << 20
    adler = (size % 65521) << 16 | 1
    return b"\x78\xda" + segment * mebibytes + compressor.flush() + adler.to_bytes(4, "big")


def test_zeros_bomb_is_the_zlib_stream_of_its_zeros() -> None:
    # Small enough to inflate whole here: the same bytes, header to checksum.
    inflater = zlib.decompressobj()
    assert inflater.decompress(zeros_bomb(3)) == bytes(3 << 20)
    assert inflater.eof and not inflater.unused_data


async def test_zip_bomb_stream_is_refused_without_inflating_it(
    app: Any, fake: InLoopUpstream
) -> None:
    # 1 GiB of zeros, compressed to ~1 MB.
    bomb = zeros_bomb(1024)
    assert len(bomb) < 1_100_000
    pdf = make_pdf(["x"], stream=bomb)
    # Above the file's own bytes (so the bound must inflate some of the bomb to
    # pass it), far under the 16 MiB cap, past which the file would be
    # input_not_countable.
    limit = 4_000_000
    assert len(pdf) + 1600 < limit < MAX_INFLATED_BYTES
    key = await ready_key(app, model=MODEL, input_limit=limit)
    before = INFLATE_STATS.out
    response = await post(app, key["token"], chat(file_part(pdf)))
    inflated = INFLATE_STATS.out - before
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "input_token_limit_exceeded"
    assert not fake.requests
    # Inflating stopped once the bound passed the key's limit: a few MB of the
    # 1 GiB, counted by the inflater itself (deterministic, unlike a timing).
    assert 0 < inflated <= limit, inflated


async def test_honest_pdf_passes_and_counts_at_least_its_text_and_pages(
    app: Any, fake: InLoopUpstream
) -> None:
    texts = ["Quarterly report: revenue grew by 12 percent.", "Costs fell; margins rose."]
    key = await ready_key(app, model=MODEL, input_limit=200_000)
    response = await post(app, key["token"], chat(file_part(make_pdf(texts))))
    assert response.status_code == 200, response.text[:300]
    assert len(fake.requests) == 1
    counted = int(response.headers["x-aigw-input-tokens"])
    encoding = load_encoding("o200k_base")
    text_tokens = sum(len(encoding.encode_ordinary(text)) for text in texts)
    assert counted >= text_tokens + len(texts) * PAGE_IMAGE_TOKENS


@pytest.mark.parametrize(
    "filter_name", [b"/ASCII85Decode", b"/LZW#44ecode", b"/RunLengthDecode"], ids=str
)
async def test_pdf_with_a_filter_that_cannot_be_bounded_is_not_countable(
    app: Any, fake: InLoopUpstream, filter_name: bytes
) -> None:
    # A stream behind a filter the gateway does not decode (LZW alone can expand
    # data thousands of times): no bound, so the limit fails closed.
    pdf = make_pdf(["x"]).replace(b"/Filter /FlateDecode", b"/Filter " + filter_name)
    key = await ready_key(app, model=MODEL, input_limit=100_000)
    response = await post(app, key["token"], chat(file_part(pdf)))
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "input_not_countable"
    assert not fake.requests


@pytest.mark.parametrize("reference", ["file_id", "file_url"])
async def test_file_reference_on_a_limited_reject_key_is_refused(
    app: Any, fake: InLoopUpstream, reference: str
) -> None:
    key = await ready_key(app, model=MODEL, input_limit=100_000)
    for file in (
        {reference: "file-abc123"},
        # Beside inline data, the upstream may read the reference instead.
        {reference: "file-abc123", "file_data": file_part(make_pdf(["Hi."]))["file"]["file_data"]},
    ):
        response = await post(app, key["token"], chat({"type": "file", "file": file}))
        assert response.status_code == 400, response.text[:300]
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "input_not_countable"
    assert reference in error["message"]
    assert not fake.requests


async def test_file_id_on_a_use_anyway_key_is_forwarded_and_flagged(
    app: Any, fake: InLoopUpstream
) -> None:
    key = await ready_key(app, model=MODEL, input_limit=100_000, usage_limit="use_anyway")
    part = {"type": "file", "file": {"file_id": "file-abc123"}}
    response = await post(app, key["token"], chat(part))
    assert response.status_code == 200, response.text[:300]
    assert response.headers["x-aigw-limit-exceeded"] == "input"
    assert len(fake.requests) == 1


async def test_file_id_on_a_key_without_input_limit_is_forwarded(
    app: Any, fake: InLoopUpstream
) -> None:
    key = await ready_key(app, model=MODEL)
    part = {"type": "file", "file": {"file_id": "file-abc123"}}
    response = await post(app, key["token"], chat(part))
    assert response.status_code == 200, response.text[:300]
    assert "x-aigw-limit-exceeded" not in response.headers
    assert len(fake.requests) == 1


@pytest.fixture
async def fake_responses() -> AsyncIterator[FakeResponses]:
    state, runner = await start_fake_responses()
    yield state
    await runner.cleanup()


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[tuple[FakeAnthropic, str]]:
    state = FakeAnthropic()
    async with serve_in_loop(state.app()) as url:
        yield state, url + "/v1"


def pdf_data() -> str:
    return base64.b64encode(make_pdf([HIDDEN])).decode()


async def test_responses_inline_input_file_is_counted_by_its_text(
    gateway: Any, fake_responses: FakeResponses
) -> None:
    # The bound is the subject here, counted in this process (a body holding a
    # file goes to a worker process by default: test_counting_workers.py).
    app = await gateway(count_processes=0)
    await create_provider(app.admin, fake_responses.url, models=(MODEL,))
    key = await ready_key(app, model=MODEL, input_limit=LIMIT)
    part = {
        "type": "input_file",
        "filename": "doc.pdf",
        "file_data": "data:application/pdf;base64," + pdf_data(),
    }
    body = {"model": MODEL, "input": [{"role": "user", "content": [part]}]}
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
        response = await http.post(
            "/v1/responses",
            content=orjson.dumps(body),
            headers={**JSON, "Authorization": f"Bearer {key['token']}"},
        )
        assert response.status_code == 400, response.text[:300]
        assert response.json()["error"]["code"] == "input_token_limit_exceeded"
        # An inline file is counted, no longer refused as "not countable".
        small = {**part, "file_data": "data:application/pdf;base64,"}
        small["file_data"] += base64.b64encode(make_pdf(["Hello."])).decode()
        body = {"model": MODEL, "input": [{"role": "user", "content": [small]}]}
        response = await http.post(
            "/v1/responses",
            content=orjson.dumps(body),
            headers={**JSON, "Authorization": f"Bearer {key['token']}"},
        )
        assert response.status_code == 200, response.text[:300]
    assert len(fake_responses.requests) == 1


@pytest.mark.parametrize(
    "source",
    [
        {"type": "base64", "media_type": "application/pdf", "data": "PDF"},
        {"type": "url", "url": "https://example.com/doc.pdf"},
    ],
    ids=["base64", "url"],
)
async def test_messages_document_block_is_counted_or_refused(
    gateway: Any, fake_anthropic: tuple[FakeAnthropic, str], source: dict[str, Any]
) -> None:
    state, url = fake_anthropic
    # The bound is the subject here, counted in this process (a body holding a
    # file goes to a worker process by default: test_counting_workers.py).
    app = await gateway(count_processes=0)
    await create_provider(app.admin, url, kind="anthropic", models=(CLAUDE,))
    key = await ready_key(app, model=CLAUDE, input_limit=LIMIT)
    if source["type"] == "base64":
        source = {**source, "data": pdf_data()}
    block = {"type": "document", "source": source}
    body = {
        "model": CLAUDE,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [block, {"type": "text", "text": "Sum up."}]}],
    }
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
        response = await http.post(
            "/v1/messages",
            content=orjson.dumps(body),
            headers={**JSON, "x-api-key": key["token"]},
        )
    assert response.status_code == 400, response.text[:300]
    assert not state.recorded.requests


async def test_inflating_stops_once_the_bound_passes_the_limit(
    app: Any, fake: InLoopUpstream
) -> None:
    # A page of ~200 KB of text (far past LIMIT), then a stream of 15 MiB of
    # zeros (under the 16 MiB inflate cap, so a full read finishes it).
    zeros = zeros_bomb(15)
    pdf = make_pdf([HIDDEN]).replace(
        b"trailer",
        b"99 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(zeros)
        + zeros
        + b"\nendstream\nendobj\ntrailer",
    )
    body = chat(file_part(pdf))
    # Over the file's bytes and a page image, under the page's text: the
    # first stream is read until the bound passes it, the zeros never.
    limit = 100_000
    assert len(pdf) + 1600 < limit < len(HIDDEN)
    limited = await ready_key(app, model=MODEL, input_limit=limit)
    # For comparison, in the same process: a use_anyway key reads the whole file.
    anyway = await ready_key(app, model=MODEL, input_limit=limit, usage_limit="use_anyway")

    async def measure(token: str) -> tuple[httpx.Response, float, int, int]:
        before = time.process_time(), INFLATE_STATS.out, INFLATE_STATS.fed
        response = await post(app, token, body)
        return (
            response,
            time.process_time() - before[0],
            INFLATE_STATS.out - before[1],
            INFLATE_STATS.fed - before[2],
        )

    full, full_cpu, full_out, full_fed = await measure(anyway["token"])
    refused, refused_cpu, refused_out, refused_fed = await measure(limited["token"])
    # The CPU is printed, not asserted: a unit test proves the bound by the bytes
    # the inflater reports (timings belong in benchmarks/).
    print(
        f"cpu full {full_cpu:.3f}s stopped {refused_cpu:.3f}s; inflated {full_out} vs "
        f"{refused_out} bytes, fed {full_fed} vs {refused_fed}; load {os.getloadavg()}"
    )
    assert full.status_code == 200 and full.headers["x-aigw-limit-exceeded"] == "input"
    assert full_out >= 15 << 20 and full_fed >= len(zeros)
    assert refused.status_code == 400, refused.text[:300]
    assert refused.json()["error"]["code"] == "input_token_limit_exceeded"
    # Stopped inside the page's text: under the limit in output, and the zeros'
    # stream never fed to zlib at all.
    assert 0 < refused_out <= limit
    assert 0 < refused_fed < len(zeros)
    assert len(fake.requests) == 1  # the use_anyway request only
