"""Counting rules by model snapshot: the constants that differ between OpenAI's
chat models, chosen by the request's model name.

Each row was measured against the API by someone outside aigw; the sources
and the agreement reached are in ``tests/proxy/counting/published_cases.json``
and docs/proxy.md ("Input counting"). An undated name uses the rules of the
snapshot it points to today (``gpt-4`` is still ``gpt-4-0613``;
``gpt-3.5-turbo`` is ``gpt-3.5-turbo-0125``). A name no row matches (newer
OpenAI models, and any model behind an OpenAI-compatible server) gets the
current rules.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["CountingRules", "rules_for_model"]


@dataclass(frozen=True, slots=True)
class CountingRules:
    """The per-snapshot constants of :mod:`aigw.proxy.counting.prompt`."""

    family: str
    #: Tokens framing every message (``<|im_start|>…<|im_sep|>…<|im_end|>``).
    per_message: int = 3
    #: Tokens a message's ``name`` adds besides its own text (0301: it replaces the role).
    per_name: int = 1
    #: Whether descriptions of properties of nested objects are shown to the model.
    nested_descriptions: bool = True
    #: An object whose first property has no description costs this much
    #: (post-0613: one token less; fitted, see docs/proxy.md).
    first_bare_property: int = -1
    #: ``tool_choice`` / ``function_call`` naming a function: its name plus this.
    forced_function: int = 7
    #: An assistant message with two or more tool calls is re-rendered as one
    #: ``multi_tool_use.parallel`` call: this many tokens more than the calls alone.
    parallel_calls: int = 25
    #: Whether the results of parallel calls are fed back as JSON strings
    #: (``\\uXXXX`` escapes for non-ASCII text).
    parallel_results_as_json: bool = True


# The 0613 generation: nested descriptions dropped, forced name + 4
# (hmarr/openai-chat-tokens, 36 cases measured on gpt-3.5-turbo-0613).
_JUNE_2023: Final = CountingRules(
    family="0613",
    nested_descriptions=False,
    first_bare_property=0,
    forced_function=4,
    parallel_results_as_json=False,
)
# gpt-4-turbo generation: wrapper +13, results as sent (chrisdinn/tokens, gpt-4-0125-preview).
_TURBO: Final = CountingRules(family="turbo", parallel_calls=13, parallel_results_as_json=False)
# Current models. Nested descriptions and forced name + 7: pamelafox/openai-messages-token-helper
# (2024). Wrapper: 538914 measured +24 on gpt-3.5-turbo; rounded up. Results as JSON
# strings: community thread 1375117 (gpt-4.1, gpt-5.2).
_CURRENT: Final = CountingRules(family="current")

# Most specific first; matched against the name after any "provider/" prefix, lower-cased.
_TABLE: Final[tuple[tuple[re.Pattern[str], CountingRules], ...]] = (
    (
        re.compile(r"^gpt-3\.5-turbo-0301$|^gpt-35-turbo-0301$"),
        CountingRules(
            family="0301",
            per_message=4,
            per_name=-1,
            nested_descriptions=False,
            first_bare_property=0,
            forced_function=4,
            parallel_results_as_json=False,
        ),
    ),
    (re.compile(r"^gpt-4(-32k)?(-0314|-0613)?$"), _JUNE_2023),
    (re.compile(r"^gpt-3\.5-turbo(-16k)?-0613$|^gpt-35-turbo(-16k)?-0613$"), _JUNE_2023),
    (re.compile(r"^gpt-4-(1106|0125)-preview$|^gpt-4-turbo(-preview)?$"), _TURBO),
    (re.compile(r"^gpt-4-turbo-2024-04-09$|^gpt-4-vision-preview$|^gpt-4-1106-vision"), _TURBO),
)


# Cached: five regex searches per request otherwise; model names are few (and
# the cache is bounded for the ones a client makes up).
@functools.lru_cache(maxsize=256)
def rules_for_model(model: str) -> CountingRules:
    """The counting rules for *model* (the current ones when no row matches)."""
    name = model.rsplit("/", 1)[-1].lower()
    for pattern, rules in _TABLE:
        if pattern.search(name):
            return rules
    return _CURRENT
