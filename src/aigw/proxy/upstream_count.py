"""Counting input with the provider's own token counter (``input_counting: upstream``).

tiktoken is exact for OpenAI models only; for Gemini and Claude its count is
an estimate. A provider set to ``input_counting: "upstream"`` has the gateway
ask the provider's counter before forwarding — Gemini
``models/{model}:countTokens`` (the whole ``generateContentRequest``, so
system instruction and tools count), Anthropic ``/v1/messages/count_tokens`` —
but only when the key has an input limit to judge (no limit, nothing to
decide, no extra round trip).

* **Bounded**: one attempt, ``AIGW_UPSTREAM_COUNT_TIMEOUT`` seconds (connect
  included), no retry.
* **Cached**: the last ``AIGW_UPSTREAM_COUNT_CACHE_SIZE`` answers, keyed by
  provider, model and the SHA-256 of the exact counted body, so a retried
  request, or ``count_tokens`` followed by the same ``messages.create``, asks
  once. The cache key is the whole request, not a prefix: upstream counts are
  not additive across messages (per-request overheads), and a guess built
  from a prefix would no longer be the provider's count.
* **Fallback**: when the counter times out, fails, or answers something
  unreadable, the tiktoken estimate plus the provider's ``counting_margin``
  percent (rounded up) decides; the failure is logged (without the key code).

The usage record's ``input_counter`` says which decided: ``tiktoken``,
``upstream`` or ``fallback``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import OrderedDict
from typing import Any

import aiohttp
import orjson
from yarl import URL

from aigw.proxy.adapters.anthropic import ANTHROPIC_VERSION, to_messages_request
from aigw.proxy.adapters.base import Adapter
from aigw.proxy.adapters.gemini import GeminiAdapter, model_path
from aigw.proxy.adapters.gemini_request import to_gemini_request
from aigw.proxy.adapters.openai import _endpoint
from aigw.proxy.counting.prompt import InputCount
from aigw.proxy.keycache import ResolvedKey
from aigw.usage.entry import UsageEntry

log = logging.getLogger("aigw.proxy.count")

TIKTOKEN, UPSTREAM, FALLBACK = "tiktoken", "upstream", "fallback"
# What Anthropic's count_tokens accepts of a Messages request.
_ANTHROPIC_COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
_MAX_ANSWER = 64 * 1024


class CounterFailed(Exception):
    """The upstream counter gave no usable answer."""


def counter_body(
    kind: str, model: str, chat: dict[str, Any], native: dict[str, Any] | None = None
) -> bytes | str:
    """The body the counter of a provider of *kind* is asked with for the Chat
    Completions request *chat* (or the Messages request *native*) on *model*,
    or why there is none. Linear in the request: made in a counting worker for
    a large body (issue 10), otherwise here."""
    try:
        if kind == "gemini":
            request = to_gemini_request(chat)
            request.pop("generationConfig", None)
            request["model"] = model_path(model)
            return orjson.dumps({"generateContentRequest": request})
        if kind == "anthropic":
            request = native if native is not None else to_messages_request(chat)
            body = {field: request[field] for field in _ANTHROPIC_COUNT_FIELDS if field in request}
            body["model"] = model
            return orjson.dumps(body)
    except TypeError:  # too deeply nested to write; the forward refuses it too
        return "request not encodable"
    return f"kind {kind} has no token counter"


def _anthropic_counted(body: bytes) -> int:
    try:
        value = orjson.loads(body).get("input_tokens")
    except (orjson.JSONDecodeError, AttributeError):
        raise CounterFailed("unreadable answer") from None
    if type(value) is not int or value < 0:
        raise CounterFailed("unexpected answer")
    return int(value)


class UpstreamCounter:
    """Asks providers' token counters; one per process (shares the upstream session)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float, cache_size: int) -> None:
        self._session = session
        self._timeout = timeout
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, int] = OrderedDict()

    @staticmethod
    def applies(key: ResolvedKey) -> bool:
        return key.input_counting == UPSTREAM and key.limits.input_limit > 0

    async def judge(
        self,
        key: ResolvedKey,
        adapter: Adapter,
        chat: dict[str, Any],
        estimate: InputCount,
        entry: UsageEntry,
        native: dict[str, Any] | None = None,
        prepared: bytes | str | None = None,
    ) -> InputCount:
        """The count the input limit is judged by: *estimate* (tiktoken) unless the
        provider counts upstream; then its counter's answer, or the estimate plus
        the margin when the counter cannot answer. Says which in *entry*.
        *prepared*: as for :meth:`count`."""
        if not self.applies(key):
            entry.input_counter = TIKTOKEN
            return estimate
        try:
            tokens = await self.count(key, adapter, chat, native, prepared)
        except CounterFailed as exc:
            entry.input_counter = FALLBACK
            log.warning(
                "upstream token counter failed (provider %s, model %s): %s; using the "
                "tiktoken estimate + %d%%",
                key.provider_name,
                key.model,
                exc,
                key.counting_margin,
            )
            margin = math.ceil(estimate.tokens * key.counting_margin / 100)
            return InputCount(estimate.tokens + margin, estimate.exact, estimate.uncountable)
        entry.input_counter = UPSTREAM
        return InputCount(tokens, True)

    def _request(self, key: ResolvedKey, adapter: Adapter) -> tuple[URL, dict[str, str]]:
        assert key.key_code is not None
        if isinstance(adapter, GeminiAdapter):
            return (
                adapter.count_url(key),
                {
                    "x-goog-api-key": key.key_code,
                    "Content-Type": "application/json",
                    "Accept-Encoding": "identity",
                },
            )
        if adapter.kind == "anthropic":
            return (
                _endpoint(key.base_url, "/messages/count_tokens"),
                {
                    "x-api-key": key.key_code,
                    "anthropic-version": ANTHROPIC_VERSION,
                    "Content-Type": "application/json",
                    "Accept-Encoding": "identity",
                },
            )
        raise CounterFailed(f"kind {adapter.kind} has no token counter")

    async def count(
        self,
        key: ResolvedKey,
        adapter: Adapter,
        chat: dict[str, Any],
        native: dict[str, Any] | None = None,
        prepared: bytes | str | None = None,
    ) -> int:
        """The provider's count of the request; raises :class:`CounterFailed`.
        *prepared*: the counter's body (:func:`counter_body`) already made (in
        a counting worker: *chat* is then only the request's head)."""
        if not key.upstream_allowed or key.key_code is None:
            raise CounterFailed("upstream not allowed")
        url, headers = self._request(key, adapter)
        body = counter_body(adapter.kind, key.model, chat, native) if prepared is None else prepared
        if isinstance(body, str):
            raise CounterFailed(body)
        cache_key = hashlib.sha256(
            key.provider_id.bytes + key.model.encode() + b"\0" + body
        ).digest()
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        try:
            async with asyncio.timeout(self._timeout):
                async with self._session.post(url, data=body, headers=headers) as response:
                    answer = await response.content.read(_MAX_ANSWER)
                    status = response.status
        except TimeoutError:
            raise CounterFailed(f"no answer within {self._timeout} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CounterFailed(type(exc).__name__) from None
        if status != 200:
            raise CounterFailed(f"HTTP {status}")
        if isinstance(adapter, GeminiAdapter):
            try:
                tokens = adapter.counted(answer)
            except Exception:
                raise CounterFailed("unexpected answer") from None
        else:
            tokens = _anthropic_counted(answer)
        if self._cache_size:
            self._cache[cache_key] = tokens
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return tokens
