"""admin search: three-character terms counted and found exactly; no parallel scans

A ``q`` of three characters pg_trgm cannot narrow down (``t-0``, ``a-p``: no
two letters or digits in a row) was counted by testing every key that holds
its rarest two-character gram, or every key (a scan of ``api_key_search``):
~15 ms of PostgreSQL CPU for ``t-0`` at 100k keys, the slowest search shape.
A term of three characters is a substring of the alias exactly when it is one
of the alias's three-character substrings, so:

- ``aigw_alias_three_grams(text)``: the distinct three-character substrings of
  a text, every character counted (unlike pg_trgm's trigrams, which only take
  runs of word characters);
- ``api_key_counts`` counts them too (its triggers and its rebuild function,
  0007's, now unnest both gram functions): the total of a three-character
  ``q`` is a sum over a few counter rows, as for one or two characters;
- a GIN index over them on ``api_key_search`` finds exactly the keys holding
  a three-character term (no recheck) for a page's *fetch*.

And ``api_key_search`` takes no parallel workers: a search reads at most a few
thousand of its rows, where starting a worker costs more (~5 ms of wall time,
measured on a fetch through the gram index at 100k keys) than it saves.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The name and body are a contract with aigw.apikeys.search (the query calls the
# indexed expression exactly).
_FUNCTION = """
CREATE FUNCTION aigw_alias_three_grams(t text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE COST 1000 AS $$
    SELECT coalesce(array_agg(DISTINCT substr(t, i, 3)), '{}')
    FROM generate_series(1, length(t) - 2) AS i
$$
"""
_INDEX = (
    "CREATE INDEX ix_api_key_search_three_grams ON api_key_search "
    "USING gin (aigw_alias_three_grams(alias_lower)) WITH (fastupdate = off)"
)


def _counts_functions() -> tuple[str, ...]:
    """0007's functions behind ``api_key_counts`` (insert, delete, change,
    truncate, rebuild), as 0007 created them."""
    path = Path(__file__).with_name("0007_search_counts.py")
    spec = importlib.util.spec_from_file_location("aigw_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(
        f.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") for f in module._FUNCTIONS
    )


def _with_three_grams(function: str) -> str:
    """*function* counting three-character grams beside the short ones."""
    out = function
    for row in ("r", "k"):
        short = f"aigw_alias_short_grams({row}.alias_lower)"
        out = out.replace(short, f"{short} || aigw_alias_three_grams({row}.alias_lower)")
    return out


def upgrade() -> None:
    op.execute(_FUNCTION)
    functions = _counts_functions()
    changed = [_with_three_grams(f) for f in functions]
    # insert, delete, change and rebuild count grams; truncate only empties.
    assert sum(new != old for new, old in zip(changed, functions, strict=True)) == 4
    for statement in changed:
        op.execute(statement)
    op.execute("SELECT aigw_rebuild_key_counts()")
    op.execute(_INDEX)
    op.execute("ALTER TABLE api_key_search SET (parallel_workers = 0)")


def downgrade() -> None:
    op.execute("ALTER TABLE api_key_search RESET (parallel_workers)")
    op.execute("DROP INDEX ix_api_key_search_three_grams")
    for statement in _counts_functions():
        op.execute(statement)
    op.execute("SELECT aigw_rebuild_key_counts()")
    op.execute("DROP FUNCTION aigw_alias_three_grams(text)")
