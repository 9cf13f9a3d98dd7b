"""indexes for admin search: one- and two-character q, status and usage_limit counts

pg_trgm cannot serve a substring shorter than three characters (`%ml%` has no
trigram, so its GIN index is read whole). These indexes let `GET /apikeys`
answer such searches, and the exact `total` beside them, from an index:

- ``aigw_alias_short_grams(text)``: the distinct one- and two-character
  substrings of a text. A one- or two-character term is a substring of the
  alias exactly when it is one of these, so ``grams @> ARRAY[term]`` matches
  the same rows as ``lower(alias) LIKE '%term%'``; a GIN index over it serves
  the match and the count.
- ``(status, usage_limit)``: the count of a filter without ``q`` is an
  index-only scan instead of reading the table.

Revision ID: 0006
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The name and body are a contract with aigw.apikeys.repository.SHORT_GRAMS
# (the query must call the indexed expression exactly).
_FUNCTION = """
CREATE FUNCTION aigw_alias_short_grams(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 1000 AS $$
    SELECT coalesce(array_agg(DISTINCT g), '{}') FROM (
        SELECT substr(t, i, 1) AS g FROM generate_series(1, length(t)) AS i
        UNION ALL
        SELECT substr(t, i, 2) FROM generate_series(1, length(t) - 1) AS i
    ) AS grams
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute(
        "CREATE INDEX ix_api_keys_alias_short_grams ON api_keys "
        "USING gin (aigw_alias_short_grams(lower(alias)))"
    )
    op.create_index("ix_api_keys_status_usage_limit", "api_keys", ["status", "usage_limit"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_status_usage_limit", table_name="api_keys")
    op.execute("DROP INDEX ix_api_keys_alias_short_grams")
    op.execute("DROP FUNCTION aigw_alias_short_grams(text)")
