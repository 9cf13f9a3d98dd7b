"""Adapter for ``kind: gemini`` providers: Chat Completions ⇄ Gemini ``generateContent``.

Requests go to ``{base_url}/models/{model}:generateContent``, streams to
``…:streamGenerateContent?alt=sse``; the key code travels in the
``x-goog-api-key`` header, never in the URL (a query-string key lands in
access logs and proxies' histories). ``base_url`` is the API root, e.g.
``https://generativelanguage.googleapis.com/v1beta``.

Request mapping (Chat Completions → Gemini):

=========================================  ==========================================
Chat Completions                           Gemini
=========================================  ==========================================
``system`` / ``developer`` messages        ``systemInstruction.parts[].text``
``user`` text / ``image_url`` parts        ``contents[role=user].parts``: ``text``;
                                           ``inlineData`` (``data:`` URLs),
                                           ``fileData`` (other URLs)
``assistant`` content / ``tool_calls``     ``contents[role=model].parts``: ``text``,
                                           ``functionCall {name, args}``
``tool`` / ``function`` messages           ``functionResponse {name, response}``
``tools[].function``                       ``tools[].functionDeclarations[]``
``tool_choice`` none/auto/required/named   ``toolConfig.functionCallingConfig.mode``
                                           NONE/AUTO/ANY (+ ``allowedFunctionNames``)
``max_completion_tokens`` / ``max_tokens``  ``generationConfig.maxOutputTokens``
``temperature``, ``top_p``, ``stop``, ``n``  ``temperature``, ``topP``,
                                           ``stopSequences``, ``candidateCount``
``presence_penalty``, ``frequency_penalty``  ``presencePenalty``, ``frequencyPenalty``,
``seed``                                   ``seed``
``response_format`` json_object /          ``responseMimeType: application/json``
json_schema                                (+ ``responseJsonSchema``)
=========================================  ==========================================

Dropped (no Gemini equivalent): ``logit_bias``, ``logprobs``,
``top_logprobs``, ``user``, ``parallel_tool_calls``, ``stream_options``,
``store``, ``metadata``, ``service_tier``, ``reasoning_effort``,
``modalities``, ``audio``, ``prediction``.

Answer mapping: ``candidates[i]`` → ``choices[i]`` (text parts joined into
``content``; ``functionCall`` parts → ``tool_calls``; ``thought`` parts are not
relayed); ``finishReason`` ``STOP`` → ``stop`` (``tool_calls`` when the
candidate called a function), ``MAX_TOKENS`` → ``length``, ``SAFETY``,
``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII`` →
``content_filter``, anything else → ``stop``; ``usageMetadata``
``promptTokenCount`` → ``prompt_tokens``, ``candidatesTokenCount`` +
``thoughtsTokenCount`` → ``completion_tokens``. Streams: each SSE event is a
whole ``GenerateContentResponse``; there is no end marker, so the event that
carries the last ``finishReason`` ends the stream (with its usage).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from yarl import URL

from aigw.errors import openai_error_body
from aigw.proxy.adapters.base import DONE_ITEM, StreamItem
from aigw.proxy.adapters.gemini_request import to_gemini_request
from aigw.proxy.adapters.openai import _endpoint, wrap_error
from aigw.proxy.errors import InvalidRequest, UpstreamProtocolError
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.sse import SSEEvent

_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_COMMENT = StreamItem(b": ping\n\n", None)


def model_path(model: str) -> str:
    return model if model.startswith("models/") else "models/" + model


def _usage(metadata: Any) -> dict[str, int] | None:
    if not isinstance(metadata, dict):
        return None
    prompt = metadata.get("promptTokenCount", 0)
    output = metadata.get("candidatesTokenCount", 0)
    thoughts = metadata.get("thoughtsTokenCount", 0)
    if not all(isinstance(value, int) for value in (prompt, output, thoughts)):
        return None
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output + thoughts,
        "total_tokens": prompt + output + thoughts,
    }


def _finish(reason: Any, called: bool) -> str | None:
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    finish = _FINISH.get(str(reason), "stop")
    return "tool_calls" if finish == "stop" and called else finish


def _parse(data: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError("The upstream provider sent malformed JSON") from None
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]  # some errors come as a one-element array
    if not isinstance(parsed, dict):
        raise UpstreamProtocolError("The upstream provider sent an unexpected body")
    return parsed


class GeminiStream:
    """``streamGenerateContent?alt=sse`` events → Chat Completions chunks."""

    __slots__ = ("_called", "_calls", "_created", "_finished", "_id", "_model", "_started")

    def __init__(self) -> None:
        self._id = "chatcmpl-gemini"
        self._model = ""
        self._created = int(time.time())
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}  # candidate -> tool calls so far
        self._called: set[int] = set()
        self._finished: set[int] = set()

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def items(self, event: SSEEvent) -> tuple[StreamItem, ...]:
        if event.data is None:
            return (StreamItem(event.raw, None),)
        data = _parse(event.data)
        if isinstance(data.get("error"), dict):
            error = data["error"]
            return (StreamItem(None, {"error": {"message": error.get("message")}}),)
        self._id = str(data.get("responseId") or self._id)
        self._model = str(data.get("modelVersion") or self._model)
        items: list[StreamItem] = []
        candidates = data.get("candidates")
        if not isinstance(candidates, list):
            candidates = []
        feedback = data.get("promptFeedback")
        if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
            # The prompt was blocked: one empty choice, filtered.
            candidates = [{"index": 0, "finishReason": "SAFETY"}]
        for candidate in candidates:
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index", 0)
            if not isinstance(index, int):
                index = 0
            delta: dict[str, Any] = {}
            if index not in self._started:
                self._started.add(index)
                delta["role"] = "assistant"
            text: list[str] = []
            calls: list[dict[str, Any]] = []
            for part in (candidate.get("content") or {}).get("parts") or []:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    text.append(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    call = part["functionCall"]
                    position = self._calls.get(index, 0)
                    self._calls[index] = position + 1
                    self._called.add(index)
                    calls.append(
                        {
                            "index": position,
                            "id": call.get("id") or f"call_{index}_{position}",
                            "type": "function",
                            "function": {
                                "name": call.get("name"),
                                "arguments": orjson.dumps(call.get("args") or {}).decode(),
                            },
                        }
                    )
            if text:
                delta["content"] = "".join(text)
            if calls:
                delta["tool_calls"] = calls
            finish = _finish(candidate.get("finishReason"), index in self._called)
            if finish is not None:
                self._finished.add(index)
            if delta or finish is not None:
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                items.append(StreamItem(None, self._chunk([choice])))
        if self._finished and self._finished >= self._started:
            # No end marker in Gemini streams: the last finish ends it, with its usage.
            usage = _usage(data.get("usageMetadata"))
            if usage is not None:
                items.append(StreamItem(None, self._chunk([], usage)))
            items.append(DONE_ITEM)
        return tuple(items) or (_COMMENT,)


class GeminiAdapter:
    kind = "gemini"
    relays_raw = False

    def url(self, key: ResolvedKey, stream: bool = False) -> URL:
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
        return _endpoint(key.base_url, "/" + model_path(key.model) + method)

    def count_url(self, key: ResolvedKey) -> URL:
        return _endpoint(key.base_url, "/" + model_path(key.model) + ":countTokens")

    def headers(self, key: ResolvedKey, request_id: str, stream: bool) -> dict[str, str]:
        assert key.key_code is not None
        return {
            "x-goog-api-key": key.key_code,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": request_id,
        }

    def encode_request(self, body: dict[str, Any], raw: bytes, modified: bool) -> bytes:
        try:
            return orjson.dumps(to_gemini_request(body))
        except TypeError:  # orjson writes at most 255 levels but reads up to 1024
            raise InvalidRequest("The request body is nested too deeply") from None

    def count_request(self, key: ResolvedKey, body: dict[str, Any]) -> bytes:
        """The ``countTokens`` body for a Chat Completions request: the whole
        ``generateContentRequest``, so system instruction and tools count too."""
        request = to_gemini_request(body)
        request.pop("generationConfig", None)
        request["model"] = model_path(key.model)
        return orjson.dumps({"generateContentRequest": request})

    @staticmethod
    def counted(body: bytes) -> int:
        total = _parse(body).get("totalTokens")
        if type(total) is not int or total < 0:
            raise UpstreamProtocolError("The upstream counter sent an unexpected body")
        return total

    def new_stream(self) -> GeminiStream:
        return GeminiStream()

    def parse_response(self, body: bytes) -> dict[str, Any]:
        data = _parse(body)
        choices: list[dict[str, Any]] = []
        candidates = data.get("candidates")
        if not isinstance(candidates, list):
            candidates = []
        if not candidates and isinstance(data.get("promptFeedback"), dict):
            candidates = [{"index": 0, "finishReason": "SAFETY"}]
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            text: list[str] = []
            calls: list[dict[str, Any]] = []
            for part in (candidate.get("content") or {}).get("parts") or []:
                if not isinstance(part, dict) or part.get("thought"):
                    continue
                if isinstance(part.get("text"), str):
                    text.append(part["text"])
                elif isinstance(part.get("functionCall"), dict):
                    call = part["functionCall"]
                    calls.append(
                        {
                            "id": call.get("id") or f"call_{position}_{len(calls)}",
                            "type": "function",
                            "function": {
                                "name": call.get("name"),
                                "arguments": orjson.dumps(call.get("args") or {}).decode(),
                            },
                        }
                    )
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(text) if text else None,
            }
            if calls:
                message["tool_calls"] = calls
            choices.append(
                {
                    "index": candidate.get("index", position),
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish(candidate.get("finishReason"), bool(calls)) or "stop",
                }
            )
        completion: dict[str, Any] = {
            "id": data.get("responseId") or "chatcmpl-gemini",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.get("modelVersion"),
            "choices": choices,
        }
        usage = _usage(data.get("usageMetadata"))
        if usage is not None:
            completion["usage"] = usage
        return completion

    def error_envelope(self, body: bytes, status: int) -> tuple[bytes, str | None]:
        """``{"error": {"code", "message", "status"}}`` in OpenAI's envelope."""
        try:
            parsed: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and parsed:
            parsed = parsed[0]
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            code = error.get("status") if isinstance(error.get("status"), str) else None
            return openai_error_body(error["message"], code=code, error_type="upstream_error"), code
        return wrap_error(body, status), None
