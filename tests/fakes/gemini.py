"""A fake of the Gemini API (https://ai.google.dev/api/generate-content,
``/api/tokens``), served in the test's event loop. Imports nothing from aigw;
rules in :mod:`tests.fakes.wire`.

* ``POST /v1beta/models/{model}:generateContent`` — a ``GenerateContentResponse``.
* ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` — one
  ``GenerateContentResponse`` per SSE event (CRLF line ends, as Google sends
  them), ``usageMetadata`` on every event, ``finishReason`` on the last, no end
  marker. Without ``alt=sse`` the fake answers 400 (the real API would send a
  JSON array, which no SSE client reads).
* ``POST /v1beta/models/{model}:countTokens`` — ``{"totalTokens": n}`` for
  ``contents`` or a whole ``generateContentRequest``.

Requests need the key in ``x-goog-api-key`` (403 ``PERMISSION_DENIED``
otherwise); the query string is recorded, so a test can prove no key is in the
URL. Output: the fake's words up to ``generationConfig.maxOutputTokens``
(``finishReason: MAX_TOKENS`` when it cut them, else ``STOP``);
``promptTokenCount``: the word rule over ``contents`` and ``systemInstruction``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.wire import Recorded, Script, count_words, texts_in, words

API_ROOT = "/v1beta"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response(
        {"error": {"code": status, "message": message, "status": code}}, status=status
    )


def prompt_count(request: dict[str, Any]) -> int:
    contents = request.get("contents") or []
    system = request.get("systemInstruction") or {}
    return count_words(texts_in(contents)) + count_words(texts_in(system)) + 3 * len(contents)


class FakeGemini:
    def __init__(self) -> None:
        self.script = Script()
        self.recorded = Recorded()
        self.count_requests = Recorded()

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_post(API_ROOT + "/models/{call}", self.call)
        return application

    async def call(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["call"].partition(":")
        body = await request.json()
        if method == "countTokens":
            self.count_requests.take(request, body)
        else:
            self.recorded.take(request, body)
        if not request.headers.get("x-goog-api-key"):
            return _error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers")
        if method == "countTokens":
            return await self.count_tokens(body)
        if self.script.status != 200:
            return _error(self.script.status, "RESOURCE_EXHAUSTED", "Quota exceeded")
        if method == "generateContent":
            return web.json_response(self._answer(model, body, self._plan(body)))
        if method == "streamGenerateContent":
            if request.query.get("alt") != "sse":
                return _error(400, "INVALID_ARGUMENT", "this fake streams only with alt=sse")
            return await self._stream(request, model, body)
        return _error(404, "NOT_FOUND", f"unknown method {method}")

    async def count_tokens(self, body: dict[str, Any]) -> web.Response:
        if self.script.count_delay:
            await asyncio.sleep(self.script.count_delay)
        if self.script.count_status != 200:
            return _error(self.script.count_status, "UNAVAILABLE", "counter down")
        request = body.get("generateContentRequest") or {"contents": body.get("contents") or []}
        return web.json_response({"totalTokens": prompt_count(request)})

    def _plan(self, body: dict[str, Any]) -> tuple[list[str], str]:
        count = self.script.output_tokens
        bound = (body.get("generationConfig") or {}).get("maxOutputTokens")
        if self.script.honour_max_tokens and isinstance(bound, int):
            count = min(count, bound)
        return words(count), "MAX_TOKENS" if count < self.script.output_tokens else "STOP"

    def _parts(self, text: list[str]) -> list[dict[str, Any]]:
        if self.script.tool_call:
            return [{"functionCall": {"name": "lookup", "args": {"q": "".join(text)}}}]
        return [{"text": "".join(text)}]

    @staticmethod
    def _usage(body: dict[str, Any], output: int) -> dict[str, int]:
        prompt = prompt_count(body)
        return {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
        }

    def _answer(self, model: str, body: dict[str, Any], plan: tuple[list[str], str]) -> Any:
        text, finish = plan
        return {
            "candidates": [
                {
                    "content": {"role": "model", "parts": self._parts(text)},
                    "finishReason": finish,
                    "index": 0,
                }
            ],
            "usageMetadata": self._usage(body, len(text)),
            "modelVersion": model,
            "responseId": "resp-fake",
        }

    async def _stream(
        self, request: web.Request, model: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        text, finish = self._plan(body)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def event(payload: dict[str, Any]) -> None:
            await response.write(b"data: " + orjson.dumps(payload) + b"\r\n\r\n")

        if self.script.tool_call:
            await event(self._answer(model, body, (text, finish)))
        else:
            for position, word in enumerate(text):
                candidate: dict[str, Any] = {
                    "content": {"role": "model", "parts": [{"text": word}]},
                    "index": 0,
                }
                if position == len(text) - 1:
                    candidate["finishReason"] = finish
                await event(
                    {
                        "candidates": [candidate],
                        "usageMetadata": self._usage(body, position + 1),
                        "modelVersion": model,
                        "responseId": "resp-fake",
                    }
                )
        await response.write_eof()
        return response
