"""The /providers admin API: models, encodings, in-use protection, upstream URL policy."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import key_body


def provider_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "local-vllm",
        "kind": "openai",
        "base_url": "http://127.0.0.1:8000/v1/",
        "models": [{"name": "gpt-4o"}, {"name": "gpt-3.5-turbo"}, {"name": "llama-3-8b"}],
    }
    body.update(overrides)
    return body


async def test_create_picks_encodings_from_model_names(client: httpx.AsyncClient) -> None:
    response = await client.post("/providers", json=provider_body())
    assert response.status_code == 201, response.text
    provider = response.json()
    assert provider["base_url"] == "http://127.0.0.1:8000/v1"
    assert [(m["name"], m["encoding"]) for m in provider["models"]] == [
        ("gpt-4o", "o200k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("llama-3-8b", "o200k_base"),
    ]
    assert response.headers["location"] == f"/providers/{provider['id']}"


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4.1-mini", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("mistral-large", "o200k_base"),
    ],
)
def test_default_encoding_follows_the_spec(model: str, encoding: str) -> None:
    from aigw.providers.schemas import default_encoding

    assert default_encoding(model) == encoding


@pytest.mark.parametrize(
    ("overrides", "status", "code"),
    [
        ({"name": "bad name"}, 422, "validation_error"),
        ({"name": "x" * 65}, 422, "validation_error"),
        ({"kind": "bedrock"}, 422, "validation_error"),
        ({"base_url": "ftp://example.com"}, 422, "validation_error"),
        ({"base_url": "api.openai.com/v1"}, 422, "validation_error"),
        ({"base_url": "https://user:pw@api.example.com/v1"}, 422, "validation_error"),
        ({"models": []}, 422, "validation_error"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, 422, "validation_error"),
        ({"models": [{"name": "a", "encoding": "p50k_base"}]}, 422, "validation_error"),
        ({"base_url": "http://169.254.169.254/latest"}, 422, "upstream_not_allowed"),
        ({"base_url": "http://[fe80::1]/v1"}, 422, "upstream_not_allowed"),
        ({"base_url": "http://metadata.google.internal/v1"}, 422, "upstream_not_allowed"),
        ({"base_url": "http://2852039166/v1"}, 422, "upstream_not_allowed"),
    ],
)
async def test_invalid_providers_are_refused(
    client: httpx.AsyncClient, overrides: dict[str, Any], status: int, code: str
) -> None:
    response = await client.post("/providers", json=provider_body(**overrides))
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert (await client.get("/providers")).json()["total"] == 0


async def test_private_upstreams_follow_the_setting(
    make_settings: Any, admin_headers: dict[str, str]
) -> None:
    from aigw.app import create_app

    app = create_app(make_settings(allow_private_upstreams=False))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=admin_headers
        ) as http,
    ):
        for url in ["http://127.0.0.1:8000/v1", "http://10.1.2.3/v1", "http://localhost:11434/v1"]:
            refused = await http.post("/providers", json=provider_body(base_url=url))
            assert refused.status_code == 422, url
            assert refused.json()["code"] == "upstream_not_allowed"
        public = await http.post(
            "/providers", json=provider_body(base_url="https://api.openai.com/v1")
        )
        assert public.status_code == 201


async def test_duplicate_name_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/providers", json=provider_body())).status_code == 201
    duplicate = await client.post("/providers", json=provider_body(name="LOCAL-VLLM"))
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "provider_name_taken"


async def test_provider_or_model_in_use_cannot_be_removed(client: httpx.AsyncClient) -> None:
    provider = (await client.post("/providers", json=provider_body())).json()
    key = await client.post("/apikeys", json=key_body(provider="local-vllm", model="gpt-4o"))
    assert key.status_code == 201

    delete = await client.delete(f"/providers/{provider['id']}")
    assert delete.status_code == 409
    assert delete.json()["code"] == "provider_in_use"

    drop_used = await client.patch(
        f"/providers/{provider['id']}", json={"models": [{"name": "llama-3-8b"}]}
    )
    assert drop_used.status_code == 409
    assert drop_used.json()["code"] == "model_in_use"

    drop_unused = await client.patch(
        f"/providers/{provider['id']}",
        json={"models": [{"name": "gpt-4o"}, {"name": "qwen", "encoding": "cl100k_base"}]},
    )
    assert drop_unused.status_code == 200
    assert [m["name"] for m in drop_unused.json()["models"]] == ["gpt-4o", "qwen"]
    # The key still resolves to the same model row.
    assert (await client.get(f"/apikeys/{key.json()['id']}")).json()["model"] == "gpt-4o"

    await client.delete(f"/apikeys/{key.json()['id']}")
    assert (await client.delete(f"/providers/{provider['id']}")).status_code == 204
    assert (await client.get(f"/providers/{provider['id']}")).status_code == 404


async def test_update_rename_and_etag(client: httpx.AsyncClient) -> None:
    provider = (await client.post("/providers", json=provider_body())).json()
    stale = await client.patch(
        f"/providers/{provider['id']}", json={"name": "renamed"}, headers={"if-match": '"5"'}
    )
    assert stale.status_code == 412
    renamed = await client.patch(
        f"/providers/{provider['id']}", json={"name": "renamed"}, headers={"if-match": '"1"'}
    )
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "renamed"
    assert renamed.headers["etag"] == '"2"'
    assert (await client.patch(f"/providers/{uuid.uuid4()}", json={"name": "x"})).status_code == 404


async def test_list_pages_by_name(client: httpx.AsyncClient) -> None:
    for index in range(5):
        await client.post("/providers", json=provider_body(name=f"p{index}"))
    first = (await client.get("/providers", params={"limit": 2})).json()
    assert first["total"] == 5
    names = [p["name"] for p in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (await client.get("/providers", params={"limit": 2, "cursor": cursor})).json()
        names += [p["name"] for p in page["items"]]
        cursor = page["next_cursor"]
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    assert [
        p["name"] for p in (await client.get("/providers", params={"q": "3"})).json()["items"]
    ] == ["p3"]
