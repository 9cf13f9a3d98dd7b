"""The shared counters behind budgets and rate limits (migrations 0005, 0008).

Rows change only through the SQL functions ``aigw_budget_reserve``,
``aigw_budget_settle`` and ``aigw_rate_take`` (:mod:`aigw.budgets.store`, whose
docstring gives the lock order), each one statement under the key's counter row
lock, so any number of gateway processes agree.
No foreign keys: a request in flight may settle after its key was deleted.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from aigw.db.base import Base


class BudgetCounter(Base):
    """Tokens settled (``used``) and held by requests in flight (``reserved``)."""

    __tablename__ = "budget_counters"

    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    used: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    reserved: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")


class BudgetLease(Base):
    """One request's reservation; expires unless its process keeps renewing it."""

    __tablename__ = "budget_leases"
    __table_args__ = (Index("ix_budget_leases_api_key_id_expires_at", "api_key_id", "expires_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class RateWindow(Base):
    """Requests and tokens of one key in one minute."""

    __tablename__ = "rate_windows"

    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
