"""One Server-Sent Events codec for both directions.

:class:`SSEDecoder` splits an upstream byte stream into events and keeps each
event's original bytes, so an event nothing changes is relayed downstream
byte for byte (no re-encoding on the hot path); the ``encode_*`` helpers write
the events the gateway makes itself (a cut-off chunk, an error, ``[DONE]``).

Line endings: the SSE grammar allows CRLF, CR and LF. Upstreams almost always
send LF; a chunk holding a CR is normalised to LF before splitting (a CR at
the very end of a chunk is held back, since it may be the first half of a
CRLF), which changes only line terminators, never an event's meaning.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE_DATA = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"
_DATA_PREFIX = b"data: "


class SSEEvent:
    """One event. ``data`` is the joined ``data`` field (``None`` for a comment-only
    or field-less block), ``event`` the ``event`` field, ``raw`` the event's bytes
    as received, terminator included."""

    __slots__ = ("data", "event", "raw")

    def __init__(self, raw: bytes, data: bytes | None, event: bytes | None = None) -> None:
        self.raw = raw
        self.data = data
        self.event = event

    def __repr__(self) -> str:
        return f"SSEEvent(event={self.event!r}, data={self.data[:60] if self.data else None!r})"


def _parse_block(block: bytes, raw: bytes) -> SSEEvent:
    # The overwhelmingly common shape: one "data: ..." line.
    if block.startswith(_DATA_PREFIX) and b"\n" not in block:
        return SSEEvent(raw, block[6:])
    data_lines: list[bytes] = []
    event = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data_lines.append(value)
        elif name == b"event":
            event = value
        # "id" and "retry" mean nothing to a one-shot completion stream.
    return SSEEvent(raw, b"\n".join(data_lines) if data_lines else None, event)


class SSEDecoder:
    """Incremental decoder: feed it chunks, get complete events back."""

    __slots__ = ("_buffer", "_held_cr")

    def __init__(self) -> None:
        self._buffer = b""
        self._held_cr = False

    def _normalise(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._held_cr or b"\r" in chunk:
            chunk = self._normalise(chunk)
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buffer.find(b"\n\n", start)
            if end < 0:
                break
            block = buffer[start:end]
            raw = buffer[start : end + 2]
            start = end + 2
            # Extra blank lines between events carry nothing.
            block = block.lstrip(b"\n")
            if block:
                events.append(_parse_block(block, raw))
        self._buffer = buffer[start:] if start else buffer
        return events

    def close(self) -> list[SSEEvent]:
        """At end of stream: an unterminated last event is dispatched if it has data
        (lenient: some servers omit the final blank line after ``[DONE]``)."""
        rest = self._buffer.strip(b"\n")
        self._buffer = b""
        if self._held_cr:
            self._held_cr = False
        if not rest:
            return []
        event = _parse_block(rest, rest + b"\n\n")
        return [event] if event.data is not None else []

    @property
    def pending(self) -> int:
        """Bytes of an incomplete event held back."""
        return len(self._buffer)


def encode_data(data: bytes) -> bytes:
    """A one-field event; *data* must not contain a newline (compact JSON never does)."""
    return _DATA_PREFIX + data + b"\n\n"


def encode_json(payload: Any) -> bytes:
    return _DATA_PREFIX + orjson.dumps(payload) + b"\n\n"


def encode_comment(text: bytes = b"") -> bytes:
    return b":" + text + b"\n\n"
