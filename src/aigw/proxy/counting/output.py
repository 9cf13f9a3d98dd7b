"""Counting generated text as it streams, and cutting it at a token limit."""

from __future__ import annotations

import functools
from collections.abc import Hashable

import regex
import tiktoken

from aigw.proxy.counting.encodings import MAX_TOKEN_BYTES

__all__ = ["OutputCounter"]

# A channel's uncommitted tail is re-split once it reaches this many chars.
_COMMIT_CHARS = 256
# The regex pre-tokens kept uncommitted: appending text can re-split the last
# one or two pre-tokens (e.g. "A'" + "s" -> "A's"), never earlier ones.
_UNSTABLE_PIECES = 3
# A tail still longer than this after re-splitting is one giant pre-token
# (e.g. a model repeating "....."); it is committed at a token boundary.
_MAX_UNSTABLE_CHARS = 1024
_FORCED_KEEP_BYTES = 2 * MAX_TOKEN_BYTES  # beyond the reach of any re-merge at the end


class _Channel:
    __slots__ = ("committed", "next_commit", "tail", "tail_bytes", "tail_tokens")

    def __init__(self) -> None:
        self.committed = 0  # exact tokens of the text before `tail`
        self.tail = ""  # text after the last stable pre-token boundary
        self.tail_bytes = 0  # UTF-8 length of `tail`: an upper bound of its tokens
        self.tail_tokens: int | None = 0  # exact tokens of `tail`, None when stale
        self.next_commit = _COMMIT_CHARS


@functools.lru_cache(maxsize=8)
def _piece_pattern(pat_str: str) -> regex.Pattern[str]:
    return regex.compile(pat_str)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _scrub(text: str) -> str:
    """*text* with lone surrogates replaced, as tiktoken does before encoding."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class OutputCounter:
    """Counts generated tokens as they stream, and cuts at a limit.

    Text arrives in *channels*: the message content, and the arguments (and
    name) of each tool call, which the model generates as separate texts. The
    count of a channel is ``len(encoding.encode_ordinary(all text accepted on
    it))``; :attr:`count` is the sum over channels.

    :meth:`feed` accepts as much of a delta as keeps :attr:`count` within
    ``limit`` (``None`` or 0: unlimited), and reports when text had to be cut;
    the cut falls on a token boundary, so the relayed text is exactly the
    first ``limit`` tokens in all but rare cases where a token prefix
    re-encodes into fewer tokens (then it is the longest prefix that fits).

    Cost per delta is independent of how much was generated: BPE never merges
    across the pre-tokens the encoding's regex splits text into, and appending
    text can only re-split the last pre-tokens. Each channel keeps an exact
    count of its text up to a stable pre-token boundary and re-encodes only
    the short tail after it; every ~256 characters the tail is re-split and
    all but its last three pre-tokens are committed. Far from the limit the
    tail is not even encoded: its UTF-8 length bounds its tokens. One caveat:
    a single pre-token longer than 4096 characters (a model stuck repeating
    one punctuation character) is committed at token boundaries, where the
    count could in principle differ from one-shot encoding by a token.

    Lone surrogates in deltas are replaced with U+FFFD (as tiktoken does);
    the accepted text returned is the scrubbed text. Not thread-safe.
    """

    __slots__ = (
        "_channels",
        "_committed",
        "_encode",
        "_encoding",
        "_exhausted",
        "_limit",
        "_pattern",
        "_tail_bytes",
    )

    def __init__(self, encoding: tiktoken.Encoding, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 (0 or None: unlimited)")
        self._encoding = encoding
        self._encode = encoding.encode_ordinary
        self._pattern = _piece_pattern(encoding._pat_str)
        self._limit = limit or None
        self._channels: dict[Hashable, _Channel] = {}
        self._committed = 0  # sum of channel.committed
        self._tail_bytes = 0  # sum of channel.tail_bytes
        self._exhausted = False

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        """Move the limit (a budget reservation that grew or must bound the next
        text); text already accepted stays accepted."""
        if value is not None and value < 0:
            raise ValueError("limit must be >= 0 (0 or None: unlimited)")
        self._limit = value or None

    @property
    def exhausted(self) -> bool:
        """Whether text was cut: the response must end here (``length``)."""
        return self._exhausted

    @property
    def count(self) -> int:
        """Exact tokens accepted so far, over all channels."""
        return self._committed + sum(self._tail_tokens(ch) for ch in self._channels.values())

    def channel_count(self, channel: Hashable = "content") -> int:
        """Exact tokens accepted so far on *channel*."""
        ch = self._channels.get(channel)
        return 0 if ch is None else ch.committed + self._tail_tokens(ch)

    def feed(self, text: str, channel: Hashable = "content") -> tuple[str, bool]:
        """Count *text* arriving on *channel*.

        Returns ``(accepted, reached_limit)``: ``accepted`` is the prefix of
        *text* to relay (all of it unless the limit cut it); ``reached_limit``
        is true once text has been cut, and then every later feed accepts
        nothing.
        """
        if self._exhausted:
            return "", True
        if not text:
            return "", False
        text = _scrub(text)
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel()
        size = _utf8_len(text)
        limit = self._limit
        if limit is None or self._committed + self._tail_bytes + size <= limit:
            self._append(ch, text, size, None)
            return text, False

        budget = limit - self._committed
        for other in self._channels.values():
            if other is not ch:
                budget -= self._tail_tokens(other)
        joined = ch.tail + text
        tokens = self._encode(joined)
        if len(tokens) <= budget:
            self._append(ch, text, size, len(tokens))
            return text, False
        accepted, count = self._cut(ch.tail, text, tokens, budget)
        self._append(ch, accepted, _utf8_len(accepted), count)
        self._exhausted = True
        return accepted, True

    def _tail_tokens(self, ch: _Channel) -> int:
        if ch.tail_tokens is None:
            ch.tail_tokens = len(self._encode(ch.tail))
        return ch.tail_tokens

    def _append(self, ch: _Channel, text: str, size: int, tail_tokens: int | None) -> None:
        ch.tail += text
        ch.tail_bytes += size
        self._tail_bytes += size
        ch.tail_tokens = tail_tokens
        if len(ch.tail) >= ch.next_commit:
            self._commit(ch)

    def _commit(self, ch: _Channel) -> None:
        """Move the stable head of the channel's tail into its committed count."""
        tail = ch.tail
        starts = [m.start() for m in self._pattern.finditer(tail)]
        cut = starts[-_UNSTABLE_PIECES] if len(starts) > _UNSTABLE_PIECES else 0
        if len(tail) - cut > _MAX_UNSTABLE_CHARS:
            self._force_commit(ch)
            return
        if cut:
            total = self._tail_tokens(ch)
            kept = tail[cut:]
            kept_tokens = len(self._encode(kept))
            self._set_tail(ch, kept, kept_tokens, total - kept_tokens)
        ch.next_commit = max(_COMMIT_CHARS, 2 * len(ch.tail))

    def _force_commit(self, ch: _Channel) -> None:
        tokens = self._encode(ch.tail)
        data = ch.tail.encode("utf-8")
        keep_from = len(data) - _FORCED_KEEP_BYTES
        offset = 0
        k = 0
        for piece in self._encoding.decode_tokens_bytes(tokens):
            if offset + len(piece) > keep_from:
                break
            offset += len(piece)
            k += 1
        # Step back off a split UTF-8 sequence (continuation byte at offset).
        while k and offset < len(data) and data[offset] & 0xC0 == 0x80:
            k -= 1
            offset -= len(self._encoding.decode_single_token_bytes(tokens[k]))
        if k:
            kept = data[offset:].decode("utf-8")
            self._set_tail(ch, kept, len(tokens) - k, k)
        ch.next_commit = _MAX_UNSTABLE_CHARS

    def _set_tail(self, ch: _Channel, kept: str, kept_tokens: int, committed: int) -> None:
        size = _utf8_len(kept)
        self._tail_bytes += size - ch.tail_bytes
        self._committed += committed
        ch.committed += committed
        ch.tail, ch.tail_bytes, ch.tail_tokens = kept, size, kept_tokens

    def _cut(self, tail: str, text: str, tokens: list[int], budget: int) -> tuple[str, int]:
        """The longest prefix of *text* ending on a token boundary of
        ``tail + text`` with ``tokens(tail + prefix) <= budget``, and that count."""
        encode = self._encode
        data = (tail + text).encode("utf-8")
        ends = [0]
        for piece in self._encoding.decode_tokens_bytes(tokens):
            ends.append(ends[-1] + len(piece))

        def candidate(j: int) -> tuple[str, int]:
            # The first j tokens, minus any split trailing character.
            chars = len(data[: ends[j]].decode("utf-8", errors="ignore"))
            prefix = text[: max(0, chars - len(tail))]
            return prefix, len(encode(tail + prefix))

        j = min(budget, len(tokens) - 1)
        best = candidate(j)
        while best[1] > budget and j > 0:
            j -= 1
            best = candidate(j)
        # A prefix can re-encode into fewer tokens than it was cut from; take
        # more while it still fits.
        while j + 1 < len(tokens):
            grown = candidate(j + 1)
            if grown[1] > budget:
                break
            j, best = j + 1, grown
        return best
