"""Plain content events: relayed as received, not parsed, while no cut is possible.

Most of a Chat Completions stream is events that differ only in the text of
one choice's ``delta.content``; the gateway relays them unchanged. A token is
never shorter than one byte, so while a choice's text stays within its
remaining output allowance *in bytes* no cut is possible, and nothing about
such an event needs deciding when it arrives: its text is only kept, and
counted with the rest of the choice's text when the count is read (for the
record) or when the stream leaves this fast path.

:class:`PlainEvents` learns the shape from one event the relay parsed and
relayed unchanged: the bytes before the content text (``prefix``, through the
opening quote) and after it (``suffix``, from the closing quote to the blank
line). A later event that is ``prefix + text + suffix``, where *text* holds no
quote, backslash or control character and is valid UTF-8, parses to the same
chunk with ``content`` = *text* — the bytes around it are identical, and such
a *text* can only end at the quote that starts ``suffix`` — so it is the same
event for the relay as the one it learned from, with other text. Anything
else (the role chunk, a finish, usage, an error, an escape, another choice,
CRLF line ends) goes through the full relay, which first takes in the text
kept so far, in order.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from aigw.proxy.accounting import ChoiceState

# The text between the quotes: nothing that ends or escapes a JSON string.
_PLAIN_TEXT = re.compile(rb'[^"\\\x00-\x1f]*')
_CONTENT_KEY = b'"content":'
# Text kept between counts at most (an unlimited answer's memory stays bounded).
_MAX_KEPT = 8 * 1024


class PlainEvents:
    """The plain content events of one choice of one stream (see the module docstring)."""

    __slots__ = ("_kept", "_kept_bytes", "_prefix", "_suffix", "chunk", "max_event", "state")

    def __init__(
        self,
        prefix: bytes,
        suffix: bytes,
        chunk: dict[str, Any],
        state: ChoiceState,
        max_event: int,
    ) -> None:
        self._prefix = prefix
        self._suffix = suffix
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        #: The chunk learned from: every plain event is this chunk with other text.
        self.chunk = chunk
        self.state = state
        self.max_event = max_event

    @classmethod
    def learn(
        cls, chunk: dict[str, Any], raw: bytes, state: ChoiceState, max_event: int
    ) -> PlainEvents | None:
        """The plain events shaped like *chunk*, relayed unchanged as *raw*, or
        ``None`` when it is not a plain content event."""
        choices = chunk.get("choices")
        if "error" in chunk or chunk.get("usage") is not None or choices.__class__ is not list:
            return None
        if len(choices) != 1 or choices[0].__class__ is not dict:
            return None
        choice = choices[0]
        delta = choice.get("delta")
        if choice.get("finish_reason") is not None or delta.__class__ is not dict:
            return None
        content = delta.get("content")
        if len(delta) != 1 or content.__class__ is not str or not content:
            return None
        if state.cut or state.ended or not raw.startswith(b"data: ") or b"\n" in raw[:-2]:
            return None
        needle = _CONTENT_KEY + orjson.dumps(content)
        if b"\\" in needle:
            return None  # the upstream may escape it otherwise: nothing to match safely
        at = raw.find(needle)
        if at < 0 or raw.find(needle, at + 1) >= 0:
            return None
        start = at + len(_CONTENT_KEY) + 1
        return cls(raw[:start], raw[at + len(needle) - 1 :], chunk, state, max_event)

    def take(self, buffer: bytes, pos: int) -> int:
        """Keep the text of the plain events in *buffer* from *pos* on, as long as no
        cut is possible; returns where they end (relay the bytes up to there)."""
        prefix, suffix = self._prefix, self._suffix
        prefix_len, suffix_len = len(prefix), len(suffix)
        room = self._room()
        if room == 0 or self.state.cut or self.state.ended:
            return pos
        while buffer.startswith(prefix, pos):
            start = pos + prefix_len
            end = buffer.find(b"\n\n", start) + 2
            stop = end - suffix_len
            if end < 2 or stop < start or end - pos > self.max_event:
                break
            if not buffer.endswith(suffix, start, end):
                break
            if _PLAIN_TEXT.fullmatch(buffer, start, stop) is None:
                break
            text = buffer[start:stop]
            if not text.isascii():
                try:
                    text.decode()
                except UnicodeDecodeError:
                    break  # the full relay refuses it as the upstream's error
            size = stop - start
            if room is not None and size > room:
                break
            if self._kept_bytes + size > _MAX_KEPT:
                self.flush()
                room = self._room()
                if room is not None and size > room:
                    break
            self._kept.append(text)
            self._kept_bytes += size
            if room is not None:
                room -= size
            pos = end
        return pos

    def _room(self) -> int | None:
        room = self.state.counter.room
        return None if room is None else room - self._kept_bytes

    def flush(self) -> None:
        """Take the text kept so far into the choice's count."""
        if self._kept:
            text = b"".join(self._kept).decode()
            self._kept.clear()
            self._kept_bytes = 0
            # Within the room: the counter only appends it, as it would have piece by piece.
            self.state.counter.feed(text, "content")
