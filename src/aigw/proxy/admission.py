"""Admission: whether a request may go upstream, and in what form.

The client token is read from the ``Authorization`` header; the body is read and
parsed with orjson (NaN, Infinity, lone surrogates and invalid UTF-8 are
refused), checked just enough to count it, counted, and judged by
:func:`aigw.proxy.policy.decide`. Any refusal raises an :class:`AigwError`
(a 4xx in OpenAI's envelope) and nothing goes upstream. What passes is an
:class:`Admitted` request: the body unchanged except for the gateway's edits
(the key's model when omitted, an output bound when the policy asks for one,
and ``stream_options.include_usage`` on streams).

Reading the body and refusing ambiguous member names is :mod:`aigw.proxy.body`.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from starlette.types import Receive

from aigw.budgets.guard import Hold, Limiter
from aigw.errors import AigwError, UnsupportedMediaType
from aigw.proxy import counting
from aigw.proxy.adapters.base import Adapter
from aigw.proxy.adapters.openai import OpenAIAdapter
from aigw.proxy.body import (
    CHAT_NAMES,
    content_type_ok,
    could_nest_deeper,
    nested_deeper,
    off_loop,
    parse_unambiguous,
    read_body,
)
from aigw.proxy.counting.collect import collect
from aigw.proxy.counting.offload import CountingPool, few_values, may_hold_file
from aigw.proxy.counting.prompt import count_collected
from aigw.proxy.counting.workers import (
    Inspected,
    count_chat_body,
    encode_edited,
    inspect_chat_body,
    translate_chat,
)
from aigw.proxy.errors import (
    InputNotCountable,
    InputTokenLimitExceeded,
    InvalidRequest,
    KeyDisabled,
    KeyUnusable,
    ModelNotAllowed,
    OutputTokenLimitExceeded,
    UnsupportedProvider,
)
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import INPUT_LIMIT_EXCEEDED, Decision, decide, refusal_limit
from aigw.usage.entry import UsageEntry

_T = TypeVar("_T")

if TYPE_CHECKING:
    from aigw.proxy.upstream_count import UpstreamCounter

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Beyond any model's real output; also the largest limit a key can hold.
MAX_OUTPUT_TOKENS = 10_000_000
# Models that take only ``max_completion_tokens`` (OpenAI reasoning models).
_COMPLETION_TOKENS_MODELS = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header (``None``: absent,
    another scheme, or empty)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            credentials = credentials.strip()
            if scheme.lower() != b"bearer" or not credentials:
                return None
            return credentials.decode("latin-1")
    return None


def max_tokens_field(model: str) -> str:
    return "max_completion_tokens" if _COMPLETION_TOKENS_MODELS.match(model) else "max_tokens"


def optional_int(body: dict[str, Any], field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidRequest(f"'{field}' must be an integer", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"'{field}' must be between {low} and {high}", param=field)
    return value


def _validate(body: dict[str, Any]) -> None:
    """Just enough shape to count and forward safely; the upstream judges the rest."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{index}] must be an object", param=f"messages.{index}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list is unhashable
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}",
                param=f"messages.{index}.role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequest(
                f"messages[{index}].content must be a string or an array",
                param=f"messages.{index}.content",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("'model' must be a string", param="model")
    optional_int(body, "n", 1, 128)


# Top-level members admission may set (the key's model, an output bound, the
# usage option of a stream).
_EDITABLE = frozenset({"model", "max_tokens", "max_completion_tokens", "stream_options"})
_WHITESPACE = b" \t\r\n"


def with_members(raw: bytes, members: Mapping[str, Any]) -> bytes:
    """The checked JSON object *raw* (a chat body: never empty) with *members*
    added after its last one, none of which it holds: the client's bytes plus
    the new members, one copy, whatever the body's size."""
    end = len(raw.rstrip(_WHITESPACE)) - 1
    if end < 1 or raw[end] != 0x7D:  # "}"
        raise ValueError("not a JSON object")
    added = b",".join(
        orjson.dumps(name) + b":" + orjson.dumps(value) for name, value in members.items()
    )
    return b"".join((memoryview(raw)[:end], b",", added, b"}"))


def parse_chat(raw: bytes) -> dict[str, Any]:
    return parse_unambiguous(raw, CHAT_NAMES, _validate)


def untranslatable(exc: Exception) -> InvalidRequest:
    """A shape the provider translation cannot take (e.g. ``tool_calls`` as an
    object on an Anthropic key) is the client's to fix: 400, never 500."""
    return InvalidRequest(
        "The request cannot be translated for this key's provider: a field has "
        f"an unexpected shape ({type(exc).__name__})"
    )


def key_headers(key: ResolvedKey, entry: UsageEntry) -> list[tuple[bytes, bytes]]:
    """The ``x-aigw-*`` headers every answer to a resolved key carries, and
    ``x-aigw-input-tokens`` once the prompt was counted. A counted prompt is never
    0 tokens (every reply is primed with 3), so 0 means a refusal came before the
    count (disabled key, model not allowed, malformed body) and the header would
    read as "your prompt was 0 tokens"."""
    if entry.input_tokens <= 0:
        return list(key.limit_headers)
    return [(b"x-aigw-input-tokens", str(entry.input_tokens).encode()), *key.limit_headers]


@dataclass(slots=True)
class Admitted:
    """A request that passed admission, ready to forward."""

    body: dict[str, Any]
    upstream_body: bytes
    stream: bool
    client_wants_usage: bool
    decision: Decision
    injected_max: bool
    response_headers: list[tuple[bytes, bytes]]
    # The request's budget/rate standing (aigw.budgets); the pipeline settles it.
    hold: Hold | None = None
    #: The exact input count still running (admitted on the size bound alone).
    pending_count: asyncio.Future[counting.InputCount] | None = None
    #: The record's count of a large body admitted on its size bound, started
    #: only once the exchange is over (:meth:`count_for_record`).
    record_count: Callable[[], Awaitable[counting.InputCount]] | None = None

    def count_for_record(self, entry: UsageEntry) -> asyncio.Future[counting.InputCount] | None:
        """Start the count :attr:`record_count` stands for, after the answer:
        handing a large body to a worker takes the loop's GIL for milliseconds
        (its bytes are pickled and written by the pool's threads), which
        delayed that answer's first byte (issue 15). The record waits for it;
        the answer's headers never carry it."""
        if self.record_count is None:
            return None
        pending = asyncio.ensure_future(self.record_count())
        self.record_count = None
        pending.add_done_callback(lambda done: _record_count(done, entry))
        return pending

    async def settle_count(self, entry: UsageEntry) -> None:
        """Wait for a count still running and put it in *entry* and the
        ``x-aigw-input-tokens`` header (call before the answer starts)."""
        if self.pending_count is None:
            return
        try:
            counted = await asyncio.shield(self.pending_count)
        except AigwError:
            # Refused (its workers busy: counting_busy): the request was already
            # admitted on its size, so it is answered, without the header.
            self.pending_count = None
            return
        self.pending_count = None
        entry.input_tokens = counted.tokens
        self.response_headers[:] = [
            (b"x-aigw-input-tokens", str(counted.tokens).encode()),
            *(item for item in self.response_headers if item[0] != b"x-aigw-input-tokens"),
        ]


def _record_count(done: asyncio.Future[counting.InputCount], entry: UsageEntry) -> None:
    # The record gets the exact count even when the answer ended before it was read.
    if not done.cancelled() and done.exception() is None:
        entry.input_tokens = done.result().tokens


@dataclass(slots=True)
class Admission:
    """What admission needs besides the request (built once per process)."""

    encoders: counting.Encoders
    max_tokenize_chars: int
    limiter: Limiter | None = None
    # Asks the provider's own counter where it is set to (input_counting: upstream).
    upstream_counter: UpstreamCounter | None = None
    # Worker processes for large bodies (aigw.proxy.counting.offload); None: threads.
    pool: CountingPool | None = None
    # Worker processes for the record's count of a large body admitted on its size
    # bound (after the answer started): apart from ``pool``, so that the next large
    # request's parsing never queues behind an earlier request's record count.
    record_pool: CountingPool | None = None

    def _placement(self, raw: bytes) -> tuple[CountingPool | None, bool]:
        """Where the body *raw* is parsed, checked and counted: in the workers
        returned, or in this process (``None``); and whether it is a large body of
        few values (:func:`~aigw.proxy.counting.offload.few_values`), parsed on
        the loop at once (C work, ~1 ms per 500 KB: less than a worker's round
        trip or a thread's hop) and counted in the tokenizer threads."""
        pool = self.pool
        if pool is None or not pool.takes(raw):
            return None, False
        large = len(raw) > max(pool.min_bytes, counting.INLINE_BODY_BYTES)
        if large and not may_hold_file(raw) and few_values(raw):
            return None, True
        return pool, False

    async def _off_loop(self, raw: bytes, work: Callable[..., _T], *args: Any) -> _T:
        # Work that grows with the body (parsing, checking, re-serialising) runs
        # in the tokenizer threads for bodies past the inline size (issue 10).
        return await off_loop(raw, self.encoders.executor, work, *args)

    async def _count(
        self, body: dict[str, Any], encoding: Any, body_bytes: int, stop_above: int | None = None
    ) -> counting.InputCount:
        return await counting.count_chat_input_async(
            body,
            encoding,
            max_chars=self.max_tokenize_chars,
            body_bytes=body_bytes,
            executor=self.encoders.executor,
            stop_above=stop_above,
        )

    async def _count_raw(
        self,
        pool: CountingPool | None,
        raw: bytes,
        body: dict[str, Any],
        encoding: Any,
        key: ResolvedKey,
    ) -> counting.InputCount:
        # *body* is only the head of *raw* when a worker parsed it: count there.
        if pool is None:
            return await self._count(body, encoding, len(raw))
        return await pool.run(count_chat_body, raw, key.encoding, self.max_tokenize_chars)

    async def _upstream_body(
        self,
        pool: CountingPool | None,
        adapter: Adapter,
        raw: bytes,
        body: dict[str, Any],
        edits: dict[str, Any],
        present: Set[str] = frozenset(),
        deep: bool | None = None,
    ) -> bytes:
        if edits and isinstance(adapter, OpenAIAdapter) and present.isdisjoint(edits):
            # Every edit is a member the client did not send: the client's bytes
            # with the members added, whatever the body's size (no re-encoding).
            # *deep*: found by a worker (None: *body* is the whole body).
            if deep or (deep is None and could_nest_deeper(raw) and nested_deeper(body)):
                raise InvalidRequest("The request body is nested too deeply")
            return with_members(raw, edits)
        if pool is not None and isinstance(adapter, OpenAIAdapter):
            # The client's bytes, or those bytes with the gateway's edits (in a worker).
            return raw if not edits else await pool.run(encode_edited, raw, edits)
        if pool is not None:
            # Another wire format: translated from the whole body, in a worker too.
            return await pool.run(translate_chat, raw, edits, adapter.kind)
        try:
            return await self._off_loop(raw, adapter.encode_request, body, raw, bool(edits))
        except (TypeError, AttributeError, ValueError, KeyError, IndexError) as exc:
            raise untranslatable(exc) from None

    async def admit(
        self,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        key: ResolvedKey,
        adapter: Adapter | None,
        entry: UsageEntry,
    ) -> Admitted:
        """Check, count and judge one request for *key*; fills in *entry*'s counts
        and flags as it learns them, so a refusal is recorded with them."""
        if not key.enabled:
            raise KeyDisabled()
        if key.key_code is None:
            raise KeyUnusable()
        if adapter is None:
            raise UnsupportedProvider()
        if not content_type_ok(headers):
            raise UnsupportedMediaType()
        raw = await read_body(receive)
        # The size alone can prove the request within the limit: admitted at once,
        # counted exactly for the record while the upstream answers. Not for keys
        # whose budget reserves the input (it must know it now), nor where the
        # provider's own counter is to decide.
        bound = counting.input_upper_bound(raw, key.model)
        upstream_counts = self.upstream_counter is not None and self.upstream_counter.applies(key)
        deferred = (
            (key.limits.input_limit <= 0 or bound <= key.limits.input_limit)
            and key.budget is None
            and not upstream_counts
        )
        # A large body (or one that may hold a file) is parsed, checked and counted
        # in a worker process; this process keeps only its small top-level fields
        # (``body``), the count, and the body the provider's counter is asked with.
        pool, plain = self._placement(raw)
        inspected: Inspected | None = None
        if pool is not None:
            inspected = await pool.run(
                inspect_chat_body,
                raw,
                None if deferred else key.encoding,
                self.max_tokenize_chars,
                refusal_limit(key.limits),
                (adapter.kind, key.model) if upstream_counts else None,
            )
            body = inspected.head
        elif plain:
            body = parse_chat(raw)
        else:
            body = await self._off_loop(raw, parse_chat, raw)
        edits: dict[str, Any] = {}
        # What the gateway may edit that the client sent (even as null): such an
        # edit replaces a member, any other adds one (_upstream_body).
        present = _EDITABLE.intersection(body)
        model = body.get("model")
        if model is None:
            body["model"] = edits["model"] = key.model
        elif model != key.model:
            raise ModelNotAllowed(f"This key may use model '{key.model}' only", param="model")
        stream = entry.stream = body.get("stream") is True
        requested = [
            optional_int(body, field, 1, MAX_OUTPUT_TOKENS)
            for field in ("max_tokens", "max_completion_tokens")
        ]
        given = [value for value in requested if value is not None]
        requested_max = max(given) if given else None

        encoding = await self.encoders.aget(key.encoding)
        # The exact count of a body admitted on its size bound: at once for a body
        # counted on the loop anyway (a task, a shield and a callback would cost
        # more than the count), later for a larger one (``pending`` below).
        known: counting.InputCount | None = None
        if deferred:
            counted = counting.InputCount(0)
            if pool is None and len(raw) <= counting.INLINE_BODY_BYTES:
                known = count_collected(collect(body), encoding, self.max_tokenize_chars)
                entry.input_tokens = known.tokens
        else:
            if inspected is not None and inspected.count is not None:
                counted = inspected.count
            else:
                counted = await self._count(body, encoding, len(raw), refusal_limit(key.limits))
            if upstream_counts:
                assert self.upstream_counter is not None
                prepared = inspected.counter_body if inspected is not None else None
                counted = await self.upstream_counter.judge(
                    key, adapter, body, counted, entry, prepared=prepared
                )
            entry.input_tokens = counted.tokens
        decision = decide(key.limits, counted.tokens, requested_max, input_exact=counted.exact)
        if deferred and decision.rejection is not None:
            # Refused for its output bound: the record still gets the exact input.
            counted = known or await self._count_raw(pool, raw, body, encoding, key)
            entry.input_tokens = counted.tokens
            deferred = False
        input_tokens = counted.tokens
        entry.input_limit_exceeded = decision.input_exceeded
        entry.output_limit_exceeded = decision.output_exceeded
        if decision.rejection == INPUT_LIMIT_EXCEEDED and counted.uncountable:
            raise InputNotCountable(
                f"The input cannot be counted against this key's input limit of "
                f"{key.limits.input_limit} tokens: {counted.uncountable}",
                param="messages",
            )
        if decision.rejection == INPUT_LIMIT_EXCEEDED:
            counted_as = (
                f"{input_tokens}"
                if counted.exact
                else f"at least {input_tokens} (too large to count exactly)"
            )
            raise InputTokenLimitExceeded(
                f"The input is {counted_as} tokens; this key allows "
                f"{key.limits.input_limit} per request",
                param="messages",
            )
        if decision.rejection is not None:
            raise OutputTokenLimitExceeded(
                f"The request asks for up to {requested_max} output tokens; this key "
                f"allows {key.limits.output_limit}",
                param="max_completion_tokens" if requested[1] is not None else "max_tokens",
            )
        injected = False
        if decision.inject_max_tokens is not None:
            body[max_tokens_field(key.model)] = decision.inject_max_tokens
            edits[max_tokens_field(key.model)] = decision.inject_max_tokens
            injected = True
        client_wants_usage = False
        if stream:
            options = body.get("stream_options")
            client_wants_usage = bool(options and options.get("include_usage"))
            if not client_wants_usage:
                body["stream_options"] = {**(options or {}), "include_usage": True}
                edits["stream_options"] = {"include_usage": True}
        upstream_body = await self._upstream_body(
            pool, adapter, raw, body, edits, present, inspected.deep if inspected else None
        )
        exceeded = decision.exceeded_header()
        # Budgets and rates (aigw.budgets): checked and reserved last, once nothing
        # else can refuse the request; the pipeline settles the hold.
        hold = None
        if key.budget is not None and self.limiter is not None:
            hold = await self.limiter.admit(
                key.id,
                key.budget,
                entry,
                enforce=not key.limits.use_anyway,
                output_hint=requested_max or decision.inject_max_tokens,
            )
            exceeded = ",".join(part for part in (exceeded, hold.exceeded) if part) or None
        response_headers = key_headers(key, entry)
        if exceeded:
            response_headers.append((b"x-aigw-limit-exceeded", exceeded.encode()))
        pending: asyncio.Future[counting.InputCount] | None = None
        record_count: Callable[[], Awaitable[counting.InputCount]] | None = None
        if deferred and known is None:
            # A large body's count for the record runs in a worker at a lower
            # priority, also when this process parsed it (plain): in the tokenizer
            # threads it took the CPU from the loop relaying the answers of the
            # next bodies (a 100k-token prompt's time to first byte: 12 -> 44 ms).
            large = pool is not None or plain
            recorder = self.record_pool if large and self.record_pool else pool
            count = functools.partial(self._count_raw, recorder, raw, body, encoding, key)
            if recorder is not None:
                record_count = count  # started after the answer (count_for_record)
            else:
                pending = asyncio.ensure_future(count())
                pending.add_done_callback(lambda done: _record_count(done, entry))
        return Admitted(
            pending_count=pending,
            record_count=record_count,
            body=body,
            upstream_body=upstream_body,
            stream=stream,
            client_wants_usage=client_wants_usage,
            decision=decision,
            injected_max=injected,
            response_headers=response_headers,
            hold=hold,
        )
