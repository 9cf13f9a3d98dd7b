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

import time
from typing import Any

import aiohttp
import orjson

from aigw.budgets.guard import text_bytes
from aigw.proxy.accounting import ChoiceState, Output, expected_choices
from aigw.proxy.adapters.base import Adapter, StreamItem
from aigw.proxy.admission import Admitted
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import (
    UpstreamConnectionLost,
    UpstreamError,
    UpstreamMidStreamError,
    UpstreamProtocolError,
)
from aigw.proxy.plain import PlainEvents
from aigw.proxy.policy import Limits, flags_output
from aigw.proxy.sse import DONE_EVENT, encode_json
from aigw.proxy.upstream import UpstreamClock, UpstreamSSEDecoder, read_whole
from aigw.usage.entry import UsageEntry

# Unchanged chunks tried as the model of plain events (aigw.proxy.plain) before giving up.
_LEARN_TRIES = 4
_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


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
        "_plain",
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
        # Plain content events, relayed without parsing while no cut is possible.
        self._plain: PlainEvents | None = None

    @property
    def output_tokens(self) -> int:
        if self._plain is not None:
            self._plain.flush()
        return self.output.tokens

    def _finished(self) -> None:
        self.entry.output_tokens = self.output_tokens
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
        expected = expected_choices(self.admitted.body)
        # Plain events are learnt only where relaying one unparsed changes nothing;
        # until then events are taken one at a time, so the rest of a read can be plain.
        learning = _LEARN_TRIES if self.adapter.relays_raw and not output.capped else 0
        last_chunk: dict[str, Any] | None = None
        done = early = False
        while not done:
            data = await read()
            if not data:
                break
            out: list[bytes] = []
            pos, size = 0, len(data)
            try:
                while pos < size and not done:
                    plain = self._plain
                    if plain is not None:
                        if decoder.idle:
                            end = plain.take(data, pos)
                            if end > pos:
                                self.clock.event()
                                last_chunk = plain.chunk
                                out.append(data[pos:end])
                                pos = end
                                if pos == size:
                                    break
                        plain.flush()  # the text kept comes first in the count
                    if plain is not None or learning:
                        cut = data.find(b"\n\n", pos)
                        stop = size if cut < 0 else cut + 2
                    else:
                        stop = size
                    events = decoder.feed(data[pos:stop] if pos or stop < size else data)
                    pos = stop
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
                                if learning and relay is item.raw:
                                    learning -= 1
                                    self._plain = self._learn(chunk, relay)
                                    if self._plain is not None:
                                        learning = 0
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
                await self._count_for_ending()
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
        self.entry.output_tokens = self.output_tokens
        if output.all_finished():
            # Lenient: every choice finished, only the end marker is missing.
            await self._start_stream()
            self._finished()
            await self._count_for_ending()
            await downstream.end(self._ending(last_chunk))
            return True
        raise UpstreamConnectionLost("The upstream stream ended before it was complete")

    def _learn(self, chunk: dict[str, Any], raw: bytes) -> PlainEvents | None:
        choices = chunk.get("choices")
        if not choices or choices.__class__ is not list or choices[0].__class__ is not dict:
            return None
        state = self.output.choice(choices[0].get("index", 0))
        return PlainEvents.learn(chunk, raw, state, self.clock.max_event_bytes)

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

    def _end_choice(self, state: ChoiceState, choice: dict[str, Any], reason: Any) -> bool:
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

    async def _count_for_ending(self) -> None:
        # A usage chunk the gateway writes after a cut (output.close() can make one
        # at the end) reports the input count.
        if self.admitted.client_wants_usage and not self._usage_sent:
            await self.admitted.settle_count(self.entry)

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
