"""admin search: exact totals from counters, pages from index-only walks

Two costs made ``GET /apikeys`` slow at 100k keys, whatever the plan:

- the exact ``total``: counting the matches of a filter or of a one- or
  two-character ``q`` read every match (85k index entries and heap rows for
  ``q=a``, all 100k keys with no filter);
- the walk along the sort order: each row passed fetched its heap row (the
  sort indexes held only their keys) and lower-cased its alias again.

So:

- ``alias_lower``, a stored ``lower(alias)``: lower-cased once per write, by
  PostgreSQL (the same folding as ``q``'s), and the key of the unique index
  that orders ``sort=alias`` (the index keeps its name: the API maps it to
  "alias is taken").
- ``api_key_counts``: per one- or two-character substring of ``alias_lower``
  (the grams of 0006) and per combination of the filter columns (status,
  usage_limit, provider_id, model_id), how many keys have it; the gram ``''``
  stands for every key. A total without ``q``, or with a ``q`` of one or two
  characters, is a sum over a few of its rows. Statement triggers keep it
  exact in the writing transaction, whoever writes (the API, the CLI, plain
  SQL, COPY); TRUNCATE of ``api_keys`` empties it; after loading rows with
  triggers disabled, ``SELECT aigw_rebuild_key_counts()`` recomputes it.
- the three sort indexes include ``alias_lower`` and the filter columns, so a
  walk along any sort order tests every condition in the index (an
  index-only scan) and reads from the table only the rows of the page.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each statement's changes, as one upsert per counter row, in key order (so two
# writers lock counter rows in the same order: one waits for the other's commit,
# neither deadlocks). An update counts only the rows whose counted columns
# changed (a token rotation or a new limit leaves the counters alone).
_FUNCTIONS = (
    """
CREATE FUNCTION aigw_key_counts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api_key_counts AS c (gram, status, usage_limit, provider_id, model_id, n)
    SELECT g, r.status, r.usage_limit, r.provider_id, r.model_id, count(*)
    FROM new_rows AS r, unnest(aigw_alias_short_grams(r.alias_lower) || ''::text) AS g
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (gram, status, usage_limit, provider_id, model_id)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION aigw_key_counts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api_key_counts AS c (gram, status, usage_limit, provider_id, model_id, n)
    SELECT g, r.status, r.usage_limit, r.provider_id, r.model_id, -count(*)
    FROM old_rows AS r, unnest(aigw_alias_short_grams(r.alias_lower) || ''::text) AS g
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (gram, status, usage_limit, provider_id, model_id)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION aigw_key_counts_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api_key_counts AS c (gram, status, usage_limit, provider_id, model_id, n)
    SELECT g, r.status, r.usage_limit, r.provider_id, r.model_id, sum(r.d)
    FROM (
        SELECT o.alias_lower, o.status, o.usage_limit, o.provider_id, o.model_id, -1 AS d
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.alias_lower, o.status, o.usage_limit, o.provider_id, o.model_id)
            IS DISTINCT FROM (n.alias_lower, n.status, n.usage_limit, n.provider_id, n.model_id)
        UNION ALL
        SELECT n.alias_lower, n.status, n.usage_limit, n.provider_id, n.model_id, 1
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.alias_lower, o.status, o.usage_limit, o.provider_id, o.model_id)
            IS DISTINCT FROM (n.alias_lower, n.status, n.usage_limit, n.provider_id, n.model_id)
    ) AS r, unnest(aigw_alias_short_grams(r.alias_lower) || ''::text) AS g
    GROUP BY 1, 2, 3, 4, 5
    HAVING sum(r.d) <> 0
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (gram, status, usage_limit, provider_id, model_id)
    DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION aigw_key_counts_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM api_key_counts;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION aigw_rebuild_key_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE api_keys IN SHARE MODE;
    DELETE FROM api_key_counts;
    INSERT INTO api_key_counts (gram, status, usage_limit, provider_id, model_id, n)
    SELECT g, k.status, k.usage_limit, k.provider_id, k.model_id, count(*)
    FROM api_keys AS k, unnest(aigw_alias_short_grams(k.alias_lower) || ''::text) AS g
    GROUP BY 1, 2, 3, 4, 5;
END $$
""",
)

_TRIGGERS = (
    "CREATE TRIGGER api_keys_counts_insert AFTER INSERT ON api_keys "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION aigw_key_counts_insert()",
    "CREATE TRIGGER api_keys_counts_update AFTER UPDATE ON api_keys "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION aigw_key_counts_change()",
    "CREATE TRIGGER api_keys_counts_delete AFTER DELETE ON api_keys "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION aigw_key_counts_delete()",
    "CREATE TRIGGER api_keys_counts_truncate AFTER TRUNCATE ON api_keys "
    "FOR EACH STATEMENT EXECUTE FUNCTION aigw_key_counts_truncate()",
)

# The sort indexes, before (0001) and after: every column a search condition
# tests is in each, so a walk along any sort order is an index-only scan.
_FILTERS = "status, usage_limit, provider_id, model_id"
_SORT_INDEXES = (  # name, unique, (key, included) before, (key, included) after
    ("uq_api_keys_lower_alias", True, ("lower(alias)", None), ("alias_lower", f"{_FILTERS}, id")),
    (
        "ix_api_keys_created_at_id",
        False,
        ("created_at, id", None),
        ("created_at, id", f"alias_lower, {_FILTERS}"),
    ),
    (
        "ix_api_keys_updated_at_id",
        False,
        ("updated_at, id", None),
        ("updated_at, id", f"alias_lower, {_FILTERS}"),
    ),
)


def _replace_index(name: str, unique: bool, key: str, included: str | None) -> None:
    """Build the new index under a temporary name, then swap (one transaction)."""
    kind = "UNIQUE INDEX" if unique else "INDEX"
    include = f" INCLUDE ({included})" if included else ""
    op.execute(f"CREATE {kind} {name}_new ON api_keys ({key}){include}")
    op.execute(f"DROP INDEX {name}")
    op.execute(f"ALTER INDEX {name}_new RENAME TO {name}")


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_key_counts (
            gram text NOT NULL,
            status varchar(16) NOT NULL,
            usage_limit varchar(16) NOT NULL,
            provider_id uuid NOT NULL,
            model_id uuid NOT NULL,
            n bigint NOT NULL,
            CONSTRAINT pk_api_key_counts
                PRIMARY KEY (gram, status, usage_limit, provider_id, model_id)
        )
        """
    )
    op.execute(
        "ALTER TABLE api_keys ADD COLUMN alias_lower text GENERATED ALWAYS AS (lower(alias)) STORED"
    )
    for statement in (*_FUNCTIONS, *_TRIGGERS):
        op.execute(statement)
    op.execute("SELECT aigw_rebuild_key_counts()")
    for name, unique, _, (key, included) in _SORT_INDEXES:
        _replace_index(name, unique, key, included)


def downgrade() -> None:
    for name, unique, (key, included), _ in _SORT_INDEXES:
        _replace_index(name, unique, key, included)
    for trigger in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER api_keys_counts_{trigger} ON api_keys")
    for function in ("insert", "delete", "change", "truncate"):
        op.execute(f"DROP FUNCTION aigw_key_counts_{function}()")
    op.execute("DROP FUNCTION aigw_rebuild_key_counts()")
    op.execute("ALTER TABLE api_keys DROP COLUMN alias_lower")
    op.execute("DROP TABLE api_key_counts")
