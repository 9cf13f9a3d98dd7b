"""Image parts (aigw.proxy.counting.images): OpenAI's published per-model
rates, and image sizes read from data-URL headers."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
import tiktoken

from aigw.proxy.counting import count_chat_input
from tests.proxy.counting.support import user


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def jpeg(width: int, height: int, exif_bytes: int = 0) -> bytes:
    app1 = b"\xff\xe1" + struct.pack(">H", exif_bytes + 2) + b"\0" * exif_bytes
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\0" * 9
    return b"\xff\xd8" + app1 + sof0 + b"\xff\xd9"


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0" * 8


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_body(url: str, detail: str | None = None, model: str = "gpt-4o") -> dict[str, object]:
    image: dict[str, object] = {"url": url}
    if detail:
        image["detail"] = detail
    return {"model": model, "messages": [user([{"type": "image_url", "image_url": image}])]}


# Worked examples from OpenAI's "Images and vision" guide, "Calculating costs".
@pytest.mark.parametrize(
    ("width", "height", "detail", "model", "expected"),
    [
        (1024, 1024, "high", "gpt-4o", 765),  # 768x768 -> 4 tiles: 85 + 4*170
        (2048, 4096, "high", "gpt-4o", 1105),  # 1024x2048 -> 768x1536 -> 6 tiles
        (4096, 8192, "low", "gpt-4o", 85),
        (1024, 1024, "high", "gpt-4o-mini", 2833 + 4 * 5667),
        (1024, 1024, "low", "gpt-4o-mini", 2833),
        (1024, 1024, "high", "gpt-4.1-mini", 1659),  # 1024 patches * 1.62
        (1800, 2400, "high", "gpt-4.1-mini", 2353),  # scaled to 1452 patches * 1.62
    ],
)
def test_image_tokens_published_examples(
    o200k: tiktoken.Encoding, width: int, height: int, detail: str, model: str, expected: int
) -> None:
    body = image_body(data_url(png(width, height)), detail, model)
    # 3 per message + "user" (1 token) + the image + 3 reply priming.
    assert count_chat_input(body, o200k) == 3 + 1 + expected + 3


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (png(2048, 4096), "image/png"),
        (jpeg(2048, 4096, exif_bytes=30_000), "image/jpeg"),
        (gif(2048, 4096), "image/gif"),
    ],
)
def test_image_size_read_from_data_url(o200k: tiktoken.Encoding, data: bytes, mime: str) -> None:
    body = image_body(data_url(data, mime), "high")
    assert count_chat_input(body, o200k) == 3 + 1 + 1105 + 3


def test_image_detail_and_unknown_sizes(o200k: tiktoken.Encoding) -> None:
    overhead = 3 + 1 + 3
    assert count_chat_input(image_body("https://example.com/a.png", "low"), o200k) == overhead + 85
    # Unknown size (remote URL, unreadable data URL): assumed 1024x1024 -> 765.
    assert count_chat_input(image_body("https://example.com/a.png"), o200k) == overhead + 765
    assert count_chat_input(image_body("data:image/png;base64,!!!!"), o200k) == overhead + 765
    # "auto" counts as "high".
    small = data_url(png(300, 200))
    assert count_chat_input(image_body(small, "auto"), o200k) == overhead + 85 + 170
