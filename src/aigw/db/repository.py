"""What every admin repository does the same way: load one row by id."""

from __future__ import annotations

import uuid
from typing import ClassVar, Generic, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.db.base import TimestampedMixin
from aigw.errors import NotFound

RowT = TypeVar("RowT", bound=TimestampedMixin)


class Repository(Generic[RowT]):
    """Composable queries over one table; no commits here (the session dependency
    owns the transaction)."""

    model: ClassVar[type[TimestampedMixin]]
    # The detail of the 404 for an unknown id; ``{id}`` is replaced.
    not_found: ClassVar[str]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, row_id: uuid.UUID, *, for_update: bool = False) -> RowT | None:
        """The row, fresh from the database (``populate_existing``: server-side
        timestamps written by this transaction are read back), with its eagerly
        loaded relationships; ``for_update`` locks this table's row only."""
        model = self.model
        stmt = select(model).where(model.id == row_id).execution_options(populate_existing=True)
        if for_update:
            stmt = stmt.with_for_update(of=model)
        # ClassVar cannot name RowT: the subclass's ``model`` is its RowT by construction.
        return cast("RowT | None", (await self.session.execute(stmt)).unique().scalar_one_or_none())

    async def get_existing(self, row_id: uuid.UUID, *, for_update: bool = False) -> RowT:
        """:meth:`get`, or :class:`~aigw.errors.NotFound` (404) when there is no such row."""
        row = await self.get(row_id, for_update=for_update)
        if row is None:
            raise NotFound(self.not_found.format(id=row_id))
        return row
