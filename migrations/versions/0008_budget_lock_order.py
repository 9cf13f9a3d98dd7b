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
    v_expired timestamptz[];
    v_used bigint;
    v_reserved bigint;
    v_free bigint;
    v_grant bigint;
    v_period timestamptz;
    r record;
BEGIN
    -- The periods of this key's leases nobody renews any more (their process died).
    SELECT coalesce(array_agg(DISTINCT l.period_start ORDER BY l.period_start), '{}')
    INTO v_expired FROM budget_leases l
    WHERE l.api_key_id = p_key AND l.expires_at < clock_timestamp();
    -- 1. Counters, ascending: those periods' and this one's.
    FOREACH v_period IN ARRAY v_expired LOOP
        EXIT WHEN v_period >= p_period;
        PERFORM 1 FROM budget_counters c
        WHERE c.api_key_id = p_key AND c.period_start = v_period FOR UPDATE;
    END LOOP;
    INSERT INTO budget_counters (api_key_id, period_start) VALUES (p_key, p_period)
    ON CONFLICT (api_key_id, period_start) DO NOTHING;
    SELECT c.used, c.reserved INTO v_used, v_reserved FROM budget_counters c
    WHERE c.api_key_id = p_key AND c.period_start = p_period FOR UPDATE;
    FOREACH v_period IN ARRAY v_expired LOOP
        CONTINUE WHEN v_period <= p_period;
        PERFORM 1 FROM budget_counters c
        WHERE c.api_key_id = p_key AND c.period_start = v_period FOR UPDATE;
    END LOOP;
    -- 2. Those leases give their tokens back (only under a counter held since step 1).
    IF cardinality(v_expired) > 0 THEN
        FOR r IN
            WITH gone AS (
                DELETE FROM budget_leases l
                WHERE l.api_key_id = p_key AND l.expires_at < clock_timestamp()
                  AND l.period_start = ANY (v_expired)
                RETURNING l.period_start, l.tokens
            )
            SELECT g.period_start, sum(g.tokens) AS tokens FROM gone g GROUP BY g.period_start
        LOOP
            UPDATE budget_counters c SET reserved = greatest(c.reserved - r.tokens, 0)
            WHERE c.api_key_id = p_key AND c.period_start = r.period_start;
        END LOOP;
        SELECT c.used, c.reserved INTO v_used, v_reserved FROM budget_counters c
        WHERE c.api_key_id = p_key AND c.period_start = p_period;
    END IF;
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
    -- 2. Release the leases (each under its counter, held) and charge, in one
    -- statement. A lease already reclaimed (expired) gave its tokens back then:
    -- it is not found, and nothing more leaves reserved.
    WITH s AS (
        SELECT s.k, s.p, s.l, s.c FROM unnest(p_keys, p_periods, p_leases, p_charges)
            AS s (k, p, l, c)
        WHERE s.p IS NOT NULL
    ), gone AS (
        DELETE FROM budget_leases b USING s
        WHERE b.id = s.l AND b.api_key_id = s.k AND b.period_start = s.p
        RETURNING b.api_key_id AS k, b.period_start AS p, b.tokens AS t
    ), charged AS (
        SELECT s.k, s.p, sum(s.c) AS c FROM s GROUP BY s.k, s.p
    ), released AS (
        SELECT gone.k, gone.p, sum(gone.t) AS t FROM gone GROUP BY gone.k, gone.p
    )
    UPDATE budget_counters x
    SET used = x.used + ch.c, reserved = greatest(x.reserved - coalesce(rl.t, 0), 0)
    FROM charged ch LEFT JOIN released rl ON rl.k = ch.k AND rl.p = ch.p
    WHERE x.api_key_id = ch.k AND x.period_start = ch.p;
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
