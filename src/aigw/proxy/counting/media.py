"""What an ``input_audio`` content part costs: its duration, read from the audio
itself, at a rate that does not under-count what OpenAI bills.

OpenAI publishes audio prices per token but no tokens-per-second figure for
Chat Completions audio input. Measured figures: user audio is tokenized at 10
tokens per second of audio, assistant audio at 20 (OpenAI community thread
971012, Realtime API, same audio tokenizer); a vendor's guide quotes "about
1,000 tokens a minute" (16.7/s). The gateway counts
:data:`AUDIO_TOKENS_PER_SECOND` = 20 per started second, at least twice the
measured input rate and above every figure found.

The duration comes from the data, never from a declared length: for WAV, the
bytes present after the ``data`` chunk header over the *smallest* byte rate the
header implies (so a header that overstates its rate cannot shrink the count);
for MP3, the sum of the frames' durations, each frame header read in turn
(linear in the data), and any tail that is not a frame as if it were audio at
MP3's lowest bitrate (8 kbit/s). Audio whose duration cannot be read this way
(another format, a malformed header, a sample rate under 4 kHz) counts as its
JSON text, as before. Every rule costs under 3 tokens per byte of base64 (so
:func:`~aigw.proxy.counting.bounds.input_upper_bound` still holds).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Mapping
from typing import Final

__all__ = ["AUDIO_TOKENS_PER_SECOND", "audio_part_tokens", "audio_seconds"]

AUDIO_TOKENS_PER_SECOND: Final = 20
_MIN_SAMPLE_RATE: Final = 4000
# Bytes per second of MP3's lowest bitrate (8 kbit/s, MPEG-2.5 layer III).
_MP3_MIN_BYTES_PER_SECOND: Final = 1000
_WAV_FORMATS: Final = frozenset({1, 3, 0xFFFE})  # PCM, IEEE float, extensible


def audio_part_tokens(audio: object) -> int | None:
    """Tokens of an ``input_audio`` object (``{"data": base64, "format": "wav"|"mp3"}``),
    or ``None`` when its duration cannot be read."""
    if not isinstance(audio, Mapping):
        return None
    data, fmt = audio.get("data"), audio.get("format")
    if not isinstance(data, str) or fmt not in ("wav", "mp3"):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    seconds = audio_seconds(raw, fmt)
    if seconds is None:
        return None
    return max(1, math.ceil(seconds * AUDIO_TOKENS_PER_SECOND))


def audio_seconds(raw: bytes, fmt: str) -> float | None:
    """The duration of *raw* audio in format *fmt* (``wav`` or ``mp3``), as above."""
    return _wav_seconds(raw) if fmt == "wav" else _mp3_seconds(raw)


def _wav_seconds(raw: bytes) -> float | None:
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        return None
    rates: list[int] = []
    i = 12
    while i + 8 <= len(raw):
        chunk, size = raw[i : i + 4], struct.unpack("<I", raw[i + 4 : i + 8])[0]
        body = i + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(raw):
            kind, channels, rate, byte_rate, align, bits = struct.unpack(
                "<HHIIHH", raw[body : body + 16]
            )
            if kind not in _WAV_FORMATS or channels < 1 or rate < _MIN_SAMPLE_RATE or bits < 8:
                return None
            rates = [byte_rate, rate * align, rate * channels * ((bits + 7) // 8)]
        elif chunk == b"data":
            # A byte rate under the lowest accepted sample rate is not audio.
            usable = [r for r in rates if r >= _MIN_SAMPLE_RATE]
            if not usable:
                return None
            # The bytes present, over the slowest rate the header implies.
            return (len(raw) - body) / min(usable)
        i = body + size + (size & 1)
    return None


# MPEG audio: bitrates (kbit/s) by [version is MPEG-1][layer 1..3][index]; sample
# rates by version; samples per frame by [version is MPEG-1][layer].
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_SAMPLES = {(True, 1): 384, (True, 2): 1152, (True, 3): 1152}
_SAMPLES |= {(False, 1): 384, (False, 2): 1152, (False, 3): 576}


def _mp3_seconds(raw: bytes) -> float | None:
    i = 0
    if raw[:3] == b"ID3" and len(raw) >= 10:  # an ID3v2 tag: its size is syncsafe
        size = raw[6] << 21 | raw[7] << 14 | raw[8] << 7 | raw[9]
        i = 10 + size
    seconds = 0.0
    frames = 0
    end = len(raw)
    while i + 4 <= end:
        frame = _mp3_frame(raw, i)
        if frame is None:
            break
        length, duration = frame
        seconds += duration
        frames += 1
        i += length
    if frames == 0:
        return None
    # A tail that is not frames (a tag, or frames we could not read) counts as
    # audio at the lowest bitrate.
    return seconds + max(0, end - i) / _MP3_MIN_BYTES_PER_SECOND


def _mp3_frame(raw: bytes, i: int) -> tuple[int, float] | None:
    b1, b2 = raw[i + 1], raw[i + 2]
    if raw[i] != 0xFF or b1 & 0xE0 != 0xE0:
        return None
    version, layer_bits = (b1 >> 3) & 3, (b1 >> 1) & 3
    if version == 1 or layer_bits == 0:
        return None
    layer = 4 - layer_bits
    mpeg1 = version == 3
    index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if index in (0, 15) or rate_index == 3:
        return None  # free-format or reserved: not read
    bitrate = _BITRATES[(mpeg1, layer)][index] * 1000
    rate = _SAMPLE_RATES[version][rate_index]
    samples = _SAMPLES[(mpeg1, layer)]
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    else:
        length = samples // 8 * bitrate // rate + padding
    if length < 4:
        return None
    return length, samples / rate
