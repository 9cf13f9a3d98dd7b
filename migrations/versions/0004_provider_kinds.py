"""provider kinds gemini and azure_openai; provider counting settings; model deployments

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_providers_kind"), "providers", type_="check")
    op.create_check_constraint(
        op.f("ck_providers_kind"),
        "providers",
        "kind IN ('openai', 'anthropic', 'gemini', 'azure_openai')",
    )
    op.add_column("providers", sa.Column("api_version", sa.String(length=32), nullable=True))
    op.add_column(
        "providers",
        sa.Column(
            "input_counting", sa.String(length=16), server_default="tiktoken", nullable=False
        ),
    )
    op.add_column(
        "providers", sa.Column("counting_margin", sa.Integer(), server_default="10", nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_providers_input_counting"),
        "providers",
        "input_counting IN ('tiktoken', 'upstream')",
    )
    op.create_check_constraint(
        op.f("ck_providers_counting_margin"), "providers", "counting_margin BETWEEN 0 AND 100"
    )
    op.add_column("provider_models", sa.Column("deployment", sa.String(length=64), nullable=True))
    # Which counter decided the input limit: tiktoken, upstream, or fallback.
    op.add_column("usage_records", sa.Column("input_counter", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_records", "input_counter")
    op.drop_column("provider_models", "deployment")
    op.drop_constraint(op.f("ck_providers_counting_margin"), "providers", type_="check")
    op.drop_constraint(op.f("ck_providers_input_counting"), "providers", type_="check")
    op.drop_column("providers", "counting_margin")
    op.drop_column("providers", "input_counting")
    op.drop_column("providers", "api_version")
    op.drop_constraint(op.f("ck_providers_kind"), "providers", type_="check")
    op.execute("DELETE FROM providers WHERE kind IN ('gemini', 'azure_openai')")
    op.create_check_constraint(
        op.f("ck_providers_kind"), "providers", "kind IN ('openai', 'anthropic')"
    )
