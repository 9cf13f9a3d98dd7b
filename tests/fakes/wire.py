"""Shared bits of the provider-format fakes (Anthropic, Gemini, Azure OpenAI):
running an aiohttp app in the test's event loop, and the fakes' word rules.

Like every fake here, these import nothing from aigw: they follow the
providers' published wire formats and their own simple rules.

Rules shared by the fakes:

* generated text is the words of :data:`WORDS` in turn, each one token in both
  tiktoken encodings (``cl100k_base``, ``o200k_base``), so a gateway counting
  output sees exactly one token a word;
* a request's output bound (``max_tokens`` / ``maxOutputTokens`` /
  ``max_completion_tokens``) caps the words unless ``honour_max_tokens`` is off
  (an upstream whose own tokenizer differs, as a cross-vendor counter does);
* the fakes' own input counter (``count_tokens`` / ``countTokens``) bills
  :func:`count_words` of every text in the request plus 3 per message.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog")


def words(count: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(count)]


def count_words(texts: Iterable[str]) -> int:
    return sum(len(text.split()) for text in texts)


def texts_in(value: Any) -> list[str]:
    """Every string under a "text" key (or a bare string content), depth first."""
    found: list[str] = []
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, list):
        for item in value:
            found.extend(texts_in(item))
    elif isinstance(value, dict):
        for name, item in value.items():
            if name in ("text", "content", "system", "parts", "contents", "messages"):
                found.extend(texts_in(item))
    return found


@dataclass
class Script:
    """What a fake does with its next requests."""

    output_tokens: int = 10
    honour_max_tokens: bool = True
    status: int = 200
    tool_call: bool = False
    count_delay: float = 0.0  # seconds the token counter takes
    count_status: int = 200


@dataclass
class Recorded:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    counts: int = 0

    def take(self, request: web.Request, body: dict[str, Any]) -> None:
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.paths.append(str(request.rel_url))

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


@contextlib.asynccontextmanager
async def serve_in_loop(application: web.Application) -> AsyncIterator[str]:
    """Serve *application* on a free local port in this event loop; yields
    ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(application, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
