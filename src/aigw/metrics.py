"""Prometheus metrics and the ``/metrics`` endpoint.

Observations come from the usage records (:meth:`Metrics.observe` is the usage
recorder's observer), so every proxied request is counted once, whatever its
end, at the cost of a few label lookups.

Label sets are bounded: the first ``metrics_max_aliases`` key aliases (and 50
models) seen by a process get their own label value, later ones share
``other``; a deployment with thousands of keys cannot blow up the series count.

``/metrics`` needs no authentication unless ``AIGW_METRICS_TOKEN`` is set, in
which case it takes ``Authorization: Bearer <token>``.

Several workers: each process keeps its own counters, so a scrape through a
shared port sees one worker at a time. Set ``PROMETHEUS_MULTIPROC_DIR`` to an
empty directory before start and prometheus-client's multiprocess mode
aggregates all workers in every scrape.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from aigw.crypto import constant_time_equals
from aigw.errors import Unauthorized
from aigw.usage.entry import UsageEntry

OTHER = "other"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Gateway count minus upstream count, in tokens: 0 when the counting rules agree.
_DRIFT_BUCKETS = (-100.0, -30.0, -10.0, -5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0)

# Rejection reasons, as labels.
REASON_BY_ERROR = {
    "input_token_limit_exceeded": "input_limit",
    "output_token_limit_exceeded": "output_limit",
    "key_disabled": "disabled",
    "invalid_api_key": "bad_token",
    "budget_exceeded": "budget",
    "rate_limited": "rate",
    "budget_store_unavailable": "budget_store",
}


class BoundedLabel:
    """Passes the first *cap* distinct values through; maps the rest to ``other``."""

    __slots__ = ("_cap", "_lock", "_seen")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._cap:
                self._seen.add(value)
                return value
        return OTHER


@dataclass(slots=True)
class _Series:
    alias: str
    model: str
    input_tokens: Any
    output_tokens: Any
    latency: Any
    ttfb: Any
    input_drift: Any
    output_drift: Any
    requests: dict[tuple[str, int], Any] = field(default_factory=dict)


class Metrics:
    """The gateway's metrics, on their own registry (one per app)."""

    def __init__(self, *, max_aliases: int = 100, max_models: int = 50) -> None:
        self._series: dict[tuple[str, str], _Series] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.alias_label = BoundedLabel(max_aliases)
        self.model_label = BoundedLabel(max_models)
        self.requests = Counter(
            "aigw_proxy_requests",
            "Proxied requests by key alias, model, outcome and HTTP status",
            ["alias", "model", "outcome", "status"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "aigw_proxy_tokens",
            "Tokens counted by the gateway (direction: input, output)",
            ["alias", "model", "direction"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "aigw_proxy_rejections",
            "Requests refused by reason (input_limit, output_limit, disabled, bad_token)",
            ["alias", "reason"],
            registry=self.registry,
        )
        self.over_limit = Counter(
            "aigw_proxy_use_anyway_over_limit",
            "use_anyway requests that went past a limit (limit: input, output)",
            ["alias", "model", "limit"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "aigw_upstream_latency_seconds",
            "Whole proxied exchange duration, for requests that reached the upstream",
            ["alias", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_ttfb = Histogram(
            "aigw_upstream_ttfb_seconds",
            "Time from request start to the first byte relayed to the client",
            ["alias", "model"],
            buckets=_TTFB_BUCKETS,
            registry=self.registry,
        )
        self.usage_rejected = Counter(
            "aigw_usage_records_rejected",
            "Usage records the database refused even one by one, kept aside in the spool folder",
            registry=self.registry,
        )
        self.token_drift = Histogram(
            "aigw_token_count_drift",
            "Per request, the gateway's token count minus the upstream's reported count "
            "(direction: input, output); output only for answers relayed whole",
            ["model", "direction"],
            buckets=_DRIFT_BUCKETS,
            registry=self.registry,
        )

    def _drift(self, series: _Series, entry: UsageEntry) -> None:
        """Gateway count minus the upstream's, where both describe the same text:
        input whenever the upstream reported it; output only for answers relayed
        whole (a cut or a client that left relays less than was generated)."""
        if entry.upstream_input_tokens is not None:
            series.input_drift.observe(entry.input_tokens - entry.upstream_input_tokens)
        if entry.upstream_output_tokens is not None and entry.outcome == "completed":
            series.output_drift.observe(entry.output_tokens - entry.upstream_output_tokens)

    def observe(self, entry: UsageEntry) -> None:
        series = self._series.get((entry.alias, entry.model))
        if series is None:
            series = self._series_for(entry.alias, entry.model)
        outcome = (entry.outcome, entry.status_code)
        counter = series.requests.get(outcome)
        if counter is None:
            counter = series.requests[outcome] = self.requests.labels(
                series.alias, series.model, entry.outcome, str(entry.status_code)
            )
        counter.inc()
        if entry.input_tokens:
            series.input_tokens.inc(entry.input_tokens)
        if entry.output_tokens:
            series.output_tokens.inc(entry.output_tokens)
        if entry.outcome == "rejected":
            reason = REASON_BY_ERROR.get(entry.error_code or "", "invalid_request")
            self.rejections.labels(series.alias, reason).inc()
            return
        if entry.usage_limit == "use_anyway":
            if entry.input_limit_exceeded:
                self.over_limit.labels(series.alias, series.model, "input").inc()
            if entry.output_limit_exceeded:
                self.over_limit.labels(series.alias, series.model, "output").inc()
            if entry.budget_exceeded:
                self.over_limit.labels(series.alias, series.model, "budget").inc()
            if entry.rate_exceeded:
                self.over_limit.labels(series.alias, series.model, "rate").inc()
        self._drift(series, entry)
        series.latency.observe(entry.latency_ms / 1000.0)
        if entry.ttfb_ms is not None:
            series.ttfb.observe(entry.ttfb_ms / 1000.0)

    def _series_for(self, alias: str, model: str) -> _Series:
        # Children are cached per (alias, model): labels() costs microseconds.
        alias_label, model_label = self.alias_label(alias), self.model_label(model)
        series = _Series(
            alias=alias_label,
            model=model_label,
            input_tokens=self.tokens.labels(alias_label, model_label, "input"),
            output_tokens=self.tokens.labels(alias_label, model_label, "output"),
            latency=self.upstream_latency.labels(alias_label, model_label),
            ttfb=self.upstream_ttfb.labels(alias_label, model_label),
            input_drift=self.token_drift.labels(model_label, "input"),
            output_drift=self.token_drift.labels(model_label, "output"),
        )
        if len(self._series) < 10_000:
            self._series[(alias, model)] = series
        return series

    def bad_token(self) -> None:
        """An unknown client token: no key, so no usage record; counted here."""
        self.rejections.labels("", "bad_token").inc()

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"description": "AIGW_METRICS_TOKEN is set and the bearer token is wrong"},
    },
)
async def get_metrics(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token is not None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not constant_time_equals(
            credentials.strip(), token.get_secret_value()
        ):
            raise Unauthorized(
                "a valid metrics token is required", headers={"WWW-Authenticate": "Bearer"}
            )
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
