"""Reference conversations with the prompt_tokens OpenAI's API reported for them,
as published in OpenAI's cookbook: expected figures that owe nothing to aigw.

Imports nothing from aigw, so the fake upstreams' tests and the policy tests
can use the same figures.
"""

from __future__ import annotations

# OpenAI cookbook, "How to count tokens with tiktoken", section 6
# (github.com/openai/openai-cookbook, examples/How_to_count_tokens_with_tiktoken.ipynb,
# commit c81359cdc6744f001e40c08a192604c5113fdab3): the example messages and the
# prompt_tokens the OpenAI API reported for them, printed in the notebook.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]
COOKBOOK_MESSAGES_PROMPT_TOKENS = {
    "gpt-3.5-turbo": 129,
    "gpt-4-0613": 129,
    "gpt-4": 129,
    "gpt-4o": 124,
    "gpt-4o-mini": 124,
}

# Same notebook, section 7 ("Counting tokens for chat completions with tool
# calls"): a weather tool and the prompt_tokens the API reported with it.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]
COOKBOOK_TOOLS_PROMPT_TOKENS = {
    "gpt-3.5-turbo": 105,
    "gpt-4": 105,
    "gpt-4o": 101,
    "gpt-4o-mini": 101,
}
