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
from aigw.proxy.upstream import UpstreamClock, UpstreamSSEDecoder, read_whole
from aigw.usage.recorder import UsageEntry

_SSE_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)
_INCOMPLETE = {"reason": "max_output_tokens"}
# Item kinds whose one generated text field counts as output.
_ITEM_FIELDS = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "mcp_call": "arguments",
    "code_interpreter_call": "code",
}
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
_FIELD_DONE = {
    "function_call": "response.function_call_arguments.done",
    "custom_tool_call": "response.custom_tool_call_input.done",
    "mcp_call": "response.mcp_call_arguments.done",
    "code_interpreter_call": "response.code_interpreter_call_code.done",
}
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def encode_event(payload: dict[str, Any]) -> bytes:
    """One typed event, as OpenAI writes them (``event:`` then ``data:``)."""
    return (
        b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
    )


def _part_field(part: dict[str, Any]) -> str:
    return "refusal" if part.get("type") == "refusal" else "text"


class ResponsesRelay:
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
                answer["incomplete_details"] = dict(_INCOMPLETE)
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
        field = _ITEM_FIELDS.get(str(kind))
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
                name = _part_field(part)
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

    def _remember(self, kind: str, event: dict[str, Any]) -> None:
        """Keep what closing the answer needs: the response, its items and parts."""
        index = event.get("output_index")
        if kind in ("response.created", "response.in_progress", "response.queued"):
            response = event.get("response")
            if isinstance(response, dict):
                self._snapshot = response
        elif not isinstance(index, int):
            return
        elif kind == "response.output_item.added":
            item = event.get("item")
            if isinstance(item, dict):
                self._items[index] = item
        elif kind == "response.output_item.done":
            item = event.get("item")
            if isinstance(item, dict):
                self._items[index] = item
            self._done_items.add(index)
        elif kind in ("response.content_part.added", "response.reasoning_summary_part.added"):
            item = self._items.get(index)
            part = event.get("part")
            group = "content" if kind == "response.content_part.added" else "summary"
            position = event.get("content_index" if group == "content" else "summary_index")
            if item is not None and isinstance(part, dict) and isinstance(position, int):
                parts = item.get(group)
                if not isinstance(parts, list):
                    parts = item[group] = []
                while len(parts) <= position:
                    parts.append({})
                parts[position] = part
        elif kind.endswith(".done"):
            # A part or text finished: closing the answer must not finish it twice.
            self._done.add(
                (
                    kind,
                    index,
                    _index(event.get("content_index")),
                    _index(event.get("summary_index")),
                )
            )

    def _is_done(self, kind: str, index: int, content: int | None, summary: int | None) -> bool:
        return (kind, index, content, summary) in self._done

    def _next(self, payload: dict[str, Any]) -> bytes:
        self._sequence += 1
        return encode_event(
            {"type": payload.pop("type"), "sequence_number": self._sequence, **payload}
        )

    def _close(self) -> list[bytes]:
        """The events that end an answer the gateway cut: every open part and item
        closed with what was relayed, then ``response.incomplete``."""
        out: list[bytes] = []
        for index in sorted(self._items):
            if index in self._done_items:
                continue
            item = self._items[index]
            item_id = item.get("id")
            kind = str(item.get("type"))
            field = _ITEM_FIELDS.get(kind)
            if field is not None:
                text = "".join(self._texts.get((index, "field", 0), ()))
                item[field] = text
                if not self._is_done(_FIELD_DONE[kind], index, None, None):
                    out.append(
                        self._next(
                            {"type": _FIELD_DONE[kind], "item_id": item_id,
                             "output_index": index, field: text}
                        )
                    )  # fmt: skip
            for group in ("summary", "content"):
                parts = item.get(group)
                if not isinstance(parts, list):
                    continue
                for position, part in enumerate(parts):
                    if not isinstance(part, dict):
                        continue
                    out.extend(self._close_part(item, index, group, position, part))
            if "status" in item or kind in ("message", *_ITEM_FIELDS):
                item["status"] = "incomplete"
            out.append(
                self._next(
                    {"type": "response.output_item.done", "output_index": index, "item": item}
                )
            )
            self._done_items.add(index)
        response = dict(self._snapshot)
        response["status"] = "incomplete"
        response["incomplete_details"] = dict(_INCOMPLETE)
        response["output"] = [self._items[index] for index in sorted(self._items)]
        prompt, completion = self.entry.input_tokens, self.counter.count
        response["usage"] = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion,
        }
        out.append(self._next({"type": "response.incomplete", "response": response}))
        self._settle({**response, "usage": None})
        return out

    def _close_part(
        self, item: dict[str, Any], index: int, group: str, position: int, part: dict[str, Any]
    ) -> list[bytes]:
        out: list[bytes] = []
        item_id = item.get("id")
        name = _part_field(part)
        text = "".join(self._texts.get((index, group, position), ()))
        if text or name not in part:
            part[name] = text
        text = part.get(name, "")
        if group == "summary":
            if not self._is_done("response.reasoning_summary_text.done", index, None, position):
                out.append(
                    self._next(
                        {"type": "response.reasoning_summary_text.done", "item_id": item_id,
                         "output_index": index, "summary_index": position, "text": text}
                    )
                )  # fmt: skip
            if not self._is_done("response.reasoning_summary_part.done", index, None, position):
                out.append(
                    self._next(
                        {"type": "response.reasoning_summary_part.done", "item_id": item_id,
                         "output_index": index, "summary_index": position, "part": part}
                    )
                )  # fmt: skip
            return out
        kind = part.get("type")
        done = {
            "output_text": "response.output_text.done",
            "refusal": "response.refusal.done",
            "reasoning_text": "response.reasoning_text.done",
        }.get(str(kind))
        if done is not None and not self._is_done(done, index, position, None):
            payload: dict[str, Any] = {
                "type": done,
                "item_id": item_id,
                "output_index": index,
                "content_index": position,
                name: text,
            }
            if kind == "output_text":
                payload["logprobs"] = []
            out.append(self._next(payload))
        if not self._is_done("response.content_part.done", index, position, None):
            out.append(
                self._next(
                    {"type": "response.content_part.done", "item_id": item_id,
                     "output_index": index, "content_index": position, "part": part}
                )
            )  # fmt: skip
        return out


def _index(value: Any) -> int | None:
    """An index from an upstream event; anything but an integer (a list is not
    even hashable) reads as none."""
    return value if type(value) is int else None


def _channel(event: dict[str, Any], group: str) -> Hashable:
    """The counting channel of a delta; the same as :meth:`ResponsesRelay._take_item`'s."""
    index = _index(event.get("output_index"))
    if group == "summary":
        return (index, "summary", _index(event.get("summary_index")))
    if group == "content":
        return (index, "content", _index(event.get("content_index")))
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
