"""usage records say which /v1 endpoint served them

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-02

Existing rows were all Chat Completions requests, hence the server default.
Adding a NOT NULL column with a constant default is a catalog-only change in
PostgreSQL 11+ (no table rewrite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "usage_records",
        sa.Column(
            "endpoint",
            sa.String(length=32),
            server_default="chat.completions",
            nullable=False,
        ),
    )


def downgrade() -> None:
    op.drop_column("usage_records", "endpoint")
