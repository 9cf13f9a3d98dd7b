"""A fake of Azure OpenAI's deployment API
(https://learn.microsoft.com/azure/ai-services/openai/reference), served in the
test's event loop. Imports nothing from aigw; rules in :mod:`tests.fakes.wire`.

* ``POST /openai/deployments/{deployment}/chat/completions?api-version=…`` —
  Chat Completions, whole or streamed. Needs the ``api-key`` header (401
  otherwise) and an ``api-version`` query parameter (404, as Azure answers);
  an unknown deployment is 404 ``DeploymentNotFound``.
* Azure's shapes: ``prompt_filter_results`` and ``content_filter_results`` on
  answers; a stream starts with a chunk whose ``choices`` is empty (the prompt
  filter results), then the content chunks, the finish chunk, a usage chunk
  when ``stream_options.include_usage`` asks, and ``[DONE]``.
* ``prompt_tokens``: the word rule over the messages' texts + 3 a message.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.fakes.wire import Recorded, Script, count_words, texts_in, words

_FILTERS = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}


class FakeAzure:
    def __init__(self, deployments: dict[str, str]) -> None:
        """*deployments*: deployment name -> the model it serves."""
        self.deployments = deployments
        self.script = Script()
        self.recorded = Recorded()

    def app(self) -> web.Application:
        application = web.Application()
        application.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)
        return application

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.recorded.take(request, body)
        if not request.headers.get("api-key"):
            return self._error(401, "401", "Access denied due to invalid subscription key")
        if not request.query.get("api-version"):
            return self._error(404, "404", "Resource not found")
        deployment = request.match_info["deployment"]
        model = self.deployments.get(deployment)
        if model is None:
            return self._error(404, "DeploymentNotFound", "The API deployment does not exist")
        script = self.script
        if script.status != 200:
            return self._error(script.status, "429", "Rate limit is exceeded")
        count = script.output_tokens
        bound = body.get("max_completion_tokens") or body.get("max_tokens")
        if script.honour_max_tokens and isinstance(bound, int):
            count = min(count, bound)
        text = words(count)
        finish = "length" if count < script.output_tokens else "stop"
        messages = body.get("messages") or []
        prompt = count_words(texts_in(messages)) + 3 * len(messages)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": count,
            "total_tokens": prompt + count,
        }
        prompt_filters = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-azure",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "prompt_filter_results": prompt_filters,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(text)},
                            "finish_reason": finish,
                            "logprobs": None,
                            "content_filter_results": _FILTERS,
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def chunk(payload: dict[str, Any]) -> None:
            base = {"id": "chatcmpl-azure", "object": "chat.completion.chunk", "created": 1}
            await response.write(
                b"data: " + orjson.dumps({**base, "model": model, **payload}) + b"\n\n"
            )

        await chunk({"model": "", "choices": [], "prompt_filter_results": prompt_filters})
        await chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ]
            }
        )
        for word in text:
            await chunk(
                {
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": word},
                            "finish_reason": None,
                            "content_filter_results": _FILTERS,
                        }
                    ]
                }
            )
        await chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await chunk({"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
