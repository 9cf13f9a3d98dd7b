"""One Server-Sent Events codec for both directions.

:class:`SSEDecoder` splits an upstream byte stream into events and keeps each
event's original bytes, so an event nothing changes is relayed downstream
byte for byte (no re-encoding on the hot path); the ``encode_*`` helpers write
the events the gateway makes itself (a cut-off chunk, an error, ``[DONE]``).

Line endings: the SSE grammar allows CRLF, CR and LF. Upstreams almost always
send LF; a chunk holding a CR is normalised to LF before splitting (a CR at
the very end of a chunk is held back, since it may be the first half of a
CRLF), which changes only line terminators, never an event's meaning.

Bounded: an event (or an unfinished one) past ``max_event_bytes`` raises
:class:`aigw.proxy.errors.UpstreamEventTooLarge`; and each byte is scanned for
the end of its event once (a search resumes where the last one stopped), so an
event that arrives in many small reads costs linear, not quadratic, time.
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


# The default bound on one event (AIGW_UPSTREAM_MAX_EVENT_BYTES sets the relay's).
MAX_EVENT_BYTES = 4 * 1024 * 1024


class EventTooLarge(Exception):
    """An event (or the unfinished start of one) is longer than the decoder's bound."""


class SSEDecoder:
    """Incremental decoder: feed it chunks, get complete events back."""

    __slots__ = ("_buffer", "_held_cr", "_max_event", "_overflowed")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        self._held_cr = False
        self._max_event = max_event_bytes
        self._overflowed = False

    def _normalise(self, chunk: bytes) -> bytes:
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._overflowed:
            raise EventTooLarge()
        if self._held_cr or b"\r" in chunk:
            chunk = self._normalise(chunk)
        held = self._buffer
        limit = self._max_event
        if held:
            # Only the new bytes (and the last held one, the first half of a
            # possible "\n\n") are searched until an event ends: an event that
            # arrives in many small reads costs linear time, not quadratic.
            scan = len(held) - 1
            held += chunk
            if held.find(b"\n\n", scan) < 0:
                if len(held) > limit:
                    raise EventTooLarge()
                return []
            buffer = bytes(held)
            held.clear()
        else:
            buffer = chunk
        events: list[SSEEvent] = []
        start = 0
        find = buffer.find
        end = find(b"\n\n")
        while end >= 0:
            if end - start > limit:
                raise EventTooLarge()
            block = buffer[start:end]
            raw = buffer[start : end + 2]
            start = end + 2
            # Extra blank lines between events carry nothing.
            block = block.lstrip(b"\n")
            if block:
                events.append(_parse_block(block, raw))
            end = find(b"\n\n", start)
        if start < len(buffer):
            held += memoryview(buffer)[start:]
            if len(held) > limit:
                if not events:
                    raise EventTooLarge()
                self._overflowed = True  # the complete events before it are relayed first
        return events

    def close(self) -> list[SSEEvent]:
        """At end of stream: an unterminated last event is dispatched if it has data
        (lenient: some servers omit the final blank line after ``[DONE]``)."""
        rest = bytes(self._buffer).strip(b"\n")
        self._buffer.clear()
        if self._held_cr:
            self._held_cr = False
        if not rest:
            return []
        event = _parse_block(rest, rest + b"\n\n")
        return [event] if event.data is not None else []

    @property
    def idle(self) -> bool:
        """Whether nothing is held back: the next chunk starts a new event."""
        return not self._buffer and not self._held_cr and not self._overflowed

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
