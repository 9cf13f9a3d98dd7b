"""Who may call what: every route the app serves (read from ``app.routes``, so a
new route joins the matrix by itself) x {no token, client token, admin token,
wrong token}.

* admin routes answer only the admin token; anything else is 401 problem+json;
* ``/v1`` routes answer only client tokens (the admin token is not one); anything
  else is 401 ``invalid_api_key`` in OpenAI's envelope;
* ``/healthz``, ``/readyz``, ``/metrics`` (no ``AIGW_METRICS_TOKEN``), the console
  and the API docs are open, whatever credentials come along.

The routes' class is also read from the served OpenAPI schema (the security each
operation declares) and must agree with what the server does.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.routing import BaseRoute, Mount

from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeUpstream
from tests.reliability.conftest import (
    assert_openai_error,
    assert_problem,
    client_for,
    provider_and_key,
    unique,
)

OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
TOKENS = ("none", "client", "admin", "wrong")


def flat_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    """Routes with included routers expanded (FastAPI nests them)."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from flat_routes(nested.routes)
        else:
            yield route


def served_operations(app: Any) -> list[tuple[str, str]]:
    operations: set[tuple[str, str]] = set()
    for route in flat_routes(app.routes):
        path = getattr(route, "path", None)
        if path is None or path == "/v1/{path:path}":
            # The /v1 404 catch-all answers anyone alike (test_unknown_paths_… below).
            continue
        if isinstance(route, Mount):
            operations.add(("GET", path.rstrip("/") + "/"))
            continue
        for method in getattr(route, "methods", None) or {"GET"}:
            if method != "HEAD":
                operations.add((method, path))
    return sorted(operations)


def route_class(path: str) -> str:
    if path == "/v1" or path.startswith("/v1/"):
        return "client"
    if path in OPEN or path == "/ui" or path.startswith("/ui/"):
        return "open"
    return "admin"


def schema_class(schema: dict[str, Any], method: str, path: str) -> str | None:
    operation = schema["paths"].get(path, {}).get(method.lower())
    if operation is None:
        return None
    schemes = {name for requirement in operation.get("security", []) for name in requirement}
    # The Messages API routes also take the client token as x-api-key (ClientApiKey).
    if schemes in ({"ClientToken"}, {"ClientToken", "ClientApiKey"}):
        return "client"
    if schemes == {"HTTPBearer"}:
        return "admin"
    assert not schemes, (method, path, schemes)
    return "open"


CHAT = {"messages": [{"role": "user", "content": "hello"}]}


async def _fresh_resources(app: Any, fake: FakeUpstream) -> dict[str, str]:
    provider, key = await provider_and_key(app, fake.url)
    return {"provider_id": provider["id"], "key_id": key["id"], "token": key["token"]}


def _body_for(method: str, path: str) -> Any:
    if path == "/v1/chat/completions":
        return CHAT
    if method == "POST" and path == "/providers":
        return {"name": unique("p"), "base_url": "https://a.example/v1", "models": [{"name": "m"}]}
    if method == "POST" and path == "/apikeys":
        return {
            "alias": unique("k"),
            "provider": "none",
            "model": "none",
            "key_code": "sk-x",
            "input_limit": 0,
        }
    if method in ("POST", "PATCH", "PUT"):
        return {}
    return None


async def test_auth_matrix_over_every_served_route(inproc: Any, fresh_fake: FakeUpstream) -> None:
    app = await inproc()
    schema = (await app.admin.get("/openapi.json")).json()
    operations = served_operations(app)
    assert ("POST", "/v1/chat/completions") in operations
    assert ("GET", "/apikeys") in operations
    _, other_key = await provider_and_key(app, fresh_fake.url)
    client_token = other_key["token"]
    # The requests that must be refused share one provider and key (one let through
    # fails its own assertion); a request let through may change what its path
    # names (a delete, a disable), so each of those gets fresh ones.
    refused_ids = await _fresh_resources(app, fresh_fake)
    matrix: dict[tuple[str, str], dict[str, int]] = {}
    for method, path in operations:
        expected_class = route_class(path)
        declared = schema_class(schema, method, path)
        assert declared in (None, expected_class), (method, path, declared, expected_class)
        row: dict[str, int] = {}
        for token_kind in TOKENS:
            allowed = {
                "admin": token_kind == "admin",
                "client": token_kind == "client",
                "open": True,
            }[expected_class]
            acts_on_ids = allowed and "{" in path
            ids = await _fresh_resources(app, fresh_fake) if acts_on_ids else refused_ids
            token = {
                "none": None,
                "client": client_token,
                "admin": ADMIN_TOKEN,
                "wrong": "aigw-" + uuid.uuid4().hex + uuid.uuid4().hex,
            }[token_kind]
            concrete = path.replace("{key_id}", ids["key_id"]).replace(
                "{provider_id}", ids["provider_id"]
            )
            async with client_for(app, token) as http:
                response = await http.request(method, concrete, json=_body_for(method, path))
            row[token_kind] = response.status_code
            assert response.status_code < 500, (method, path, token_kind, response.text[:300])
            if allowed:
                assert response.status_code not in (401, 403), (method, path, token_kind)
            elif expected_class == "client" and path.startswith("/v1/messages"):
                # Anthropic's Messages API answers in Anthropic's error shape.
                assert response.status_code == 401, (method, path, token_kind)
                body = response.json()
                assert body["type"] == "error"
                assert body["error"]["type"] == "authentication_error"
                assert body["error"]["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"].lower().startswith("bearer")
            elif expected_class == "client":
                error = assert_openai_error(response, 401)
                assert error["code"] == "invalid_api_key"
                assert response.headers["www-authenticate"].lower().startswith("bearer")
            else:
                problem = assert_problem(response, 401)
                assert problem["code"] == "unauthorized"
                assert response.headers["www-authenticate"].lower().startswith("bearer")
        matrix[(method, path)] = row
    print("\nauth matrix (status per credential: none / client / admin / wrong):")
    for (method, path), row in matrix.items():
        cells = " ".join(f"{row[t]:>3}" for t in TOKENS)
        print(f"  {route_class(path):6} {method:6} {path:40} {cells}")
    # Every route class is represented: the matrix is not vacuous.
    assert {route_class(path) for _, path in matrix} == {"admin", "client", "open"}


async def test_client_token_lifecycle_on_v1_and_admin(
    inproc: Any, fresh_fake: FakeUpstream
) -> None:
    """Disabled key: 403 on /v1, still 401 on admin routes. Rotated: the old token is
    401 at once. Deleted: 401."""
    from tests.proxy.conftest import wait_for

    app = await inproc()
    _, key = await provider_and_key(app, fresh_fake.url)
    old = key["token"]
    async with client_for(app, old) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await http.get("/apikeys")).status_code == 401
    await app.admin.patch(f"/apikeys/{key['id']}", json={"status": "disabled"})

    async def refused(token: str, status: int) -> bool:
        async with client_for(app, token) as http:
            return (await http.post("/v1/chat/completions", json=CHAT)).status_code == status

    await wait_for(lambda: refused(old, 403), 2.0)
    async with client_for(app, old) as http:
        error = assert_openai_error(await http.post("/v1/chat/completions", json=CHAT), 403)
        assert error["code"] == "key_disabled"
        assert (await http.get("/providers")).status_code == 401
    await app.admin.patch(f"/apikeys/{key['id']}", json={"status": "enabled"})
    await wait_for(lambda: refused(old, 200), 2.0)
    rotated = (await app.admin.post(f"/apikeys/{key['id']}/token")).json()["token"]
    await wait_for(lambda: refused(old, 401), 2.0)
    await wait_for(lambda: refused(rotated, 200), 2.0)
    assert (await app.admin.delete(f"/apikeys/{key['id']}")).status_code == 204
    await wait_for(lambda: refused(rotated, 401), 2.0)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer",
        "Bearer ",
        "Basic YWlndzp4",
        f"Bearer {ADMIN_TOKEN}",
        "Bearer aigw-",
        "Bearer aigw-" + "A" * 43,
        "Bearer ' OR 1=1 --",
        "Bearer " + "a" * 65536,
        "bearer\taigw-x",
    ],
    # The admin token is random per process: ids must not show it, or pytest-xdist's
    # workers collect different test names.
    ids=lambda v: v.replace(ADMIN_TOKEN, "ADMIN_TOKEN")[:20] or "empty",
)
async def test_weird_authorization_on_v1_is_invalid_api_key(
    value: str, inproc: Any, fresh_fake: FakeUpstream
) -> None:
    app = await inproc()
    async with client_for(app) as http:
        for method, path, body in (
            ("POST", "/v1/chat/completions", CHAT),
            ("GET", "/v1/models", None),
        ):
            response = await http.request(method, path, json=body, headers={"authorization": value})
            error = assert_openai_error(response, 401)
            assert error["code"] == "invalid_api_key"
            assert ADMIN_TOKEN not in response.text
    assert fresh_fake.stats()["chat_requests"] == 0


async def test_metrics_token_closes_metrics(inproc: Any) -> None:
    app = await inproc(metrics_token="metrics-" + "m" * 24)
    async with client_for(app) as http:
        assert_problem(await http.get("/metrics"), 401)
    async with client_for(app, ADMIN_TOKEN) as http:
        assert_problem(await http.get("/metrics"), 401)
    async with client_for(app, "metrics-" + "m" * 24) as http:
        assert (await http.get("/metrics")).status_code == 200
    async with client_for(app) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_unknown_paths_and_methods_need_no_token_to_be_refused(inproc: Any) -> None:
    """A 404/405 for anyone: probing does not reveal more to a token holder."""
    app = await inproc()
    for token in (None, ADMIN_TOKEN):
        async with client_for(app, token) as http:
            assert_problem(await http.get("/nope"), 404)
            assert_problem(await http.put("/apikeys"), 405)
            response = await http.get("/v1/nope")
            assert response.status_code == 404
            assert "error" in response.json()
