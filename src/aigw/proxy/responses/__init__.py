"""``POST /v1/responses``: OpenAI's Responses API, with the key's model rule and limits.

:mod:`.input` counts a request by converting it to the Chat Completions shape
the gateway already counts (OpenAI publishes no Responses-specific formula);
:mod:`.admission` checks and judges the body; :mod:`.relay` relays the
answer, whole or as typed SSE events, and cuts it at the output limit the way
OpenAI ends a response that reached ``max_output_tokens``.
"""
