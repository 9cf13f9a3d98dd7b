"""What the proxy needs from a provider adapter.

The relay owns the one stream loop (counting, the cut-off, usage stripping,
errors); an adapter only translates between Chat Completions, which the
gateway speaks to clients, and its provider's wire format.
"""

from __future__ import annotations

from typing import Any, Protocol

from yarl import URL

from aigw.proxy.keycache import ResolvedKey
from aigw.proxy.sse import SSEEvent


class StreamItem:
    """One upstream stream event as the relay sees it: ``raw`` bytes to relay when
    nothing changes (``None``: must be encoded from ``chunk``), the parsed Chat
    Completions ``chunk``, or ``done`` for the end marker; a comment has neither."""

    __slots__ = ("chunk", "done", "raw")

    def __init__(self, raw: bytes | None, chunk: dict[str, Any] | None, done: bool = False) -> None:
        self.raw = raw
        self.chunk = chunk
        self.done = done


DONE_ITEM = StreamItem(None, None, done=True)


class StreamTranslator(Protocol):
    def items(self, event: SSEEvent) -> tuple[StreamItem, ...]:
        """The Chat Completions items one upstream event stands for."""
        ...


class Adapter(Protocol):
    kind: str
    # Whether upstream bodies are already Chat Completions (relayable unchanged).
    relays_raw: bool

    def url(self, key: ResolvedKey, stream: bool = False) -> URL: ...

    def headers(self, key: ResolvedKey, request_id: str, stream: bool) -> dict[str, str]: ...

    def encode_request(self, body: dict[str, Any], raw: bytes, modified: bool) -> bytes: ...

    def new_stream(self) -> StreamTranslator: ...

    def parse_response(self, body: bytes) -> dict[str, Any]: ...

    def error_envelope(self, body: bytes, status: int) -> tuple[bytes, str | None]:
        """An upstream 4xx body in OpenAI's envelope, and its error code."""
        ...
