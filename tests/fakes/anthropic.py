"""A fake of Anthropic's Messages API (https://docs.anthropic.com/en/api/messages,
``/messages-streaming``, ``/messages-count-tokens``, ``/errors``), served in the
test's event loop. Imports nothing from aigw; rules in :mod:`tests.fakes.wire`.

* ``POST /v1/messages`` — requires ``x-api-key`` and ``anthropic-version``
  (401 ``authentication_error`` / 400 otherwise) and ``max_tokens``; answers a
  Message, or with ``stream: true`` the event sequence ``message_start``,
  ``content_block_start``, ``ping``, ``content_block_delta``…,
  ``content_block_stop``, ``message_delta``, ``message_stop``.
  ``stop_reason`` is ``max_tokens`` when the bound cut the words, else
  ``tool_use`` (tool script) or ``end_turn``.
* ``POST /v1/messages/count_tokens`` — ``{"input_tokens": n}`` by the word rule.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.wire import Recorded, Script, count_words, texts_in, words

INPUT_TOKENS = 11  # what the fake bills as input on every message


class FakeAnthropic:
    def __init__(self) -> None:
        self.script = Script()
        self.recorded = Recorded()
        self.count_requests = Recorded()

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_post("/v1/messages", self.messages)
        application.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        return application

    @staticmethod
    def _error(status: int, kind: str, message: str) -> web.Response:
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return web.json_response(body, status=status)

    def _check(self, request: web.Request) -> web.Response | None:
        if not request.headers.get("x-api-key"):
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version header required")
        return None

    async def count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.count_requests.take(request, body)
        refused = self._check(request)
        if refused is not None:
            return refused
        if self.script.count_delay:
            await asyncio.sleep(self.script.count_delay)
        if self.script.count_status != 200:
            return self._error(self.script.count_status, "api_error", "counter down")
        messages = body.get("messages") or []
        tokens = count_words(texts_in(body.get("system"))) + count_words(texts_in(messages))
        return web.json_response({"input_tokens": tokens + 3 * len(messages)})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.recorded.take(request, body)
        refused = self._check(request)
        if refused is not None:
            return refused
        script = self.script
        if script.status != 200:
            return self._error(script.status, "overloaded_error", "busy")
        if type(body.get("max_tokens")) is not int:
            return self._error(400, "invalid_request_error", "max_tokens: Field required")
        count = script.output_tokens
        if script.honour_max_tokens:
            count = min(count, body["max_tokens"])
        text = words(count)
        if count < script.output_tokens:
            stop = "max_tokens"
        else:
            stop = "tool_use" if script.tool_call else "end_turn"
        model = body.get("model")
        if not body.get("stream"):
            block: dict[str, Any] = (
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "lookup",
                    "input": {"q": "".join(text)},
                }
                if script.tool_call
                else {"type": "text", "text": "".join(text)}
            )
            return web.json_response(
                {
                    "id": "msg_01fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [block],
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": count},
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            payload = orjson.dumps({"type": name, **data})
            await response.write(b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n")

        message = {
            "id": "msg_01fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
        }
        await event("message_start", {"message": message})
        if script.tool_call:
            start = {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {}}
            await event("content_block_start", {"index": 0, "content_block": start})
            # The input JSON in pieces: '{"q": "', then a word a piece, then '"}'.
            for piece in ['{"q": "', *text, '"}']:
                delta = {"type": "input_json_delta", "partial_json": piece}
                await event("content_block_delta", {"index": 0, "delta": delta})
        else:
            start = {"type": "text", "text": ""}
            await event("content_block_start", {"index": 0, "content_block": start})
            await event("ping", {})
            for word in text:
                delta = {"type": "text_delta", "text": word}
                await event("content_block_delta", {"index": 0, "delta": delta})
        await event("content_block_stop", {"index": 0})
        await event(
            "message_delta",
            {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": count},
            },
        )
        await event("message_stop", {})
        await response.write_eof()
        return response
