"""The application factory and its lifespan (served through :mod:`aigw.main`).

Everything a request needs is built once here and kept on ``app.state``: the
database engine and session factory, the key ring and token hasher, and (from
:mod:`aigw.proxy.runtime`) the upstream HTTP client, the encoders, the key
cache and the usage recorder.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from aigw import __version__
from aigw.apidoc import install_openapi
from aigw.apikeys.router import router as apikeys_router
from aigw.audit.router import router as audit_router
from aigw.config import Settings, get_settings
from aigw.crypto import KeyRing, TokenHasher
from aigw.db.engine import create_engine, create_sessionmaker
from aigw.errors import install_error_handlers
from aigw.health import router as health_router
from aigw.metrics import router as metrics_router
from aigw.middleware import BodyLimitMiddleware, RequestContextMiddleware
from aigw.providers.router import router as providers_router
from aigw.proxy.router import ProxyFastPath
from aigw.proxy.router import router as proxy_router
from aigw.proxy.runtime import proxy_runtime
from aigw.runtime_memory import release_free_memory
from aigw.secrets_check import verify_keyring_opens_stored_secrets
from aigw.ui import mount_ui
from aigw.usage.router import router as usage_router

log = logging.getLogger("aigw")


# Set once this process has frozen its startup heap. Not ``gc.get_freeze_count()``:
# CPython counts the frozen objects one by one, and in a test process that builds
# an app per test each call walked the whole heap (~40 ms of CPU per app).
_startup_heap_frozen = False

# Net container allocations between two collections of the youngest generation.
GC_YOUNG_THRESHOLD = 20_000

DESCRIPTION = """\
aigw is an AI gateway. Operators register upstream providers and **AI API keys**
(alias, provider/model, status, the upstream key code, input/output token limits
and a usage-limit policy); applications call the OpenAI-compatible proxy under
`/v1` with the key's client token.

Admin routes take `Authorization: Bearer <AIGW_ADMIN_TOKEN>` and answer errors
as RFC 9457 `application/problem+json` with a stable `code`.
"""


# The app's routers, in the order routing tries them.
ROUTERS: tuple[APIRouter, ...] = (
    proxy_router,
    health_router,
    providers_router,
    apikeys_router,
    audit_router,
    usage_router,
    metrics_router,
)


def mount_routes(app: FastAPI, router: APIRouter) -> None:
    """Serve *router*'s routes as they are: each was built (its dependencies, body and
    response models, handler) when its module was imported. ``include_router`` would
    build every one again for the app, on the first request to each router: ~0.1 s of
    CPU per app, paid by the first requests after a start and, in the tests, by every
    test (issue 15). The routers have no prefix, dependencies or lifespan of their own
    to add on inclusion; the app's routes (and openapi.json) are the same."""
    assert not router.on_startup and not router.on_shutdown
    app.router.routes.extend(router.routes)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        app.state.engine = engine
        app.state.sessionmaker = create_sessionmaker(engine)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(engine.dispose)
            await verify_keyring_opens_stored_secrets(app.state.sessionmaker, app.state.keyring)
            await stack.enter_async_context(proxy_runtime(app, settings))
            # The startup heap (imports, schemas, tables) lives as long as the process:
            # frozen, the cyclic collector stops rescanning it; a full collection of it
            # cost ~0.1 s of CPU every few thousand requests (issue 15). Once per
            # process: a later app in the same process (tests) leaves the heap alone.
            # No full collection first: it found no cyclic garbage to free here and
            # took ~0.08 s of the start's CPU (issue 15).
            global _startup_heap_frozen
            if not _startup_heap_frozen:
                _startup_heap_frozen = True
                gc.freeze()
                # A request allocates many containers (dicts, coroutines, futures), nearly
                # all freed by reference counting; at Python's default (700) collections
                # ran every few requests and took ~0.2 ms of CPU per request (issue 15:
                # an in-process A/B, 1.18 vs 0.96 ms per request with its client). Only
                # cyclic garbage waits longer to be collected.
                gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
                release_free_memory()
            log.info("aigw %s ready", __version__)
            yield
            log.info("aigw shutting down")

    app = FastAPI(
        title="aigw",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    if settings.encryption_keys is None or settings.token_pepper is None:
        raise RuntimeError(
            "secrets not resolved; use get_settings() or resolve_generated_secrets()"
        )
    app.state.keyring = KeyRing.parse(settings.encryption_keys.get_secret_value())
    app.state.hasher = TokenHasher(settings.token_pepper.get_secret_value())

    install_error_handlers(app)
    # First: routing tries routes in order, and /v1 is the hot path.
    for router in ROUTERS:
        mount_routes(app, router)
    mount_ui(app)
    install_openapi(app)

    # Outermost last: the request id wraps everything, including 413s and CORS.
    # Innermost: the fixed /v1 paths go straight to the pipeline (aigw.proxy.router).
    app.add_middleware(ProxyFastPath)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["authorization", "content-type", "if-match", "idempotency-key"],
            expose_headers=["etag", "location", "x-aigw-request-id"],
        )
    app.add_middleware(RequestContextMiddleware)
    return app
