"""Per-key token budgets and request/token rates, shared by every gateway process.

:mod:`~aigw.budgets.periods` says which budget period and rate window a moment
falls in; :mod:`~aigw.budgets.store` keeps the shared counters in PostgreSQL,
:mod:`~aigw.budgets.redis_store` in Redis (``AIGW_REDIS_URL``;
:mod:`~aigw.budgets.backend` picks one);
:mod:`~aigw.budgets.guard` is what the proxy asks (reserve before forwarding,
extend as output grows, settle after); :mod:`~aigw.budgets.service` serves the
admin reads. docs/budgets.md is the contract.
"""
