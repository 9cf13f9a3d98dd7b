"""The usage record every /v1 request that resolved a key starts from."""

from __future__ import annotations

from starlette.types import Scope

from aigw.proxy.keycache import ResolvedKey
from aigw.usage.entry import UsageEntry


def new_entry(scope: Scope, key: ResolvedKey, endpoint: str) -> UsageEntry:
    """The usage record of a request that resolved *key*: ``rejected`` until an
    endpoint's exchange says otherwise (every /v1 endpoint starts from this)."""
    limits = key.limits
    return UsageEntry(
        request_id=scope.get("state", {}).get("request_id", "-"),
        api_key_id=key.id,
        alias=key.alias,
        provider=key.provider_name,
        model=key.model,
        outcome="rejected",
        status_code=500,
        input_limit=limits.input_limit,
        output_limit=limits.output_limit,
        usage_limit=limits.usage_limit,
        endpoint=endpoint,
    )
