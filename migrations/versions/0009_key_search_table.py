"""admin search: a narrow table of what ``GET /apikeys`` tests, with its term indexes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

A search whose ``q`` has three characters or more counts its matches exactly
through the trigram index, and each candidate the index gives must be read
back and tested (trigrams only narrow a substring down). On ``api_keys`` that
read is of a wide row (ciphertext, token hash, limits): 1 in 20 keys matching
``q=payments`` at 100k keys read 3,857 of its blocks. The fetch of a page's
matches (the gram index for one or two characters) paid the same way.

``api_key_search`` holds, per key, only what a search tests or sorts by:
``alias_lower``, the filter columns, the timestamps and the id, about 2.2x as
many rows to a block, and the two term indexes move to it (``api_keys`` no
longer carries them: fewer index writes per key write). The table is kept in
the writing transaction by statement triggers on ``api_keys``, whoever writes
(the API, the CLI, plain SQL, COPY); TRUNCATE of ``api_keys`` empties it;
after loading rows with triggers disabled, ``SELECT aigw_rebuild_key_search()``
refills it. The term indexes are built with ``fastupdate = off``: key writes
are rare, and a pending list would make every search read it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "id, alias_lower, status, usage_limit, provider_id, model_id, created_at, updated_at"
# Every column but the id (a changed id is a delete and an insert).
_KEPT = "alias_lower, status, usage_limit, provider_id, model_id, created_at, updated_at"


def _tuple(alias: str) -> str:
    return "(" + ", ".join(f"{alias}.{c.strip()}" for c in _KEPT.split(",")) + ")"


_FUNCTIONS = (
    f"""
CREATE FUNCTION aigw_key_search_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO api_key_search ({_COLUMNS})
    SELECT {_COLUMNS} FROM new_rows ORDER BY id;
    RETURN NULL;
END $$
""",
    f"""
CREATE FUNCTION aigw_key_search_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Rows whose id changed (or vanished) first, then the kept columns of the
    -- rest, then rows under a new id. Rows whose searched columns did not change
    -- are left alone.
    DELETE FROM api_key_search AS s USING old_rows AS o
    WHERE s.id = o.id AND NOT EXISTS (SELECT 1 FROM new_rows AS n WHERE n.id = o.id);
    UPDATE api_key_search AS s
    SET ({_KEPT}) = {_tuple("n")}
    FROM new_rows AS n
    WHERE s.id = n.id AND {_tuple("s")} IS DISTINCT FROM {_tuple("n")};
    INSERT INTO api_key_search ({_COLUMNS})
    SELECT {_COLUMNS} FROM new_rows AS n
    WHERE NOT EXISTS (SELECT 1 FROM old_rows AS o WHERE o.id = n.id)
    ORDER BY id;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION aigw_key_search_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM api_key_search AS s USING old_rows AS o WHERE s.id = o.id;
    RETURN NULL;
END $$
""",
    """
CREATE FUNCTION aigw_key_search_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM api_key_search;
    RETURN NULL;
END $$
""",
    f"""
CREATE FUNCTION aigw_rebuild_key_search() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOCK TABLE api_keys IN SHARE MODE;
    DELETE FROM api_key_search;
    INSERT INTO api_key_search ({_COLUMNS}) SELECT {_COLUMNS} FROM api_keys;
END $$
""",
)

_TRIGGERS = (
    "CREATE TRIGGER api_keys_search_insert AFTER INSERT ON api_keys "
    "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION aigw_key_search_insert()",
    "CREATE TRIGGER api_keys_search_update AFTER UPDATE ON api_keys "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION aigw_key_search_change()",
    "CREATE TRIGGER api_keys_search_delete AFTER DELETE ON api_keys "
    "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
    "EXECUTE FUNCTION aigw_key_search_delete()",
    "CREATE TRIGGER api_keys_search_truncate AFTER TRUNCATE ON api_keys "
    "FOR EACH STATEMENT EXECUTE FUNCTION aigw_key_search_truncate()",
)

# The term indexes, on api_keys before (0001, 0006) and on api_key_search after.
_OLD_INDEXES = (
    "CREATE INDEX ix_api_keys_lower_alias_trgm ON api_keys USING gin (lower(alias) gin_trgm_ops)",
    "CREATE INDEX ix_api_keys_alias_short_grams ON api_keys "
    "USING gin (aigw_alias_short_grams(lower(alias)))",
)
_NEW_INDEXES = (
    "CREATE INDEX ix_api_key_search_trgm ON api_key_search "
    "USING gin (alias_lower gin_trgm_ops) WITH (fastupdate = off)",
    "CREATE INDEX ix_api_key_search_short_grams ON api_key_search "
    "USING gin (aigw_alias_short_grams(alias_lower)) WITH (fastupdate = off)",
)


def upgrade() -> None:
    # fillfactor: room on each page for the new version of a row whose only
    # change is updated_at (a token rotation), so the update stays HOT and
    # leaves the term indexes alone.
    op.execute(
        """
        CREATE TABLE api_key_search (
            id uuid NOT NULL,
            alias_lower text NOT NULL,
            status varchar(16) NOT NULL,
            usage_limit varchar(16) NOT NULL,
            provider_id uuid NOT NULL,
            model_id uuid NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            CONSTRAINT pk_api_key_search PRIMARY KEY (id)
        ) WITH (fillfactor = 90)
        """
    )
    for statement in (*_FUNCTIONS, *_TRIGGERS):
        op.execute(statement)
    op.execute("SELECT aigw_rebuild_key_search()")
    for statement in _NEW_INDEXES:
        op.execute(statement)
    op.execute("DROP INDEX ix_api_keys_lower_alias_trgm")
    op.execute("DROP INDEX ix_api_keys_alias_short_grams")


def downgrade() -> None:
    for statement in _OLD_INDEXES:
        op.execute(statement)
    for trigger in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER api_keys_search_{trigger} ON api_keys")
    for function in ("insert", "change", "delete", "truncate"):
        op.execute(f"DROP FUNCTION aigw_key_search_{function}()")
    op.execute("DROP FUNCTION aigw_rebuild_key_search()")
    op.execute("DROP TABLE api_key_search")
