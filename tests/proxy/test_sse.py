"""The SSE codec: events survive any chunking, raw bytes are kept for relaying."""

from __future__ import annotations

import pytest

from aigw.proxy.sse import DONE_EVENT, SSEDecoder, encode_comment, encode_data, encode_json

STREAM = (
    b'data: {"a":1}\n\n'
    b": keep-alive\n\n"
    b"event: message_start\ndata: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"id: 7\nretry: 100\ndata: x\n\n"
    b"data: [DONE]\n\n"
)


def decode_all(chunks: list[bytes]) -> list[tuple[bytes | None, bytes | None, bytes]]:
    decoder = SSEDecoder()
    out = []
    for chunk in chunks:
        out.extend((e.event, e.data, e.raw) for e in decoder.feed(chunk))
    out.extend((e.event, e.data, e.raw) for e in decoder.close())
    return out


EXPECTED = [
    (None, b'{"a":1}', b'data: {"a":1}\n\n'),
    (None, None, b": keep-alive\n\n"),
    (
        b"message_start",
        b"line one\nline two",
        b"event: message_start\ndata: line one\ndata: line two\n\n",
    ),
    (None, b"no-space", b"data:no-space\n\n"),
    (None, b"x", b"id: 7\nretry: 100\ndata: x\n\n"),
    (None, b"[DONE]", DONE_EVENT),
]


def test_whole_stream() -> None:
    assert decode_all([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_any_chunking_gives_the_same_events(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert decode_all(chunks) == EXPECTED


def test_every_split_point() -> None:
    for cut in range(1, len(STREAM)):
        assert decode_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_raw_bytes_concatenate_back_to_the_input() -> None:
    assert b"".join(raw for _, _, raw in decode_all([STREAM])) == STREAM


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_endings(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    for size in (1, 2, 3, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert [(e, d) for e, d, _ in decode_all(chunks)] == [(e, d) for e, d, _ in EXPECTED]


def test_unterminated_last_event_is_dispatched_only_with_data() -> None:
    assert [d for _, d, _ in decode_all([b"data: [DONE]"])] == [b"[DONE]"]
    assert decode_all([b": comment"]) == []
    assert decode_all([b""]) == []


def test_extra_blank_lines_are_ignored() -> None:
    assert [d for _, d, _ in decode_all([b"\n\n\ndata: a\n\n\n\ndata: b\n\n"])] == [b"a", b"b"]


def test_encoders() -> None:
    assert encode_data(b"[DONE]") == DONE_EVENT
    assert encode_json({"a": [1, None]}) == b'data: {"a":[1,null]}\n\n'
    assert encode_comment(b"ping") == b":ping\n\n"
    decoder = SSEDecoder()
    (event,) = decoder.feed(encode_json({"x": "y\nz"}))
    assert event.data == b'{"x":"y\\nz"}'
