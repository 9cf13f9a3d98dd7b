"""Liveness and readiness; no authentication."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from aigw.drain import DRAIN

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    encodings: str
    key_cache: str


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database answers and the token encodings are loaded",
    description="`key_cache` is `listening` while change notifications arrive; when "
    "it is `stale` the proxy keeps serving the keys it holds and catches up on reconnect. "
    "From SIGTERM on (`AIGW_SHUTDOWN_DRAIN`) it answers 503 `draining` at once, without "
    "asking the database (`database`: `unchecked`).",
    responses={503: {"model": Readiness}},
)
async def readyz(request: Request) -> Readiness | JSONResponse:
    state = request.app.state
    encoders = getattr(state, "encoders", None)
    keys = getattr(state, "keys", None)
    encodings = "ok" if encoders is not None and encoders.names else "missing"
    key_cache = "listening" if keys is not None and keys.listening else "stale"
    if DRAIN.draining:
        # SIGTERM: let the balancer stop sending before we close. Answered before
        # (and without) the database check: a stalled database must not delay it.
        draining = Readiness(
            status="draining", database="unchecked", encodings=encodings, key_cache=key_cache
        )
        return JSONResponse(draining.model_dump(), status_code=503, headers={"Retry-After": "2"})
    database = "ok"
    try:
        async with asyncio.timeout(2.0):
            async with state.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    except Exception:  # any failure means "not ready"; the reason goes nowhere secret
        database = "unreachable"
    readiness = Readiness(status="ok", database=database, encodings=encodings, key_cache=key_cache)
    if readiness.database != "ok" or readiness.encodings != "ok":
        readiness.status = "unavailable"
        return JSONResponse(readiness.model_dump(), status_code=503, headers={"Retry-After": "2"})
    return readiness
