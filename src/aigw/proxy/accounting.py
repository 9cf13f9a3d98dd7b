"""Output accounting for one answer: per choice, every kind of generated text.

Counts what is relayed (reasoning, content, refusal, tool-call names, framing
and arguments, a custom tool's input) and trims where a choice reaches its
output limit, or where a budget reservation (:mod:`aigw.budgets.guard`) bounds
all choices together. :mod:`aigw.proxy.relay` feeds it whole answers and stream
chunks.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aigw.budgets.guard import Hold
from aigw.proxy import counting

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


class ChoiceState:
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
        self._choices: dict[int, ChoiceState] = {}
        self.any_cut = False
        # A budget reservation bounds all choices together (aigw.budgets.guard).
        self.budget = budget if budget is not None and budget.caps_output else None
        self._cap = self.budget.output_reserved if self.budget is not None else None

    @property
    def capped(self) -> bool:
        """Whether a budget bounds all choices together (each text then moves the cap)."""
        return self._cap is not None or self.budget is not None

    def cap_total(self, cap: int) -> None:
        """Bound the output of all choices together to *cap* tokens."""
        self._cap = cap

    def _apply_cap(self, state: ChoiceState, cap: int) -> bool:
        """Bound *state*'s counter to what the cap leaves it; False when nothing is left."""
        room = cap
        if len(self._choices) > 1:
            room -= sum(s.counter.count for s in self._choices.values() if s is not state)
        room = min(room, self._cut_at) if self._cut_at else room
        if room <= 0:
            return False
        state.counter.limit = room
        return True

    def choice(self, index: Any) -> ChoiceState:
        """The state of choice *index* (anything but an int counts as choice 0)."""
        if not isinstance(index, int):
            index = 0
        state = self._choices.get(index)
        if state is None:
            counter = counting.OutputCounter(self._encoding, self._cut_at)
            state = self._choices[index] = ChoiceState(counter)
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

    def take_message(self, state: ChoiceState, message: dict[str, Any]) -> bool:
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

    def _take_tool_calls(
        self, state: ChoiceState, message: dict[str, Any], calls: list[Any]
    ) -> bool:
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

    def _take_call(
        self, state: ChoiceState, key: Any, body: dict[str, Any], text_field: str
    ) -> bool:
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

    def _cut(self, state: ChoiceState, message: dict[str, Any], keep: Collection[str]) -> None:
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


def expected_choices(body: dict[str, Any]) -> int:
    """The choices the request asked for (``n``), so a stream cut in choice 0 is
    not ended before the others have arrived."""
    n = body.get("n")
    return n if type(n) is int and 1 <= n <= 128 else 1
