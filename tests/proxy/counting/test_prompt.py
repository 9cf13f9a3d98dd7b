"""Input counting (aigw.proxy.counting.prompt): OpenAI's published prompt_tokens,
the counting rules by hand count, the size cap and its lower bound, and counting
off the event loop.

Expected figures are published ones (OpenAI's cookbook) or hand counts: the
documented per-message formula applied to tiktoken's token counts of each text
(:func:`n_tokens`), never a call to the function under test.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aigw.proxy.counting import Encoders, count_chat_input, count_chat_input_async, prompt
from tests.proxy.counting.published import (
    COOKBOOK_MESSAGES,
    COOKBOOK_MESSAGES_PROMPT_TOKENS,
    COOKBOOK_TOOL_MESSAGES,
    COOKBOOK_TOOLS,
)
from tests.proxy.counting.shared import encoders_fixture  # noqa: F401  (the fixture encoders)
from tests.proxy.counting.support import n_tokens, ticks_during, user

# An inline_chars beyond any prompt here: count in the calling coroutine.
INLINE = 10**9


@pytest.mark.parametrize(("model", "expected"), COOKBOOK_MESSAGES_PROMPT_TOKENS.items())
def test_cookbook_messages_match_openai_prompt_tokens(
    encoders: Encoders, model: str, expected: int
) -> None:
    body = {"model": model, "messages": COOKBOOK_MESSAGES, "max_tokens": 1}
    assert count_chat_input(body, encoders.for_model(model)) == expected


# Cookbook section 5 ("Comparing encodings") prints the token counts of this
# string: 9 in cl100k_base, 8 in o200k_base.
@pytest.mark.parametrize(("name", "expected"), [("cl100k_base", 9), ("o200k_base", 8)])
def test_unicode_text_matches_cookbook_comparison(
    encoders: Encoders, name: str, expected: int
) -> None:
    body = {"messages": [user("お誕生日おめでとう")]}
    # 3 per message + "user" (1) + content + 3 reply priming.
    assert count_chat_input(body, encoders.get(name)) == 3 + 1 + expected + 3


@pytest.mark.parametrize("content", ["", None, []])
def test_empty_content_costs_only_the_overhead(o200k: tiktoken.Encoding, content: object) -> None:
    assert count_chat_input({"messages": [user(content)]}, o200k) == 3 + 1 + 3


def test_no_messages_costs_the_reply_priming(o200k: tiktoken.Encoding) -> None:
    assert count_chat_input({}, o200k) == 3


def test_name_costs_its_tokens_plus_one(o200k: tiktoken.Encoding) -> None:
    named = count_chat_input({"messages": [{**user("hi"), "name": "alice_the_tester"}]}, o200k)
    t = lambda s: n_tokens(o200k, s)  # noqa: E731
    assert named == 3 + t("user") + t("hi") + t("alice_the_tester") + 1 + 3


def test_multipart_text_counts_each_part(o200k: tiktoken.Encoding) -> None:
    parts = [
        {"type": "text", "text": "Describe"},
        {"type": "text", "text": " the weather, please."},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    # Audio is not priced by a rule: its JSON text is counted (errs high).
    audio = '{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}'
    expected = (
        3
        + 1
        + n_tokens(o200k, "Describe")
        + n_tokens(o200k, " the weather, please.")
        + n_tokens(o200k, audio)
        + 3
    )
    assert count_chat_input({"messages": [user(parts)]}, o200k) == expected
    single = [{"type": "text", "text": "Describe the weather"}]
    expected = 3 + 1 + n_tokens(o200k, "Describe the weather") + 3
    assert count_chat_input({"messages": [user(single)]}, o200k) == expected


def test_tool_call_history(o200k: tiktoken.Encoding) -> None:
    arguments = '{"location": "Paris, France"}'
    body = {
        "messages": [
            user("Weather in Paris?"),
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ]
    }
    t = lambda s: n_tokens(o200k, s)  # noqa: E731
    expected = (
        (3 + t("user") + t("Weather in Paris?"))
        # assistant: per call its name twice, its arguments as compact JSON, + 5
        # (the rule fitted to chrisdinn/tokens' measurements, docs/proxy.md)
        + (3 + t("assistant") + 2 * t("get_weather") + t('{"location":"Paris, France"}') + 5)
        # tool result: as sent
        + (3 + t("tool") + t('{"temp": 21}'))
        + 3
    )
    assert count_chat_input(body, o200k) == expected


def test_tool_choice(o200k: tiktoken.Encoding) -> None:
    base = {"messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    # The cookbook's published prompt_tokens for this request on gpt-4o.
    auto = 101
    assert count_chat_input(base, o200k) == auto
    assert count_chat_input({**base, "tool_choice": "auto"}, o200k) == auto
    assert count_chat_input({**base, "tool_choice": "none"}, o200k) == auto + 1
    forced = {"type": "function", "function": {"name": "get_current_weather"}}
    # Current models: name + 7 (pamelafox/openai-messages-token-helper, measured).
    assert count_chat_input({**base, "tool_choice": forced}, o200k) == auto + 7 + n_tokens(
        o200k, "get_current_weather"
    )


def test_response_format_schema_counts_name_and_compact_json(o200k: tiktoken.Encoding) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = {"messages": [user("hi")]}
    plain = 3 + 1 + n_tokens(o200k, "hi") + 3
    assert count_chat_input(body, o200k) == plain
    with_schema = {
        **body,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": schema},
        },
    }
    compact = json.dumps(schema, separators=(",", ":"))
    assert count_chat_input(with_schema, o200k) == plain + n_tokens(o200k, "reply") + n_tokens(
        o200k, compact
    )
    json_object = {**body, "response_format": {"type": "json_object"}}
    assert count_chat_input(json_object, o200k) == plain


def test_special_token_text_is_ordinary_text(o200k: tiktoken.Encoding) -> None:
    text = "<|endoftext|> and <|endofprompt|>"
    count = count_chat_input({"messages": [user(text)]}, o200k)
    assert count == 3 + 1 + n_tokens(o200k, text) + 3
    assert n_tokens(o200k, text) > 2  # not collapsed into two special tokens


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_long_texts_are_counted_exactly_in_segments(encoders: Encoders, name: str) -> None:
    encoding = encoders.get(name)
    lines = [
        "def f(x):\n    return x  # 日本\n",
        "Plain prose, with 123 numbers.\n",
        "\n\n",
        "'s t\r\n",
    ]
    text = "".join(lines[(i * 7) % len(lines)] for i in range(40_000))
    assert len(text) > 10 * prompt._SEGMENT_CHARS
    one_line = "x" * (3 * prompt._SEGMENT_CHARS) + "\nEnd"  # a split point only at the very end
    for content in (text, one_line):
        body = {"messages": [user(content)]}
        assert count_chat_input(body, encoding) == 3 + 1 + n_tokens(encoding, content) + 3


def test_very_long_single_word(o200k: tiktoken.Encoding) -> None:
    word = "a" * 100_000
    assert count_chat_input({"messages": [user(word)]}, o200k) == 3 + 1 + n_tokens(o200k, word) + 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "role",
                    "content",
                    "name",
                    "type",
                    "text",
                    "tool_calls",
                    "function",
                    "arguments",
                    "parameters",
                    "properties",
                    "image_url",
                    "url",
                    "detail",
                    "enum",
                    "items",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    messages=json_values,
    tools=json_values,
    functions=json_values,
    tool_choice=json_values,
    response_format=json_values,
)
def test_malformed_bodies_never_raise(
    o200k: tiktoken.Encoding,
    messages: object,
    tools: object,
    functions: object,
    tool_choice: object,
    response_format: object,
) -> None:
    body = {
        "messages": messages if not isinstance(messages, list) else [messages, *messages],
        "tools": tools,
        "functions": functions,
        "tool_choice": tool_choice,
        "response_format": response_format,
    }
    assert count_chat_input(body, o200k) >= 3


async def test_within_cap_is_exact(o200k: tiktoken.Encoding) -> None:
    body = {"messages": COOKBOOK_MESSAGES}
    counted = await count_chat_input_async(body, o200k, max_chars=10_000)
    assert (counted.tokens, counted.exact) == (124, True)  # the cookbook's gpt-4o figure


async def test_over_cap_gives_a_lower_bound(o200k: tiktoken.Encoding) -> None:
    paragraph = "The gateway counts tokens before forwarding.\nEvery line adds a few more.\n"
    body = {"messages": [user(paragraph * 2000), user("tail " * 5000)]}
    exact = 2 * (3 + 1) + n_tokens(o200k, paragraph * 2000) + n_tokens(o200k, "tail " * 5000) + 3
    measured = await count_chat_input_async(body, o200k, max_chars=20_000, inline_chars=INLINE)
    assert not measured.exact
    assert measured.tokens <= exact
    # The head of the first message was counted exactly, not just bounded by chars.
    assert measured.tokens > 20_000 // 128
    assert measured.is_over(measured.tokens - 1) is True
    assert measured.is_over(exact) is None
    assert measured.is_over(0) is False


async def test_characters_alone_prove_an_oversized_body_is_over(o200k: tiktoken.Encoding) -> None:
    body = {"messages": [user("x" * 3_000_000)]}
    started = time.perf_counter()
    measured = await count_chat_input_async(body, o200k, max_chars=1_000, inline_chars=INLINE)
    assert time.perf_counter() - started < 1.0  # nothing near 3M chars was tokenized
    assert measured.tokens >= 3_000_000 // 128
    assert measured.is_over(10_000) is True


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab AB1.'\n\r\t/é日-")), max_size=200),
    data=st.data(),
)
def test_newline_letter_split_is_additive(
    encoders: Encoders, text: str, data: st.DataObject
) -> None:
    text = (
        text
        + "\nZ"
        + data.draw(st.text(alphabet=st.sampled_from(list("ab AB1.'\n\r\t/")), max_size=50))
    )
    cut = prompt._safe_split(text, len(text) - 1)
    assert cut > 0
    for name in encoders.names:
        encoding = encoders.get(name)
        assert n_tokens(encoding, text) == n_tokens(encoding, text[:cut]) + n_tokens(
            encoding, text[cut:]
        )


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_small_prompts_are_counted_inline(o200k: tiktoken.Encoding) -> None:
    executor = RecordingExecutor()
    try:
        counted = await count_chat_input_async(
            {"messages": COOKBOOK_MESSAGES}, o200k, executor=executor
        )
        assert (counted.tokens, counted.exact) == (124, True)  # the cookbook's gpt-4o figure
        assert executor.submitted == 0
        large = {"messages": [user("word " * 20_000)]}
        counted = await count_chat_input_async(large, o200k, executor=executor)
        assert (counted.tokens, counted.exact) == (
            3 + 1 + n_tokens(o200k, "word " * 20_000) + 3,
            True,
        )
        assert executor.submitted == 1
    finally:
        executor.shutdown()


async def test_large_prompt_does_not_block_the_loop(encoders: Encoders) -> None:
    encoding = encoders.get("o200k_base")
    body = {
        "messages": [user("The quick brown fox jumps over the lazy dog.\nAnd again. " * 60_000)]
    }

    async def offloaded() -> None:
        await count_chat_input_async(
            body, encoding, max_chars=10_000_000, executor=encoders.executor
        )

    async def inline() -> None:
        await count_chat_input_async(body, encoding, max_chars=10_000_000, inline_chars=INLINE)

    # Inline, the loop is frozen for the whole count (the baseline that gives
    # the check below its teeth)...
    assert await ticks_during(inline) <= 1
    # ...offloaded, other coroutines keep running while it counts.
    assert await ticks_during(offloaded) >= 50


@pytest.mark.parametrize(
    "text",
    [
        "word " * 3000,  # past the buffer threshold
        "Résumé 東京 🙂 naïve\n" * 800,  # multi-byte UTF-8
        "a<|endoftext|>b<|endofprompt|>c <|fim_prefix|> " * 200,  # special-token text
        "lone \ud800 surrogate " * 300,  # no UTF-8 form: tiktoken's own repair
        ("line of prose\n" * 6000) + "tail",  # split into segments
        "x" * 1023,
        "x" * 1024,
    ],
)
def test_long_texts_count_as_encode_ordinary_does(text: str, o200k, cl100k) -> None:
    # Long texts are counted through tiktoken's token buffer (issue 15): the same
    # counts as tiktoken's public encode_ordinary.
    for encoding in (o200k, cl100k):
        body = {"messages": [{"role": "user", "content": text}]}
        expected = (
            3 + 3 + len(encoding.encode_ordinary("user")) + len(encoding.encode_ordinary(text))
        )
        assert count_chat_input(body, encoding) == expected
