"""What of a Chat Completions request counts, and as what: one pass over the body.

Every forwarded field is either counted by a known rule (messages, names, tool
definitions and calls, images, tool choice, response format) or, when unknown
and able to carry text, as its JSON text — the gateway never forwards text it
did not count (docs/proxy.md, "Input counting", has the rule table). The pass
yields fixed token costs plus the texts still to encode; :mod:`.prompt` encodes
them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from aigw.proxy.counting.free import is_setting
from aigw.proxy.counting.functions import compact_json, function_definitions, render_functions
from aigw.proxy.counting.parts import PartWalk
from aigw.proxy.counting.rules import rules_for_model

_REPLY_PRIMING = 3
_FUNCTIONS_OVERHEAD = 9
_FUNCTIONS_WITH_SYSTEM = -4
_FUNCTION_ROLE = -2
_FUNCTION_CALL = 3
# Per tool call besides its name (twice) and compact arguments: fitted to the
# single-call cases of chrisdinn/tokens (gpt-4-0125-preview), which also fits
# forestwanglin/openai-java#5 (gpt-4-0613) exactly.
_TOOL_CALL = 5
_TOOL_CHOICE_NONE = 1

# Text OpenAI's tool renderer drops (const values, format, pattern, nested
# descriptions on 0613, unknown schema keys) is not billed by OpenAI, but it is
# forwarded: up to this many characters per request it is free, beyond that all
# of it is counted, so it cannot carry a prompt past the limit.
_FREE_UNSHOWN_CHARS = 256
# Ids (tool_call_id, tool_calls[].id) and settings (user, service_tier, …) are
# not shown to the model; longer than this, they are counted as text anyway.
_FREE_ID_CHARS = 64
_YIELD_EVERY = 512

# Top-level fields with their own rule in _Collector.
_BODY_RULES = frozenset({"messages", "model", "tool_choice", "function_call"})
# Sampling and transport settings: free while they hold no text (is_setting).
_SETTINGS = frozenset(
    {
        "stream",
        "stream_options",
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "seed",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "presence_penalty",
        "frequency_penalty",
        "parallel_tool_calls",
        "store",
        "service_tier",
        "reasoning_effort",
        "verbosity",
        "user",
        "metadata",
        "stop",
        "modalities",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# Message fields with their own rule; anything else is counted as JSON text.
_MESSAGE_FIELDS = frozenset({"role", "content"})
_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(slots=True)
class Prompt:
    """What a request is made of, for counting: fixed token costs plus the
    texts still to encode."""

    fixed: int
    texts: list[str]
    chars: int
    # Why part of the request cannot be counted (a file the gateway cannot see
    # or bound); empty when all of it was counted.
    uncountable: str = ""


def collect(body: Mapping[str, Any], stop_above: int | None = None) -> Prompt:
    """What *body* is made of. With *stop_above* (a key's input limit), a file
    whose bound alone takes the count past it stops being read there: the
    request is over the limit whatever the rest of it holds."""
    return _Collector(body, stop_above).prompt()


class _Collector(PartWalk):
    """One pass over a request body: every field is either counted by a known
    rule or, when unknown, as its JSON text (see docs/proxy.md, "Input
    counting")."""

    # fixed, model, stop_above, texts and uncountable: PartWalk's slots.
    __slots__ = (
        "_body",
        "parallel_ids",
        "rules",
        "tool_names",
        "unshown",
    )

    def __init__(self, body: Mapping[str, Any], stop_above: int | None = None) -> None:
        self.stop_above = stop_above
        self.texts: list[str] = []
        self.fixed = _REPLY_PRIMING
        model = body.get("model")
        self.model = model if isinstance(model, str) else ""
        self.rules = rules_for_model(self.model)
        self.tool_names: dict[str, str] = {}
        self.parallel_ids: set[str] = set()
        # Text OpenAI's renderer drops; counted when more than _FREE_UNSHOWN_CHARS.
        self.unshown: list[str] = []
        self.uncountable = ""
        self._body = body

    def prompt(self) -> Prompt:
        body = self._body
        functions = function_definitions(body)
        messages = body.get("messages")
        has_system = self._messages(messages if isinstance(messages, list) else [], bool(functions))
        if functions:
            rendered = render_functions(
                functions,
                nested_descriptions=self.rules.nested_descriptions,
                first_bare_property=self.rules.first_bare_property,
            )
            self.texts.append(rendered.text)
            self.fixed += rendered.adjust
            self.unshown.extend(rendered.unshown)
            self.fixed += _FUNCTIONS_OVERHEAD + (_FUNCTIONS_WITH_SYSTEM if has_system else 0)
            self._tool_choice(body.get("tool_choice", body.get("function_call")))
        elif "tool_choice" in body or "function_call" in body:
            self._tool_choice(body.get("tool_choice", body.get("function_call")))
        for key, value in body.items():
            if key in _BODY_RULES:
                continue
            if key in _SETTINGS and is_setting(value):
                continue
            if key == "tools":
                self._other_tools(value)
            elif key == "response_format":
                self._response_format(value)
            elif key == "functions":
                if isinstance(value, list):
                    for function in value:
                        if not isinstance(function, Mapping):
                            self._json(function)
                else:
                    self._json(value)
            elif key == "prediction":
                self._json(value)
            else:
                self._json({key: value})
        if sum(map(len, self.unshown)) > _FREE_UNSHOWN_CHARS:
            self.texts.extend(self.unshown)
        return Prompt(self.fixed, self.texts, sum(map(len, self.texts)), self.uncountable)

    def _messages(self, messages: list[Any], functions: bool) -> bool:
        rules = self.rules
        pad_system = functions
        has_system = False
        texts = self.texts
        for index, message in enumerate(messages):
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                # Walking a huge body in a worker thread holds the GIL; hand it to
                # the event loop now and then rather than every 5 ms.
                time.sleep(0)
            if not isinstance(message, Mapping):
                self._json(message)
                continue
            self.fixed += rules.per_message
            role = message.get("role")
            if isinstance(role, str):
                texts.append(role)
            elif role is not None:
                self._json(role)
                role = None
            is_system = role in _SYSTEM_ROLES
            has_system = has_system or is_system
            # With functions, the first system message carries a trailing newline
            # (measured by hmarr/openai-chat-tokens; it can merge with the text).
            suffix = ""
            if is_system and pad_system:
                suffix, pad_system = "\n", False
            content = message.get("content")
            if role == "tool" and isinstance(content, str):
                call_id = message.get("tool_call_id")
                if (
                    rules.parallel_results_as_json
                    and _is_id(call_id)
                    and call_id in self.parallel_ids
                ):
                    # Results of parallel calls are fed back as JSON strings
                    # (\uXXXX escapes for non-ASCII), thread 1375117.
                    content = json.dumps(content)
            self._content(content, suffix)
            for key, value in message.items():
                if key in _MESSAGE_FIELDS:
                    continue
                if key == "refusal" and isinstance(value, str):
                    texts.append(value)
                elif key == "name" and isinstance(value, str):
                    self._name(message, role, value)
                elif key == "function_call" and isinstance(value, Mapping):
                    self._function_call(value)
                elif key == "tool_calls" and isinstance(value, list):
                    self._tool_calls(value, content)
                elif key == "tool_call_id" and _is_id(value):
                    continue
                elif value is not None:
                    self._json({key: value})
        return has_system

    def _name(self, message: Mapping[str, Any], role: object, name: str) -> None:
        call_id = message.get("tool_call_id")
        if role == "tool" and _is_id(call_id) and self.tool_names.get(call_id) == name:
            # The function's name was counted with its call (chrisdinn/tokens, issue #5 case).
            self.fixed += 1
            return
        self.texts.append(name)
        self.fixed += self.rules.per_name
        if role == "function":
            self.fixed += _FUNCTION_ROLE

    def _function_call(self, call: Mapping[str, Any]) -> None:
        # Legacy function_call (0613): name + arguments as sent + 3 (hmarr).
        for key, value in call.items():
            if key in ("name", "arguments") and isinstance(value, str):
                self.texts.append(value)
            else:
                self._json({key: value})
        self.fixed += _FUNCTION_CALL

    def _tool_calls(self, calls: list[Any], content: object) -> None:
        if not calls:
            return
        rules = self.rules
        if content:
            # Text and calls are shown as two messages (chrisdinn/tokens: +4).
            self.fixed += rules.per_message + 1
        parallel = len(calls) >= 2
        if parallel:
            self.fixed += rules.parallel_calls
        for call in calls:
            if not isinstance(call, Mapping):
                self._json(call)
                self.fixed += _TOOL_CALL
                continue
            kind = call.get("type", "function")
            body = call.get(kind) if isinstance(kind, str) else None
            call_id = call.get("id")
            if kind in ("function", "custom") and isinstance(body, Mapping):
                name = body.get("name")
                if isinstance(name, str):
                    # Once as the call's recipient, once as the result's author.
                    self.texts.extend((name, name))
                    if _is_id(call_id):
                        self.tool_names[call_id] = name
                        if parallel:
                            self.parallel_ids.add(call_id)
                for key, value in body.items():
                    if key == "name" and isinstance(value, str):
                        continue
                    if key in ("arguments", "input") and isinstance(value, str):
                        self.texts.append(_compact_arguments(value))
                    else:
                        self._json({key: value})
                self._extra(call, ("id", "type", kind) if _is_id(call_id) else ("type", kind))
            else:
                self._json(call)
            self.fixed += _TOOL_CALL

    def _tool_choice(self, choice: object) -> None:
        if choice is None or choice == "auto":
            return
        if choice in ("none", "required"):
            self.fixed += _TOOL_CHOICE_NONE
            return
        if isinstance(choice, Mapping):
            function = choice.get("function")
            name = function.get("name") if isinstance(function, Mapping) else choice.get("name")
            if (
                isinstance(name, str)
                and len(choice) <= 2
                and (not isinstance(function, Mapping) or len(function) == 1)
            ):
                self.texts.append(name)
                self.fixed += self.rules.forced_function
                return
        self._json(choice)

    def _other_tools(self, tools: object) -> None:
        """Tools other than functions (custom, hosted, unknown): their JSON text."""
        if not isinstance(tools, list):
            self._json(tools)
            return
        for tool in tools:
            if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
                self._extra(tool, ("type", "function"))
                continue
            self._json(tool)

    def _response_format(self, response_format: object) -> None:
        if isinstance(response_format, Mapping) and response_format.get("type") in (
            "text",
            "json_object",
        ):
            self._extra(response_format, ("type",))
            return
        if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
            self._json(response_format)
            return
        # OpenAI's rendering of a json_schema is unpublished: its name and
        # compact JSON text, an estimate that errs high.
        spec = response_format.get("json_schema")
        if isinstance(spec, Mapping):
            for key, value in spec.items():
                if key == "name" and isinstance(value, str):
                    self.texts.append(value)
                elif key == "schema":
                    self._json(value)
                elif key != "strict" or not isinstance(value, bool):
                    self._json({key: value})
        elif spec is not None:
            self._json(spec)
        self._extra(response_format, ("type", "json_schema"))


def _compact_arguments(arguments: str) -> str:
    # Tool-call arguments are shown re-serialized compactly (chrisdinn/tokens:
    # adding a key costs what compact JSON costs); text that is not a JSON
    # object is shown as sent.
    if arguments[:1] != "{":
        return arguments
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    return compact_json(value)


def _is_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) <= _FREE_ID_CHARS
