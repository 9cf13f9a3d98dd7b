"""What the proxy keeps for the life of a process, built in the app's lifespan.

``async with proxy_runtime(app, settings):`` builds, in order, and puts on
``app.state``: the metrics (``metrics``), the usage recorder (``recorder``),
the bundled token encoders (``encoders``), the key cache with its LISTEN
connection (``keys``), the one shared upstream client (``upstream``), and the
:class:`ProxyService` the ``/v1`` endpoints use (``proxy``). On exit, in
reverse: the upstream client closes, LISTEN stops, and the recorder flushes
what is pending within ``shutdown_grace`` seconds (uvicorn has already let the
in-flight requests finish by then).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import tiktoken

from aigw.config import Settings
from aigw.db.engine import libpq_url
from aigw.metrics import Metrics
from aigw.proxy.keycache import KeyCache
from aigw.proxy.service import ProxyService
from aigw.proxy.tokens import Encoders
from aigw.proxy.upstream import create_upstream_session
from aigw.usage.recorder import UsageRecorder


@functools.lru_cache(maxsize=1)
def _bundled_encodings() -> dict[str, tiktoken.Encoding]:
    """The bundled encodings, parsed once per process (they are immutable; an app
    built twice in one process, as tests do, shares them)."""
    loaded = Encoders.load()
    try:
        return {name: loaded.get(name) for name in loaded.names}
    finally:
        loaded.close()


@asynccontextmanager
async def proxy_runtime(app: Any, settings: Settings) -> AsyncIterator[ProxyService]:
    state = app.state
    async with AsyncExitStack() as stack:
        metrics = Metrics(max_aliases=settings.metrics_max_aliases)
        state.metrics = metrics

        recorder = UsageRecorder(
            state.engine,
            flush_interval=settings.usage_flush_interval,
            batch_size=settings.usage_batch_size,
            buffer_limit=settings.usage_buffer_limit,
            on_record=metrics.observe,
        )
        recorder.start()
        stack.push_async_callback(recorder.aclose, settings.shutdown_grace)
        state.recorder = recorder

        # Parsing the encodings takes ~0.4 s of CPU: off the loop, once per process.
        encoders = Encoders(await asyncio.to_thread(_bundled_encodings))
        stack.callback(encoders.close)
        state.encoders = encoders

        assert settings.database_url is not None
        keys = KeyCache(
            state.engine,
            state.keyring,
            libpq_url(settings.database_url),
            allow_private_upstreams=settings.allow_private_upstreams,
        )
        await keys.start()
        stack.push_async_callback(keys.aclose)
        state.keys = keys

        session = create_upstream_session(settings)
        stack.push_async_callback(session.close)
        state.upstream = session

        service = ProxyService(
            settings=settings,
            keys=keys,
            hasher=state.hasher,
            encoders=encoders,
            session=session,
            recorder=recorder,
            metrics=metrics,
        )
        state.proxy = service
        yield service
