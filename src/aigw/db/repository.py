"""What every admin repository does the same way: load one row by id, and lock
it for a change that names the version it expects (``If-Match``)."""

from __future__ import annotations

import uuid
from typing import ClassVar, Generic, TypeVar, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigw.db.base import TimestampedMixin
from aigw.errors import NotFound, PreconditionFailed

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

    async def get_to_change(self, row_id: uuid.UUID, if_match: int | None) -> RowT:
        """:meth:`get_existing`, locked; :class:`~aigw.errors.PreconditionFailed` (412)
        unless *if_match* (from :func:`aigw.etag.parse_if_match`) is absent or names
        the row's current version."""
        row = await self.get_existing(row_id, for_update=True)
        check_version(row.version, if_match)
        return row


def check_version(current: int, if_match: int | None) -> None:
    if if_match is not None and if_match != current:
        raise PreconditionFailed(f"current version is {current}")
