"""CPU cost of the PDF file bound (counting/files.py, counting/pdf.py) per MiB,
on its worst shapes: ``python -m benchmarks.pdf_bound``.

CPU time (``time.process_time``, best of three) in this process, with the
load average printed: the figures in docs/proxy.md ("Cost of a file").
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import Any

from tests.pdfwriter import Stream, pages_pdf, pdf, text_stream

from aigw.proxy.counting.files import file_data_tokens

CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"


def _cpu(work: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def _data(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def main() -> None:
    print("load average", os.getloadavg())
    mib = 1 << 20
    zeros = pdf(
        {1: CATALOG, 2: b"<< /Type /Pages /Kids [] /Count 0 >>", 5: Stream(bytes(15 * mib))}
    )
    page = b"<< /Type /Page /Parent 2 0 R /Contents 5 0 R >>"
    line = b"BT /F1 12 Tf 72 720 Td (The quick brown fox jumps over the lazy dog.) Tj ET\n"
    ops = (line * (15 * mib // len(line) + 1))[: 15 * mib]
    text = pdf(
        {1: CATALOG, 2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", 3: page, 5: Stream(ops)}
    )
    dos = b"q /X1 Do Q\n" * 1_500_000
    form = Stream(b"BT (x) Tj ET", b"/Subtype /Form /Resources << >>")
    drawn = pages_pdf(
        [b"5 0 R"], {5: Stream(dos), 6: form}, resources=b"<< /XObject << /X1 6 0 R >> >>"
    )
    tiny = pages_pdf([b"5 0 R"] * 30_000, {5: text_stream("hi")})
    cases = [
        ("15 MiB of zeros, inflated", zeros, 15.0, "MiB inflated"),
        ("15 MiB of content operators", text, 15.0, "MiB inflated"),
        (f"{len(dos) / mib:.1f} MiB of '/X1 Do'", drawn, len(dos) / mib, "MiB inflated"),
        ("30,000 page objects", tiny, len(tiny) / mib, "MiB of file"),
    ]
    for name, raw, size, unit in cases:
        data = _data(raw)
        seconds = _cpu(lambda data=data: file_data_tokens(data, "gpt-4o"))
        print(f"{name}: {seconds:.3f} s CPU, {seconds / size * 1000:.0f} ms per {unit}")
    data = _data(zeros)
    full = _cpu(lambda: file_data_tokens(data, "gpt-4o"))
    stopped = _cpu(lambda: file_data_tokens(data, "gpt-4o", 100_000))
    print(f"zeros under a 100k limit: {stopped * 1000:.2f} ms CPU ({full / stopped:.0f}x less)")


if __name__ == "__main__":
    main()
