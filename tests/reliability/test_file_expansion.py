"""A PDF whose reader extracts more characters than its streams hold bytes
(issue 10, the bound's gaps): a ``ToUnicode`` CMap mapping one code to a long
string, a font encoding whose ``/Differences`` give one code a long glyph name
(a reader shows the name, or what the glyph list makes of it), and a
``[/FlateDecode /FlateDecode]`` filter chain whose first level is still
compressed. The independent check is the one of
``test_file_reuse.py``: pypdf's ``extract_text()``, tokenized with tiktoken's
o200k, must never exceed the gateway's count."""

# ruff: noqa: F811  (pytest fixtures imported from tests/proxy/conftest.py)
from __future__ import annotations

import zlib
from typing import Any

import pytest

from tests.pdfwriter import Stream, pages_pdf
from tests.proxy.conftest import (  # noqa: F401
    InLoopUpstream,
    create_provider,
    gateway,
    ready_key,
    upstream,
)
from tests.reliability.test_file_inputs import MODEL, PAGE_IMAGE_TOKENS, chat, file_part, post
from tests.reliability.test_file_reuse import app, reader_tokens  # noqa: F401

# One code, <41> ("A"), stands for ~60 characters of words.
LONG = "the quick brown fox jumps over the lazy dog and runs away now"
CMAP = (
    b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
    b"1 begincodespacerange <00> <FF> endcodespacerange\n"
    b"1 beginbfchar <41> <" + LONG.encode("utf-16-be").hex().encode() + b"> endbfchar\n"
    b"endcmap CMapName currentdict /CMap defineresource pop end end"
)
TO_UNICODE_FONT = (
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
    b"/Encoding /WinAnsiEncoding /ToUnicode 6 0 R >>"
)


def mapped_by_to_unicode() -> bytes:
    extra: dict[int, bytes | Stream] = {
        3: TO_UNICODE_FONT,
        5: Stream(b"BT /F1 12 Tf 72 720 Td (" + b"A" * 20_000 + b") Tj ET"),
        6: Stream(CMAP),
    }
    return pages_pdf([b"5 0 R"], extra)


# A glyph name no glyph list knows: pypdf shows it as "/" and the name. The
# second spells /Differences with escapes, puts the array in its own object and
# packs both in an object stream.
LONG_NAME = b"thequickbrownfoxjumpsoverthelazydogandrunsawaynow"


def glyph_named(name: bytes, *, indirect: bool) -> bytes:
    if indirect:
        encoding: dict[int, bytes | Stream] = {
            7: b"<< /Type /Encoding /Diff#65rences 8 0 R >>",
            8: b"[65 /" + name + b"]",
        }
        font = b"/Encoding 7 0 R"
    else:
        encoding = {}
        font = b"/Encoding << /Type /Encoding /Differences [65 /" + name + b"] >>"
    extra: dict[int, bytes | Stream] = {
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica " + font + b" >>",
        5: Stream(b"BT /F1 12 Tf 72 720 Td (" + b"A" * 20_000 + b") Tj ET"),
        **encoding,
    }
    return pages_pdf([b"5 0 R"], extra, packed=(7, 8) if indirect else ())


def flate_twice() -> bytes:
    text = ("The quick brown fox jumps over the lazy dog again. " * 10_000).encode()
    twice = zlib.compress(zlib.compress(b"BT /F1 12 Tf 72 720 Td (" + text + b") Tj ET", 9), 9)
    content = Stream(twice, b"/Filter [/FlateDecode /FlateDecode]", raw=True)
    return pages_pdf([b"5 0 R"], {5: content})


async def _counted(app: Any, data: bytes) -> int:
    key = await ready_key(app, model=MODEL, input_limit=10_000_000)
    response = await post(app, key["token"], chat(file_part(data)))
    assert response.status_code == 200, response.text[:300]
    return int(response.headers["x-aigw-input-tokens"])


async def test_a_to_unicode_cmap_cannot_extract_more_than_is_counted(app: Any) -> None:
    data = mapped_by_to_unicode()
    text_tokens, pages = reader_tokens(data)
    # The reader expands each code: many more tokens than the file has bytes.
    assert text_tokens > 4 * len(data), (text_tokens, len(data))
    counted = await _counted(app, data)
    assert counted >= text_tokens + pages * PAGE_IMAGE_TOKENS, (counted, text_tokens)


@pytest.mark.parametrize(
    "data",
    [
        glyph_named(LONG_NAME, indirect=False),
        glyph_named(LONG_NAME, indirect=True),
        glyph_named(b"f_f_i_f_f_l_f_f_i", indirect=False),
    ],
    ids=["unknown_name", "unknown_name_packed_and_escaped", "ligature_name"],
)
async def test_a_glyph_name_cannot_extract_more_than_is_counted(app: Any, data: bytes) -> None:
    text_tokens, pages = reader_tokens(data)
    # The reader shows each "A" as the glyph's name (or its characters).
    assert text_tokens > len(data), (text_tokens, len(data))
    counted = await _counted(app, data)
    assert counted >= text_tokens + pages * PAGE_IMAGE_TOKENS, (counted, text_tokens)


async def test_a_flate_chain_cannot_extract_more_than_is_counted(app: Any) -> None:
    data = flate_twice()
    text_tokens, pages = reader_tokens(data)
    # One inflate leaves compressed bytes, far fewer than the text's tokens.
    assert text_tokens > 4 * len(data), (text_tokens, len(data))
    counted = await _counted(app, data)
    assert counted >= text_tokens + pages * PAGE_IMAGE_TOKENS, (counted, text_tokens)
