"""Relaying a Responses answer, whole or as typed SSE events, and the cut-off.

Generated text counts as output wherever the model wrote it: message text and
refusals, reasoning summaries and reasoning text, function-call arguments,
custom-tool input, MCP-call arguments and code-interpreter code. The count is
one :class:`~aigw.proxy.counting.OutputCounter` over the whole response (a
response has one output, unlike chat's ``n`` choices); each text is a channel.

The cut (``reject`` with an output limit ``L``): when the output would pass
``L`` tokens, the gateway relays exactly the first ``L`` and ends the answer
as OpenAI ends one that reached ``max_output_tokens`` — ``status:
"incomplete"``, ``incomplete_details: {"reason": "max_output_tokens"}``, the
item being written ``status: "incomplete"`` and later items dropped. A stream
gets the closing events of every open part and item (``….done`` with the text
relayed, ``response.content_part.done``, ``response.output_item.done``) and a
final ``response.incomplete`` carrying the response as relayed, its usage the
gateway's counts; then the upstream request is closed. Events are relayed as
received otherwise; item state is only kept when a cut can happen.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import aiohttp
import orjson

from aigw.proxy import counting
from aigw.proxy.downstream import Downstream
from aigw.proxy.errors import UpstreamConnectionLost, UpstreamProtocolError
from aigw.proxy.exchange import Prepared, upstream_usage, with_output_flag
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.policy import flags_output, is_over
from aigw.proxy.responses.closing import (
    INCOMPLETE,
    ITEM_FIELDS,
    StreamClosing,
    encode_event,
    event_index,
    part_field,
)
from aigw.proxy.upstream import UpstreamClock, UpstreamSSEDecoder, read_whole
from aigw.usage.entry import UsageEntry

_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
# Stream delta events: (what the text belongs to, the field it accumulates into).
_DELTAS = {
    "response.output_text.delta": "content",
    "response.refusal.delta": "content",
    "response.reasoning_text.delta": "content",
    "response.reasoning_summary_text.delta": "summary",
    "response.function_call_arguments.delta": "field",
    "response.custom_tool_call_input.delta": "field",
    "response.mcp_call_arguments.delta": "field",
    "response.code_interpreter_call_code.delta": "field",
}
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesRelay(StreamClosing):
    """The answer to one admitted Responses request (see the module docstring)."""

    def __init__(
        self,
        prepared: Prepared,
        key: ResolvedKey,
        entry: UsageEntry,
        downstream: Downstream,
        clock: UpstreamClock,
        encoding: Any,
    ) -> None:
        self.prepared = prepared
        self.key = key
        self.entry = entry
        self.downstream = downstream
        self.clock = clock
        cut_at = prepared.decision.cut_output_at
        self._encoding = encoding
        self.counter = counting.OutputCounter(encoding, cut_at)
        self.cut = False
        # Stream state, kept only when the gateway may have to close the answer itself.
        self._track = cut_at is not None
        self._snapshot: dict[str, Any] = {}
        self._items: dict[int, dict[str, Any]] = {}
        self._done_items: set[int] = set()
        self._done: set[Hashable] = set()
        self._texts: dict[Hashable, list[str]] = {}
        self._sequence = 0

    @property
    def output_tokens(self) -> int:
        return self.counter.count

    # -- whole answers -----------------------------------------------------------

    async def whole(self, response: aiohttp.ClientResponse) -> bool:
        raw = await read_whole(response, self.clock)  # bounded (issue 10)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent malformed JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamProtocolError("The upstream provider sent an unexpected body")
        changed = self._take_response(answer)
        self._settle(answer)
        entry = self.entry
        usage = answer.get("usage")
        if self.cut and isinstance(usage, dict):
            usage["output_tokens"] = entry.output_tokens
            if type(usage.get("input_tokens")) is int:
                usage["total_tokens"] = usage["input_tokens"] + entry.output_tokens
        headers = self.prepared.response_headers
        if flags_output(self.key.limits, entry.output_tokens):
            entry.output_limit_exceeded = True
            headers = with_output_flag(headers, self.prepared.decision)
        await self.downstream.answer(200, orjson.dumps(answer) if changed else raw, headers)
        return True

    def _take_response(self, answer: dict[str, Any]) -> bool:
        """Count a whole response's output; cut it at the limit. Returns whether it changed."""
        output = answer.get("output")
        if not isinstance(output, list):
            return False
        for position, item in enumerate(output):
            if isinstance(item, dict) and self._take_item(position, item):
                del output[position + 1 :]
                item["status"] = "incomplete"
                answer["status"] = "incomplete"
                answer["incomplete_details"] = dict(INCOMPLETE)
                if isinstance(answer.get("output_text"), str):
                    answer["output_text"] = "".join(
                        part.get("text", "")
                        for entry in output
                        if isinstance(entry, dict) and entry.get("type") == "message"
                        for part in entry.get("content") or ()
                        if isinstance(part, dict) and part.get("type") == "output_text"
                    )
                return True
        return False

    def _feed(self, text: str, channel: Hashable) -> tuple[str, bool]:
        kept, reached = self.counter.feed(text, channel)
        if not reached and kept != text:
            # The counter holds text back when a longer prefix might fit once more
            # arrives (chat waits for it). A Responses answer closes its parts with
            # .done events that repeat the whole text, so held text would leak
            # there: the cut is made here instead, at most a few tokens short of L
            # in the rare texts whose token count shrinks as they grow.
            self.counter.close()
            reached = True
        if reached:
            self.cut = True
        return kept, reached

    def _take_item(self, position: int, item: dict[str, Any]) -> bool:
        """Count one output item; True when the cut fell inside it (it is trimmed)."""
        kind = item.get("type")
        field = ITEM_FIELDS.get(str(kind))
        if field is not None:
            text = item.get(field)
            if isinstance(text, str) and text:
                kept, reached = self._feed(text, (position, "field", 0))
                if reached:
                    item[field] = kept
                    return True
            return False
        for group in ("summary", "content"):
            parts = item.get(group)
            if not isinstance(parts, list):
                continue
            for index, part in enumerate(parts):
                if not isinstance(part, dict):
                    continue
                name = part_field(part)
                text = part.get(name)
                if not isinstance(text, str) or not text:
                    continue
                kept, reached = self._feed(text, (position, group, index))
                if reached:
                    part[name] = kept
                    _trim_part_extras(
                        part, kept, self.counter.channel_count((position, group, index))
                    )
                    del parts[index + 1 :]
                    if group == "summary" and isinstance(item.get("content"), list):
                        item["content"] = []
                    return True
        return False

    def _settle(self, answer: dict[str, Any]) -> None:
        """The record's counts and outcome, from the response object as relayed."""
        entry = self.entry
        entry.output_tokens = self.counter.count
        entry.status_code = 200
        response = answer
        upstream_usage(entry, response.get("usage"), "input_tokens", "output_tokens")
        if self.prepared.uncountable and entry.upstream_input_tokens is not None:
            # The gateway saw only part of the input: the upstream's count is the real one.
            entry.input_tokens = max(entry.input_tokens, entry.upstream_input_tokens)
            if is_over(entry.input_tokens, self.key.limits.input_limit):
                entry.input_limit_exceeded = True
        status = response.get("status")
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        if self.cut or (
            self.prepared.injected_max and status == "incomplete" and reason == "max_output_tokens"
        ):
            entry.outcome = "truncated"
        elif status == "failed":
            entry.outcome = "upstream_error"
            error = response.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            entry.error_code = str(code) if code is not None else "response_failed"
        else:
            entry.outcome = "completed"

    # -- streams -----------------------------------------------------------------

    async def stream(self, response: aiohttp.ClientResponse) -> bool:
        """Relay typed events until the terminal one (or the cut); returns whether the
        upstream body was read to its end."""
        decoder = UpstreamSSEDecoder(self.clock.max_event_bytes)  # bounded (issue 10)
        read = response.content.readany
        downstream = self.downstream
        while True:
            data = await read()
            if not data:
                break
            events = decoder.feed(data)
            if not events:
                continue
            out: list[bytes] = []
            ended = False
            for event in events:
                if event.data is None:
                    out.append(event.raw)  # a comment: relayed, not progress
                    continue
                self.clock.event()
                if event.data == b"[DONE]":
                    ended = True
                    break
                payload = self._parse(event.data)
                relayed, ended = self._take_event(payload, event.raw)
                out.append(relayed)
                if ended:
                    break
            if out:
                if not downstream.started:
                    await downstream.start(200, [*_SSE_HEADERS, *self.prepared.response_headers])
                if ended:
                    await downstream.end(b"".join(out))
                    return not self.cut
                await downstream.write(b"".join(out))
        self.entry.output_tokens = self.counter.count
        raise UpstreamConnectionLost("The upstream stream ended before it was complete")

    @staticmethod
    def _parse(data: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent a malformed event") from None
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("The upstream provider sent a malformed event")
        return payload

    def _take_event(self, event: dict[str, Any], raw: bytes) -> tuple[bytes, bool]:
        """Account one event; returns the bytes to relay and whether the stream ends."""
        kind = event.get("type")
        if not isinstance(kind, str):  # a list or an object cannot be looked up in a set
            kind = str(kind)
        sequence = event.get("sequence_number")
        if type(sequence) is int:
            self._sequence = sequence
        group = _DELTAS.get(str(kind))
        if group is not None:
            delta = event.get("delta")
            if not isinstance(delta, str) or not delta:
                return raw, False
            channel = _channel(event, group)
            kept, reached = self._feed(delta, channel)
            if self._track:
                self._texts.setdefault(channel, []).append(kept)
            if not reached:
                return raw, False
            parts = []
            if kept:
                event["delta"] = kept
                if isinstance(event.get("logprobs"), list):
                    event["logprobs"] = event["logprobs"][
                        : len(self._encoding.encode_ordinary(kept))
                    ]
                parts.append(encode_event(event))
            parts.extend(self._close())
            return b"".join(parts), True
        if kind in _TERMINAL:
            answer = event.get("response")
            self._settle(answer if isinstance(answer, dict) else {})
            return raw, True
        if kind == "error":
            entry = self.entry
            entry.output_tokens = self.counter.count
            entry.outcome, entry.status_code = "upstream_error", 200
            code = event.get("code")
            entry.error_code = str(code)[:64] if code is not None else "upstream_error"
            return raw, True
        if self._track:
            self._remember(str(kind), event)
        return raw, False


def _channel(event: dict[str, Any], group: str) -> Hashable:
    """The counting channel of a delta; the same as :meth:`ResponsesRelay._take_item`'s."""
    index = event_index(event.get("output_index"))
    if group == "summary":
        return (index, "summary", event_index(event.get("summary_index")))
    if group == "content":
        return (index, "content", event_index(event.get("content_index")))
    return (index, "field", 0)


def _trim_part_extras(part: dict[str, Any], kept: str, tokens: int) -> None:
    """Annotations past the kept text and log-probabilities past its tokens go."""
    annotations = part.get("annotations")
    if isinstance(annotations, list):
        part["annotations"] = [
            note
            for note in annotations
            if not isinstance(note, dict)
            or not isinstance(note.get("end_index"), int)
            or note["end_index"] <= len(kept)
        ]
    logprobs = part.get("logprobs")
    if isinstance(logprobs, list):
        part["logprobs"] = logprobs[:tokens]
