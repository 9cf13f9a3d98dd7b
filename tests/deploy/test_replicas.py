"""The replica harness (tests/deploy/replicas.py) as a test: minutes on a loaded
2-core machine, so it is marked ``replicas`` and left out of ``make test``
(``make replicas`` runs it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.deploy import replicas
from tests.deploy.cluster import cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.replicas,
    pytest.mark.skipif(
        shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
        reason="haproxy not installed",
    ),
]


@pytest.mark.timeout(900)
async def test_three_replicas_behind_haproxy_keep_budget_drain_and_key_changes(db: str) -> None:
    with cluster(db) as c:
        a, b, change = await replicas.run_all(c)
    print("\n" + replicas.report(a, b, change))
    assert replicas.check(a, b, change) == []
