"""What passes as a plain content event (relayed unparsed, aigw.proxy.plain) and
what must go through the full relay: only an event that parses to the learnt
chunk with other text, and only while no cut is possible."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import tiktoken

from aigw.proxy.accounting import Output
from aigw.proxy.plain import PlainEvents

BASE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def event(delta: dict[str, Any], **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
    return b"data: " + orjson.dumps({**BASE, "choices": [choice], **extra}) + b"\n\n"


def learnt(o200k: tiktoken.Encoding, limit: int | None) -> PlainEvents:
    model = event({"content": "Hello"})
    state = Output(o200k, limit).choice(0)
    plain = PlainEvents.learn(orjson.loads(model[6:]), model, state, 1 << 20)
    assert plain is not None
    return plain


def test_plain_events_are_taken_and_counted_exactly(o200k: tiktoken.Encoding) -> None:
    plain = learnt(o200k, 1000)
    texts = [" world", ",", " Größe", " 東京", " and", " more"]
    buffer = b"".join(event({"content": text}) for text in texts)
    assert plain.take(buffer, 0) == len(buffer)
    plain.flush()
    assert plain.state.counter.count == len(o200k.encode_ordinary("".join(texts)))


@pytest.mark.parametrize(
    "other",
    [
        event({"content": 'say "hi"'}),  # an escape: the upstream's spelling is its own
        event({"content": "a\nb"}),  # \n escape
        event({"content": "x", "refusal": "y"}),  # another field
        event({"content": "x"}, usage={"prompt_tokens": 1}),
        event({"content": "x"}).replace(b'"index":0', b'"index":1'),  # another choice
        event({"content": "x"}).replace(b"\n\n", b"\r\n\r\n"),
        event({"content": "x"}).replace(b'"x"', b'"\xff"'),  # not UTF-8
        event({"content": "x"}).replace(b'"x"', b'"\x01"'),  # a raw control character
        b"data: [DONE]\n\n",
    ],
)
def test_anything_else_goes_through_the_full_relay(o200k: tiktoken.Encoding, other: bytes) -> None:
    plain = learnt(o200k, 1000)
    first = event({"content": " one"})
    assert plain.take(first + other + event({"content": " two"}), 0) == len(first)


def test_no_event_passes_once_a_cut_is_possible(o200k: tiktoken.Encoding) -> None:
    plain = learnt(o200k, 6)  # "Hello" (5 bytes) was not fed: 6 bytes of room
    fits, over = event({"content": " abcd"}), event({"content": " e"})
    assert plain.take(fits + over, 0) == len(fits)  # 5 bytes; the next 2 could pass 6
    plain.flush()
    assert plain.state.counter.count == len(o200k.encode_ordinary(" abcd"))


def test_openai_padding_may_differ_in_every_event(o200k: tiktoken.Encoding) -> None:
    """OpenAI pads each chunk with a random ``obfuscation`` string (its last member)."""
    model = event({"content": "Hello"}, usage=None, obfuscation="Ab3")
    state = Output(o200k, 1000).choice(0)
    plain = PlainEvents.learn(orjson.loads(model[6:]), model, state, 1 << 20)
    assert plain is not None
    padded = [
        event({"content": t}, usage=None, obfuscation=p) for t, p in ((" a", ""), (" b", "xYz0123"))
    ]
    escaped = event({"content": " c"}, usage=None, obfuscation='q"')
    buffer = b"".join(padded)
    assert plain.take(buffer + escaped, 0) == len(buffer)
    plain.flush()
    assert plain.state.counter.count == len(o200k.encode_ordinary(" a b"))


# A run of plain events in one read is taken at once (PlainEvents._take_run); each
# case below puts what must stop it deep inside a long run, where only that path
# looks, and expects the same stop as event by event.
RUN = [f" w{i}" for i in range(40)]


def _run_with(other: bytes, at: int) -> tuple[bytes, int]:
    before = b"".join(event({"content": text}) for text in RUN[:at])
    after = b"".join(event({"content": text}) for text in RUN[at:])
    return before + other + after, len(before)


@pytest.mark.parametrize(
    "other",
    [
        event({"content": 'say "hi"'}),
        event({"content": "a\\b"}),
        event({"content": "x"}).replace(b'"x"', b'"\x01"'),
        event({"content": "x"}).replace(b'"x"', b'"\xff"'),
        event({"content": "x", "refusal": "y"}),
        event({"content": "y" * 300}),  # longer than the largest event allowed below
    ],
)
def test_a_run_stops_where_one_event_would(o200k: tiktoken.Encoding, other: bytes) -> None:
    model = event({"content": "Hello"})
    plain = PlainEvents.learn(
        orjson.loads(model[6:]), model, Output(o200k, 1000).choice(0), len(model) + 100
    )
    assert plain is not None
    buffer, stop = _run_with(other, 31)
    assert plain.take(buffer, 0) == stop
    plain.flush()
    assert plain.state.counter.count == len(o200k.encode_ordinary("".join(RUN[:31])))


def test_a_run_stops_at_a_character_split_between_two_events(o200k: tiktoken.Encoding) -> None:
    """Each text must be UTF-8 on its own, not only the texts joined."""
    plain = learnt(o200k, 1000)
    euro = "€".encode()  # three bytes, split over two events
    halves = event({"content": "x"}).replace(b'"x"', b'"' + euro[:1] + b'"') + event(
        {"content": "x"}
    ).replace(b'"x"', b'"' + euro[1:] + b'"')
    buffer, stop = _run_with(halves, 25)
    assert plain.take(buffer, 0) == stop


def test_a_run_stops_where_the_room_ends(o200k: tiktoken.Encoding) -> None:
    # Room for the bytes of the first 20 texts and part of the 21st.
    room = sum(len(text) for text in RUN[:20]) + 2
    plain = learnt(o200k, room)
    buffer = b"".join(event({"content": text}) for text in RUN)
    stop = len(b"".join(event({"content": text}) for text in RUN[:20]))
    assert plain.take(buffer, 0) == stop
    plain.flush()
    assert plain.state.counter.count == len(o200k.encode_ordinary("".join(RUN[:20])))
