"""Anthropic thinking is output like any other: relayed as ``reasoning_content``,
so the relay counts and cuts it (issue 11, item 3)."""

from __future__ import annotations

import orjson

from aigw.proxy.adapters.anthropic import AnthropicAdapter
from aigw.proxy.sse import SSEDecoder


def _events(*payloads: dict[str, object]) -> list[object]:
    data = b"".join(
        b"event: " + str(p["type"]).encode() + b"\ndata: " + orjson.dumps(p) + b"\n\n"
        for p in payloads
    )
    return list(SSEDecoder().feed(data))


def test_thinking_deltas_become_reasoning_content() -> None:
    stream = AnthropicAdapter().new_stream()
    events = _events(
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "Let me think."}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "c2ln"}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "text_delta", "text": "Answer."}},
    )  # fmt: skip
    deltas = [
        item.chunk["choices"][0]["delta"]
        for event in events
        for item in stream.items(event)  # type: ignore[arg-type]
        if item.chunk is not None
    ]
    assert {"reasoning_content": "Let me think."} in deltas
    assert {"content": "Answer."} in deltas
    assert not any("signature" in str(delta) for delta in deltas)


def test_thinking_blocks_of_a_whole_answer_become_reasoning_content() -> None:
    body = {
        "id": "msg_1",
        "model": "claude",
        "stop_reason": "end_turn",
        "content": [
            {"type": "thinking", "thinking": "Step one.", "signature": "c2ln"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Done."},
        ],
        "usage": {"input_tokens": 5, "output_tokens": 9},
    }
    completion = AnthropicAdapter().parse_response(orjson.dumps(body))
    message = completion["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Done.", "reasoning_content": "Step one."}
