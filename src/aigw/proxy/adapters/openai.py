"""Adapter for ``kind: openai`` providers: any OpenAI-compatible Chat Completions API.

The gateway speaks Chat Completions on both sides, so this adapter translates
nothing: requests go out as the client wrote them (plus the gateway's few
edits), stream events come back parsed but are relayed as received unless the
relay changes them. The URL is always the provider's ``base_url`` plus
``/chat/completions``; nothing from the client picks it.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Any

import orjson
from yarl import URL

from aigw.errors import openai_error_body
from aigw.proxy.adapters.base import DONE_ITEM, StreamItem
from aigw.proxy.errors import InvalidRequest, UpstreamProtocolError
from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.sse import DONE_DATA, SSEEvent


@lru_cache(maxsize=1024)
def _endpoint(base_url: str, path: str) -> URL:
    # Parsing a URL costs microseconds; providers are few, so parse each once.
    return URL(base_url.rstrip("/") + path)


class OpenAIAdapter:
    kind = "openai"
    relays_raw = True

    def url(self, key: ResolvedKey, stream: bool = False) -> URL:
        return _endpoint(key.base_url, "/chat/completions")

    def headers(self, key: ResolvedKey, request_id: str, stream: bool) -> dict[str, str]:
        assert key.key_code is not None
        return {
            "Authorization": "Bearer " + key.key_code,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "Accept-Encoding": "identity",
            "X-Request-Id": request_id,
        }

    def encode_request(self, body: dict[str, Any], raw: bytes, modified: bool) -> bytes:
        """The upstream body: the client's bytes when the gateway changed nothing."""
        if not modified:
            return raw
        try:
            return orjson.dumps(body)
        except TypeError:  # orjson writes at most 255 levels but reads up to 1024
            raise InvalidRequest("The request body is nested too deeply") from None

    def new_stream(self) -> OpenAIAdapter:
        return self  # stateless: events are chunks already

    def items(self, event: SSEEvent) -> tuple[StreamItem, ...]:
        data = event.data
        if data is None:
            return (StreamItem(event.raw, None),)
        if data == DONE_DATA:
            return (DONE_ITEM,)
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent a malformed event") from None
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError("The upstream provider sent a malformed event")
        return (StreamItem(event.raw, chunk),)

    def parse_response(self, body: bytes) -> dict[str, Any]:
        """A non-streamed completion, in Chat Completions form."""
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError("The upstream provider sent malformed JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamProtocolError("The upstream provider sent an unexpected body")
        return parsed

    def error_envelope(self, body: bytes, status: int) -> tuple[bytes, str | None]:
        """OpenAI-compatible error bodies pass unchanged; anything else is wrapped."""
        with contextlib.suppress(orjson.JSONDecodeError):
            parsed = orjson.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
                code = error.get("code")
                return body, str(code) if code is not None else error.get("type")
        return wrap_error(body, status), None


def wrap_error(body: bytes, status: int, message: str | None = None) -> bytes:
    """An upstream error in OpenAI's envelope, quoting (the start of) its body."""
    if message is None:
        text = body[:500].decode("utf-8", "replace").strip()
        message = f"The upstream provider answered HTTP {status}" + (f": {text}" if text else "")
    return openai_error_body(message, code=None, error_type="upstream_error")
