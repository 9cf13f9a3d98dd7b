"""What an image in a prompt costs, from OpenAI's published per-model rates.

The size of a base64 ``data:`` URL image is read from its header (PNG, GIF,
WebP, JPEG); remote images are not fetched and count as
:data:`UNKNOWN_IMAGE_SIZE`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["UNKNOWN_IMAGE_SIZE", "image_part_tokens", "image_tokens", "max_image_tokens"]


@dataclass(frozen=True, slots=True)
class _TileRate:
    """``base`` tokens, plus ``tile`` per 512-px tile in high detail."""

    base: int
    tile: int


@dataclass(frozen=True, slots=True)
class _PatchRate:
    """32-px patches (at most 1536) times ``multiplier``."""

    multiplier: float


# OpenAI's "Images and vision" guide (platform.openai.com/docs/guides/images-vision,
# "Calculating costs"), by model-name prefix, most specific first. Unknown
# models (local servers behind an OpenAI-compatible API) get gpt-4o's rates.
_IMAGE_RATES: Final[tuple[tuple[str, _TileRate | _PatchRate], ...]] = (
    ("gpt-4.1-mini", _PatchRate(1.62)),
    ("gpt-4.1-nano", _PatchRate(2.46)),
    ("gpt-5-mini", _PatchRate(1.62)),
    ("gpt-5-nano", _PatchRate(2.46)),
    ("o4-mini", _PatchRate(1.72)),
    ("gpt-4o-mini", _TileRate(2833, 5667)),
    ("gpt-5", _TileRate(70, 140)),
    ("o1", _TileRate(75, 150)),
    ("o3", _TileRate(75, 150)),
    ("computer-use-preview", _TileRate(65, 129)),
)
_DEFAULT_IMAGE_RATE: Final = _TileRate(85, 170)

# When the size of an image is unknown (a remote URL, or a data URL whose
# header we cannot read) we assume a 1024x1024 image: in high detail that is
# 4 tiles (765 tokens on gpt-4o), the common case for photos and screenshots.
# Fetching remote images just to count them would put a network round trip
# (and an SSRF surface) on the request path.
UNKNOWN_IMAGE_SIZE: Final = (1024, 1024)


def image_tokens(width: int, height: int, detail: str, model: str) -> int:
    """Tokens OpenAI bills for one image of *width* x *height* pixels.

    Tile models: ``low`` costs the base; ``high`` (and ``auto``, counted as
    ``high`` since that is what the model may choose) scales the image to fit
    2048x2048, then its short side down to 768, and adds a tile rate per
    512-px tile. Patch models count 32-px patches, scaled to at most 1536,
    times a multiplier, whatever the detail.
    """
    rate = _image_rate(model)
    if isinstance(rate, _PatchRate):
        return math.ceil(_patches(width, height) * rate.multiplier)
    if detail == "low":
        return rate.base
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return rate.base + rate.tile * math.ceil(w / 512) * math.ceil(h / 512)


def max_image_tokens(model: str) -> int:
    """The most one image can cost on *model*, whatever its size and detail:
    8 tiles (2048 x 768 after scaling) or 1536 patches."""
    rate = _image_rate(model)
    if isinstance(rate, _PatchRate):
        return math.ceil(1536 * rate.multiplier)
    return rate.base + 8 * rate.tile


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= 1536:
        return patches
    shrink = math.sqrt(32 * 32 * 1536 / (width * height))
    w, h = width * shrink / 32, height * shrink / 32
    shrink *= min(math.floor(w) / w, math.floor(h) / h)
    return min(1536, math.ceil(width * shrink / 32) * math.ceil(height * shrink / 32))


def _image_rate(model: str) -> _TileRate | _PatchRate:
    name = model.rsplit("/", 1)[-1].lower()
    for prefix, rate in _IMAGE_RATES:
        if name.startswith(prefix):
            return rate
    return _DEFAULT_IMAGE_RATE


def image_part_tokens(image: object, model: str) -> int:
    """Tokens of an ``image_url`` content part (a URL string or ``{url, detail}``);
    0 for anything else."""
    url: object
    detail: object = "auto"
    if isinstance(image, str):
        url = image
    elif isinstance(image, Mapping):
        url, detail = image.get("url"), image.get("detail") or "auto"
    else:
        return 0
    size = _data_url_size(url) if isinstance(url, str) else None
    width, height = size or UNKNOWN_IMAGE_SIZE
    return image_tokens(width, height, detail if isinstance(detail, str) else "auto", model)


# Base64 read for an image header: PNG, GIF and WebP sizes sit in the first
# bytes; a JPEG's frame header follows its EXIF block, so it may need more.
# Images whose header lies further in get the default size.
_IMAGE_HEADER_B64 = (64, 1 << 17)


def _data_url_size(url: str) -> tuple[int, int] | None:
    """(width, height) of a base64 ``data:`` URL image, read from its header."""
    if not url.startswith("data:"):
        return None
    comma = url.find(",", 0, 256)
    if comma < 0 or not url[:comma].endswith(";base64"):
        return None
    for length in _IMAGE_HEADER_B64:
        chunk = url[comma + 1 : comma + 1 + length]
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            head = base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            return None
        size = _image_size(head)
        if size is not None:
            return size if size[0] > 0 and size[1] > 0 else None
        if head[:2] != b"\xff\xd8" or len(chunk) < length:
            return None
    return None


def _image_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(head) >= 25 and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(head) >= 30 and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG), CC (DAC) do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


_NOT_FILL = re.compile(rb"[^\xff]")
# Real JPEGs reach their frame header within a few dozen segments; a header
# padded with thousands of empty markers gets the default size instead of a
# Python loop over every byte.
_JPEG_MAX_SEGMENTS = 256


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    end = len(head)
    for _ in range(_JPEG_MAX_SEGMENTS):
        if i + 4 > end or head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # a run of fill bytes: skip it in one step
            found = _NOT_FILL.search(head, i + 1)
            if found is None:
                return None
            i = found.start() - 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > end:
                return None
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None
