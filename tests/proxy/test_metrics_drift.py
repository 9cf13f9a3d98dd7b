"""aigw_token_count_drift: the gateway's count minus the upstream's, per model
and direction (issue 11, item 6)."""

from __future__ import annotations

import uuid

from prometheus_client import generate_latest

from aigw.metrics import Metrics
from aigw.usage.entry import UsageEntry


def entry(**fields: object) -> UsageEntry:
    values: dict[str, object] = {
        "request_id": "r",
        "api_key_id": uuid.uuid4(),
        "alias": "a",
        "provider": "p",
        "model": "gpt-4o",
        "outcome": "completed",
        "status_code": 200,
        "input_limit": 0,
        "output_limit": 0,
        "usage_limit": "reject",
    }
    values.update(fields)
    return UsageEntry(**values)  # type: ignore[arg-type]


def sample(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_drift_is_observed_per_model_and_direction() -> None:
    metrics = Metrics()
    metrics.observe(
        entry(
            input_tokens=100, upstream_input_tokens=104, output_tokens=20, upstream_output_tokens=20
        )
    )
    metrics.observe(entry(input_tokens=50, upstream_input_tokens=50))
    # Cut or left: relayed output is not what was generated; not compared.
    metrics.observe(entry(outcome="truncated", output_tokens=5, upstream_output_tokens=40))
    metrics.observe(entry(outcome="client_disconnected", output_tokens=1, upstream_output_tokens=9))
    # Refused before the upstream: no upstream counts.
    metrics.observe(entry(outcome="rejected", status_code=400, input_tokens=7))
    text = generate_latest(metrics.registry).decode()
    # prometheus-client leaves out _sum for histograms with negative buckets.
    base = 'aigw_token_count_drift_count{{direction="{}",model="gpt-4o"}}'
    assert sample(text, base.format("input")) == 2
    assert sample(text, base.format("output")) == 1
    bucket = 'aigw_token_count_drift_bucket{{direction="{}",le="{}",model="gpt-4o"}}'
    assert sample(text, bucket.format("input", "-5.0")) == 0
    assert sample(text, bucket.format("input", "-2.0")) == 1  # the -4
    assert sample(text, bucket.format("input", "-1.0")) == 1
    assert sample(text, bucket.format("input", "0.0")) == 2  # and the 0
    assert sample(text, bucket.format("output", "-1.0")) == 0
    assert sample(text, bucket.format("output", "0.0")) == 1
