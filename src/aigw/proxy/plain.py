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
event for the relay as the one it learned from, with other text. OpenAI's
``obfuscation`` member (random padding of random length, last in each chunk)
may differ too, under the same rule; it is relayed, never counted. Anything
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
_PADDING = "obfuscation"
# Text kept between counts at most (an unlimited answer's memory stays bounded).
_MAX_KEPT = 8 * 1024


def _utf8(text: bytes) -> bool:
    if text.isascii():
        return True
    try:
        text.decode()
    except UnicodeDecodeError:
        return False
    return True


class PlainEvents:
    """The plain content events of one choice of one stream (see the module docstring)."""

    __slots__ = (
        "_joint",
        "_kept",
        "_kept_bytes",
        "_padding_end",
        "_prefix",
        "_suffix",
        "_tried",
        "chunk",
        "max_event",
        "state",
    )

    def __init__(
        self,
        prefix: bytes,
        suffix: bytes,
        padding_end: bytes | None,
        chunk: dict[str, Any],
        state: ChoiceState,
        max_event: int,
    ) -> None:
        self._prefix = prefix
        self._suffix = suffix
        # With padding: the suffix ends at its opening quote; this follows its text.
        self._padding_end = padding_end
        # Between two plain events in a row: the end of one and the start of the next.
        self._joint = suffix + prefix if padding_end is None else None
        # The read whose run was tried (its id: the bytes are not kept alive).
        self._tried = 0
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
        suffix, padding_end = raw[at + len(needle) - 1 :], None
        padding = chunk.get(_PADDING)
        if padding.__class__ is str and next(reversed(chunk)) == _PADDING:
            # OpenAI's random-length padding, the chunk's last member: any plain text.
            end = orjson.dumps(padding)[1:] + b"}\n\n"
            if b"\\" not in end and suffix.endswith(end):
                suffix, padding_end = suffix[: -len(end)], end[-4:]
        return cls(raw[:start], suffix, padding_end, chunk, state, max_event)

    def take(self, buffer: bytes, pos: int) -> int:
        """Keep the text of the plain events in *buffer* from *pos* on, as long as no
        cut is possible; returns where they end (relay the bytes up to there)."""
        prefix, suffix, padding_end = self._prefix, self._suffix, self._padding_end
        if not buffer.startswith(prefix, pos):
            return pos  # not a plain event (a finish, usage, [DONE]): nothing to weigh
        prefix_len, suffix_len = len(prefix), len(suffix)
        room = self._room()
        if room == 0 or self.state.cut or self.state.ended:
            return pos
        if self._joint is not None and self._tried != id(buffer):
            # Once per read: a run stopped short (near the limit) is not split again
            # at every event that follows it in the same read.
            self._tried = id(buffer)
            pos = self._take_run(buffer, pos, room)
            room = self._room()
        plain = _PLAIN_TEXT.fullmatch
        while buffer.startswith(prefix, pos):
            start = pos + prefix_len
            stop = buffer.find(b'"', start)  # the text's end, if it holds no escape
            if (
                stop < 0
                or not buffer.startswith(suffix, stop)
                or plain(buffer, start, stop) is None
            ):
                break
            end = stop + suffix_len
            if padding_end is not None:
                padded = buffer.find(b'"', end)
                if padded < 0 or not buffer.startswith(padding_end, padded):
                    break
                if plain(buffer, end, padded) is None or not _utf8(buffer[end:padded]):
                    break
                end = padded + len(padding_end)
            if end - pos > self.max_event:
                break
            text = buffer[start:stop]
            if not _utf8(text):
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

    def _take_run(self, buffer: bytes, pos: int, room: int | None) -> int:
        """:meth:`take` for the events of a run at once: each but the run's last is
        followed by the joint (its suffix and the next one's prefix), so the texts
        end where the joint starts, at their first quote; kept only if all of them
        pass the checks :meth:`take` makes one by one (else the loop there decides).

        The run is found quote by quote (``find`` of one byte, ``startswith`` of
        the joint), not by ``split(joint)``: CPython searches a needle of 100 bytes
        or more in a long buffer with a method whose set-up is paid at every
        piece, so the split cost several times the run's own checks."""
        prefix, joint = self._prefix, self._joint
        assert joint is not None
        if not buffer.startswith(prefix, pos):
            return pos
        start = pos + len(prefix)
        find, joined = buffer.find, buffer.startswith
        step = len(joint)
        texts: list[bytes] = []
        while True:
            stop = find(b'"', start)
            if stop < 0 or not joined(joint, stop):
                break  # the run's last event (and what follows): the loop's
            texts.append(buffer[start:stop])
            start = stop + step
        if not texts:
            return pos
        text = b"".join(texts)
        size = len(text)
        # No quote in any text: every split fell on an event boundary.
        if (
            _PLAIN_TEXT.fullmatch(text) is None
            or (room is not None and size > room)
            or size > _MAX_KEPT
            or max(map(len, texts)) + len(joint) > self.max_event
            or not (text.isascii() or all(map(_utf8, texts)))
        ):
            return pos
        if self._kept_bytes + size > _MAX_KEPT:
            self.flush()
            room = self._room()
            if room is not None and size > room:
                return pos
        self._kept.append(text)
        self._kept_bytes += size
        return pos + size + len(texts) * len(joint)

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
