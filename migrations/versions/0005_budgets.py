"""per-key budgets and rate limits, shared by every gateway process

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-02

Keys gain ``budget_tokens``, ``budget_period``, ``rpm_limit`` and ``tpm_limit``.
The shared counters live in three tables, changed only through the three
functions below, so every decision is one statement under one row lock:

- ``budget_counters``: per key and period, tokens ``used`` (settled) and
  ``reserved`` (held by requests in flight);
- ``budget_leases``: one row per request in flight holding a reservation; a
  lease whose holder stops renewing it (the process died) expires, and the next
  reservation for that key returns its tokens;
- ``rate_windows``: per key and minute, requests and tokens.

Lock order: counter rows by (key, period) ascending, then lease rows (only
under a counter already held), then rate windows by (key, window) ascending.
The functions as written here did not keep one order (settlement locked a
counter then a lease, a reservation reclaimed leases before locking their
counters), which could deadlock; migration 0008 replaced them with functions
that keep this order (see its docstring and :mod:`aigw.budgets.store`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTIONS = (
    """
CREATE FUNCTION aigw_budget_reserve(
    p_key uuid, p_period timestamptz, p_budget bigint, p_lease uuid,
    p_want bigint, p_min bigint, p_ttl double precision
) RETURNS TABLE (granted bigint, free bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_used bigint;
    v_reserved bigint;
    v_free bigint;
    v_grant bigint;
    r record;
BEGIN
    -- Leases nobody renews any more (their process died) give their tokens back.
    FOR r IN
        DELETE FROM budget_leases l
        WHERE l.api_key_id = p_key AND l.expires_at < clock_timestamp()
        RETURNING l.period_start, l.tokens
    LOOP
        UPDATE budget_counters c SET reserved = greatest(c.reserved - r.tokens, 0)
        WHERE c.api_key_id = p_key AND c.period_start = r.period_start;
    END LOOP;
    INSERT INTO budget_counters (api_key_id, period_start) VALUES (p_key, p_period)
    ON CONFLICT (api_key_id, period_start) DO NOTHING;
    SELECT c.used, c.reserved INTO v_used, v_reserved FROM budget_counters c
    WHERE c.api_key_id = p_key AND c.period_start = p_period FOR UPDATE;
    v_free := greatest(p_budget - v_used - v_reserved, 0);
    v_grant := least(p_want, v_free);
    IF v_grant < p_min OR v_grant <= 0 THEN
        RETURN QUERY SELECT 0::bigint, v_free;
        RETURN;
    END IF;
    UPDATE budget_counters c SET reserved = c.reserved + v_grant
    WHERE c.api_key_id = p_key AND c.period_start = p_period;
    INSERT INTO budget_leases AS l (id, api_key_id, period_start, tokens, expires_at)
    VALUES (p_lease, p_key, p_period, v_grant, clock_timestamp() + make_interval(secs => p_ttl))
    ON CONFLICT (id) DO UPDATE
        SET tokens = l.tokens + EXCLUDED.tokens, expires_at = EXCLUDED.expires_at;
    RETURN QUERY SELECT v_grant, v_free;
END $$
""",
    """
CREATE FUNCTION aigw_budget_settle(
    p_leases uuid[], p_keys uuid[], p_periods timestamptz[], p_charges bigint[],
    p_windows timestamptz[], p_window_tokens bigint[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_tokens bigint;
    i integer;
BEGIN
    -- The caller sends the batch sorted by (key, period): counters lock in one order.
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        v_tokens := NULL;
        IF p_leases[i] IS NOT NULL THEN
            DELETE FROM budget_leases WHERE id = p_leases[i] RETURNING tokens INTO v_tokens;
        END IF;
        IF p_periods[i] IS NOT NULL THEN
            INSERT INTO budget_counters AS c (api_key_id, period_start, used, reserved)
            VALUES (p_keys[i], p_periods[i], p_charges[i], 0)
            ON CONFLICT (api_key_id, period_start) DO UPDATE
                SET used = c.used + EXCLUDED.used,
                    reserved = greatest(c.reserved - coalesce(v_tokens, 0), 0);
        END IF;
        IF p_windows[i] IS NOT NULL AND p_window_tokens[i] > 0 THEN
            INSERT INTO rate_windows AS w (api_key_id, window_start, requests, tokens)
            VALUES (p_keys[i], p_windows[i], 0, p_window_tokens[i])
            ON CONFLICT (api_key_id, window_start) DO UPDATE
                SET tokens = w.tokens + EXCLUDED.tokens;
        END IF;
    END LOOP;
END $$
""",
    """
CREATE FUNCTION aigw_rate_take(
    p_key uuid, p_window timestamptz, p_rpm bigint, p_tpm bigint, p_tokens bigint,
    p_enforce boolean
) RETURNS TABLE (allowed boolean, requests bigint, tokens bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_requests bigint;
    v_tokens bigint;
    v_over boolean;
BEGIN
    INSERT INTO rate_windows (api_key_id, window_start) VALUES (p_key, p_window)
    ON CONFLICT (api_key_id, window_start) DO NOTHING;
    SELECT w.requests, w.tokens INTO v_requests, v_tokens FROM rate_windows w
    WHERE w.api_key_id = p_key AND w.window_start = p_window FOR UPDATE;
    v_over := (p_rpm > 0 AND v_requests + 1 > p_rpm)
        OR (p_tpm > 0 AND v_tokens + p_tokens > p_tpm);
    IF NOT v_over OR NOT p_enforce THEN
        UPDATE rate_windows w SET requests = w.requests + 1, tokens = w.tokens + p_tokens
        WHERE w.api_key_id = p_key AND w.window_start = p_window;
        v_requests := v_requests + 1;
        v_tokens := v_tokens + p_tokens;
    END IF;
    RETURN QUERY SELECT NOT v_over, v_requests, v_tokens;
END $$
""",
)


def upgrade() -> None:
    op.add_column(
        "api_keys", sa.Column("budget_tokens", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "api_keys",
        sa.Column("budget_period", sa.String(length=8), server_default="month", nullable=False),
    )
    op.add_column(
        "api_keys", sa.Column("rpm_limit", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "api_keys", sa.Column("tpm_limit", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.create_check_constraint(
        "budget_tokens", "api_keys", "budget_tokens BETWEEN 0 AND 1000000000000"
    )
    op.create_check_constraint(
        "budget_period", "api_keys", "budget_period IN ('day', 'week', 'month', 'total')"
    )
    op.create_check_constraint("rpm_limit", "api_keys", "rpm_limit BETWEEN 0 AND 10000000")
    op.create_check_constraint("tpm_limit", "api_keys", "tpm_limit BETWEEN 0 AND 1000000000000")
    op.add_column(
        "usage_records",
        sa.Column("budget_exceeded", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column(
        "usage_records",
        sa.Column("rate_exceeded", sa.Boolean(), server_default="false", nullable=False),
    )
    op.create_table(
        "budget_counters",
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", "period_start", name=op.f("pk_budget_counters")),
    )
    op.create_table(
        "budget_leases",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_leases")),
    )
    op.create_index(
        "ix_budget_leases_api_key_id_expires_at",
        "budget_leases",
        ["api_key_id", "expires_at"],
        unique=False,
    )
    op.create_table(
        "rate_windows",
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requests", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("api_key_id", "window_start", name=op.f("pk_rate_windows")),
    )
    for sql in _FUNCTIONS:
        op.execute(sql)


def downgrade() -> None:
    op.execute("DROP FUNCTION aigw_rate_take(uuid, timestamptz, bigint, bigint, bigint, boolean)")
    op.execute(
        "DROP FUNCTION aigw_budget_settle(uuid[], uuid[], timestamptz[], bigint[], timestamptz[], bigint[])"
    )
    op.execute(
        "DROP FUNCTION aigw_budget_reserve(uuid, timestamptz, bigint, uuid, bigint, bigint, double precision)"
    )
    op.drop_table("rate_windows")
    op.drop_index("ix_budget_leases_api_key_id_expires_at", table_name="budget_leases")
    op.drop_table("budget_leases")
    op.drop_table("budget_counters")
    op.drop_column("usage_records", "rate_exceeded")
    op.drop_column("usage_records", "budget_exceeded")
    for name in ("tpm_limit", "rpm_limit", "budget_period", "budget_tokens"):
        op.drop_constraint(op.f(f"ck_api_keys_{name}"), "api_keys", type_="check")
        op.drop_column("api_keys", name)
