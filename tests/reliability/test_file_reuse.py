"""PDFs that draw text more often than they store it (issue 10, item 2), through
a real server (the app under uvicorn) and raw httpx.

A reader extracts every page's text: one content stream shared by many pages,
listed many times in one page's ``/Contents``, a page listed many times in the
page tree (at every level), a Form XObject drawn (``Do``) many times, from a
page or from another form, pages and arrays packed in an object stream: the
text a reader gets is many times the bytes the file holds. The independent
measure is pypdf's extracted text, tokenized with tiktoken, plus OpenAI's
largest page image per page pypdf lists; the gateway's count must never be
below it.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests/proxy/conftest.py)
from __future__ import annotations

import functools
import io
import logging
from typing import Any

import pypdf
import pytest

from tests.fakes.billing import load_encoding
from tests.pdfwriter import FONT, Stream, pages_pdf, pdf, text_stream
from tests.proxy.conftest import (  # noqa: F401
    InLoopUpstream,
    create_provider,
    gateway,
    ready_key,
    upstream,
)
from tests.reliability.test_file_inputs import MODEL, PAGE_IMAGE_TOKENS, chat, file_part, post

# ~880 tokens of text per drawing.
TEXT = "The quick brown fox jumps over the lazy dog again. " * 80
FORM = b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >>"
WITH_X1 = b"<< /Font << /F1 3 0 R >> /XObject << /X1 6 0 R >> >>"
CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
PAGE = b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] %s /Contents 5 0 R >>"
FONTS = b"/Resources << /Font << /F1 3 0 R >> >>"


def _form(text: str) -> Stream:
    return Stream(b"BT /F1 12 Tf 72 720 Td (" + text.encode() + b") Tj ET", FORM)


def shared_contents() -> bytes:
    return pages_pdf([b"5 0 R"] * 150, {5: text_stream(TEXT)})


def repeated_in_one_page() -> bytes:
    return pages_pdf([b"[" + b"5 0 R " * 200 + b"]"], {5: text_stream(TEXT)})


def form_drawn_many_times() -> bytes:
    content = Stream(b"q /X1 Do Q\n" * 400)
    return pages_pdf([b"5 0 R"], {5: content, 6: _form(TEXT)}, resources=WITH_X1)


def nested_forms() -> bytes:
    outer = Stream(
        b"q /X2 Do Q\n" * 20,
        FORM.replace(b">> >>", b">> /XObject << /X2 7 0 R >> >>"),
    )
    content = Stream(b"q /X1 Do Q\n" * 40)
    extra = {5: content, 6: outer, 7: _form(TEXT[:600])}
    return pages_pdf([b"5 0 R"], extra, resources=WITH_X1)


def inherited_resources() -> bytes:
    # Pages without resources of their own draw a form the page tree node names.
    objects: dict[int, bytes | Stream] = {1: CATALOG, 3: FONT, 5: Stream(b"/X1 Do"), 6: _form(TEXT)}
    kids = b" ".join(b"%d 0 R" % (1000 + i) for i in range(120))
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count 120 /Resources %s >>" % (kids, WITH_X1)
    for i in range(120):
        objects[1000 + i] = PAGE % (2, b"")
    return pdf(objects)


def page_listed_many_times() -> bytes:
    objects: dict[int, bytes | Stream] = {1: CATALOG, 3: FONT, 5: text_stream(TEXT)}
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count 160 >>" % (b"4 0 R " * 160)
    objects[4] = PAGE % (2, FONTS)
    return pdf(objects)


def page_tree_repeated_at_every_level() -> bytes:
    # 8 x 8 x 8 listings of one page: 512 pages from a 1.3 KB file.
    objects: dict[int, bytes | Stream] = {1: CATALOG, 3: FONT, 5: text_stream(TEXT[:800])}
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count 512 >>" % (b"20 0 R " * 8)
    objects[20] = b"<< /Type /Pages /Parent 2 0 R /Kids [%s] /Count 64 >>" % (b"21 0 R " * 8)
    objects[21] = b"<< /Type /Pages /Parent 20 0 R /Kids [%s] /Count 8 >>" % (b"4 0 R " * 8)
    objects[4] = PAGE % (21, FONTS)
    return pdf(objects)


def packed_in_an_object_stream() -> bytes:
    # Catalog, page tree, font and a shared /Contents array object in /ObjStm.
    return pages_pdf(
        [b"6 0 R"] * 100, {5: text_stream(TEXT), 6: b"[5 0 R 5 0 R]"}, packed=(1, 2, 3, 6)
    )


def page_listed_many_times_as_a_stream() -> bytes:
    # A page object written as a stream (its dictionary is still a page's).
    objects: dict[int, bytes | Stream] = {1: CATALOG, 3: FONT, 5: text_stream(TEXT)}
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count 160 >>" % (b"4 0 R " * 160)
    objects[4] = Stream(
        b"", b"/Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] %s /Contents 5 0 R" % FONTS
    )
    return pdf(objects)


CRAFTED = [
    shared_contents,
    repeated_in_one_page,
    form_drawn_many_times,
    nested_forms,
    inherited_resources,
    page_listed_many_times,
    page_tree_repeated_at_every_level,
    packed_in_an_object_stream,
    page_listed_many_times_as_a_stream,
]


def reader_tokens(data: bytes) -> tuple[int, int]:
    """pypdf's extracted text in o200k tokens, and its page count."""
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = pypdf.PdfReader(io.BytesIO(data))
    text = "\n".join(page.extract_text() for page in reader.pages)
    return len(load_encoding("o200k_base").encode_ordinary(text)), len(reader.pages)


@functools.cache
def extracted(build: Any) -> tuple[int, int]:
    """:func:`reader_tokens` of ``build()``, once per run (pypdf is the bulk of these
    tests' CPU; two tests read form_drawn_many_times)."""
    return reader_tokens(build())


@pytest.fixture
async def app(gateway: Any, upstream: InLoopUpstream) -> Any:
    # The bound is the subject here, counted in this process (a body holding a
    # file goes to a worker process by default: test_counting_workers.py).
    app = await gateway(count_processes=0)
    await create_provider(app.admin, upstream.url, models=(MODEL,))
    return app


@pytest.mark.parametrize("build", CRAFTED, ids=lambda build: build.__name__)
async def test_count_is_at_least_what_a_reader_extracts(app: Any, build: Any) -> None:
    data = build()
    text_tokens, pages = extracted(build)
    # Each file repeats its text: a reader gets more tokens than it has bytes.
    assert text_tokens > 2 * len(data), (text_tokens, len(data))
    # A limit far above the count: the request is counted before it is sent.
    key = await ready_key(app, model=MODEL, input_limit=10_000_000)
    response = await post(app, key["token"], chat(file_part(data)))
    assert response.status_code == 200, response.text[:300]
    counted = int(response.headers["x-aigw-input-tokens"])
    assert counted >= text_tokens + pages * PAGE_IMAGE_TOKENS, (counted, text_tokens, pages)


async def test_repeated_text_past_the_input_limit_is_refused(
    app: Any, upstream: InLoopUpstream
) -> None:
    data = form_drawn_many_times()
    text_tokens, _ = extracted(form_drawn_many_times)
    # The file itself (its bytes, its streams inflated once: ~31k) is under the
    # limit; only its text drawn 400 times is past it.
    limit = 40_000
    assert len(data) < limit < text_tokens / 8
    key = await ready_key(app, model=MODEL, input_limit=limit)
    response = await post(app, key["token"], chat(file_part(data)))
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "input_token_limit_exceeded"
    assert not upstream.requests


def forms_in_a_cycle() -> bytes:
    # X1 draws X2 and X2 draws X1: a reader without a guard never ends, one
    # with a guard repeats until its guard; no bound either way.
    x1 = Stream(b"/X2 Do", FORM.replace(b">> >>", b">> /XObject << /X2 7 0 R >> >>"))
    x2 = Stream(b"/X1 Do", FORM.replace(b">> >>", b">> /XObject << /X1 6 0 R >> >>"))
    return pages_pdf([b"5 0 R"], {5: Stream(b"/X1 Do"), 6: x1, 7: x2}, resources=WITH_X1)


def form_without_resources() -> bytes:
    # A form with no /Resources of its own (PDF 1.1 lets it use the page's)
    # that draws a form: which one is not known without the page.
    x1 = Stream(b"/X1 Do" * 10, b"/Type /XObject /Subtype /Form /BBox [0 0 612 792]")
    return pages_pdf([b"5 0 R"], {5: Stream(b"/X1 Do"), 6: x1}, resources=WITH_X1)


def page_tree_cycle() -> bytes:
    objects: dict[int, bytes | Stream] = {1: CATALOG, 3: FONT, 5: text_stream("Hi.")}
    objects[2] = b"<< /Type /Pages /Kids [20 0 R] /Count 1 >>"
    objects[20] = b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 4 0 R] /Count 1 >>"
    objects[4] = PAGE % (20, FONTS)
    return pdf(objects)


def comment_in_contents_array() -> bytes:
    # "%]" ends the array for a scan that ignores comments, not for a reader.
    contents = b"[5 0 R %]\n" + b"5 0 R " * 1000 + b"]"
    return pages_pdf([contents], {5: text_stream(TEXT)})


@pytest.mark.parametrize(
    "build",
    [forms_in_a_cycle, form_without_resources, page_tree_cycle, comment_in_contents_array],
    ids=lambda build: build.__name__,
)
async def test_unbounded_repetition_is_not_countable(
    app: Any, upstream: InLoopUpstream, build: Any
) -> None:
    key = await ready_key(app, model=MODEL, input_limit=1_000_000)
    response = await post(app, key["token"], chat(file_part(build())))
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "input_not_countable"
    assert not upstream.requests
