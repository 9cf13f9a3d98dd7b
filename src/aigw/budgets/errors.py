"""Refusals of the budget and rate checks (OpenAI's envelope under /v1)."""

from __future__ import annotations

from aigw.errors import AigwError


class BudgetExceeded(AigwError):
    status_code = 429
    code = "budget_exceeded"
    title = "This key's token budget for the period is used up"
    openai_type = "insufficient_quota"


class RateLimited(AigwError):
    status_code = 429
    code = "rate_limited"
    title = "This key's request or token rate limit is reached"
    openai_type = "rate_limit_error"


class BudgetStoreUnavailable(AigwError):
    status_code = 503
    code = "budget_store_unavailable"
    title = "The gateway cannot check this key's budget right now; retry shortly"
    openai_type = "server_error"
