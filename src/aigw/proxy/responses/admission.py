"""Admission of a Responses request: body checks, counting, the policy decision.

The output field is ``max_output_tokens``: over the key's output limit it is
refused under ``reject``; absent, with a ``reject`` key and an output limit
``L``, it is set to ``L``. Input that refers to context the gateway cannot see
(``previous_response_id``, ``conversation``, a stored ``prompt``, item
references, files) cannot be counted: under ``reject`` with an input limit the
request is refused (``input_not_countable``); otherwise it is forwarded,
counted as what the gateway sees, and the upstream's count is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aigw.proxy import counting
from aigw.proxy.admission import MAX_OUTPUT_TOKENS
from aigw.proxy.body import Names, names, off_loop
from aigw.proxy.counting.prompt import InputCount
from aigw.proxy.counting.workers import encode_edited, inspect_responses_body
from aigw.proxy.errors import InputTokenLimitExceeded, InvalidRequest, OutputTokenLimitExceeded
from aigw.proxy.exchange import Prepared, apply_model_rule, encode_off_loop, response_headers
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, decide, refusal_limit
from aigw.proxy.responses.input import ChatView, chat_view
from aigw.usage.entry import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline

OUTPUT_FIELD = "max_output_tokens"


_PART = names(
    {"type", "text", "image_url", "detail", "file_id", "file_data", "filename", "file_url"}
    | {"refusal", "annotations"}
)
_ITEM = names(
    {"type", "role", "content", "id", "status", "call_id", "name", "arguments", "input"}
    | {"output", "summary", "encrypted_content"},
    content=_PART,
    summary=_PART,
    output=_PART,
)
_FORMAT = names({"type", "name", "schema", "strict", "description"})
#: What ``POST /v1/responses`` reads: a case variant of one of these is refused.
RESPONSES_NAMES: Names = names(
    {"model", "input", "instructions", "max_output_tokens", "stream", "stream_options"}
    | {"tools", "tool_choice", "previous_response_id", "conversation", "prompt", "text"}
    | {"reasoning", "include", "metadata", "store", "background", "truncation"}
    | {"temperature", "top_p", "top_logprobs", "parallel_tool_calls", "max_tool_calls"}
    | {"user", "service_tier", "safety_identifier", "prompt_cache_key"},
    input=_ITEM,
    tools=names({"type", "name", "description", "parameters", "strict", "format"}),
    tool_choice=names({"type", "name", "mode", "tools"}),
    text=names({"format", "verbosity"}, format=_FORMAT),
    conversation=names({"id"}),
    prompt=names({"id", "version", "variables"}),
    reasoning=names({"effort", "summary", "generate_summary"}),
    stream_options=names({"include_obfuscation"}),
)


class InputNotCountable(InvalidRequest):
    code = "input_not_countable"
    title = "The request's input cannot be counted by the gateway"


def checked_view(body: dict[str, Any]) -> tuple[int | None, ChatView]:
    """The checked ``max_output_tokens`` of *body* and its chat view."""
    return _validate(body), chat_view(body)


def _validate(body: dict[str, Any]) -> int | None:
    """Just enough shape to count and forward safely; the upstream judges the rest.
    Returns ``max_output_tokens``."""
    items = body.get("input")
    if items is not None and not isinstance(items, str | list):
        raise InvalidRequest("'input' must be a string or an array", param="input")
    if isinstance(items, list):
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidRequest(f"input[{index}] must be an object", param=f"input.{index}")
    for field in ("instructions", "previous_response_id"):
        value = body.get(field)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"'{field}' must be a string", param=field)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array", param="tools")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    value = body.get(OUTPUT_FIELD)
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidRequest(f"'{OUTPUT_FIELD}' must be an integer", param=OUTPUT_FIELD)
    if not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise InvalidRequest(
            f"'{OUTPUT_FIELD}' must be between 1 and {MAX_OUTPUT_TOKENS}", param=OUTPUT_FIELD
        )
    return value


class ResponsesAdmission:
    """Counting and judging ``POST /v1/responses`` bodies (see the module docstring)."""

    names = RESPONSES_NAMES
    offloaded = True

    async def _inspect(
        self, pipeline: Pipeline, raw: bytes, body: dict[str, Any] | None, key: ResolvedKey
    ) -> tuple[dict[str, Any], bool, int | None, str | None, InputCount]:
        """The body (only its head when a worker parsed it), whether the gateway
        filled in its model, ``max_output_tokens``, the first input the gateway
        cannot count, and the count."""
        pool = pipeline.admission.pool
        if body is None:
            # A large body, parsed, checked and counted in a worker process.
            assert pool is not None
            inspected = await pool.run(
                inspect_responses_body,
                raw,
                key.model,
                key.encoding,
                pipeline.settings.max_tokenize_chars,
                refusal_limit(key.limits),
            )
            head = inspected.head
            assert inspected.count is not None
            modified = apply_model_rule(head, key)
            return head, modified, head[OUTPUT_FIELD], inspected.uncountable, inspected.count
        modified = apply_model_rule(body, key)
        executor = pipeline.encoders.executor
        # Checking and converting grow with the body: off the loop when it is large.
        requested, view = await off_loop(raw, executor, checked_view, body)
        counted = await counting.count_chat_input_async(
            view.body,
            await pipeline.encoders.aget(key.encoding),
            max_chars=pipeline.settings.max_tokenize_chars,
            body_bytes=len(raw),
            executor=executor,
            stop_above=refusal_limit(key.limits),
        )
        return body, modified, requested, view.uncountable, counted

    async def admit(
        self,
        pipeline: Pipeline,
        raw: bytes,
        body: dict[str, Any] | None,
        key: ResolvedKey,
        entry: UsageEntry,
    ) -> Prepared:
        offloaded = body is None
        body, modified, requested, uncountable, counted = await self._inspect(
            pipeline, raw, body, key
        )
        stream = entry.stream = body.get("stream") is True
        limits = key.limits
        if uncountable is not None and limits.input_limit > 0 and not limits.use_anyway:
            raise InputNotCountable(
                f"'{uncountable}' brings in context the gateway cannot see, so it cannot "
                f"check this key's input limit ({limits.input_limit} tokens); send the whole "
                "conversation in 'input' instead",
                param=uncountable.split("[", 1)[0].split(".", 1)[0],
            )
        input_tokens = entry.input_tokens = counted.tokens
        decision = decide(limits, input_tokens, requested, input_exact=counted.exact)
        entry.input_limit_exceeded = decision.input_exceeded
        entry.output_limit_exceeded = decision.output_exceeded
        if decision.rejection == INPUT_LIMIT_EXCEEDED and counted.uncountable:
            # An inline file the gateway cannot bound: the same answer as a
            # file it cannot see (and as /v1/chat/completions gives).
            raise InputNotCountable(
                f"The input cannot be counted against this key's input limit of "
                f"{limits.input_limit} tokens: {counted.uncountable}",
                param="input",
            )
        if decision.rejection == INPUT_LIMIT_EXCEEDED:
            counted_as = (
                f"{input_tokens}"
                if counted.exact
                else f"at least {input_tokens} (too large to count exactly)"
            )
            raise InputTokenLimitExceeded(
                f"The input is {counted_as} tokens; this key allows "
                f"{limits.input_limit} per request",
                param="input",
            )
        if decision.rejection is not None:
            raise OutputTokenLimitExceeded(
                f"The request asks for up to {requested} output tokens; this key "
                f"allows {limits.output_limit}",
                param=OUTPUT_FIELD,
            )
        # The gateway's edits, in the order the body takes them.
        edits: dict[str, Any] = {"model": key.model} if modified else {}
        injected = decision.inject_max_tokens is not None
        if injected:
            body[OUTPUT_FIELD] = edits[OUTPUT_FIELD] = decision.inject_max_tokens
        pool = pipeline.admission.pool
        if not edits:
            upstream_body = raw
        elif offloaded and pool is not None:
            # The client's bytes with the gateway's edits, re-encoded in a worker.
            upstream_body = await pool.run(encode_edited, raw, edits)
        else:
            upstream_body = await encode_off_loop(raw, pipeline.encoders.executor, body)
        return Prepared(
            body=body,
            upstream_body=upstream_body,
            stream=stream,
            decision=decision,
            injected_max=injected,
            response_headers=response_headers(key, entry, decision),
            uncountable=uncountable is not None,
        )
