"""One error tree for the whole gateway, rendered in one place.

Services raise :class:`AigwError` subclasses (the proxy's, in
:mod:`aigw.proxy.errors`, included); :func:`install_error_handlers` turns them
into RFC 9457 ``application/problem+json`` on admin routes and into OpenAI's
``{"error": {...}}`` envelope under ``/v1``. One renderer per wire format:
:func:`problem_response` and :func:`openai_error_body` (the proxy frames the
latter as its final SSE event). Messages are written for the caller and never
include secret material.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("aigw.errors")

PROBLEM_JSON = "application/problem+json"


class AigwError(Exception):
    """Base of every error the gateway turns into an HTTP response."""

    status_code = 500
    code = "internal_error"
    title = "Internal error"
    openai_type = "server_error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.errors = errors
        self.param = param
        self.headers = headers or {}
        super().__init__(self.detail)


class Unauthorized(AigwError):
    status_code = 401
    code = "unauthorized"
    title = "Missing or invalid admin token"
    openai_type = "invalid_request_error"


class NotFound(AigwError):
    status_code = 404
    code = "not_found"
    title = "Not found"
    openai_type = "invalid_request_error"


class Conflict(AigwError):
    status_code = 409
    code = "conflict"
    title = "Conflict"
    openai_type = "invalid_request_error"


class AliasTaken(Conflict):
    code = "alias_taken"
    title = "An AI API key with this alias already exists"


class ProviderNameTaken(Conflict):
    code = "provider_name_taken"
    title = "A provider with this name already exists"


class ProviderInUse(Conflict):
    code = "provider_in_use"
    title = "AI API keys still refer to this provider"


class ModelInUse(Conflict):
    code = "model_in_use"
    title = "AI API keys still refer to this model"


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    title = "This Idempotency-Key was used with a different request body"


class PreconditionFailed(AigwError):
    status_code = 412
    code = "precondition_failed"
    title = "The resource changed since the given ETag"


class PayloadTooLarge(AigwError):
    status_code = 413
    code = "payload_too_large"
    title = "Request body too large"
    openai_type = "invalid_request_error"


class UnsupportedMediaType(AigwError):
    status_code = 415
    code = "unsupported_media_type"
    title = "Content-Type must be application/json"
    openai_type = "invalid_request_error"


class ValidationFailed(AigwError):
    status_code = 422
    code = "validation_error"
    title = "The request is not valid"
    openai_type = "invalid_request_error"


class UnknownProvider(ValidationFailed):
    code = "unknown_provider"
    title = "No provider with this name"


class UnknownModel(ValidationFailed):
    code = "unknown_model"
    title = "The provider has no model with this name"


class UpstreamNotAllowed(ValidationFailed):
    code = "upstream_not_allowed"
    title = "This base_url points at an address the gateway refuses to call"


class ServiceUnavailable(AigwError):
    status_code = 503
    code = "database_unavailable"
    title = "The database is unavailable; retry shortly"

    def __init__(self, detail: str | None = None, *, retry_after: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": f"urn:aigw:problem:{code}",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail or title,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return Response(
        orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def openai_error_body(
    message: str,
    *,
    code: str | None,
    error_type: str = "invalid_request_error",
    param: str | None = None,
) -> bytes:
    """OpenAI's error envelope, the one shape every ``/v1`` error takes."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def openai_error_response(
    status: int,
    message: str,
    *,
    code: str | None,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = openai_error_body(message, code=code, error_type=error_type, param=param)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def error_response(request_path: str, exc: AigwError, instance: str | None = None) -> Response:
    if is_openai_path(request_path):
        return openai_error_response(
            exc.status_code,
            exc.detail,
            code=exc.code,
            error_type=exc.openai_type,
            param=exc.param,
            headers=exc.headers,
        )
    return problem_response(
        exc.status_code,
        exc.code,
        exc.title,
        exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        instance=instance,
    )


# A body with 50,000 unknown fields must not earn a 5 MB answer listing each one.
MAX_FIELD_ERRORS = 50


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``{field, message, type}`` (the first ``MAX_FIELD_ERRORS``);
    the offending input is never echoed."""
    out = []
    for err in exc.errors()[:MAX_FIELD_ERRORS]:
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body",)]
        out.append(
            {
                "field": ".".join(loc) if loc else None,
                "location": str(err.get("loc", ("body",))[0]),
                "message": str(err.get("msg", "invalid")),
                "type": str(err.get("type", "value_error")),
            }
        )
    return out


def install_error_handlers(app: FastAPI) -> None:
    async def handle_aigw(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AigwError)
        return error_response(request.url.path, exc, instance=request.url.path)

    async def handle_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        if is_openai_path(request.url.path):
            first = errors[0] if errors else {"field": None, "message": "invalid request"}
            return openai_error_response(
                400,
                f"Invalid request: {first['field'] or 'body'}: {first['message']}",
                code="invalid_request",
                param=first["field"],
            )
        return problem_response(
            422,
            "validation_error",
            ValidationFailed.title,
            "; ".join(f"{e['field'] or e['location']}: {e['message']}" for e in errors)[:1000],
            errors=errors,
            instance=request.url.path,
        )

    async def handle_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
            415: "unsupported_media_type",
        }.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        headers = dict(exc.headers or {})
        if exc.status_code == 413:  # a streamed body crossed the limit (aigw.middleware)
            return error_response(
                request.url.path,
                PayloadTooLarge(detail, headers=headers),
                instance=request.url.path,
            )
        if is_openai_path(request.url.path):
            return openai_error_response(
                exc.status_code, detail or code, code=code, headers=headers
            )
        return problem_response(
            exc.status_code,
            code,
            detail or code,
            detail,
            headers=headers,
            instance=request.url.path,
        )

    async def handle_unexpected(request: Request, exc: Exception) -> Response:
        # The traceback goes to the log (which never sees secrets: models mask
        # their repr); the client gets a stable code and nothing else.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, AigwError())

    app.add_exception_handler(AigwError, handle_aigw)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(Exception, handle_unexpected)
