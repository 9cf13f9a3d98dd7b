from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, SmallInteger, String, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from aigw.db.base import Base

OUTCOMES = (
    "completed",
    "truncated",
    "rejected",
    "upstream_error",
    "client_disconnected",
    "interrupted",  # cut by the gateway itself: a shutdown's grace period ended
)

# The /v1 endpoints a record can come from (usage_records.endpoint).
ENDPOINTS = ("chat.completions", "responses", "embeddings", "messages")


class UsageRecord(Base):
    """One row per proxied request. No foreign key: history outlives a deleted key.

    ``id`` is made by the gateway before the first write attempt, so a batch
    retried after a database outage is written once (``ON CONFLICT DO NOTHING``).
    """

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_api_key_id_created_at", "api_key_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    request_id: Mapped[str] = mapped_column(String(64), nullable=False)
    api_key_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    alias: Mapped[str] = mapped_column(String(64), nullable=False)
    provider: Mapped[str] = mapped_column(String(64), nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    upstream_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    upstream_output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    input_limit: Mapped[int] = mapped_column(BigInteger, nullable=False)
    output_limit: Mapped[int] = mapped_column(BigInteger, nullable=False)
    usage_limit: Mapped[str] = mapped_column(String(16), nullable=False)
    input_limit_exceeded: Mapped[bool] = mapped_column(nullable=False, default=False)
    output_limit_exceeded: Mapped[bool] = mapped_column(nullable=False, default=False)
    stream: Mapped[bool] = mapped_column(nullable=False, default=False)
    # A budget or rate limit was reached: rejected, cut, or (use_anyway) passed.
    budget_exceeded: Mapped[bool] = mapped_column(nullable=False, server_default="false")
    rate_exceeded: Mapped[bool] = mapped_column(nullable=False, server_default="false")
    latency_ms: Mapped[float] = mapped_column(nullable=False)
    ttfb_ms: Mapped[float | None] = mapped_column()
    # The /v1 endpoint: chat.completions, responses, embeddings or messages.
    endpoint: Mapped[str] = mapped_column(
        String(32), nullable=False, server_default="chat.completions"
    )
    # tiktoken, upstream (the provider's counter) or fallback (its estimate + margin).
    input_counter: Mapped[str | None] = mapped_column(String(16))
