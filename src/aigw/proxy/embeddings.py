"""``POST /v1/embeddings``: the input limit over the whole ``input``, no output limit.

``input`` is a string, an array of strings, an array of token ids or an array
of token-id arrays (OpenAI's four forms). Strings count as their tokens in the
key's encoding — exactly what OpenAI bills for embeddings, with no per-item
overhead — and token arrays as their length. ``reject`` refuses input over the
limit (400 ``input_token_limit_exceeded``); ``use_anyway`` forwards it and
flags it. Any other field that could carry text (an unknown one, a long
``user``) counts as the tokens of its JSON text ``{"field": value}``. The answer is relayed as received; its ``usage.prompt_tokens`` is
recorded as the upstream's count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from aigw.proxy import counting
from aigw.proxy.body import Names, names, off_loop
from aigw.proxy.counting.functions import compact_json
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import InputTokenLimitExceeded, InvalidRequest, UpstreamProtocolError
from aigw.proxy.exchange import (
    Prepared,
    apply_model_rule,
    encode_off_loop,
    response_headers,
    upstream_usage,
)
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, Limits, decide
from aigw.proxy.upstream import UpstreamClock, read_whole
from aigw.usage.recorder import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline

_SHAPE = (
    "'input' must be a string, an array of strings, an array of token ids or an array of "
    "token-id arrays"
)


#: What ``POST /v1/embeddings`` reads: a case variant of one of these is refused.
EMBEDDINGS_NAMES: Names = names({"model", "input", "dimensions", "encoding_format", "user"})


# Free while they hold a number, a boolean or a string of at most 64 characters.
_SETTINGS = frozenset({"dimensions", "encoding_format", "user"})


def _as_chat(body: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """The texts of ``input`` as chat messages, the tokens given as ids, and the
    number of texts (linear in the input: run off the loop). Any other field
    that could carry text (an unknown one, a long ``user``) counts as the JSON
    text of ``{"field": value}`` (issue 10: nothing forwarded goes uncounted)."""
    texts, id_tokens = embedding_inputs(body.get("input"))
    for name, value in body.items():
        if name in ("input", "model") or value is None:  # model: the key's, checked
            continue
        if name in _SETTINGS and (
            isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= 64)
        ):
            continue
        text = compact_json({name: value})
        if not text:
            raise InvalidRequest("The request body is nested too deeply", param=name)
        texts = [*texts, text]
    as_chat = {"messages": [{"role": "user", "content": text} for text in texts]}
    return as_chat, id_tokens, len(texts)


def _overhead(texts: int, encoding: Any) -> int:
    """What one user message per text adds to the chat count (removed again)."""
    empty = {"messages": [{"role": "user", "content": ""}] * texts}
    return counting.count_chat_input(empty, encoding)


def embedding_inputs(value: Any) -> tuple[list[str], int]:
    """The texts of an ``input`` and the number of tokens given as ids; 400 for any
    other shape (including an empty array)."""
    if isinstance(value, str):
        return [value], 0
    if not isinstance(value, list) or not value:
        raise InvalidRequest(_SHAPE, param="input")
    first = value[0]
    if isinstance(first, str):
        if not all(isinstance(text, str) for text in value):
            raise InvalidRequest(_SHAPE, param="input")
        return value, 0
    if type(first) is int:
        if not all(type(token) is int for token in value):
            raise InvalidRequest(_SHAPE, param="input")
        return [], len(value)
    if isinstance(first, list):
        tokens = 0
        for ids in value:
            if not isinstance(ids, list) or not all(type(token) is int for token in ids):
                raise InvalidRequest(_SHAPE, param="input")
            tokens += len(ids)
        return [], tokens
    raise InvalidRequest(_SHAPE, param="input")


class EmbeddingsEndpoint:
    name = "embeddings"
    path = "/embeddings"
    names = EMBEDDINGS_NAMES
    # Parsed and counted in this process (in the tokenizer threads when large).
    offloaded = False

    async def admit(
        self,
        pipeline: Pipeline,
        raw: bytes,
        body: dict[str, Any] | None,
        key: ResolvedKey,
        entry: UsageEntry,
    ) -> Prepared:
        assert body is not None  # not offloaded: always parsed
        modified = apply_model_rule(body, key)
        executor = pipeline.encoders.executor
        # Everything that grows with the input runs off the loop for a large body.
        as_chat, id_tokens, texts = await off_loop(raw, executor, _as_chat, body)
        tokens, exact = id_tokens, True
        if texts:
            # The chat counter brings the size cap and the executor for large inputs;
            # one user message per text costs a fixed overhead, counted and removed.
            encoding = await pipeline.encoders.aget(key.encoding)
            counted = await counting.count_chat_input_async(
                as_chat,
                encoding,
                max_chars=pipeline.settings.max_tokenize_chars,
                body_bytes=len(raw),
                executor=executor,
            )
            tokens += counted.tokens - await off_loop(raw, executor, _overhead, texts, encoding)
            exact = counted.exact
        entry.input_tokens = tokens
        limits = key.limits
        # No output limit applies: an embedding is not generated text.
        decision = decide(
            Limits(limits.input_limit, 0, limits.usage_limit), tokens, None, input_exact=exact
        )
        entry.input_limit_exceeded = decision.input_exceeded
        if decision.rejection == INPUT_LIMIT_EXCEEDED:
            counted_as = f"{tokens}" if exact else f"at least {tokens} (too large to count exactly)"
            raise InputTokenLimitExceeded(
                f"The input is {counted_as} tokens; this key allows "
                f"{limits.input_limit} per request",
                param="input",
            )
        return Prepared(
            body=body,
            upstream_body=await encode_off_loop(raw, executor, body) if modified else raw,
            stream=False,
            decision=decision,
            injected_max=False,
            response_headers=response_headers(key, entry, decision),
        )

    def relay(
        self,
        prepared: Prepared,
        key: ResolvedKey,
        entry: UsageEntry,
        downstream: Downstream,
        clock: UpstreamClock,
        encoding: Any,
    ) -> EmbeddingsRelay:
        return EmbeddingsRelay(prepared, entry, downstream, clock)


class EmbeddingsRelay:
    """Relays an embeddings answer unchanged and records its usage."""

    output_tokens = 0

    def __init__(
        self, prepared: Prepared, entry: UsageEntry, downstream: Downstream, clock: UpstreamClock
    ) -> None:
        self.prepared = prepared
        self.entry = entry
        self.downstream = downstream
        self.clock = clock

    async def whole(self, response: aiohttp.ClientResponse) -> bool:
        raw = await read_whole(response, self.clock)  # bounded (issue 10)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent malformed JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamProtocolError("The upstream provider sent an unexpected body")
        entry = self.entry
        upstream_usage(entry, answer.get("usage"), "prompt_tokens", "completion_tokens")
        entry.outcome, entry.status_code = "completed", 200
        await self.downstream.answer(200, raw, self.prepared.response_headers)
        return True

    async def stream(self, response: aiohttp.ClientResponse) -> bool:
        return await self.whole(response)  # embeddings are never streamed
