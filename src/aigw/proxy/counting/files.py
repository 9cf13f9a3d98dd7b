"""What a ``file`` content part with inline ``file_data`` costs: a bound that
never under-counts what OpenAI bills for it.

OpenAI's "File inputs" guide (developers.openai.com/api/docs/guides/file-inputs,
"How it works"): for a PDF, "we put into the model's context both the extracted
text and an image of each page". Its text hides in content streams, usually
Flate-compressed, which can inflate to far more text than their base64 holds;
so the bound reads the file itself:

* every ``stream`` keyword of the decoded file is tried as the start of a
  Flate stream (zlib, then raw deflate, as lenient readers do) whatever its
  dictionary says, and what it inflates to is counted one token per byte (no
  token is shorter than one byte, and the text a reader extracts from a
  stream is made of bytes that stream holds);
* plus every byte of the file as it is (non-stream bytes, and streams that
  are not Flate, such as JPEG page images, at their raw size);
* plus, per page (each ``/Page`` name, at least one), the most one image can
  cost on the model (:func:`~aigw.proxy.counting.images.max_image_tokens`,
  OpenAI's image rule at its highest detail and size, so whatever detail the
  upstream uses), and never less than :data:`ANTHROPIC_MAX_IMAGE_TOKENS`
  (Anthropic's PDF support also sends each page as an image; its vision guide
  resizes an image past ~1,600 tokens, width x height / 750).

Inflating is incremental (``zlib.decompressobj`` with ``max_length``): past
:data:`MAX_INFLATED_BYTES` of output in one request, or
:data:`MAX_INFLATE_INPUT` bytes fed to zlib, the walk stops and the file is
*not countable* — a zip bomb costs bounded CPU and memory, and a key with an
input limit refuses it. A file the walker cannot bound is not countable
either: an encrypted PDF (``/Encrypt``), a stream filter that can expand
without zlib (LZW, RunLength, ASCII85, ASCIIHex, Crypt), a zip container
(DOCX, XLSX, …), or ``file_data`` that is not base64. A part without inline
data (``file_id``, ``file_url``) is not countable: the gateway cannot see it.

A reader can also repeat text it holds once (a Form XObject drawn many times,
one content stream shared by many pages): :mod:`.pdf` counts each drawing. A
``ToUnicode`` CMap can send one code to many characters: the text part of the
bound is multiplied by the most UTF-8 bytes one code can become
(:func:`.pdf.expansion`). A filter chain (``[/FlateDecode /FlateDecode]``) is
inflated level by level, every level counted, under the one total bound.
Known limit: a simple font's encoding or a glyph name mapping one byte to a
character of several UTF-8 bytes, or to several characters, without a
``ToUnicode`` map (docs/reliability.md, "Known gaps").
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from aigw.proxy.counting.images import max_image_tokens
from aigw.proxy.counting.pdf import NotBounded, expansion, glyph_expansion, repeated_bytes

__all__ = [
    "ANTHROPIC_MAX_IMAGE_TOKENS",
    "INFLATE_STATS",
    "MAX_INFLATED_BYTES",
    "MAX_INFLATE_INPUT",
    "FileBound",
    "file_data_tokens",
]

MAX_INFLATED_BYTES: Final = 16 * 1024 * 1024
MAX_INFLATE_INPUT: Final = 64 * 1024 * 1024
_CAP: Final = 1 << 62  # totals are clamped here: past any limit, and cheap to add
ANTHROPIC_MAX_IMAGE_TOKENS: Final = 1600
_CHUNK: Final = 64 * 1024
_STREAM = re.compile(rb"stream[ \t\x0c]*(?:\r\n|\n|\r)?")
_NAME = re.compile(rb"/([^\x00\t\n\x0c\r ()<>\[\]{}/%]*)")
_HEX = re.compile(rb"#([0-9A-Fa-f]{2})")
# Filters that can expand data without zlib, and encryption: not bounded here.
_UNBOUNDED_NAMES: Final = frozenset(
    {
        b"LZWDecode",
        b"LZW",
        b"RunLengthDecode",
        b"RL",
        b"ASCII85Decode",
        b"A85",
        b"ASCIIHexDecode",
        b"AHx",
        b"Crypt",
        b"Encrypt",
    }
)
_ZIP_MAGIC: Final = b"PK\x03\x04"


@dataclass(slots=True)
class InflateStats:
    """Bytes fed to and produced by zlib in this process, for tests and
    benchmarks (each worker process keeps its own)."""

    fed: int = 0
    out: int = 0


INFLATE_STATS: Final = InflateStats()


@dataclass(frozen=True, slots=True)
class FileBound:
    """Tokens of a file part: ``tokens`` when countable, else ``None`` with the
    reason (``reason``) it is not."""

    tokens: int | None
    reason: str = ""


def file_data_tokens(data: str, model: str, stop_above: int | None = None) -> FileBound:
    """The bound above for inline ``file_data`` (a data URL or bare base64).

    With *stop_above* (what is left of an input limit), reading stops as soon
    as the bound passes it: the answer (over the limit) is known, and the
    tokens returned are only what was counted so far, more than *stop_above*.
    """
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or not head.endswith(";base64"):
            return FileBound(None, "file_data is not base64")
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return FileBound(None, "file_data is not base64")
    if raw.startswith(_ZIP_MAGIC):
        return FileBound(None, "a compressed container (zip) cannot be bounded")
    return _bound(raw, model, stop_above)


def _bound(raw: bytes, model: str, stop_above: int | None) -> FileBound:
    page_image = max(max_image_tokens(model), ANTHROPIC_MAX_IMAGE_TOKENS)
    # What is counted before any stream inflates: the file's bytes and one page.
    floor = len(raw) + page_image
    limit_room = None if stop_above is None else stop_above - floor
    if limit_room is not None and limit_room < 0:
        return FileBound(floor)
    inflated: dict[int, bytes] = {}
    total_out = 0
    total_in = 0
    for match in _STREAM.finditer(raw):
        start = match.end()
        room = MAX_INFLATED_BYTES - total_out
        by_limit = limit_room is not None and limit_room - total_out < room
        if limit_room is not None and by_limit:
            room = limit_room - total_out
        # A filter chain ([/FlateDecode /FlateDecode]) is inflated level by
        # level, every level under the one total: what a level inflates to is
        # tried as deflate data again, and all levels count (the walk sees them
        # joined, so a drawing costs at least the level a reader shows).
        levels: list[bytes] = []
        source, at = raw, start
        while True:
            out, fed = _inflate_any(source, at, room - sum(map(len, levels)), inner=bool(levels))
            total_in += fed
            if out is None and by_limit:
                # Past what is left of the limit: over it, whatever follows.
                INFLATE_STATS.out += room + 1  # _inflate stops one byte past room
                return FileBound(floor + total_out + room + 1)
            if out is None:
                return FileBound(None, "its compressed streams inflate past the bound")
            if total_in > MAX_INFLATE_INPUT:
                return FileBound(None, "its compressed streams inflate past the bound")
            if not out:
                break
            INFLATE_STATS.out += len(out)
            total_out += len(out)
            levels.append(out)
            source, at = out, 0
        if levels:
            inflated[match.start()] = levels[0] if len(levels) == 1 else b"".join(levels)
    pages = 0
    for chunk in (raw, *inflated.values()):
        for name in _NAME.findall(chunk):
            if b"#" in name:
                name = _HEX.sub(lambda m: bytes((int(m.group(1), 16),)), name)
            if name in _UNBOUNDED_NAMES:
                return FileBound(None, f"it uses /{name.decode('latin-1')}")
            if name == b"Page":
                pages += 1
    if stop_above is not None and floor + total_out + max(0, pages - 1) * page_image > stop_above:
        return FileBound(floor + total_out + max(0, pages - 1) * page_image)  # no need to walk
    cap = _CAP if stop_above is None else stop_above + 1
    try:
        draws = repeated_bytes(raw, inflated, cap)
    except NotBounded as exc:
        return FileBound(None, f"a reader may repeat its text: {exc}")
    except (ValueError, IndexError, RecursionError):  # a shape the walk did not foresee
        return FileBound(None, "its structure cannot be read")
    pages = max(1, pages, draws.pages)
    # A ToUnicode CMap, or a glyph name in an encoding's /Differences, can turn
    # one drawn byte into several characters.
    widest = max(expansion((raw, *inflated.values())), glyph_expansion(draws.objects))
    text = (len(raw) + total_out + draws.repeated) * widest
    return FileBound(min(text, _CAP) + pages * page_image)


def _inflate_any(source: bytes, start: int, room: int, *, inner: bool) -> tuple[bytes | None, int]:
    """:func:`_inflate` of *source[start:]* as zlib data, else as raw deflate.
    Inside an inflated level (*inner*), raw
    deflate counts only when it reaches its final block: text a reader shows
    (``BT ... ET``) can start like raw deflate data, and the garbage it would
    inflate to is no level of a chain."""
    fed_total = 0
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        out, fed, eof = _inflate(source, start, wbits, room)
        fed_total += fed
        INFLATE_STATS.fed += fed
        if out is not None and wbits < 0 and inner and not eof:
            out = b""
        if out is None or out:
            return out, fed_total
    return b"", fed_total


def _inflate(raw: bytes, start: int, wbits: int, room: int) -> tuple[bytes | None, int, bool]:
    """What the deflate data at *raw[start:]* inflates to (b"" when it is not
    deflate data), the bytes fed, and whether its end was reached; ``None``
    past *room* bytes of output."""
    inflater = zlib.decompressobj(wbits)
    out = bytearray()
    fed = 0
    pending = raw[start : start + _CHUNK]
    position = start + len(pending)
    while pending:
        try:
            piece = inflater.decompress(pending, min(_CHUNK, room - len(out) + 1))
        except zlib.error:
            return bytes(out), fed, False
        fed += len(pending) - len(inflater.unconsumed_tail)
        out += piece
        if len(out) > room:
            return None, fed, False
        if inflater.eof:
            break
        if inflater.unconsumed_tail:
            pending = inflater.unconsumed_tail
        else:
            pending = raw[position : position + _CHUNK]
            position += len(pending)
    return bytes(out), fed, inflater.eof


def file_part_reason(part: Mapping[str, object]) -> str:
    """Why a file object without inline data cannot be counted."""
    for key in ("file_id", "file_url"):
        if key in part:
            return f"a file referenced by {key} cannot be seen by the gateway"
    return "a file part without file_data cannot be counted"
