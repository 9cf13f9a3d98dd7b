"""The admin API takes the provider kinds gemini and azure_openai and their
settings, and refuses settings a kind does not take."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import key_body


def gemini_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "google",
        "kind": "gemini",
        "base_url": "https://generativelanguage.googleapis.com/v1beta",
        "models": [{"name": "gemini-2.0-flash-lite"}, {"name": "gemini-2.5-flash"}],
    }
    body.update(overrides)
    return body


def azure_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "azure",
        "kind": "azure_openai",
        "base_url": "https://contoso.openai.azure.com",
        "api_version": "2024-10-21",
        "models": [{"name": "gpt-4o-mini", "deployment": "prod-4o-mini"}, {"name": "gpt-4o"}],
    }
    body.update(overrides)
    return body


async def test_kinds_and_their_settings_round_trip(client: httpx.AsyncClient) -> None:
    gemini = await client.post(
        "/providers", json=gemini_body(input_counting="upstream", counting_margin=20)
    )
    assert gemini.status_code == 201, gemini.text
    assert gemini.json()["kind"] == "gemini"
    assert (gemini.json()["input_counting"], gemini.json()["counting_margin"]) == ("upstream", 20)
    assert gemini.json()["api_version"] is None

    azure = await client.post("/providers", json=azure_body())
    assert azure.status_code == 201, azure.text
    read = (await client.get(f"/providers/{azure.json()['id']}")).json()
    assert read["api_version"] == "2024-10-21"
    assert read["input_counting"] == "tiktoken" and read["counting_margin"] == 10
    assert [(m["name"], m.get("deployment")) for m in read["models"]] == [
        ("gpt-4o-mini", "prod-4o-mini"),
        ("gpt-4o", None),
    ]
    # A PATCH of the models keeps or changes deployments as given.
    patched = await client.patch(
        f"/providers/{read['id']}",
        json={
            "models": [{"name": "gpt-4o-mini", "deployment": "blue"}],
            "api_version": "2025-01-01",
        },
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["models"][0]["deployment"] == "blue"
    assert patched.json()["api_version"] == "2025-01-01"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (gemini_body(api_version="2024-10-21"), "api_version"),
        (gemini_body(models=[{"name": "gemini-2.5-flash", "deployment": "x"}]), "models"),
        (azure_body(input_counting="upstream"), "input_counting"),
        (azure_body(api_version="2024-10-21&key=x"), "api_version"),
        (azure_body(models=[{"name": "gpt-4o", "deployment": "../../evil"}]), "deployment"),
        (gemini_body(input_counting="exact"), "input_counting"),
        (gemini_body(counting_margin=101), "counting_margin"),
        (gemini_body(counting_margin=-1), "counting_margin"),
        ({**gemini_body(), "kind": "openai", "input_counting": "upstream"}, "input_counting"),
    ],
)
async def test_settings_a_kind_does_not_take_are_refused(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/providers", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert field in response.text
    assert (await client.get("/providers")).json()["total"] == 0


async def test_patch_judges_the_merged_provider(client: httpx.AsyncClient) -> None:
    created = (await client.post("/providers", json=gemini_body(input_counting="upstream"))).json()
    url = f"/providers/{created['id']}"
    # gemini -> openai would keep input_counting "upstream", which openai cannot do.
    refused = await client.patch(url, json={"kind": "openai"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "input_counting"
    assert (await client.get(url)).json()["kind"] == "gemini"  # nothing changed
    moved = await client.patch(url, json={"kind": "openai", "input_counting": "tiktoken"})
    assert moved.status_code == 200, moved.text

    azure = (await client.post("/providers", json=azure_body())).json()
    # Leaving azure_openai drops what only Azure takes.
    moved = await client.patch(f"/providers/{azure['id']}", json={"kind": "openai"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["api_version"] is None
    assert all("deployment" not in model for model in moved.json()["models"])
    refused = await client.patch(f"/providers/{azure['id']}", json={"api_version": "2024-10-21"})
    assert refused.status_code == 422


async def test_keys_on_new_kinds(client: httpx.AsyncClient) -> None:
    await client.post("/providers", json=gemini_body())
    response = await client.post(
        "/apikeys", json=key_body(provider="google", model="gemini-2.5-flash")
    )
    assert response.status_code == 201, response.text
