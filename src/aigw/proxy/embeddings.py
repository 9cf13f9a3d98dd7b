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
from aigw.proxy.counting.collect import collect
from aigw.proxy.counting.functions import compact_json
from aigw.proxy.counting.prompt import count_collected
from aigw.proxy.counting.workers import encode_edited, inspect_embeddings_body
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
from aigw.usage.entry import UsageEntry

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


def count_embeddings(body: dict[str, Any], encoding: Any, max_chars: int) -> tuple[int, bool]:
    """The input tokens of the checked embeddings *body* and whether the count
    is exact (linear in the input: off the loop, or in a worker process)."""
    as_chat, id_tokens, texts = _as_chat(body)
    if not texts:
        return id_tokens, True
    # The chat counter brings the size cap; one user message per text costs a
    # fixed overhead, counted and removed.
    counted = count_collected(collect(as_chat), encoding, max_chars)
    return id_tokens + counted.tokens - _overhead(texts, encoding), counted.exact


class EmbeddingsEndpoint:
    name = "embeddings"
    path = "/embeddings"
    names = EMBEDDINGS_NAMES
    # A large body is parsed and counted in a worker process (issue 10), a
    # smaller one in this process (in the tokenizer threads past the inline size).
    offloaded = True

    async def admit(
        self,
        pipeline: Pipeline,
        raw: bytes,
        body: dict[str, Any] | None,
        key: ResolvedKey,
        entry: UsageEntry,
    ) -> Prepared:
        executor = pipeline.encoders.executor
        max_chars = pipeline.settings.max_tokenize_chars
        pool = pipeline.admission.pool
        if body is None:
            assert pool is not None  # offloaded: a body the pool takes comes unparsed
            inspected = await pool.run(
                inspect_embeddings_body, raw, key.model, key.encoding, max_chars
            )
            assert inspected.count is not None
            modified = inspected.head.pop("modified")
            body = inspected.head
            tokens, exact = inspected.count.tokens, inspected.count.exact
            upstream_body = (
                await pool.run(encode_edited, raw, {"model": key.model}) if modified else raw
            )
        else:
            modified = apply_model_rule(body, key)
            encoding = await pipeline.encoders.aget(key.encoding)
            # Everything that grows with the input runs off the loop for a large body.
            tokens, exact = await off_loop(
                raw, executor, count_embeddings, body, encoding, max_chars
            )
            upstream_body = await encode_off_loop(raw, executor, body) if modified else raw
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
            upstream_body=upstream_body,
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
