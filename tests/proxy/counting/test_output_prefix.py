"""The cut relays the longest whole-character prefix that fits (issue 11, item 5).

The expectation is computed by brute force with tiktoken's own encodings (built
by tiktoken in ``tests.fakes.billing``, not by aigw): the largest ``k`` with
``len(encode(text[:k])) <= L``. Token counts are not monotonic in the prefix,
so the counter must hold back text that could still fit once more arrives.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from aigw.proxy.counting import Encoders, OutputCounter
from tests.fakes.billing import load_encoding
from tests.proxy.counting.shared import encoders_fixture  # noqa: F401  (the fixture encoders)

PIECES = st.sampled_from(
    [" ", "  ", "\n", "\t", "'", "s", "ll", "A", "a", "b", "x", "1", "2", "0", ".", "-", "--",
     "/", "é", "\u0301", "日", "😀", "The", " quick", "hel", "lo", "un", "believ", "able"]
)  # fmt: skip
TEXT = st.lists(PIECES, max_size=80).map("".join) | st.text(max_size=120)


def longest_fitting_prefix(name: str, text: str, limit: int) -> str:
    encoding = load_encoding(name)
    for k in range(len(text), -1, -1):
        if len(encoding.encode_ordinary(text[:k])) <= limit:
            return text[:k]
    raise AssertionError("the empty prefix always fits")


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


def relay(counter: OutputCounter, chunks: list[str], channel: object = "content") -> str:
    relayed = ""
    for chunk in chunks:
        accepted, ended = counter.feed(chunk, channel)
        relayed += accepted
        if ended:
            break
    counter.close()
    return relayed


@settings(max_examples=400, deadline=None)
@given(
    text=TEXT,
    cuts=st.lists(st.integers(min_value=0), max_size=40),
    limit=st.integers(min_value=1, max_value=40),
    name=st.sampled_from(["cl100k_base", "o200k_base"]),
)
@example(text="a  -------------", cuts=[1], limit=3, name="o200k_base")
@example(text="  '  1  1 ", cuts=[1, 5, 9], limit=7, name="o200k_base")
def test_the_relayed_text_is_the_longest_prefix_within_the_limit(
    encoders: Encoders, text: str, cuts: list[int], limit: int, name: str
) -> None:
    counter = OutputCounter(encoders.get(name), limit)
    relayed = relay(counter, chunked(text, cuts))
    expected = longest_fitting_prefix(name, text, limit)
    assert relayed == expected
    assert len(load_encoding(name).encode_ordinary(relayed)) == counter.count <= limit


def test_the_issue_example(encoders: Encoders) -> None:
    # gpt-4o (o200k_base), L = 3, deltas "a" then "  -------------": "a  " (2 tokens)
    # was relayed; "a  ------------" is 3 tokens (a, " ", " ------------").
    encoding = load_encoding("o200k_base")
    counter = OutputCounter(encoders.get("o200k_base"), 3)
    assert counter.feed("a") == ("a", False)
    relayed = "a" + counter.feed("  -------------")[0]
    assert counter.close()
    assert relayed == "a  ------------"
    assert len(encoding.encode_ordinary(relayed)) == 3


@pytest.mark.parametrize("later_limit", [False, True])
def test_text_that_re_splits_the_counted_end_never_passes_the_limit(
    encoders: Encoders, later_limit: bool
) -> None:
    # Found by the property test above: "  '  " ends in "  ", one token (256) in
    # o200k_base, but "  '  1  1" splits that run into " ", " " before the digit,
    # so four more bytes ("1  1") add five tokens. A byte bound laid on top of an
    # exact count (count + bytes appended) relayed 8 tokens past a limit of 7.
    # later_limit: the limit arrives after the text, as a budget reservation does.
    encoding = load_encoding("o200k_base")
    counter = OutputCounter(encoders.get("o200k_base"), None if later_limit else 7)
    relayed = ""
    for i, delta in enumerate([" ", " '  ", "1  1", " "]):
        if later_limit and i == 1:
            assert counter.count == 1
            counter.limit = 7
        accepted, ended = counter.feed(delta)
        relayed += accepted
        if ended:
            break
    counter.close()
    assert len(encoding.encode_ordinary("  '  1  1")) == 8
    assert relayed == longest_fitting_prefix("o200k_base", "  '  1  1 ", 7) == "  '  1  "
    assert len(encoding.encode_ordinary(relayed)) == counter.count <= 7


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_held_text_is_released_when_the_next_delta_makes_it_fit(
    encoders: Encoders, name: str
) -> None:
    encoding = load_encoding(name)

    def tokens(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    # A text with a prefix that is longer in tokens than the whole (found by
    # brute force): that prefix alone does not fit, the whole does.
    text, k = next(
        (text, k)
        for text in ("a  " + "-" * n for n in range(1, 40))
        for k in range(1, len(text))
        if tokens(text[:k]) > tokens(text)
    )
    limit = tokens(text)
    counter = OutputCounter(encoders.get(name), limit)
    first, ended = counter.feed(text[:k])
    assert not ended and counter.holding and len(first) < k
    second, ended = counter.feed(text[k:])
    assert not ended and first + second == text
    assert not counter.close()


@settings(max_examples=150, deadline=None)
@given(
    reasoning=TEXT,
    content=TEXT,
    cuts=st.lists(st.integers(min_value=0), max_size=20),
    limit=st.integers(min_value=1, max_value=40),
)
def test_channels_in_sequence_cut_at_the_longest_prefix(
    encoders: Encoders, reasoning: str, content: str, cuts: list[int], limit: int
) -> None:
    # Reasoning first, then content (as a model generates them): the count is the
    # sum of the two texts' counts, and the cut is the longest prefix of the
    # sequence that fits.
    encoding = load_encoding("o200k_base")

    def tokens(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    counter = OutputCounter(encoders.get("o200k_base"), limit)
    relayed_reasoning = ""
    relayed_content = ""
    ended = False
    for chunk in chunked(reasoning, cuts):
        accepted, ended = counter.feed(chunk, "reasoning")
        relayed_reasoning += accepted
        if ended:
            break
    if not ended:
        for chunk in chunked(content, cuts):
            accepted, ended = counter.feed(chunk, "content")
            relayed_content += accepted
            if ended:
                break
    counter.close()
    if tokens(reasoning) <= limit:
        expected_reasoning = reasoning
        expected_content = longest_fitting_prefix("o200k_base", content, limit - tokens(reasoning))
    else:
        expected_reasoning = longest_fitting_prefix("o200k_base", reasoning, limit)
        expected_content = ""
    assert (relayed_reasoning, relayed_content) == (expected_reasoning, expected_content)
    assert counter.count == tokens(relayed_reasoning) + tokens(relayed_content) <= limit
