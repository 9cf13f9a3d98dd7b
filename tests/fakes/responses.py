"""A fake upstream speaking OpenAI's Responses and Embeddings APIs, in the test's loop.

Every answer and event is built from the ``openai`` SDK's own types
(``openai.types.responses``) and serialised with them, so the wire format is
the one the SDK itself parses. Imports nothing from aigw.

Its own simple rules:

* Output is ``output_tokens`` words of "the quick brown fox …" (each word one
  token in cl100k_base and o200k_base), one word per delta event. ``kind``
  chooses where it goes: ``text`` (one message), ``function_call`` (the
  arguments of one call), ``reasoning`` (``summary_tokens`` words of reasoning
  summary, then the rest as message text) or ``refusal``.
* ``max_output_tokens`` caps the words generated, all kinds drawing on one
  budget; a capped answer ends ``status: "incomplete"`` with
  ``incomplete_details.reason: "max_output_tokens"`` (streams: with a
  ``response.incomplete`` event), as OpenAI's does.
* ``usage.input_tokens`` is the scripted ``input_tokens``; ``output_tokens``
  the words generated.
* Embeddings: ``dimensions`` (default 8) floats per input, base64 (float32 LE)
  when ``encoding_format`` is ``base64``; ``usage.prompt_tokens`` is the
  tiktoken ``o200k_base`` count of every string plus the length of every
  token array.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputRefusal,
    ResponseOutputText,
    ResponseReasoningItem,
    ResponseReasoningSummaryPartAddedEvent,
    ResponseReasoningSummaryPartDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseRefusalDeltaEvent,
    ResponseRefusalDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_reasoning_item import Summary
from openai.types.responses.response_reasoning_summary_part_added_event import (
    Part as SummaryPartAdded,
)
from openai.types.responses.response_reasoning_summary_part_done_event import (
    Part as SummaryPartDone,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from tests.fakes.billing import load_encoding

WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog")
RESPONSE_ID = "resp_fake"


def words(count: int, start: int = 0) -> list[str]:
    return [WORDS[(start + i) % len(WORDS)] for i in range(count)]


@dataclass
class ResponsesScript:
    output_tokens: int = 10
    kind: str = "text"  # text | function_call | reasoning | refusal
    summary_tokens: int = 3
    input_tokens: int = 42
    honour_max: bool = True
    status: int = 200
    chunk_delay: float = 0.0
    # Streams: after this many deltas, "reset" drops the connection and "error"
    # sends OpenAI's `error` event and ends.
    fail_after: int | None = None
    failure: str = "reset"


@dataclass
class FakeResponses:
    url: str = ""
    script: ResponsesScript = field(default_factory=ResponsesScript)
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    disconnects: int = 0

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def _dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", exclude_unset=False))


def _event(model: Any) -> bytes:
    payload = _dump(model)
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class _Plan:
    """What one request generates: the output items (final form) and the deltas."""

    def __init__(self, script: ResponsesScript, budget: int | None) -> None:
        wanted = script.output_tokens
        total = min(wanted, budget) if budget is not None and script.honour_max else wanted
        self.capped = total < wanted
        self.total = total
        kind = script.kind
        self.summary = words(min(script.summary_tokens, total)) if kind == "reasoning" else []
        rest = total - len(self.summary)
        self.main = words(rest, len(self.summary))
        self.kind = kind


def _response(
    body: dict[str, Any], status: str, output: list[Any], usage: ResponseUsage | None
) -> Response:
    return Response(
        id=RESPONSE_ID,
        object="response",
        created_at=1_700_000_000,
        model=str(body.get("model")),
        status=status,  # type: ignore[arg-type]
        incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,  # type: ignore[arg-type]
        output=output,
        parallel_tool_calls=True,
        tool_choice="auto",
        tools=[],
        max_output_tokens=body.get("max_output_tokens"),
        usage=usage,
    )


def _usage(script: ResponsesScript, output: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=script.input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
        output_tokens=output,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=script.input_tokens + output,
    )


def _final_items(plan: _Plan, status: str) -> list[Any]:
    items: list[Any] = []
    if plan.kind == "reasoning":
        items.append(
            ResponseReasoningItem(
                id="rs_1",
                type="reasoning",
                summary=[Summary(type="summary_text", text="".join(plan.summary))],
            )
        )
    if plan.kind == "function_call":
        items.append(
            ResponseFunctionToolCall(
                id="fc_1",
                call_id="call_1",
                type="function_call",
                name="lookup",
                arguments="".join(plan.main),
                status=status,  # type: ignore[arg-type]
            )
        )
    elif plan.kind == "refusal":
        items.append(
            ResponseOutputMessage(
                id="msg_1",
                type="message",
                role="assistant",
                status=status,  # type: ignore[arg-type]
                content=[ResponseOutputRefusal(type="refusal", refusal="".join(plan.main))],
            )
        )
    else:
        items.append(
            ResponseOutputMessage(
                id="msg_1",
                type="message",
                role="assistant",
                status=status,  # type: ignore[arg-type]
                content=[
                    ResponseOutputText(
                        type="output_text", text="".join(plan.main), annotations=[], logprobs=[]
                    )
                ],
            )
        )
    return items


async def _stream(
    state: FakeResponses, request: web.Request, body: dict[str, Any], plan: _Plan
) -> web.StreamResponse:
    script = state.script
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    seq = iter(range(10_000))
    end_status = "incomplete" if plan.capped else "completed"
    item_status = "incomplete" if plan.capped else "completed"

    async def send(event: Any) -> None:
        if script.chunk_delay:
            await asyncio.sleep(script.chunk_delay)
        await response.write(_event(event))

    try:
        await send(
            ResponseCreatedEvent(
                type="response.created",
                sequence_number=next(seq),
                response=_response(body, "in_progress", [], None),
            )
        )
        await send(
            ResponseInProgressEvent(
                type="response.in_progress",
                sequence_number=next(seq),
                response=_response(body, "in_progress", [], None),
            )
        )
        final = _final_items(plan, item_status)
        index = 0
        if plan.kind == "reasoning":
            reasoning = final[0]
            await send(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added",
                    sequence_number=next(seq),
                    output_index=0,
                    item=ResponseReasoningItem(id="rs_1", type="reasoning", summary=[]),
                )
            )
            await send(
                ResponseReasoningSummaryPartAddedEvent(
                    type="response.reasoning_summary_part.added",
                    sequence_number=next(seq),
                    item_id="rs_1",
                    output_index=0,
                    summary_index=0,
                    part=SummaryPartAdded(type="summary_text", text=""),
                )
            )
            for word in plan.summary:
                await send(
                    ResponseReasoningSummaryTextDeltaEvent(
                        type="response.reasoning_summary_text.delta",
                        sequence_number=next(seq),
                        item_id="rs_1",
                        output_index=0,
                        summary_index=0,
                        delta=word,
                    )
                )
            text = "".join(plan.summary)
            await send(
                ResponseReasoningSummaryTextDoneEvent(
                    type="response.reasoning_summary_text.done",
                    sequence_number=next(seq),
                    item_id="rs_1",
                    output_index=0,
                    summary_index=0,
                    text=text,
                )
            )
            await send(
                ResponseReasoningSummaryPartDoneEvent(
                    type="response.reasoning_summary_part.done",
                    sequence_number=next(seq),
                    item_id="rs_1",
                    output_index=0,
                    summary_index=0,
                    part=SummaryPartDone(type="summary_text", text=text),
                )
            )
            await send(
                ResponseOutputItemDoneEvent(
                    type="response.output_item.done",
                    sequence_number=next(seq),
                    output_index=0,
                    item=reasoning,
                )
            )
            index = 1
        main = final[-1]
        if plan.kind == "function_call":
            await send(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added",
                    sequence_number=next(seq),
                    output_index=index,
                    item=ResponseFunctionToolCall(
                        id="fc_1",
                        call_id="call_1",
                        type="function_call",
                        name="lookup",
                        arguments="",
                        status="in_progress",
                    ),
                )
            )
            for word in plan.main:
                await send(
                    ResponseFunctionCallArgumentsDeltaEvent(
                        type="response.function_call_arguments.delta",
                        sequence_number=next(seq),
                        item_id="fc_1",
                        output_index=index,
                        delta=word,
                    )
                )
            await send(
                ResponseFunctionCallArgumentsDoneEvent(
                    type="response.function_call_arguments.done",
                    sequence_number=next(seq),
                    item_id="fc_1",
                    output_index=index,
                    arguments="".join(plan.main),
                    name="lookup",
                )
            )
        else:
            refusal = plan.kind == "refusal"
            await send(
                ResponseOutputItemAddedEvent(
                    type="response.output_item.added",
                    sequence_number=next(seq),
                    output_index=index,
                    item=ResponseOutputMessage(
                        id="msg_1",
                        type="message",
                        role="assistant",
                        status="in_progress",
                        content=[],
                    ),
                )
            )
            empty: Any = (
                ResponseOutputRefusal(type="refusal", refusal="")
                if refusal
                else ResponseOutputText(type="output_text", text="", annotations=[], logprobs=[])
            )
            await send(
                ResponseContentPartAddedEvent(
                    type="response.content_part.added",
                    sequence_number=next(seq),
                    item_id="msg_1",
                    output_index=index,
                    content_index=0,
                    part=empty,
                )
            )
            for position, word in enumerate(plan.main):
                if position == script.fail_after:
                    if script.failure == "error":
                        await send(
                            ResponseErrorEvent(
                                type="error",
                                sequence_number=next(seq),
                                code="server_error",
                                message="The model failed",
                                param=None,
                            )
                        )
                        await response.write_eof()
                        return response
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if refusal:
                    await send(
                        ResponseRefusalDeltaEvent(
                            type="response.refusal.delta",
                            sequence_number=next(seq),
                            item_id="msg_1",
                            output_index=index,
                            content_index=0,
                            delta=word,
                        )
                    )
                else:
                    await send(
                        ResponseTextDeltaEvent(
                            type="response.output_text.delta",
                            sequence_number=next(seq),
                            item_id="msg_1",
                            output_index=index,
                            content_index=0,
                            delta=word,
                            logprobs=[],
                        )
                    )
            text = "".join(plan.main)
            if refusal:
                await send(
                    ResponseRefusalDoneEvent(
                        type="response.refusal.done",
                        sequence_number=next(seq),
                        item_id="msg_1",
                        output_index=index,
                        content_index=0,
                        refusal=text,
                    )
                )
            else:
                await send(
                    ResponseTextDoneEvent(
                        type="response.output_text.done",
                        sequence_number=next(seq),
                        item_id="msg_1",
                        output_index=index,
                        content_index=0,
                        text=text,
                        logprobs=[],
                    )
                )
            await send(
                ResponseContentPartDoneEvent(
                    type="response.content_part.done",
                    sequence_number=next(seq),
                    item_id="msg_1",
                    output_index=index,
                    content_index=0,
                    part=main.content[0],
                )
            )
        await send(
            ResponseOutputItemDoneEvent(
                type="response.output_item.done",
                sequence_number=next(seq),
                output_index=index,
                item=main,
            )
        )
        whole = _response(body, end_status, final, _usage(script, plan.total))
        if plan.capped:
            await send(
                ResponseIncompleteEvent(
                    type="response.incomplete", sequence_number=next(seq), response=whole
                )
            )
        else:
            await send(
                ResponseCompletedEvent(
                    type="response.completed", sequence_number=next(seq), response=whole
                )
            )
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        state.disconnects += 1
        raise
    return response


async def _handle_responses(state: FakeResponses, request: web.Request) -> web.StreamResponse:
    body = await request.json()
    state.requests.append(body)
    state.paths.append(request.path)
    script = state.script
    if script.status != 200:
        return web.json_response(
            {"error": {"message": "nope", "type": "invalid_request_error", "code": "bad"}},
            status=script.status,
        )
    plan = _Plan(script, body.get("max_output_tokens"))
    if body.get("stream"):
        return await _stream(state, request, body, plan)
    status = "incomplete" if plan.capped else "completed"
    answer = _response(body, status, _final_items(plan, status), _usage(script, plan.total))
    return web.json_response(body=orjson.dumps(_dump(answer)))


async def _handle_embeddings(state: FakeResponses, request: web.Request) -> web.Response:
    body = await request.json()
    state.requests.append(body)
    state.paths.append(request.path)
    items = body["input"]
    if isinstance(items, str) or (items and isinstance(items[0], int)):
        items = [items]
    encoding = load_encoding("o200k_base")
    tokens = sum(
        len(encoding.encode_ordinary(item)) if isinstance(item, str) else len(item)
        for item in items
    )
    dims = body.get("dimensions") or 8
    data = []
    for index, _ in enumerate(items):
        vector = [round(0.1 * (index + 1) + 0.01 * d, 4) for d in range(dims)]
        embedding: Any = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


async def start_fake_responses() -> tuple[FakeResponses, web.AppRunner]:
    """Start the fake in the running loop; returns its state (``.url`` ends in
    ``/v1``) and the runner to ``cleanup()``."""
    state = FakeResponses()
    application = web.Application()
    application.router.add_post("/v1/responses", lambda r: _handle_responses(state, r))
    application.router.add_post("/v1/embeddings", lambda r: _handle_embeddings(state, r))
    runner = web.AppRunner(application, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    return state, runner
