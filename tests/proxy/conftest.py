"""Proxy test helpers: providers pointing at fake upstreams, keys, usage rows."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from aiohttp import web

MODEL = "gpt-4o-mini"

# One xdist group for the tests that run the anthropic SDK (test_messages,
# test_upstream_count, test_provider_kinds, tests/reliability/test_hostile_endpoints,
# and test_worker_path*.py, which run tests of the first three again and share one
# warm pool of counting workers, see ``_workers``). Importing the SDK costs ~2.4 s
# of CPU: these modules import it in the tests that use it, so that only the xdist
# worker that runs this group pays it, and one pool serves the worker-path tests.
ANTHROPIC_SDK_GROUP = "anthropic-sdk"
WORKER_PATH_GROUP = ANTHROPIC_SDK_GROUP


@pytest.fixture(scope="session")
def _workers() -> Iterator[list[ProcessPoolExecutor]]:
    """The counting workers of the worker-path tests (test_worker_path*.py, one
    xdist group), one pool of them for all their gateways: a cold worker costs
    seconds of CPU (its imports, the encoding) and its shutdown more, and a fresh
    pool per test was most of these tests' time (a pool per module, ~2.5 s of CPU
    each). Started and warmed by test_worker_path.py as ``CountingPool`` starts its
    own (spawned, at a lower priority); a test that broke it (a dead worker: the
    gateway drops its pool) leaves the next test a new one."""
    held: list[ProcessPoolExecutor] = []
    yield held
    for executor in held:
        executor.shutdown(wait=True, cancel_futures=True)


async def create_provider(
    client: httpx.AsyncClient | Any,
    base_url: str,
    *,
    name: str = "fake",
    kind: str = "openai",
    models: tuple[str, ...] = (MODEL,),
) -> dict[str, Any]:
    response = await _maybe_await(
        client.post(
            "/providers",
            json={
                "name": name,
                "kind": kind,
                "base_url": base_url,
                "models": [{"name": model} for model in models],
            },
        )
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def create_key(
    client: httpx.AsyncClient | Any, *, provider: str = "fake", **overrides: Any
) -> dict[str, Any]:
    """An enabled key; the response includes its client ``token``."""
    body: dict[str, Any] = {
        "alias": "key-" + secrets.token_hex(4),
        "provider": provider,
        "model": MODEL,
        "key_code": "sk-upstream-" + secrets.token_hex(8),
        "status": "enabled",
        "input_limit": 0,
        "output_limit": 0,
        "usage_limit": "reject",
    }
    body.update(overrides)
    response = await _maybe_await(client.post("/apikeys", json=body))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _maybe_await(value: Any) -> Any:
    return await value if isinstance(value, Awaitable) else value


async def usage_rows(db: str, *, expected: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The usage records, waiting until at least *expected* are written (one
    connection, looked at every 10 ms: the gateways of these tests write every
    20 ms, and a connection per look was a server process per look)."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(db)
    try:
        while True:
            rows = await conn.fetch("SELECT * FROM usage_records ORDER BY created_at")
            if len(rows) >= expected or time.monotonic() > deadline:
                return [dict(row) for row in rows]
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, interval: float = 0.01
) -> float:
    """Poll *predicate* every *interval* seconds until true; returns the seconds it took."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval)
    return time.monotonic() - started


# -- a small scriptable upstream in the test's own event loop --------------------

WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog")


def pieces(count: int) -> list[str]:
    """*count* one-token text pieces (in both encodings)."""
    return [WORDS[i % len(WORDS)] for i in range(count)]


@dataclass
class Script:
    """What the in-loop upstream does with the next requests."""

    output_tokens: int = 10
    honour_max_tokens: bool = True
    status: int = 200
    error_body: bytes | None = None
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    stall_after: int | None = None  # stream: stop sending (connection open) after k chunks
    reset_after: int | None = None  # stream: drop the connection after k chunks
    malformed_after: int | None = None  # stream: send a malformed event after k chunks
    keepalive_every: float | None = None  # stream: ": keep-alive" comments while stalled
    omit_done: bool = False
    tool_call: bool = False
    prompt_tokens: int = 42


@dataclass
class InLoopUpstream:
    url: str
    script: Script = field(default_factory=Script)
    requests: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # the bodies as received
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnects: int = 0
    open_streams: int = 0

    @property
    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def _chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _handle(state: InLoopUpstream, request: web.Request) -> web.StreamResponse:
    state.raw.append(await request.read())
    body = await request.json()
    state.requests.append(body)
    state.headers.append(dict(request.headers))
    script = state.script
    if script.first_byte_delay:
        await asyncio.sleep(script.first_byte_delay)
    if script.status != 200:
        return web.Response(
            status=script.status,
            body=script.error_body
            or orjson.dumps(
                {"error": {"message": "nope", "type": "invalid_request_error", "code": "bad"}}
            ),
            content_type="application/json",
        )
    count = script.output_tokens
    bound = body.get("max_completion_tokens") or body.get("max_tokens")
    if script.honour_max_tokens and bound is not None:
        count = min(count, bound)
    texts = pieces(count)
    finish = "length" if count < script.output_tokens else "stop"
    usage = {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": count,
        "total_tokens": script.prompt_tokens + count,
    }
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if script.tool_call:
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "".join(texts)},
                    }
                ],
            }
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1,
                "model": MODEL,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": usage,
            }
        )
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    state.open_streams += 1
    try:
        await response.write(_chunk(0, {"role": "assistant", "content": ""}))
        for position, text in enumerate(texts):
            if position == script.stall_after:
                while True:
                    await asyncio.sleep(script.keepalive_every or 3600)
                    await response.write(b": keep-alive\n\n")
            if position == script.reset_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if position == script.malformed_after:
                await response.write(b"data: {not json\n\n")
            if script.chunk_delay:
                await asyncio.sleep(script.chunk_delay)
            if script.tool_call:
                function = {"arguments": text} | ({"name": "f"} if position == 0 else {})
                delta: dict[str, Any] = {
                    "tool_calls": [
                        {"index": 0, "function": function}
                        | ({"id": "call_1", "type": "function"} if position == 0 else {})
                    ]
                }
            else:
                delta = {"content": text}
            await response.write(_chunk(0, delta))
        await response.write(_chunk(0, {}, finish))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await response.write(
                b"data: "
                + orjson.dumps(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": MODEL,
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        if not script.omit_done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        state.disconnects += 1
        raise
    finally:
        state.open_streams -= 1
    return response


@pytest.fixture
async def upstream() -> AsyncIterator[InLoopUpstream]:
    """A scriptable OpenAI-compatible upstream in this event loop, at ``.url``."""
    application = web.Application()
    runner = web.AppRunner(application, handler_cancellation=True)
    state = InLoopUpstream(url="")
    application.router.add_post("/v1/chat/completions", lambda r: _handle(state, r))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    yield state
    await runner.cleanup()


class _PromptServer(uvicorn.Server):
    """uvicorn's server, stopped as promptly as the requests under way allow.

    uvicorn looks for a stop every 0.1 s, sleeps 0.1 s after asking idle
    connections to close, then looks every 0.1 s for the rest: ~0.25 s of each
    in-process gateway's teardown (a third of the proxy tests), though nothing
    was left to finish. This server is told to stop at once and looks every
    5 ms; what it waits for (connections and tasks under way, up to
    ``timeout_graceful_shutdown``, then cancelled) is uvicorn's."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stop = asyncio.Event()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # the Date header, once a second
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 0.1)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # closes the idle ones; the others after their response
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while state.connections or state.tasks:
                    await asyncio.sleep(0.005)
        except TimeoutError:
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        for server in self.servers:
            await server.wait_closed()


@contextlib.asynccontextmanager
async def serve(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve *app* (its lifespan already entered) with a real uvicorn server in this
    event loop, *options* added to its config; yields its URL. Streams reach the
    client as the app sends them, which ``httpx.ASGITransport`` (it buffers the
    whole body) cannot show."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=2,
        **options,
    )
    server = _PromptServer(config)
    # Ctrl-C must still stop pytest, not this server.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.stop.set()
        await task


@pytest.fixture
async def gateway(
    make_settings: Callable[..., Any], admin_headers: dict[str, str]
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory: ``await gateway(**settings_overrides)`` runs the app in process and
    returns it, with ``app.admin`` (an admin httpx client) attached and the app
    served by a real uvicorn server at ``app.url``."""
    from aigw.app import create_app

    stack = contextlib.AsyncExitStack()

    async def start(**overrides: Any) -> Any:
        # Usage rows appear quickly, so tests waiting for them do not wait long.
        app = create_app(make_settings(**{"usage_flush_interval": 0.02, **overrides}))
        await stack.enter_async_context(app.router.lifespan_context(app))
        app.admin = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://aigw.test",
                headers=admin_headers,
            )
        )
        app.url = await stack.enter_async_context(serve(app))
        return app

    async with stack:
        yield start


async def ready_key(app: Any, **overrides: Any) -> dict[str, Any]:
    """Create a key through the admin API and wait until the key cache has it."""
    key = await create_key(app.admin, **overrides)
    token_hash = app.state.hasher.hash(key["token"])

    async def cached() -> bool:
        return app.state.keys.get(token_hash) is not None

    # A dictionary lookup, made every 2 ms: looked up every 10 ms, the key was seen
    # 20 ms after its creation on average (test_errors, test_policy), 12 ms now.
    await wait_for(cached, 2.0, interval=0.002)
    return key


@functools.cache
def client_tls() -> ssl.SSLContext:
    """One TLS context for the SDK clients this process makes: each client built its
    own, loading the system's CA file (~25 ms of CPU; hundreds of clients a run),
    though they talk plain HTTP to the app. Pass it as ``verify=``."""
    return ssl.create_default_context()


def openai_http_client() -> Any:
    """The OpenAI SDK's own default HTTP client, on this process's one TLS context."""
    from openai._base_client import AsyncHttpxClientWrapper

    return AsyncHttpxClientWrapper(verify=client_tls())


def sdk(app: Any, token: str, **kwargs: Any) -> Any:
    """The official async OpenAI SDK, talking to the app's real server (``app.url``),
    so streams arrive event by event."""
    import openai

    kwargs.setdefault("http_client", openai_http_client())
    return openai.AsyncOpenAI(base_url=f"{app.url}/v1", api_key=token, max_retries=0, **kwargs)
