"""``POST /v1/embeddings``: the input limit over the whole ``input``, no output limit.

``input`` is a string, an array of strings, an array of token ids or an array
of token-id arrays (OpenAI's four forms). Strings count as their tokens in the
key's encoding — exactly what OpenAI bills for embeddings, with no per-item
overhead — and token arrays as their length. ``reject`` refuses input over the
limit (400 ``input_token_limit_exceeded``); ``use_anyway`` forwards it and
flags it. The answer is relayed as received; its ``usage.prompt_tokens`` is
recorded as the upstream's count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from aigw.proxy import counting
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import InputTokenLimitExceeded, InvalidRequest, UpstreamProtocolError
from aigw.proxy.exchange import (
    Prepared,
    apply_model_rule,
    encode_body,
    response_headers,
    upstream_usage,
)
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, Limits, decide
from aigw.proxy.upstream import UpstreamClock
from aigw.usage.recorder import UsageEntry

if TYPE_CHECKING:
    from aigw.proxy.pipeline import Pipeline

_SHAPE = (
    "'input' must be a string, an array of strings, an array of token ids or an array of "
    "token-id arrays"
)


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

    async def admit(
        self,
        pipeline: Pipeline,
        raw: bytes,
        body: dict[str, Any],
        key: ResolvedKey,
        entry: UsageEntry,
    ) -> Prepared:
        modified = apply_model_rule(body, key)
        texts, id_tokens = embedding_inputs(body.get("input"))
        tokens, exact = id_tokens, True
        if texts:
            # The chat counter brings the size cap and the executor for large inputs;
            # one user message per text costs a fixed overhead, counted and removed.
            as_chat = {"messages": [{"role": "user", "content": text} for text in texts]}
            encoding = await pipeline.encoders.aget(key.encoding)
            counted = await counting.count_chat_input_async(
                as_chat,
                encoding,
                max_chars=pipeline.settings.max_tokenize_chars,
                executor=pipeline.encoders.executor,
            )
            empty = {"messages": [{"role": "user", "content": ""}] * len(texts)}
            tokens += counted.tokens - counting.count_chat_input(empty, encoding)
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
            upstream_body=encode_body(body) if modified else raw,
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
        parts = []
        read = response.content.readany
        while chunk := await read():
            self.clock.event()
            parts.append(chunk)
        raw = b"".join(parts)
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
