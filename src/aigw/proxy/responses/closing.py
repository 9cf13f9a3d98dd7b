"""Ending a Responses stream the gateway cut: what it must remember of the
stream (the response, its items and parts, what was already finished) and the
closing events it sends — every open part and item finished with the text
relayed, then ``response.incomplete``, as OpenAI ends an answer that reached
``max_output_tokens``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import orjson

from aigw.usage.entry import UsageEntry

INCOMPLETE = {"reason": "max_output_tokens"}


# Item kinds whose one generated text field counts as output.
ITEM_FIELDS = {
    "function_call": "arguments",
    "custom_tool_call": "input",
    "mcp_call": "arguments",
    "code_interpreter_call": "code",
}


FIELD_DONE = {
    "function_call": "response.function_call_arguments.done",
    "custom_tool_call": "response.custom_tool_call_input.done",
    "mcp_call": "response.mcp_call_arguments.done",
    "code_interpreter_call": "response.code_interpreter_call_code.done",
}


def encode_event(payload: dict[str, Any]) -> bytes:
    """One typed event, as OpenAI writes them (``event:`` then ``data:``)."""
    return (
        b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
    )


def part_field(part: dict[str, Any]) -> str:
    return "refusal" if part.get("type") == "refusal" else "text"


def event_index(value: Any) -> int | None:
    """An index from an upstream event; anything but an integer (a list is not
    even hashable) reads as none."""
    return value if type(value) is int else None


class StreamClosing:
    """The closing half of :class:`~aigw.proxy.responses.relay.ResponsesRelay`:
    the stream state it keeps and the events that end a cut answer."""

    counter: Any
    entry: UsageEntry
    _snapshot: dict[str, Any]
    _items: dict[int, dict[str, Any]]
    _done_items: set[int]
    _done: set[Hashable]
    _texts: dict[Hashable, list[str]]
    _sequence: int

    def _settle(self, answer: dict[str, Any]) -> None:
        raise NotImplementedError

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
                    event_index(event.get("content_index")),
                    event_index(event.get("summary_index")),
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
            field = ITEM_FIELDS.get(kind)
            if field is not None:
                text = "".join(self._texts.get((index, "field", 0), ()))
                item[field] = text
                if not self._is_done(FIELD_DONE[kind], index, None, None):
                    out.append(
                        self._next(
                            {"type": FIELD_DONE[kind], "item_id": item_id,
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
            if "status" in item or kind in ("message", *ITEM_FIELDS):
                item["status"] = "incomplete"
            out.append(
                self._next(
                    {"type": "response.output_item.done", "output_index": index, "item": item}
                )
            )
            self._done_items.add(index)
        response = dict(self._snapshot)
        response["status"] = "incomplete"
        response["incomplete_details"] = dict(INCOMPLETE)
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
        name = part_field(part)
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
