import httpx

from tests.conftest import key_body


async def test_create_then_get_round_trips(client: httpx.AsyncClient, provider: dict) -> None:
    created = await client.post("/apikeys", json=key_body())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["token"].startswith("aigw-")
    fetched = await client.get(f"/apikeys/{body['id']}")
    assert fetched.status_code == 200
    assert "token" not in fetched.json()
    assert fetched.json()["status"] == "disabled"
