"""Turn a violated database constraint into the domain error it stands for.

Uniqueness and references are decided by the database (two concurrent writers
cannot both pass a check made in Python first); the constraint's name, which
:data:`aigw.db.base.NAMING_CONVENTION` keeps stable, says which rule failed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

ErrorFactory = Callable[[], Exception]


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint *exc* reports, when the driver says which."""
    # SQLAlchemy wraps the driver's error; asyncpg's own exception carries the name.
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        name = getattr(error, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


async def flush(session: AsyncSession, errors: Mapping[str, ErrorFactory]) -> None:
    """Flush *session*; a violation of a constraint named in *errors* raises that
    error instead, and any other integrity error propagates unchanged."""
    try:
        await session.flush()
    except IntegrityError as exc:
        make_error = errors.get(violated_constraint(exc) or "")
        if make_error is None:
            raise
        raise make_error() from None
