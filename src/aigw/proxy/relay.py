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


class _Choice:
    __slots__ = ("counter", "cut", "finish_reason")

    def __init__(self, counter: counting.OutputCounter) -> None:
        self.counter = counter
        self.cut = False
        self.finish_reason: str | None = None


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

    @property
    def all_finished(self) -> bool:
        return bool(self._choices) and all(
            state.cut or state.finish_reason is not None for state in self._choices.values()
        )

    def cut_indexes(self) -> list[int]:
        return [index for index, state in sorted(self._choices.items()) if state.cut]

    def outcome(self, injected_max: bool) -> str:
        """``truncated`` when the gateway cut the output or its own bound ended it."""
        reasons = {state.finish_reason for state in self._choices.values()}
        if self.any_cut or (injected_max and "length" in reasons):
            return "truncated"
        return "completed"

    def take_message(self, state: _Choice, message: dict[str, Any]) -> bool:
        """Count a message (or a delta) of one choice; trim it where the output
        reaches the limit. Returns whether the message was changed."""
        if self._cap is not None and not state.cut and not self._apply_cap(state, self._cap):
            state.cut = self.any_cut = True
        if state.cut:
            return _clear_message(message)
        counter = state.counter
        for field in ("content", "refusal"):
            text = message.get(field)
            if isinstance(text, str) and text:
                kept, reached = counter.feed(text, field)
                if reached:
                    state.cut = self.any_cut = True
                    message[field] = kept
                    _drop_after(message, field)
                    return True
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                arguments = function.get("arguments") if isinstance(function, dict) else None
                if isinstance(arguments, str) and arguments:
                    # Stream deltas name their call by "index"; whole messages by position.
                    index = call.get("index", position)
                    kept, reached = counter.feed(arguments, ("tool", index))
                    if reached:
                        state.cut = self.any_cut = True
                        function["arguments"] = kept  # type: ignore[index]
                        del calls[position + 1 :]
                        return True
        legacy = message.get("function_call")
        if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
            kept, reached = counter.feed(legacy["arguments"], "function_call")
            if reached:
                state.cut = self.any_cut = True
                legacy["arguments"] = kept
                return True
        return False


def _drop_after(message: dict[str, Any], field: str) -> None:
    if field == "content":
        message.pop("refusal", None)
    message.pop("tool_calls", None)
    message.pop("function_call", None)


def _clear_message(message: dict[str, Any]) -> bool:
    changed = False
    for field in ("content", "refusal", "tool_calls", "function_call"):
        if message.get(field):
            message.pop(field)
            changed = True
    return changed


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

    __slots__ = ("adapter", "admitted", "clock", "downstream", "entry", "limits", "output")

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
                if state.cut:
                    choice["finish_reason"] = "length"
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
        """Relay SSE until ``[DONE]`` (or the cut-off); returns whether the upstream
        body was read to its end (the connection can be reused)."""
        translator = self.adapter.new_stream()
        decoder = UpstreamSSEDecoder(self.clock.max_event_bytes)  # issue 10: bounded
        read = response.content.readany
        output, downstream = self.output, self.downstream
        last_chunk: dict[str, Any] | None = None
        finished = False
        while not finished:
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
                            finished = True
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
                        if output.any_cut and output.all_finished:
                            finished = True
                            break
                    if finished:
                        break
            except UpstreamError:
                # Relay what came before the failure, then let it end the stream.
                if out:
                    await self._start_stream()
                    await downstream.write(b"".join(out))
                raise
            if output.any_cut and output.all_finished:
                out.append(self._cut_tail(last_chunk))
                out.append(DONE_EVENT)
            elif finished:
                out.append(DONE_EVENT)
            if out:
                payload = b"".join(out)
                await self._start_stream()
                if finished:
                    self._finished()
                    await downstream.end(payload)
                    return not output.any_cut
                await downstream.write(payload)
        # The upstream ended without [DONE].
        for event in decoder.close():
            if event.data == b"[DONE]":
                break
        self.entry.output_tokens = output.tokens
        if output.all_finished:
            # Lenient: every choice finished, only the end marker is missing.
            await self._start_stream()
            self._finished()
            await downstream.end(DONE_EVENT)
            return True
        raise UpstreamConnectionLost("The upstream stream ended before it was complete")

    def _take_chunk(self, chunk: dict[str, Any], item: StreamItem) -> bytes | None:
        """Account one chunk; returns the bytes to relay (``None``: drop it)."""
        if "error" in chunk and not chunk.get("choices"):
            error = chunk.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            # issue 10: redacted, then cut to length, by upstream.redact_key_code
            raise UpstreamMidStreamError(str(message) if message else None)
        output = self.output
        changed = item.raw is None
        choices = chunk.get("choices")
        if choices:
            if not isinstance(choices, list):
                raise UpstreamProtocolError()
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                state = output.choice(choice.get("index", 0))
                was_cut = state.cut
                delta = choice.get("delta")
                if isinstance(delta, dict) and output.take_message(state, delta):
                    changed = True
                if state.cut:
                    if choice.get("finish_reason") is not None:
                        choice["finish_reason"] = None
                        changed = True
                    if was_cut and not delta:
                        continue
                else:
                    reason = choice.get("finish_reason")
                    if reason is not None:
                        state.finish_reason = reason
        usage = chunk.get("usage")
        if usage:
            _take_upstream_usage(self.entry, usage)
            if not self.admitted.client_wants_usage:
                if not choices:
                    return None
                del chunk["usage"]
                changed = True
        if changed:
            return encode_json(chunk)
        return item.raw

    def _cut_tail(self, last_chunk: dict[str, Any] | None) -> bytes:
        """The events that end a stream the gateway cut: a ``finish_reason: "length"``
        chunk per cut choice and, when the client asked for it, a usage chunk."""
        last = last_chunk or {}
        base = {
            "id": last.get("id", "chatcmpl-aigw"),
            "object": "chat.completion.chunk",
            "created": last.get("created", int(time.time())),
            "model": last.get("model", self.admitted.body.get("model")),
        }
        if "system_fingerprint" in last:
            base["system_fingerprint"] = last["system_fingerprint"]
        choices: list[dict[str, Any]] = [
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": "length"}
            for index in self.output.cut_indexes()
        ]
        parts = [encode_json({**base, "choices": choices})]
        if self.admitted.client_wants_usage:
            prompt, completion = self.entry.input_tokens, self.output.tokens
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            parts.append(encode_json({**base, "choices": [], "usage": usage}))
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
