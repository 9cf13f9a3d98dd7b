"""Relaying the upstream's answer to the client, whole or streamed.

Upstream events are relayed byte for byte unless the gateway changes them: the
cut-off at the output limit (per choice, as ``max_tokens`` is), and stripping
the usage chunk the client did not ask for. Response headers wait for the
first event, so a failure before it is still a proper 502/504 in OpenAI's
envelope; after it, a failure becomes a final ``data: {"error": …}`` event and
the stream ends without ``[DONE]`` (the SDKs raise on that event; a client
waiting for ``[DONE]`` sees an incomplete stream, which is what it is).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from typing import Any

import aiohttp
import orjson
from starlette.types import Message, Send

from aigw.budgets.guard import Hold, text_bytes
from aigw.errors import AigwError, openai_error_body
from aigw.proxy import counting
from aigw.proxy.adapters.base import Adapter, StreamItem
from aigw.proxy.admission import Admitted
from aigw.proxy.errors import (
    ClientGone,
    UpstreamConnectionLost,
    UpstreamError,
    UpstreamMidStreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    error_event,
)
from aigw.proxy.policy import Limits, flags_output
from aigw.proxy.sse import DONE_EVENT, encode_json
from aigw.proxy.upstream import UpstreamClock, UpstreamSSEDecoder, read_whole
from aigw.usage.recorder import UsageEntry

_JSON = b"application/json"
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class Downstream:
    """The client side of an exchange: raw ASGI messages, one send per relayed read.

    Writes have a timeout (``AIGW_CLIENT_WRITE_TIMEOUT``): a client that stops
    reading fills its socket buffer and the server's send waits; past the bound the
    write is abandoned with :class:`ClientGone`, so the caller closes the upstream
    request at once. One lazily re-armed timer per exchange, not one per write.
    """

    # --- issue 10 (write timeout): _timeout.._timed_out and _guarded ----------------
    __slots__ = (
        "_send",
        "_task",
        "_timed_out",
        "_timeout",
        "_timer",
        "_writing_since",
        "ended",
        "first_byte_at",
        "started",
    )

    def __init__(self, send: Send, write_timeout: float | None = None) -> None:
        self._send = send
        self._timeout = write_timeout
        self._writing_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timed_out = False
        self.started = False
        self.ended = False
        self.first_byte_at: float | None = None

    async def _guarded(self, message: Message) -> None:
        if self._timeout is None:
            await self._send(message)
            return
        loop = asyncio.get_running_loop()
        self._writing_since = loop.time()
        if self._timer is None:
            self._task = asyncio.current_task()
            self._timer = loop.call_at(self._writing_since + self._timeout, self._check)
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if self._timed_out and self._task is not None:
                self._task.uncancel()
                raise ClientGone() from None
            raise
        finally:
            self._writing_since = None

    def _check(self) -> None:
        self._timer = None
        since = self._writing_since
        if since is None or self._timeout is None or self._task is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - since >= self._timeout:
            self._timed_out = True
            self._task.cancel()
        else:
            self._timer = loop.call_at(since + self._timeout, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- end issue 10 ----------------------------------------------------------------

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._guarded({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        await self._guarded({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        if data and self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
        self.ended = True
        try:
            await self._guarded({"type": "http.response.body", "body": data, "more_body": False})
        finally:
            self._disarm()

    async def answer(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole JSON answer."""
        length = (b"content-length", str(len(body)).encode())
        await self.start(status, [(b"content-type", _JSON), length, *headers])
        await self.end(body)


# Tokens a tool call costs besides its name and arguments. OpenAI's API
# reference (chat/create, "Functions" example) answers one call of
# get_current_weather (3 tokens) with arguments '{\n"location": "Boston, MA"\n}'
# (10 tokens) with completion_tokens = 17.
TOOL_CALL_TOKENS = 4

# Text fields of a message or delta, each counted on its own channel. vLLM and
# DeepSeek stream reasoning as "reasoning_content", OpenRouter (and newer vLLM)
# as "reasoning"; a delta that carries both with the same text counts it once.
_TEXT_CHANNELS = {
    "reasoning_content": "reasoning",
    "reasoning": "reasoning",
    "content": "content",
    "refusal": "refusal",
}
_TEXT_ORDER = tuple(_TEXT_CHANNELS)
_TEXT_FIELDS = frozenset(_TEXT_CHANNELS)
_REASONING_TWIN = {"reasoning_content": "reasoning", "reasoning": "reasoning_content"}
# Fields that carry generated output; all of them go once a choice is cut.
_OUTPUT_FIELDS = (
    "content",
    "refusal",
    "reasoning_content",
    "reasoning",
    "reasoning_details",
    "tool_calls",
    "function_call",
)


class _Choice:
    __slots__ = ("counter", "cut", "ended", "finish_reason", "tool_calls")

    def __init__(self, counter: counting.OutputCounter) -> None:
        self.counter = counter
        self.cut = False  # the gateway cut this choice's output
        self.ended = False  # its finish_reason has been relayed: later deltas are dropped
        self.finish_reason: str | None = None
        self.tool_calls: set[Any] = set()  # calls whose name and framing are counted


class Output:
    """Output accounting for one response, per choice (the limit is per choice,
    as ``max_tokens`` is): counts what is relayed and trims at the cut-off."""

    __slots__ = ("_cap", "_choices", "_cut_at", "_encoding", "any_cut", "budget")

    def __init__(self, encoding: Any, cut_at: int | None, budget: Hold | None = None) -> None:
        self._encoding = encoding
        self._cut_at = cut_at
        self._choices: dict[int, _Choice] = {}
        self.any_cut = False
        # A budget reservation bounds all choices together (aigw.budgets.guard).
        self.budget = budget if budget is not None and budget.caps_output else None
        self._cap = self.budget.output_reserved if self.budget is not None else None

    def cap_total(self, cap: int) -> None:
        """Bound the output of all choices together to *cap* tokens."""
        self._cap = cap

    def _apply_cap(self, state: _Choice, cap: int) -> bool:
        """Bound *state*'s counter to what the cap leaves it; False when nothing is left."""
        room = cap
        if len(self._choices) > 1:
            room -= sum(s.counter.count for s in self._choices.values() if s is not state)
        room = min(room, self._cut_at) if self._cut_at else room
        if room <= 0:
            return False
        state.counter.limit = room
        return True

    def choice(self, index: Any) -> _Choice:
        """The state of choice *index* (anything but an int counts as choice 0)."""
        if not isinstance(index, int):
            index = 0
        state = self._choices.get(index)
        if state is None:
            counter = counting.OutputCounter(self._encoding, self._cut_at)
            state = self._choices[index] = _Choice(counter)
        return state

    @property
    def tokens(self) -> int:
        return sum(state.counter.count for state in self._choices.values())

    def all_finished(self, expected: int = 1) -> bool:
        """Whether *expected* choices (at least) were seen and all of them ended."""
        return len(self._choices) >= expected and all(
            state.cut or state.finish_reason is not None for state in self._choices.values()
        )

    def cut_indexes(self) -> list[int]:
        return [index for index, state in sorted(self._choices.items()) if state.cut]

    def close(self) -> list[int]:
        """The answer ended: text still held back past the limit is cut. Returns
        the choices cut whose ``finish_reason: "length"`` was not relayed yet."""
        pending = []
        for index, state in sorted(self._choices.items()):
            if not state.cut and state.counter.close():
                state.cut = self.any_cut = True
            if state.cut and not state.ended:
                state.ended = True
                state.finish_reason = "length"
                pending.append(index)
        return pending

    def outcome(self, injected_max: bool) -> str:
        """``truncated`` when the gateway cut the output or its own bound ended it."""
        reasons = {state.finish_reason for state in self._choices.values()}
        if self.any_cut or (injected_max and "length" in reasons):
            return "truncated"
        return "completed"

    def take_message(self, state: _Choice, message: dict[str, Any]) -> bool:
        """Count a message (or a delta) of one choice: reasoning, content,
        refusal, tool calls (name, framing and arguments, or a custom tool's
        input) and legacy ``function_call``; trim it where the output reaches the
        limit. Returns whether the message was changed."""
        if self._cap is not None and not state.cut and not self._apply_cap(state, self._cap):
            state.cut = self.any_cut = True
        if state.cut:
            return _clear_message(message)
        counter = state.counter
        changed = False
        skip = None  # a reasoning twin already counted with the same text
        # In the order the model generates them: reasoning, then the answer.
        for field in _TEXT_ORDER:
            value = message.get(field)
            if value.__class__ is not str or not value or field == skip:
                continue
            channel = _TEXT_CHANNELS[field]
            twin = _REASONING_TWIN.get(field)
            if twin is not None and message.get(twin) == value:
                skip = twin
            else:
                twin = None
            kept, ended = counter.feed(value, channel)
            if kept is not value:
                message[field] = kept
                if twin is not None:
                    message[twin] = kept
                changed = True
            if ended:
                kept_fields = _TEXT_ORDER[: _TEXT_ORDER.index(field) + 1]
                self._cut(state, message, keep=(*kept_fields, twin or field))
                return True
        if "tool_calls" not in message and "function_call" not in message:
            return changed
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list) and tool_calls:
            changed = self._take_tool_calls(state, message, tool_calls) or changed
            if state.cut:
                return True
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            changed = self._take_call(state, "function_call", legacy, "arguments") or changed
            if state.cut:
                if legacy.get("name") is None and not legacy.get("arguments"):
                    message.pop("function_call", None)
                self._cut(state, message, keep=_TEXT_FIELDS | {"tool_calls", "function_call"})
                return True
        return changed

    def _take_tool_calls(self, state: _Choice, message: dict[str, Any], calls: list[Any]) -> bool:
        changed = False
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            # Stream deltas name their call by "index"; whole messages by position.
            index = call.get("index", position)
            body, text_field = call.get("function"), "arguments"
            if not isinstance(body, dict):
                body, text_field = call.get("custom"), "input"  # custom tools
                if not isinstance(body, dict):
                    continue
            changed = self._take_call(state, ("tool", index), body, text_field) or changed
            if state.cut:
                # Keep this call only if some of it was relayed.
                relayed = body.get("name") is not None or body.get(text_field)
                del calls[position + 1 if relayed else position :]
                self._cut(state, message, keep=_TEXT_FIELDS | ({"tool_calls"} if calls else set()))
                return True
        return changed

    def _take_call(self, state: _Choice, key: Any, body: dict[str, Any], text_field: str) -> bool:
        """Count one tool call (or a piece of one): its name and framing once,
        then its arguments as text. Returns whether *body* was changed."""
        counter = state.counter
        name = body.get("name")
        if key not in state.tool_calls and isinstance(name, str) and name:
            state.tool_calls.add(key)
            cost = TOOL_CALL_TOKENS + len(self._encoding.encode_ordinary(name))
            if not counter.charge(cost):
                state.cut = self.any_cut = True
                body.pop("name", None)
                body.pop(text_field, None)
                return True
        text = body.get(text_field)
        if not isinstance(text, str) or not text:
            return False
        kept, ended = counter.feed(text, key)
        changed = kept is not text
        if changed:
            body[text_field] = kept
        if ended:
            state.cut = self.any_cut = True
        return changed

    def _cut(self, state: _Choice, message: dict[str, Any], keep: Collection[str]) -> None:
        state.cut = self.any_cut = True
        for field in _OUTPUT_FIELDS:
            if field not in keep:
                message.pop(field, None)


def _clear_message(message: dict[str, Any]) -> bool:
    changed = False
    for field in _OUTPUT_FIELDS:
        if message.get(field):
            message.pop(field)
            changed = True
    return changed


def _expected_choices(body: dict[str, Any]) -> int:
    """The choices the request asked for (``n``), so a stream cut in choice 0 is
    not ended before the others have arrived."""
    n = body.get("n")
    return n if type(n) is int and 1 <= n <= 128 else 1


def _take_upstream_usage(entry: UsageEntry, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if type(prompt) is int:
        entry.upstream_input_tokens = prompt
    if type(completion) is int:
        entry.upstream_output_tokens = completion


class Relay:
    """The answer to one admitted request: relays the upstream response to
    *downstream*, accounting its output in *output* and its outcome in *entry*."""

    __slots__ = (
        "_usage_sent",
        "adapter",
        "admitted",
        "clock",
        "downstream",
        "entry",
        "limits",
        "output",
    )

    def __init__(
        self,
        adapter: Adapter,
        admitted: Admitted,
        limits: Limits,
        entry: UsageEntry,
        downstream: Downstream,
        clock: UpstreamClock,
        output: Output,
    ) -> None:
        self.adapter = adapter
        self.admitted = admitted
        self.limits = limits
        self.entry = entry
        self.downstream = downstream
        self.clock = clock
        self.output = output
        self._usage_sent = False  # a usage chunk reporting the cut went out

    def _finished(self) -> None:
        self.entry.output_tokens = self.output.tokens
        self.entry.outcome = self.output.outcome(self.admitted.injected_max)
        self.entry.status_code = 200

    async def _start_stream(self) -> None:
        if not self.downstream.started:
            await self.downstream.start(200, [*_SSE_HEADERS, *self.admitted.response_headers])

    async def whole(self, response: aiohttp.ClientResponse) -> bool:
        """Relay a non-streamed answer; returns whether its body was read to the end."""
        raw = await read_whole(response, self.clock)  # issue 10: bounded
        output, entry = self.output, self.entry
        completion = self.adapter.parse_response(raw)
        if output.budget is not None:
            await output.budget.prepare(text_bytes(completion, "message"), output)
        changed = not self.adapter.relays_raw
        choices = completion.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                state = output.choice(choice.get("index", 0))
                message = choice.get("message")
                if isinstance(message, dict) and output.take_message(state, message):
                    changed = True
                if not state.cut and state.counter.close():
                    state.cut = output.any_cut = True  # text held back at the end: cut there
                if state.cut:
                    choice["finish_reason"] = "length"
                    changed = True
                state.finish_reason = choice.get("finish_reason")
        usage = completion.get("usage")
        _take_upstream_usage(entry, usage)
        self._finished()
        if output.any_cut and isinstance(usage, dict):
            usage["completion_tokens"] = entry.output_tokens
            if isinstance(usage.get("prompt_tokens"), int):
                usage["total_tokens"] = usage["prompt_tokens"] + entry.output_tokens
        headers = self.admitted.response_headers
        if flags_output(self.limits, entry.output_tokens):
            entry.output_limit_exceeded = True
            value = self.admitted.decision.exceeded_header(output_exceeded=True)
            assert value is not None
            kept = [(name, val) for name, val in headers if name != b"x-aigw-limit-exceeded"]
            headers = [*kept, (b"x-aigw-limit-exceeded", value.encode())]
        body = orjson.dumps(completion) if changed else raw
        await self.downstream.answer(200, body, headers)
        return True

    async def stream(self, response: aiohttp.ClientResponse) -> bool:
        """Relay SSE until ``[DONE]``, or until every choice has ended and one was
        cut; returns whether the upstream body was read to its end (the
        connection can be reused)."""
        translator = self.adapter.new_stream()
        decoder = UpstreamSSEDecoder(self.clock.max_event_bytes)  # issue 10: bounded
        read = response.content.readany
        output, downstream = self.output, self.downstream
        expected = _expected_choices(self.admitted.body)
        last_chunk: dict[str, Any] | None = None
        done = early = False
        while not done:
            data = await read()
            if not data:
                break
            events = decoder.feed(data)
            if not events:
                continue
            out: list[bytes] = []
            try:
                for event in events:
                    for item in translator.items(event):
                        if item.done:
                            done = True
                            break
                        chunk = item.chunk
                        if chunk is None:
                            out.append(item.raw or b"")  # a comment: relayed, not progress
                            continue
                        self.clock.event()
                        if output.budget is not None:
                            await output.budget.prepare(text_bytes(chunk, "delta"), output)
                        relay = self._take_chunk(chunk, item)
                        last_chunk = chunk
                        if relay:
                            out.append(relay)
                        if output.any_cut and output.all_finished(expected):
                            done = early = True
                            break
                    if done:
                        break
            except UpstreamError:
                # Relay what came before the failure, then let it end the stream.
                if out:
                    await self._start_stream()
                    await downstream.write(b"".join(out))
                raise
            if done:
                out.append(self._ending(last_chunk))
            if out:
                payload = out[0] if len(out) == 1 else b"".join(out)
                if not downstream.started:
                    await self._start_stream()
                if done:
                    self._finished()
                    await downstream.end(payload)
                    return not early
                await downstream.write(payload)
        # The upstream ended without [DONE].
        for event in decoder.close():
            if event.data == b"[DONE]":
                break
        self.entry.output_tokens = output.tokens
        if output.all_finished():
            # Lenient: every choice finished, only the end marker is missing.
            await self._start_stream()
            self._finished()
            await downstream.end(self._ending(last_chunk))
            return True
        raise UpstreamConnectionLost("The upstream stream ended before it was complete")

    def _take_chunk(self, chunk: dict[str, Any], item: StreamItem) -> bytes | None:
        """Account one chunk; returns the bytes to relay (``None``: drop it)."""
        choices = chunk.get("choices")
        if not choices and "error" in chunk:
            error = chunk.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            # issue 10: redacted, then cut to length, by upstream.redact_key_code
            raise UpstreamMidStreamError(str(message) if message else None)
        output = self.output
        changed = item.raw is None
        if choices:
            if choices.__class__ is not list:
                raise UpstreamProtocolError()
            dropped: list[int] | None = None
            for position, choice in enumerate(choices):
                if choice.__class__ is not dict:
                    continue
                state = output.choice(choice.get("index", 0))
                if state.ended:  # cut, and its end relayed: nothing more of it goes out
                    dropped = [*(dropped or ()), position]
                    continue
                delta = choice.get("delta")
                if delta and delta.__class__ is dict and output.take_message(state, delta):
                    changed = True
                reason = choice.get("finish_reason")
                if reason is not None or state.cut:
                    changed = self._end_choice(state, choice, reason) or changed
            if dropped:
                kept = [c for position, c in enumerate(choices) if position not in dropped]
                chunk["choices"] = kept
                changed = True
                if not kept and not chunk.get("usage"):
                    return None
        usage = chunk.get("usage")
        if usage:
            _take_upstream_usage(self.entry, usage)
            if not self.admitted.client_wants_usage:
                if not choices:
                    return None
                del chunk["usage"]
                changed = True
            elif output.any_cut and isinstance(usage, dict):
                self._usage_relayed(usage)
                changed = True
        if changed:
            return encode_json(chunk)
        return item.raw

    def _end_choice(self, state: _Choice, choice: dict[str, Any], reason: Any) -> bool:
        """A choice that finished or was cut: a cut (or text held back when it
        finished) ends it with ``length``. Returns whether *choice* was changed."""
        output = self.output
        if reason is not None and not state.cut and state.counter.close():
            state.cut = output.any_cut = True
        if not state.cut:
            state.finish_reason = reason
            return False
        state.ended = True
        state.finish_reason = "length"
        if reason == "length":
            return False
        choice["finish_reason"] = "length"
        return True

    def _usage_relayed(self, usage: dict[str, Any]) -> None:
        """The upstream's usage as relayed after a cut: ``completion_tokens`` is
        what the client got (the upstream's own figure stays on the record)."""
        completion = self.output.tokens
        usage["completion_tokens"] = completion
        if isinstance(usage.get("prompt_tokens"), int):
            usage["total_tokens"] = usage["prompt_tokens"] + completion
        # The upstream's breakdown described what it generated, not what was relayed.
        usage.pop("completion_tokens_details", None)
        self._usage_sent = True

    def _ending(self, last_chunk: dict[str, Any] | None) -> bytes:
        """The end of a stream: for choices cut with text held back (or cut but not
        yet ended), a ``finish_reason: "length"`` chunk; after a cut, a usage
        chunk when the client asked for one and the upstream's was not relayed;
        then ``[DONE]``."""
        pending = self.output.close()
        if not self.output.any_cut:
            return DONE_EVENT
        last = last_chunk or {}
        base = {
            "id": last.get("id", "chatcmpl-aigw"),
            "object": "chat.completion.chunk",
            "created": last.get("created", int(time.time())),
            "model": last.get("model", self.admitted.body.get("model")),
        }
        if "system_fingerprint" in last:
            base["system_fingerprint"] = last["system_fingerprint"]
        parts: list[bytes] = []
        if pending:
            choices: list[dict[str, Any]] = [
                {"index": index, "delta": {}, "logprobs": None, "finish_reason": "length"}
                for index in pending
            ]
            parts.append(encode_json({**base, "choices": choices}))
        if self.admitted.client_wants_usage and not self._usage_sent:
            prompt, completion = self.entry.input_tokens, self.output.tokens
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            parts.append(encode_json({**base, "choices": [], "usage": usage}))
            self._usage_sent = True
        parts.append(DONE_EVENT)
        return b"".join(parts)

    async def fail(self, exc: AigwError) -> None:
        """End the exchange with *exc*: a final error event when the answer has
        started, else an answer in OpenAI's envelope (an upstream 4xx passes
        through, in the envelope the adapter gives it)."""
        entry, downstream = self.entry, self.downstream
        entry.outcome = "upstream_error"
        entry.output_tokens = self.output.tokens
        entry.error_code = exc.code
        if downstream.started:
            entry.status_code = 200
            await downstream.end(error_event(exc.code, exc.detail))
            return
        headers = self.admitted.response_headers
        if isinstance(exc, UpstreamStatusError) and 400 <= exc.upstream_status < 500:
            body, code = self.adapter.error_envelope(exc.body, exc.upstream_status)
            entry.status_code, entry.error_code = exc.upstream_status, code
            relayed = [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in exc.relayed_headers.items()
            ]
            await downstream.answer(exc.upstream_status, body, [*relayed, *headers])
            return
        entry.status_code = exc.status_code
        body = openai_error_body(exc.detail, code=exc.code, error_type=exc.openai_type)
        await downstream.answer(exc.status_code, body, headers)
