import functools

import httpx
import pytest

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


async def test_a_ready_gateway_scans_young_objects_rarely(client: httpx.AsyncClient) -> None:
    # Issue 15: at Python's default (700) the youngest generation was collected
    # several times per proxied request; once ready, the gateway raises it.
    import gc

    from aigw.app import GC_YOUNG_THRESHOLD

    assert (await client.get("/healthz")).status_code == 200
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD >= 10 * 700
    assert gc.get_freeze_count() > 0


@functools.cache
def _packages_a_gateway_loads() -> frozenset[str]:
    """The top-level packages an ``aigw.main`` imported in a fresh interpreter has
    loaded: one probe process (~2 s of CPU: its imports) for both checks below,
    which run on one xdist worker. (Imported here: a test module that names
    ``subprocess`` is taken for one that starts gateways, see tests/conftest.py.)"""
    import subprocess
    import sys

    probe = "import sys, aigw.main; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = frozenset(out.stdout.split())
    assert {"aigw", "fastapi", "asyncpg"} <= loaded, out.stdout  # the probe saw a gateway
    return loaded


@pytest.mark.xdist_group("a-gateway's-imports")
def test_the_gateway_loads_no_redis_client_without_a_redis_store() -> None:
    # Issue 15: redis's client (~6 MB of an idle worker) is imported with the
    # first Redis store client, never by a gateway whose budgets are in PostgreSQL.
    assert sorted(_packages_a_gateway_loads() & {"redis"}) == []


@pytest.mark.xdist_group("a-gateway's-imports")
def test_the_gateway_loads_no_migration_pdf_or_font_libraries() -> None:
    # Issue 15, a guard: alembic runs in `aigw migrate`'s own process (~12 MB),
    # fontTools loads with the first PDF whose fonts rename glyphs, and pypdf is
    # only the tests' independent reader; none belongs in an idle worker.
    heavy = {"alembic", "mako", "fontTools", "pypdf"}
    assert sorted(_packages_a_gateway_loads() & heavy) == []
