"""A tiny PDF writer for tests: objects as bytes, assembled with a valid xref.

``pdf(objects)``: *objects* maps object numbers to their text (a dictionary,
an array, …) or to a :class:`Stream` (dictionary entries and data, written
Flate-compressed unless ``raw``). Object 1 must be the catalog. ``packed``
object numbers go into one object stream (``/Type /ObjStm``) with an xref
stream, as PDF 1.5 writers do.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stream:
    data: bytes
    entries: bytes = b""
    raw: bool = False


def text_stream(text: str, *, y: int = 720) -> Stream:
    """A page content stream showing *text* with font /F1."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return Stream(b"BT /F1 12 Tf 72 %d Td (%s) Tj ET" % (y, escaped.encode("latin-1")))


FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"


def _stream(stream: Stream) -> bytes:
    data = stream.data if stream.raw else zlib.compress(stream.data, 9)
    flate = b"" if stream.raw else b" /Filter /FlateDecode"
    head = b"<< /Length %d%s %s >>" % (len(data), flate, stream.entries)
    return head + b"\nstream\n" + data + b"\nendstream"


def pdf(objects: dict[int, bytes | Stream], packed: tuple[int, ...] = ()) -> bytes:
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        if number in packed:
            continue
        body = objects[number]
        offsets[number] = len(out)
        text = _stream(body) if isinstance(body, Stream) else body
        out += b"%d 0 obj\n" % number + text + b"\nendobj\n"
    if not packed:
        size = max(objects) + 1
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % size
        for number in range(1, size):
            if number in offsets:
                out += b"%010d 00000 n \n" % offsets[number]
            else:
                out += b"0000000000 65535 f \n"
        out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
        return bytes(out)
    # An object stream holding the packed objects, and an xref stream.
    stm_number = max(objects) + 1
    xref_number = stm_number + 1
    index, body = [], bytearray()
    for number in packed:
        text = objects[number]
        assert not isinstance(text, Stream), "streams cannot be packed"
        index.append(b"%d %d" % (number, len(body)))
        body += text + b"\n"
    head = b" ".join(index) + b"\n"
    stm = Stream(head + bytes(body), b"/Type /ObjStm /N %d /First %d" % (len(packed), len(head)))
    offsets[stm_number] = len(out)
    out += b"%d 0 obj\n" % stm_number + _stream(stm) + b"\nendobj\n"
    size = xref_number + 1
    rows = bytearray()
    for number in range(size):
        if number in packed:
            rows += (
                bytes((2,))
                + stm_number.to_bytes(4, "big")
                + packed.index(number).to_bytes(2, "big")
            )
        elif number in offsets:
            rows += bytes((1,)) + offsets[number].to_bytes(4, "big") + bytes(2)
        elif number == xref_number:
            rows += bytes((1,)) + len(out).to_bytes(4, "big") + bytes(2)
        else:
            rows += bytes((0,)) + bytes(4) + b"\xff\xff"
    xref = len(out)
    entries = b"/Type /XRef /Size %d /W [1 4 2] /Root 1 0 R" % size
    out += b"%d 0 obj\n" % xref_number + _stream(Stream(bytes(rows), entries)) + b"\nendobj\n"
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def pages_pdf(
    contents: list[bytes],
    extra: dict[int, bytes | Stream],
    *,
    resources: bytes = b"<< /Font << /F1 3 0 R >> >>",
    packed: tuple[int, ...] = (),
) -> bytes:
    """Catalog 1, page tree 2, font 3, pages 1000, 1001, … each with ``/Contents``
    *contents[i]* (e.g. ``b"5 0 R"``), plus the *extra* objects (4 to 999)."""
    kids = b" ".join(b"%d 0 R" % (1000 + i) for i in range(len(contents)))
    objects: dict[int, bytes | Stream] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(contents)),
        3: FONT,
        **extra,
    }
    for i, content in enumerate(contents):
        objects[1000 + i] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources %s /Contents %s >>"
            % (resources, content)
        )
    return pdf(objects, packed)
