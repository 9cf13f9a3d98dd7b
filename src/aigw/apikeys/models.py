from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aigw.apikeys.bounds import MAX_BUDGET, MAX_LIMIT, MAX_RPM
from aigw.db.base import Base, TimestampedMixin
from aigw.providers.models import Provider, ProviderModel

STATUSES = ("enabled", "disabled")
USAGE_LIMITS = ("reject", "use_anyway")
BUDGET_PERIODS = ("day", "week", "month", "total")
# The columns `GET /apikeys` filters on besides the alias.
SEARCH_FILTERS = ("status", "usage_limit", "provider_id", "model_id")


class ApiKey(TimestampedMixin, Base):
    """An AI API key. ``key_code_ciphertext`` is sealed by :mod:`aigw.crypto`."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("length(alias) BETWEEN 1 AND 64 AND alias = btrim(alias)", name="alias"),
        CheckConstraint(f"status IN {STATUSES!r}", name="status"),
        CheckConstraint(f"usage_limit IN {USAGE_LIMITS!r}", name="usage_limit"),
        CheckConstraint(f"input_limit BETWEEN 0 AND {MAX_LIMIT}", name="input_limit"),
        CheckConstraint(f"output_limit BETWEEN 0 AND {MAX_LIMIT}", name="output_limit"),
        CheckConstraint(f"budget_tokens BETWEEN 0 AND {MAX_BUDGET}", name="budget_tokens"),
        CheckConstraint(f"budget_period IN {BUDGET_PERIODS!r}", name="budget_period"),
        CheckConstraint(f"rpm_limit BETWEEN 0 AND {MAX_RPM}", name="rpm_limit"),
        CheckConstraint(f"tpm_limit BETWEEN 0 AND {MAX_BUDGET}", name="tpm_limit"),
        # Case-insensitive uniqueness, and the order of `sort=alias`. The sort
        # indexes include every column a search tests (walks are index-only
        # scans): migration 0007.
        Index(
            "uq_api_keys_lower_alias",
            "alias_lower",
            unique=True,
            postgresql_include=[*SEARCH_FILTERS, "id"],
        ),
        Index(
            "ix_api_keys_created_at_id",
            "created_at",
            "id",
            postgresql_include=["alias_lower", *SEARCH_FILTERS],
        ),
        Index(
            "ix_api_keys_updated_at_id",
            "updated_at",
            "id",
            postgresql_include=["alias_lower", *SEARCH_FILTERS],
        ),
        Index("ix_api_keys_model_id", "model_id"),
    )

    alias: Mapped[str] = mapped_column(String(64), nullable=False)
    # lower(alias), folded once per write by PostgreSQL (as `q` is): the order of
    # `sort=alias` and what `q` is found in.
    alias_lower: Mapped[str] = mapped_column(Text, Computed("lower(alias)", persisted=True))
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("providers.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    # RESTRICT makes "a model a key still refers to cannot be deleted" a database rule.
    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("provider_models.id", ondelete="RESTRICT"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="disabled")
    key_code_ciphertext: Mapped[str] = mapped_column(Text, nullable=False)
    key_code_masked: Mapped[str] = mapped_column(String(16), nullable=False)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    input_limit: Mapped[int] = mapped_column(nullable=False)
    output_limit: Mapped[int] = mapped_column(nullable=False, server_default="0")
    usage_limit: Mapped[str] = mapped_column(String(16), nullable=False, server_default="reject")
    # Budgets and rates (aigw.budgets); 0 = none.
    budget_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    budget_period: Mapped[str] = mapped_column(String(8), nullable=False, server_default="month")
    rpm_limit: Mapped[int] = mapped_column(nullable=False, server_default="0")
    tpm_limit: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")

    provider: Mapped[Provider] = relationship(lazy="joined", innerjoin=True)
    model: Mapped[ProviderModel] = relationship(lazy="joined", innerjoin=True)

    def __repr__(self) -> str:  # never the ciphertext or the token hash
        return f"ApiKey(id={self.id!s}, alias={self.alias!r}, status={self.status!r})"


# How many keys have each one-, two- or three-character substring of
# ``alias_lower`` (``gram``; ``''`` for every key) per combination of the filter
# columns: the exact totals of `GET /apikeys`. Kept by triggers on ``api_keys``
# (migrations 0007, 0010); never written by the application.
api_key_counts = Table(
    "api_key_counts",
    Base.metadata,
    Column("gram", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("usage_limit", String(16), nullable=False),
    Column("provider_id", UUID(as_uuid=True), nullable=False),
    Column("model_id", UUID(as_uuid=True), nullable=False),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint("gram", "status", "usage_limit", "provider_id", "model_id"),
)


# Per key, what `GET /apikeys` tests or sorts by, narrow so that testing the
# candidates a term index gives reads few blocks; the term indexes (`q`) are on
# it, not on ``api_keys``. Kept by triggers on ``api_keys`` in the writing
# transaction (migration 0009); never written by the application.
api_key_search = Table(
    "api_key_search",
    Base.metadata,
    Column("id", UUID(as_uuid=True), nullable=False),
    Column("alias_lower", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("usage_limit", String(16), nullable=False),
    Column("provider_id", UUID(as_uuid=True), nullable=False),
    Column("model_id", UUID(as_uuid=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("id"),
    Index(
        "ix_api_key_search_trgm",
        text("alias_lower gin_trgm_ops"),
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    ),
    Index(
        "ix_api_key_search_short_grams",
        text("aigw_alias_short_grams(alias_lower)"),
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    ),
    Index(  # migration 0010
        "ix_api_key_search_three_grams",
        text("aigw_alias_three_grams(alias_lower)"),
        postgresql_using="gin",
        postgresql_with={"fastupdate": "off"},
    ),
    postgresql_with={"fillfactor": "90", "parallel_workers": "0"},
)


class IdempotencyRecord(Base):
    """The stored outcome of a ``POST /apikeys`` sent with an ``Idempotency-Key``.

    The response carries the client token, so it is kept sealed by the key ring
    and bound to its idempotency key; rows expire after a day.
    """

    __tablename__ = "idempotency_records"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    status_code: Mapped[int] = mapped_column(nullable=False)
    response_sealed: Mapped[str] = mapped_column(Text, nullable=False)
    resource_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )
