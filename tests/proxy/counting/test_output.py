"""Output counting (aigw.proxy.counting.output): the streamed count equals
tiktoken's one-shot count of the same text, and the cut falls within the limit."""

from __future__ import annotations

import itertools
import time

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from aigw.proxy.counting import Encoders, OutputCounter, output
from tests.proxy.counting.shared import encoders_fixture  # noqa: F401  (the fixture encoders)
from tests.proxy.counting.support import n_tokens

# Characters that stress pre-token boundaries: contractions, digit runs, case
# changes, whitespace runs before words, punctuation with newlines and "/",
# combining marks, multi-byte characters split across tokens.
TRICKY = st.lists(
    st.sampled_from(
        [
            " ",
            "  ",
            "\n",
            "\r\n",
            "\t",
            "'",
            "s",
            "t",
            "ll",
            "d",
            "A",
            "B",
            "a",
            "b",
            "x",
            "1",
            "2",
            "3",
            ".",
            "/",
            "-",
            "é",
            "\u0301",
            "日",
            "😀",
            "<|endoftext|>",
            "The",
            " quick",
        ]
    ),
    max_size=200,
).map("".join) | st.text(max_size=200)


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=300, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_streamed_count_equals_one_shot_count(
    encoders: Encoders, text: str, cuts: list[int], name: str
) -> None:
    encoding = encoders.get(name)
    counter = OutputCounter(encoding)
    relayed = []
    for chunk in chunked(text, cuts):
        accepted, reached = counter.feed(chunk)
        assert (accepted, reached) == (chunk, False)
        relayed.append(accepted)
    assert counter.count == n_tokens(encoding, "".join(relayed))


@settings(max_examples=300, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    limit=st.integers(min_value=1, max_value=120),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_limit_cuts_within_the_limit(
    encoders: Encoders, text: str, cuts: list[int], limit: int, name: str
) -> None:
    encoding = encoders.get(name)
    counter = OutputCounter(encoding, limit)
    relayed = ""
    reached = False
    for chunk in chunked(text, cuts):
        accepted, reached = counter.feed(chunk)
        relayed += accepted  # may start with text held back from an earlier chunk
        if reached:
            break
    reached = counter.close() or reached
    count = n_tokens(encoding, relayed)
    assert counter.count == count <= limit
    assert text.startswith(relayed)
    if reached:
        assert counter.exhausted
        assert counter.feed("more text") == ("", True)
        # The cut gave up at most the tokens of one character split across tokens.
        assert count >= limit - 4
    else:
        assert relayed == text


def test_cut_at_exactly_the_limit(o200k: tiktoken.Encoding) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 40
    for chunk_size in (1, 3, 17, 1000):
        counter = OutputCounter(o200k, 50)
        relayed = ""
        for start in range(0, len(text), chunk_size):
            accepted, reached = counter.feed(text[start : start + chunk_size])
            relayed += accepted
            if reached:
                break
        assert reached
        assert counter.count == n_tokens(o200k, relayed) == 50
        assert relayed == o200k.decode(o200k.encode_ordinary(text)[:50])


def test_channels_are_counted_apart_against_one_limit(o200k: tiktoken.Encoding) -> None:
    counter = OutputCounter(o200k, 30)
    content = "Let me look that up."
    args = '{"location": "Paris, France", "unit": "celsius", "days": 14, "verbose": true}'
    assert counter.feed(content) == (content, False)
    kept = ""
    for start in range(0, len(args), 4):
        accepted, reached = counter.feed(args[start : start + 4], ("tool", 0))
        kept += accepted
        if reached:
            break
    assert counter.close() or reached
    assert counter.channel_count("content") == n_tokens(o200k, content)
    assert counter.channel_count(("tool", 0)) == n_tokens(o200k, kept)
    assert counter.count == n_tokens(o200k, content) + n_tokens(o200k, kept) == 30


def test_unlimited_and_invalid_limits(o200k: tiktoken.Encoding) -> None:
    text = "word " * 1000
    for limit in (None, 0):
        counter = OutputCounter(o200k, limit)
        assert counter.feed(text) == (text, False)
        assert counter.count == n_tokens(o200k, text)
    with pytest.raises(ValueError):
        OutputCounter(o200k, -1)


def test_empty_and_special_and_broken_text(o200k: tiktoken.Encoding) -> None:
    counter = OutputCounter(o200k, 100)
    assert counter.feed("") == ("", False)
    assert counter.feed("<|endoftext|>") == ("<|endoftext|>", False)
    assert counter.count == n_tokens(o200k, "<|endoftext|>")
    accepted, _ = counter.feed("a\ud800b")  # a lone surrogate from a JSON escape
    assert accepted == "a\ufffdb"
    assert counter.count == n_tokens(o200k, "<|endoftext|>a\ufffdb")


def _feed_times(counter: OutputCounter, text: str, step: int) -> list[float]:
    times = []
    for start in range(0, len(text), step):
        started = time.perf_counter()
        counter.feed(text[start : start + step])
        times.append(time.perf_counter() - started)
    return times


@pytest.mark.timing
def test_cost_per_chunk_does_not_grow_with_the_output(o200k: tiktoken.Encoding) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 4000
    counter = OutputCounter(o200k, 10**9)  # a limit far away: the cheap path
    times = _feed_times(counter, text, 4)
    tenth = len(times) // 10
    # Re-encoding everything would make late chunks ~10x dearer than early ones.
    assert sum(times[-tenth:]) < 3 * sum(times[:tenth])
    assert counter.count == n_tokens(o200k, text)


@pytest.mark.timing
def test_a_giant_pretoken_stays_cheap_and_counted(o200k: tiktoken.Encoding) -> None:
    # A model stuck repeating one character: a single regex pre-token.
    text = "." * 150_000
    counter = OutputCounter(o200k)
    times = _feed_times(counter, text, 5)
    tenth = len(times) // 10
    assert sum(times[-tenth:]) < 3 * sum(times[:tenth])
    assert counter.count == n_tokens(o200k, text)
    limited = OutputCounter(o200k, 1000)
    relayed = ""
    for start in range(0, len(text), 64):  # about one token per event, as models send
        accepted, reached = limited.feed(text[start : start + 64])
        relayed += accepted
        if reached:
            break
    assert limited.count == n_tokens(o200k, relayed) == 1000


@settings(max_examples=200, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=80),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_stable_boundaries_hold_when_committing_constantly(
    encoders: Encoders, text: str, cuts: list[int], name: str
) -> None:
    # Re-split the tail every 8 characters so nearly every chunk boundary is
    # tested as a commit point.
    encoding = encoders.get(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(output, "_COMMIT_CHARS", 8)
        counter = OutputCounter(encoding)
        for chunk in chunked(text, cuts):
            counter.feed(chunk)
    assert counter.count == n_tokens(encoding, text)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
@pytest.mark.parametrize(
    "text",
    [
        "." * 9000,
        " " * 9000 + "x",
        "ab" * 4000,
        "日本" * 3000,
        "😀" * 2000,
        "".join(chr(ord("a") + (i * 7919) % 26) for i in range(9000)),  # one long "word"
    ],
    ids=["dots", "spaces", "ab", "cjk", "emoji", "word"],
)
@pytest.mark.parametrize("step", [1, 7, 64])
def test_giant_pretokens_are_counted_exactly(
    encoders: Encoders, name: str, text: str, step: int
) -> None:
    # Pre-tokens longer than _MAX_UNSTABLE_CHARS are committed at token
    # boundaries kept 2 longest-tokens back from the end; for the runs models
    # degenerate into, that matches one-shot encoding.
    encoding = encoders.get(name)
    counter = OutputCounter(encoding)
    for start in range(0, len(text), step):
        counter.feed(text[start : start + step])
    assert counter.count == n_tokens(encoding, text)


class _CountingEncoding:
    """A real encoding that counts its ``encode_ordinary`` calls."""

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self._encoding = encoding
        self._pat_str = encoding._pat_str
        self.encodes = 0

    def encode_ordinary(self, text: str) -> list[int]:
        self.encodes += 1
        return self._encoding.encode_ordinary(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self._encoding, name)


def test_a_count_read_for_the_record_costs_one_encode(o200k: tiktoken.Encoding) -> None:
    # Issue 15: within the limit in bytes nothing is counted per chunk, and the
    # count read once at the end (for the usage record) is one encode of the text.
    encoding = _CountingEncoding(o200k)
    counter = OutputCounter(encoding, 4096)  # type: ignore[arg-type]
    chunks = [f" word{i}, and another  one." for i in range(20)]
    for chunk in chunks:
        assert counter.feed(chunk, "content") == (chunk, False)
    assert encoding.encodes == 0
    assert counter.count == len(o200k.encode_ordinary("".join(chunks)))
    assert encoding.encodes == 1
    assert counter.close() is False
    assert encoding.encodes == 1


@settings(max_examples=300, deadline=None)
@given(
    text=TRICKY,
    cuts=st.lists(st.integers(min_value=0), max_size=60),
    reads=st.lists(st.booleans(), max_size=60),
    limit=st.integers(min_value=1, max_value=120),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
def test_counts_read_mid_stream_leave_the_cut_exact(
    encoders: Encoders, text: str, cuts: list[int], reads: list[bool], limit: int, name: str
) -> None:
    # Reading the count between chunks (a record, a usage chunk) settles the tail;
    # what it may still grow by is measured only when the next text arrives.
    encoding = encoders.get(name)
    counter = OutputCounter(encoding, limit)
    relayed = ""
    reached = False
    for i, chunk in enumerate(chunked(text, cuts)):
        if i < len(reads) and reads[i]:
            assert counter.count == n_tokens(encoding, relayed)
            assert counter.room is not None
        accepted, reached = counter.feed(chunk)
        relayed += accepted
        if reached:
            break
    reached = counter.close() or reached
    count = n_tokens(encoding, relayed)
    assert counter.count == count <= limit
    assert text.startswith(relayed)
    if reached:
        assert count >= limit - 4
    else:
        assert relayed == text
