"""usage token counts as bigint

One request counted past 2**31 tokens (90k empty image parts) overflowed the
int4 columns, and the writer retried that batch forever. Counts and limits are
widened to bigint; the recorder also clamps every value to its column.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = (
    ("input_tokens", False),
    ("output_tokens", False),
    ("upstream_input_tokens", True),
    ("upstream_output_tokens", True),
    ("input_limit", False),
    ("output_limit", False),
)


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        for name, nullable in _COLUMNS:
            batch.alter_column(
                name, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=nullable
            )


def downgrade() -> None:
    # Values past int4 are clamped rather than failing the downgrade.
    for name, _ in _COLUMNS:
        op.execute(
            f"UPDATE usage_records SET {name} = LEAST({name}, 2147483647) WHERE {name} > 2147483647"  # noqa: S608
        )
    with op.batch_alter_table("usage_records") as batch:
        for name, nullable in _COLUMNS:
            batch.alter_column(
                name, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=nullable
            )
