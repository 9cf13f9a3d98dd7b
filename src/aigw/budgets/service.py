"""Budget reads and recounts for the admin API.

A key's counter for a period is kept only while the key has a budget and that
period is its period. When either changes — ``budget_period`` set to another
period, or a budget set on a key that had none — the counter of the new
period's current window is **recounted from the usage records** (what the key
was charged since the window began: input plus output tokens of every request
that went upstream), so spending earlier in the window counts whatever the key's
settings were then. A counter kept meanwhile is never lowered (``greatest``):
it may already hold requests whose records are not written yet.

With the Redis store (``AIGW_REDIS_URL``) the counters are read from and
raised in Redis (*store*): the records' sum is still one query in the caller's
transaction, and the counter is raised before that transaction commits — so a
change that then fails to commit leaves the counter at what the records show,
never above. A Redis that does not answer makes these reads raise
:class:`~aigw.budgets.errors.BudgetStoreUnavailable` (503).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.budgets.errors import BudgetStoreUnavailable
from aigw.budgets.models import BudgetCounter
from aigw.budgets.periods import period_bounds
from aigw.budgets.redis_store import RedisBudgetStore
from aigw.budgets.store import StoreUnavailable
from aigw.usage.models import UsageRecord


async def current_usage(
    session: AsyncSession,
    keys: list[tuple[uuid.UUID, str]],
    zone: ZoneInfo,
    store: RedisBudgetStore | None = None,
) -> dict[uuid.UUID, tuple[int, datetime | None]]:
    """``{key id: (tokens used in the current period, when it ends)}`` for *keys*
    given as ``(id, period)``, in one query (or one Redis round trip)."""
    if not keys:
        return {}
    now = datetime.now(UTC)
    bounds = {key_id: period_bounds(period, now, zone) for key_id, period in keys}
    pairs = [(key_id, start) for key_id, (start, _) in bounds.items()]
    if store is not None:
        try:
            values = await store.used(pairs)
        except StoreUnavailable:
            raise BudgetStoreUnavailable(headers={"Retry-After": "1"}) from None
        return {
            key_id: (value, bounds[key_id][1])
            for (key_id, _), value in zip(pairs, values, strict=True)
        }
    rows = await session.execute(
        select(BudgetCounter.api_key_id, BudgetCounter.used).where(
            tuple_(BudgetCounter.api_key_id, BudgetCounter.period_start).in_(pairs)
        )
    )
    used = {row.api_key_id: int(row.used) for row in rows}
    return {key_id: (used.get(key_id, 0), end) for key_id, (_, end) in bounds.items()}


def needs_recount(before: dict[str, object], changes: dict[str, object]) -> bool:
    """Whether an update (*changes* to a key that read *before*) starts counting a
    window the key's counter did not follow: a new period, or a budget where
    there was none."""
    tokens = changes.get("budget_tokens", before["budget_tokens"])
    if not tokens:
        return False
    period_changed = (
        changes.get("budget_period", before["budget_period"]) != before["budget_period"]
    )
    return period_changed or not before["budget_tokens"]


async def recount(
    session: AsyncSession,
    key_id: uuid.UUID,
    period: str,
    zone: ZoneInfo,
    store: RedisBudgetStore | None = None,
) -> int:
    """Set the counter of *period*'s current window from the usage records (never
    lower than it is); returns its ``used``. One statement, in the caller's
    transaction (with Redis: the sum, then one script call)."""
    start, _ = period_bounds(period, datetime.now(UTC), zone)
    charged = (
        select(func.coalesce(func.sum(UsageRecord.input_tokens + UsageRecord.output_tokens), 0))
        .where(
            UsageRecord.api_key_id == key_id,
            UsageRecord.created_at >= start,
            UsageRecord.outcome != "rejected",  # never went upstream: charged nothing
        )
        .scalar_subquery()
    )
    if store is not None:
        counted = int((await session.execute(select(charged))).scalar_one())
        try:
            return await store.raise_used(key_id, start, counted)
        except StoreUnavailable:
            raise BudgetStoreUnavailable(headers={"Retry-After": "1"}) from None
    statement = insert(BudgetCounter).values(
        api_key_id=key_id, period_start=start, used=charged, reserved=0
    )
    upsert = statement.on_conflict_do_update(
        index_elements=[BudgetCounter.api_key_id, BudgetCounter.period_start],
        set_={"used": func.greatest(BudgetCounter.used, statement.excluded.used)},
    ).returning(BudgetCounter.used)
    return int((await session.execute(upsert)).scalar_one())
