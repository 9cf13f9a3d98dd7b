"""The replica harness (tests/deploy/replicas.py) as a slow test."""

from __future__ import annotations

import shutil

import pytest

from tests.deploy import replicas

pytestmark = [
    pytest.mark.slow,
    pytest.mark.replicas,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed"),
]


@pytest.mark.timeout(1200)
async def test_three_replicas_behind_haproxy(db: str) -> None:
    with replicas.cluster(db) as cluster:
        a, b, change = await replicas.run_all(cluster)
    print(f"\n(a) {a}\n(b) sent={b['sent']} ok={b['ok']} records={b['records']}\n(c) {change}")
    assert replicas.check(a, b, change) == []
