"""Counting generated text as it streams, and cutting it at a token limit."""

from __future__ import annotations

import bisect
import functools
import itertools
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
# Far from the limit, text is only collected; it is counted once this much is
# pending (so an unlimited answer's memory stays bounded) or when asked.
_SETTLE_BYTES = 8 * 1024
# Near the limit: at most this many characters past the token-boundary cut are
# tried one by one for a longer prefix that still fits, and at most this many
# are held back waiting for text that could merge them into fewer tokens.
_MAX_SCAN_CHARS = 512
_MAX_HELD_CHARS = 1024


class _Channel:
    __slots__ = (
        "committed",
        "held",
        "next_commit",
        "parts",
        "parts_bytes",
        "slack",
        "tail",
        "tail_bytes",
        "tail_tokens",
    )

    def __init__(self) -> None:
        self.committed = 0  # exact tokens of the text before `tail`
        self.tail = ""  # accepted text after the last stable pre-token boundary
        self.tail_bytes = 0  # UTF-8 length of `tail`: an upper bound of its tokens
        self.tail_tokens: int | None = 0  # exact tokens of `tail`, None when stale
        self.parts: list[str] = []  # accepted text not yet joined into `tail`
        self.parts_bytes = 0
        self.held = ""  # text past the limit kept back: later text may make it fit
        # Tokens that appending text can add to the counted text itself: appending
        # re-splits its last pre-tokens ("  " is one token, "  1" three), so the
        # count can grow by more than the appended bytes. 0 while the bound of the
        # channel's end is its bytes, not its tokens; None while not measured yet
        # (measured when text is next fed: a count read only for the record never is).
        self.slack: int | None = 0
        self.next_commit = _COMMIT_CHARS


@functools.lru_cache(maxsize=8)
def _piece_pattern(pat_str: str) -> regex.Pattern[str]:
    return regex.compile(pat_str)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _scrub(text: str) -> str:
    """*text* with lone surrogates replaced, as tiktoken does before encoding."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


class OutputCounter:
    """Counts generated tokens as they stream, and cuts at a limit.

    Text arrives in *channels*: the message content, the reasoning text, the
    arguments of each tool call, which the model generates as separate texts.
    The count of a channel is ``len(encoding.encode_ordinary(all text accepted
    on it))``; :attr:`count` is the sum over channels plus the fixed tokens
    added with :meth:`charge` (a tool call's name and framing).

    The cut: :meth:`feed` relays the longest whole-character prefix of the
    text that keeps :attr:`count` within ``limit`` (``None`` or 0: unlimited).
    Token counts are not monotonic in the prefix (``"a  -"`` is 3 tokens in
    o200k_base, ``"a  ---------"`` 4, ``"a  ----------"`` 3 again), so text
    that does not fit yet but could once more arrives is *held back*: not
    relayed, not refused, until the next text on the channel decides it. The
    text ends (:attr:`exhausted`) once no longer prefix can fit, when another
    channel starts, or at :meth:`close`.

    Cost: a token is never shorter than one byte, so while the UTF-8 bytes
    accepted stay within the limit no cut is possible and a delta is only
    appended to a list; it is counted once, when :attr:`count` is read (or
    every 8 KiB). Near the limit a channel keeps an exact count up to a
    stable pre-token boundary (BPE never merges across the pre-tokens the
    encoding's regex splits text into, and appending can only re-split the
    last ones) and re-encodes only the short tail after it. Two bounds keep
    pathological text cheap, at the price of exactness only for it: a prefix
    is searched at most 512 characters past the token-boundary cut, and at
    most 1024 characters are held back; a single pre-token longer than 1024
    characters (a model stuck repeating one punctuation character) is
    committed at token boundaries.

    Lone surrogates in deltas are replaced with U+FFFD (as tiktoken does);
    the accepted text returned is the scrubbed text. Not thread-safe.
    """

    __slots__ = (
        "_bound",
        "_channels",
        "_encode",
        "_encoding",
        "_exhausted",
        "_fixed",
        "_holding",
        "_limit",
        "_pattern",
    )

    def __init__(self, encoding: tiktoken.Encoding, limit: int | None = None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0 (0 or None: unlimited)")
        self._encoding = encoding
        self._encode = encoding.encode_ordinary
        self._pattern = _piece_pattern(encoding._pat_str)
        self._limit = limit or None
        self._channels: dict[Hashable, _Channel] = {}
        self._fixed = 0  # tokens charged without text
        self._bound = 0  # an upper bound of count: exact tokens, or bytes where not counted
        self._holding: _Channel | None = None
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
        unlimited = self._limit is None
        self._limit = value or None
        if unlimited and self._limit is not None:  # no slack was kept while unlimited
            self._exact_total()
            for ch in self._channels.values():
                self._stale_slack(ch)

    @property
    def exhausted(self) -> bool:
        """Whether text was cut: the response must end here (``length``)."""
        return self._exhausted

    @property
    def holding(self) -> bool:
        """Whether text past the limit is held back, waiting for more."""
        return self._holding is not None

    @property
    def room(self) -> int | None:
        """Bytes of text :meth:`feed` takes now with no cut possible (a token is at
        least one byte), on any channel; ``None``: unlimited."""
        if self._limit is None:
            return None
        if self._holding is not None or self._exhausted:
            return 0
        slack = max((self._slack(ch) for ch in self._channels.values()), default=0)
        return max(0, self._limit - self._bound - slack)

    @property
    def count(self) -> int:
        """Exact tokens accepted so far, over all channels."""
        return self._exact_total()

    def channel_count(self, channel: Hashable = "content") -> int:
        """Exact tokens accepted so far on *channel*."""
        ch = self._channels.get(channel)
        if ch is None:
            return 0
        self._settle(ch)
        assert ch.tail_tokens is not None
        return ch.committed + ch.tail_tokens

    def feed(self, text: str, channel: Hashable = "content") -> tuple[str, bool]:
        """Count *text* arriving on *channel*.

        Returns ``(relay, ended)``: ``relay`` is the text to relay now on that
        channel (usually *text*; a prefix of it at the cut; text held back by
        an earlier call and now known to fit, followed by what fits of *text*),
        and ``ended`` is true once the text has been cut, after which every
        feed relays nothing.
        """
        if self._exhausted:
            return "", True
        if not text:
            return "", False
        if text.isascii():
            size = len(text)
        else:
            try:
                size = len(text.encode("utf-8"))
            except UnicodeEncodeError:
                text = _scrub(text)
                size = len(text.encode("utf-8"))
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel()
        holding = self._holding
        if holding is not None and holding is not ch:
            self._end_held()  # the held text's channel is over: it did not fit
            return "", True
        if holding is None:
            limit = self._limit
            slack = 0 if limit is None else self._slack(ch)
            if limit is None or self._bound + slack + size <= limit:
                ch.parts.append(text)
                ch.parts_bytes += size
                self._bound += slack + size
                ch.slack = 0
                if ch.parts_bytes >= _SETTLE_BYTES:
                    self._settle(ch)
                    self._exact_total()
                return text, False
        return self._feed_near(ch, text, size)

    def charge(self, tokens: int) -> bool:
        """Add *tokens* generated without relayable text (a tool call's name and
        framing). Returns whether they fit; if not, the output ends here."""
        if self._exhausted:
            return False
        if self._holding is not None:
            self._end_held()
            return False
        limit = self._limit
        if limit is None or self._bound + tokens <= limit or self._exact_total() + tokens <= limit:
            self._fixed += tokens
            self._bound += tokens
            return True
        self._exhausted = True
        return False

    def close(self) -> bool:
        """The output ended (the upstream finished the choice). Returns whether
        text was held back past the limit: then the output was cut there."""
        if self._holding is None:
            return False
        self._end_held()
        return True

    def _end_held(self) -> None:
        assert self._holding is not None
        self._holding.held = ""
        self._holding = None
        self._exhausted = True

    def _settle(self, ch: _Channel) -> None:
        """Join the channel's collected parts into its tail and count the tail
        (one encode; the tail is re-split only once it passes 8 KiB)."""
        if ch.parts:
            ch.tail += "".join(ch.parts)
            ch.tail_bytes += ch.parts_bytes
            ch.tail_tokens = None
            ch.parts.clear()
            ch.parts_bytes = 0
        if ch.tail_tokens is None:
            ch.tail_tokens = len(self._encode(ch.tail))
            self._stale_slack(ch)
        if ch.tail_bytes >= _SETTLE_BYTES:
            self._commit(ch)

    def _stale_slack(self, ch: _Channel) -> None:
        """The exactly counted tail changed: its slack is measured when next needed
        (:meth:`_slack`), so a count read only for the record costs one encode."""
        ch.slack = None if self._limit is not None and ch.tail else 0

    def _slack(self, ch: _Channel) -> int:
        """``ch.slack`` for the exactly counted tail: its last pre-tokens may be
        re-split by what is appended, so they are bounded by their bytes."""
        slack = ch.slack
        if slack is not None:
            return slack
        tail = ch.tail
        if self._limit is None or not tail:
            slack = 0
        else:
            starts = [m.start() for m in self._pattern.finditer(tail)]
            suffix = tail[starts[-_UNSTABLE_PIECES] :] if len(starts) > _UNSTABLE_PIECES else tail
            slack = max(0, _utf8_len(suffix) - len(self._encode(suffix)))
        ch.slack = slack
        return slack

    def _exact_total(self) -> int:
        total = self._fixed
        for ch in self._channels.values():
            self._settle(ch)
            assert ch.tail_tokens is not None
            total += ch.committed + ch.tail_tokens
        self._bound = total
        return total

    def _feed_near(self, ch: _Channel, text: str, size: int) -> tuple[str, bool]:
        limit = self._limit
        assert limit is not None
        total = self._exact_total()
        slack = self._slack(ch)
        if not ch.held and total + slack + size <= limit:
            ch.parts.append(text)
            ch.parts_bytes += size
            self._bound += slack + size
            ch.slack = 0
            return text, False
        if len(ch.tail) >= ch.next_commit:  # near the limit the tail is kept short
            self._commit(ch)
        assert ch.tail_tokens is not None
        others = total - ch.committed - ch.tail_tokens
        budget = limit - others - ch.committed  # tokens for the tail and what is added
        candidate = ch.held + text
        fit, count, extendable = self._longest_fit(ch.tail, candidate, budget)
        relay = candidate[:fit]
        ch.held = candidate[fit:]
        ch.tail += relay
        ch.tail_bytes += _utf8_len(relay)
        ch.tail_tokens = count
        self._stale_slack(ch)
        self._bound = others + ch.committed + count
        if len(ch.tail) >= ch.next_commit:
            self._commit(ch)
        if not ch.held:
            self._holding = None
            return relay, False
        if extendable and len(ch.held) <= _MAX_HELD_CHARS:
            self._holding = ch
            return relay, False
        self._holding = ch
        self._end_held()
        return relay, True

    def _longest_fit(self, tail: str, candidate: str, budget: int) -> tuple[int, int, bool]:
        """``(k, tokens(tail + candidate[:k]), extendable)`` for the largest *k* with
        at most *budget* tokens; ``extendable``: whether text appended to the whole
        of ``tail + candidate`` could still fit."""
        encode = self._encode
        full = tail + candidate
        tokens = encode(full)
        if len(tokens) <= budget:
            return len(candidate), len(tokens), True
        base = len(tail)
        # Pre-tokens of `full` and the tokens before each (BPE stays inside them).
        starts: list[int] = []
        piece_bytes: list[int] = []
        offset = 0
        for match in self._pattern.finditer(full):
            starts.append(match.start())
            piece_bytes.append(offset)
            offset += _utf8_len(match.group())
        token_ends = list(
            itertools.accumulate(len(b) for b in self._encoding.decode_tokens_bytes(tokens))
        )
        before = [bisect.bisect_right(token_ends, start) for start in piece_bytes]

        def split(end: int) -> int:
            # A pre-token start that stays one in every prefix ending at `end`.
            return max(0, bisect.bisect_right(starts, end - 1) - 1 - _UNSTABLE_PIECES)

        def exact(end: int) -> int:
            index = split(end)
            return before[index] + len(encode(full[starts[index] : end]))

        def lower_bound(end: int) -> int:
            return before[split(end)]

        data = full.encode("utf-8")
        j = min(budget, len(tokens))
        while True:
            end = base
            if j > 0:
                end = max(base, len(data[: token_ends[j - 1]].decode("utf-8", errors="ignore")))
            count = exact(end) if end > 0 else 0
            if count <= budget or end == base:
                break
            j -= 1
        if count > budget:  # the accepted text alone is over: nothing more fits
            return 0, count, False
        best, best_count = end, count
        for end in range(best + 1, min(len(full), best + 1 + _MAX_SCAN_CHARS)):
            if lower_bound(end) > budget:
                break
            count = exact(end)
            if count <= budget:
                best, best_count = end, count
        # Text appended to `full` keeps all but its last pre-tokens (and adds one).
        stable = max(0, len(starts) - 1 - _UNSTABLE_PIECES)
        extendable = before[stable] + 1 <= budget
        return best - base, best_count, extendable

    def _commit(self, ch: _Channel) -> None:
        """Move the stable head of the channel's tail into its committed count."""
        tail = ch.tail
        starts = [m.start() for m in self._pattern.finditer(tail)]
        cut = starts[-_UNSTABLE_PIECES] if len(starts) > _UNSTABLE_PIECES else 0
        if len(tail) - cut > _MAX_UNSTABLE_CHARS:
            self._force_commit(ch)
            return
        if cut:
            if ch.tail_tokens is None:
                ch.tail_tokens = len(self._encode(tail))
            total = ch.tail_tokens
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
        else:
            ch.tail_tokens = len(tokens)
        ch.next_commit = _MAX_UNSTABLE_CHARS

    def _set_tail(self, ch: _Channel, kept: str, kept_tokens: int, committed: int) -> None:
        ch.committed += committed
        ch.tail, ch.tail_bytes, ch.tail_tokens = kept, _utf8_len(kept), kept_tokens
        self._stale_slack(ch)
