from __future__ import annotations

import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from aigw.db.base import Base, TimestampedMixin

PROVIDER_KINDS = ("openai", "anthropic", "gemini", "azure_openai")
ENCODINGS = ("o200k_base", "cl100k_base")
INPUT_COUNTERS = ("tiktoken", "upstream")


class Provider(TimestampedMixin, Base):
    __tablename__ = "providers"
    __table_args__ = (
        CheckConstraint("name ~ '^[A-Za-z0-9._-]{1,64}$'", name="name_format"),
        CheckConstraint(f"kind IN {PROVIDER_KINDS!r}", name="kind"),
        CheckConstraint("base_url ~ '^https?://'", name="base_url_scheme"),
        CheckConstraint(f"input_counting IN {INPUT_COUNTERS!r}", name="input_counting"),
        CheckConstraint("counting_margin BETWEEN 0 AND 100", name="counting_margin"),
        Index("uq_providers_lower_name", text("lower(name)"), unique=True),
    )

    name: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    base_url: Mapped[str] = mapped_column(String(2048), nullable=False)
    # azure_openai: the api-version query parameter of every call.
    api_version: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Which counter judges input limits: tiktoken, or the provider's own token
    # counter (gemini, anthropic) with a tiktoken estimate + margin (percent) as
    # the fallback when it cannot answer in time.
    input_counting: Mapped[str] = mapped_column(
        String(16), nullable=False, default="tiktoken", server_default="tiktoken"
    )
    counting_margin: Mapped[int] = mapped_column(nullable=False, default=10, server_default="10")
    models: Mapped[list[ProviderModel]] = relationship(
        back_populates="provider",
        cascade="all, delete-orphan",
        order_by="ProviderModel.position",
        lazy="selectin",
    )


class ProviderModel(Base):
    __tablename__ = "provider_models"
    __table_args__ = (
        UniqueConstraint("provider_id", "name"),
        CheckConstraint(f"encoding IN {ENCODINGS!r}", name="encoding"),
        CheckConstraint("length(name) BETWEEN 1 AND 128", name="name_length"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    provider_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("providers.id", ondelete="RESTRICT"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    encoding: Mapped[str] = mapped_column(String(32), nullable=False)
    # azure_openai: the deployment serving this model (None: named like the model).
    deployment: Mapped[str | None] = mapped_column(String(64), nullable=True)
    position: Mapped[int] = mapped_column(nullable=False, default=0, server_default="0")
    provider: Mapped[Provider] = relationship(back_populates="models")
