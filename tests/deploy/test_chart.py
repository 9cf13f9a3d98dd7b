"""The Helm chart renders with real Helm (helm-python-sdk: Helm's Go SDK, no
binary) and every manifest validates against the Kubernetes schemas offline
(kubernetes-validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "aigw"
SECRETS = {
    "databaseUrl": "postgresql://aigw:pw@db.example:5432/aigw",
    "adminToken": "a" * 32,
    "encryptionKeys": "k1:" + "A" * 43 + "=",
    "tokenPepper": "p" * 32,
}
# Custom resources have no schema in kubernetes-validate; their shape is checked here.
CUSTOM = {"ServiceMonitor"}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="gw", namespace="aigw", is_install=True)
    docs = []
    for text in manifests.values():
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


@pytest.mark.parametrize(
    "values",
    [
        {"secrets": SECRETS},
        {
            "existingSecret": "aigw-env",
            "serviceMonitor": {"enabled": True},
            "autoscaling": {"enabled": False},
        },
    ],
    ids=["chart-secret", "existing-secret+servicemonitor"],
)
def test_every_manifest_validates(values: dict[str, Any]) -> None:
    docs = render(values)
    kinds = sorted(doc["kind"] for doc in docs)
    version = kubernetes_validate.latest_version()
    for doc in docs:
        if doc["kind"] in CUSTOM:
            assert doc["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    assert {"ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service"} <= set(kinds)
    assert ("Secret" in kinds) == ("existingSecret" not in values)
    assert ("HorizontalPodAutoscaler" in kinds) == values.get("autoscaling", {}).get(
        "enabled", True
    )


def test_deployment_probes_drain_and_hardening() -> None:
    docs = {doc["kind"]: doc for doc in render({"secrets": SECRETS})}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["requests"]
    job = docs["Job"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_missing_secrets_fail_the_render() -> None:
    from helm_python.errors import HelmRenderError

    with pytest.raises(
        HelmRenderError, match=r"secrets\.databaseUrl \(or existingSecret\) is required"
    ):
        render({})


def test_a_redis_url_goes_into_the_secret_only_when_given() -> None:
    def secret(values: dict[str, Any]) -> dict[str, Any]:
        [doc] = [doc for doc in render(values) if doc["kind"] == "Secret"]
        return dict(doc["stringData"])

    assert "AIGW_REDIS_URL" not in secret({"secrets": SECRETS})
    url = "redis://:pw@redis.example:6379/0"
    with_redis = secret({"secrets": {**SECRETS, "redisUrl": url}})
    assert with_redis["AIGW_REDIS_URL"] == url
