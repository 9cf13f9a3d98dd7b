"""budget functions: one lock order, so no two of them can deadlock

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

0005's functions took row locks in orders that could form a cycle between
gateway connections (PostgreSQL then aborts one after ``deadlock_timeout``):

- ``aigw_budget_settle`` deleted a lease, then locked its counter, then the
  next lease: it held counter C waiting for lease L;
- ``aigw_budget_reserve`` reclaimed expired leases (deleting them) before
  locking their counters: it held lease L waiting for counter C.

From here on every function locks in one global order:

1. counter rows (``budget_counters``), by (key, period) ascending;
2. then lease rows (``budget_leases``), and only leases whose (key, period)
   counter the transaction already holds;
3. then rate windows (``rate_windows``), by (key, window) ascending.

A transaction holding a lease therefore never waits for a counter, and two
transactions cannot both want one lease (each would hold its counter). Lease
renewal (:mod:`aigw.budgets.store`) takes no counter and never waits (``SKIP
LOCKED``), so it cannot close a cycle either. ``aigw_rate_take`` locks one
rate window and nothing else.

Accounting: a lease's tokens leave ``reserved`` exactly once, by whichever of
settlement and reclaim deletes its row; the other finds no row and returns
nothing (the settlement still charges ``used``).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_RESERVE = """
CREATE OR REPLACE FUNCTION aigw_budget_reserve(
    p_key uuid, p_period timestamptz, p_budget bigint, p_lease uuid,
    p_want bigint, p_min bigint, p_ttl double precision
) RETURNS TABLE (granted bigint, free bigint) LANGUAGE plpgsql AS $$
DECLARE
    v_periods timestamptz[] := ARRAY[]::timestamptz[];
    v_used bigint;
    v_reserved bigint;
    v_free bigint;
    v_grant bigint;
    r record;
BEGIN
    -- 1. Counters, ascending: this period's, and those of the key's expired leases.
    FOR r IN
        SELECT p_period AS p
        UNION
        SELECT l.period_start FROM budget_leases l
        WHERE l.api_key_id = p_key AND l.expires_at < clock_timestamp()
        ORDER BY 1
    LOOP
        IF r.p = p_period THEN
            INSERT INTO budget_counters (api_key_id, period_start) VALUES (p_key, p_period)
            ON CONFLICT (api_key_id, period_start) DO NOTHING;
        END IF;
        PERFORM 1 FROM budget_counters c
        WHERE c.api_key_id = p_key AND c.period_start = r.p FOR UPDATE;
        v_periods := v_periods || r.p;
    END LOOP;
    -- 2. Leases nobody renews any more (their process died) give their tokens
    -- back: only those under a counter held since step 1.
    FOR r IN
        WITH gone AS (
            DELETE FROM budget_leases l
            WHERE l.api_key_id = p_key AND l.expires_at < clock_timestamp()
              AND l.period_start = ANY (v_periods)
            RETURNING l.period_start, l.tokens
        )
        SELECT g.period_start, sum(g.tokens) AS tokens FROM gone g GROUP BY g.period_start
    LOOP
        UPDATE budget_counters c SET reserved = greatest(c.reserved - r.tokens, 0)
        WHERE c.api_key_id = p_key AND c.period_start = r.period_start;
    END LOOP;
    SELECT c.used, c.reserved INTO v_used, v_reserved FROM budget_counters c
    WHERE c.api_key_id = p_key AND c.period_start = p_period;
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
"""

_SETTLE = """
CREATE OR REPLACE FUNCTION aigw_budget_settle(
    p_leases uuid[], p_keys uuid[], p_periods timestamptz[], p_charges bigint[],
    p_windows timestamptz[], p_window_tokens bigint[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_tokens bigint;
    r record;
BEGIN
    -- Sorted here, whatever order the caller sends the batch in.
    -- 1. Every counter of the batch, (key, period) ascending.
    FOR r IN
        SELECT DISTINCT s.k, s.p FROM unnest(p_keys, p_periods) AS s (k, p)
        WHERE s.p IS NOT NULL ORDER BY s.k, s.p
    LOOP
        INSERT INTO budget_counters (api_key_id, period_start) VALUES (r.k, r.p)
        ON CONFLICT (api_key_id, period_start) DO NOTHING;
        PERFORM 1 FROM budget_counters c
        WHERE c.api_key_id = r.k AND c.period_start = r.p FOR UPDATE;
    END LOOP;
    -- 2. Release each lease (under its counter, held) and charge. A lease already
    -- reclaimed (expired) gave its tokens back then: nothing more leaves reserved.
    FOR r IN
        SELECT s.k, s.p, s.l, s.c FROM unnest(p_keys, p_periods, p_leases, p_charges)
            AS s (k, p, l, c)
        WHERE s.p IS NOT NULL ORDER BY s.k, s.p, s.l
    LOOP
        v_tokens := NULL;
        IF r.l IS NOT NULL THEN
            DELETE FROM budget_leases l
            WHERE l.id = r.l AND l.api_key_id = r.k AND l.period_start = r.p
            RETURNING l.tokens INTO v_tokens;
        END IF;
        UPDATE budget_counters c
        SET used = c.used + r.c, reserved = greatest(c.reserved - coalesce(v_tokens, 0), 0)
        WHERE c.api_key_id = r.k AND c.period_start = r.p;
    END LOOP;
    -- 3. Rate windows last, (key, window) ascending, one update each.
    FOR r IN
        SELECT s.k, s.w, sum(s.t) AS t FROM unnest(p_keys, p_windows, p_window_tokens)
            AS s (k, w, t)
        WHERE s.w IS NOT NULL AND s.t > 0 GROUP BY s.k, s.w ORDER BY s.k, s.w
    LOOP
        INSERT INTO rate_windows AS w (api_key_id, window_start, requests, tokens)
        VALUES (r.k, r.w, 0, r.t)
        ON CONFLICT (api_key_id, window_start) DO UPDATE SET tokens = w.tokens + EXCLUDED.tokens;
    END LOOP;
END $$
"""

# 0005's bodies, for the downgrade (0005 itself is never edited).
_RESERVE_0005 = """
CREATE OR REPLACE FUNCTION aigw_budget_reserve(
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
"""

_SETTLE_0005 = """
CREATE OR REPLACE FUNCTION aigw_budget_settle(
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
"""


def upgrade() -> None:
    op.execute(_RESERVE)
    op.execute(_SETTLE)


def downgrade() -> None:
    op.execute(_RESERVE_0005)
    op.execute(_SETTLE_0005)
