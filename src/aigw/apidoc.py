"""How the served OpenAPI schema documents the admin API's errors (RFC 9457 problems)."""

from __future__ import annotations

from typing import Any

import orjson

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable and machine-readable.",
    "required": ["type", "title", "status", "code", "detail"],
    "properties": {
        "type": {"type": "string", "description": "urn:aigw:problem:<code>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "For validation errors: the offending fields (at most 50).",
            "items": {
                "type": "object",
                "properties": {
                    "field": {"type": ["string", "null"]},
                    "location": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}
_DESCRIPTIONS = {
    "401": "Missing or invalid admin token",
    "413": "Request body over AIGW_MAX_BODY_BYTES",
    "415": "Content-Type is not JSON",
    "422": "The request is not valid",
    "503": "The database is unavailable; retry after Retry-After seconds",
}
_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    "503": {"Retry-After": {"schema": {"type": "integer"}}},
}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Describe the admin API's errors as the server sends them: every error response
    outside ``/v1`` is ``application/problem+json`` with the ``Problem`` schema
    (FastAPI would document 422 as its own JSON shape, and problems without a
    schema); admin operations also document 401 and 503, operations with a body
    413 and 415. ``/v1`` keeps OpenAI's envelope, documented by the proxy router."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in schema.get("paths", {}).items():
        if path == "/v1" or path.startswith("/v1/"):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            codes = {
                code
                for code, response in responses.items()
                if code[0] in "45" and "application/problem+json" in response.get("content", {})
            }
            codes |= {code for code in ("422",) if code in responses}
            codes |= {
                code for code, r in responses.items() if code[0] == "4" and "content" not in r
            }
            if any("HTTPBearer" in requirement for requirement in operation.get("security", [])):
                codes |= {"401", "503"}
            if "requestBody" in operation:
                codes |= {"413", "415"}
            for code in codes:
                entry: dict[str, Any] = {
                    "description": responses.get(code, {}).get("description")
                    or _DESCRIPTIONS.get(code, "Error"),
                    "content": problem,
                }
                if code in _HEADERS:
                    entry["headers"] = _HEADERS[code]
                responses[code] = entry
    # FastAPI's own validation error shapes are now only used by /v1, if at all.
    if "#/components/schemas/HTTPValidationError" not in orjson.dumps(schema["paths"]).decode():
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
    return schema


def install_openapi(app: Any) -> None:
    """Serve :func:`document_problems` of FastAPI's schema at ``/openapi.json``."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(generate())
        schema: dict[str, Any] = app.openapi_schema
        return schema

    app.openapi = openapi
