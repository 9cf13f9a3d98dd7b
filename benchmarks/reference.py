"""The bare passthrough reference: the floor a Python gateway can reach.

FastAPI + one shared aiohttp session + a tiktoken count of the prompt, bytes
forwarded both ways with nothing else (no database, no limits, no usage
records). aigw's CPU per request is judged against this.

    python -m benchmarks.reference --port 9100 --upstream http://127.0.0.1:9000/v1 --token T
"""

from __future__ import annotations

import argparse
import hmac
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

ENCODINGS = Path(__file__).resolve().parents[1] / "src" / "aigw" / "encodings"


def load_o200k() -> tiktoken.Encoding:
    """o200k_base from the file aigw ships, so counting needs no network."""
    path = ENCODINGS / "o200k_base.tiktoken"
    fetch = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = lambda *_a, **_k: tiktoken.load.load_tiktoken_bpe(str(path))
    try:
        return tiktoken.Encoding(**openai_public.o200k_base())
    finally:
        openai_public.load_tiktoken_bpe = fetch


def count_prompt(encode, messages: list[dict]) -> int:
    """OpenAI's chat billing: 3 tokens per message, 1 per name, 3 to prime the reply."""
    n = 3
    for message in messages:
        n += 3
        for key, value in message.items():
            if isinstance(value, str):
                n += len(encode(value))
                if key == "name":
                    n += 1
            elif isinstance(value, list):  # content parts
                for part in value:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        n += len(encode(part["text"]))
    return n


def create_app(upstream: str, token: str, upstream_key: str) -> FastAPI:
    url = upstream.rstrip("/") + "/chat/completions"
    expected = f"Bearer {token}".encode()
    forward_headers = {
        "Authorization": f"Bearer {upstream_key}",
        "Content-Type": "application/json",
    }
    encode = load_o200k().encode_ordinary

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app.state.session = session
            yield

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error"}}, status
        )

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        auth = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(auth, expected):
            return error(401, "invalid api key")
        body = await request.body()
        try:
            payload = orjson.loads(body)
            input_tokens = count_prompt(encode, payload["messages"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return error(400, "malformed request")
        headers = {"x-input-tokens": str(input_tokens)}
        session: aiohttp.ClientSession = request.app.state.session
        if not payload.get("stream"):
            async with session.post(url, data=body, headers=forward_headers) as upstream_response:
                content = await upstream_response.read()
                return Response(
                    content, upstream_response.status, headers, media_type="application/json"
                )
        upstream_response = await session.post(url, data=body, headers=forward_headers)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream_response.content.iter_any():
                    yield chunk
            finally:
                upstream_response.release()

        return StreamingResponse(
            relay(), upstream_response.status, headers, media_type="text/event-stream"
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="bare passthrough reference gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    parser.add_argument("--token", default=os.environ.get("REFERENCE_TOKEN", "reference-token"))
    parser.add_argument("--upstream-key", default="sk-bench")
    args = parser.parse_args()
    app = create_app(args.upstream, args.token, args.upstream_key)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
