"""Budget reads for the admin API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.budgets.models import BudgetCounter
from aigw.budgets.periods import period_bounds


async def current_usage(
    session: AsyncSession, keys: list[tuple[uuid.UUID, str]], zone: ZoneInfo
) -> dict[uuid.UUID, tuple[int, datetime | None]]:
    """``{key id: (tokens used in the current period, when it ends)}`` for *keys*
    given as ``(id, period)``, in one query."""
    if not keys:
        return {}
    now = datetime.now(UTC)
    bounds = {key_id: period_bounds(period, now, zone) for key_id, period in keys}
    pairs = [(key_id, start) for key_id, (start, _) in bounds.items()]
    rows = await session.execute(
        select(BudgetCounter.api_key_id, BudgetCounter.used).where(
            tuple_(BudgetCounter.api_key_id, BudgetCounter.period_start).in_(pairs)
        )
    )
    used = {row.api_key_id: int(row.used) for row in rows}
    return {key_id: (used.get(key_id, 0), end) for key_id, (_, end) in bounds.items()}
