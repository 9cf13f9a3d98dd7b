"""The key-change notification contract between the database and the key caches.

Every committed insert, update or delete on a contracted table (by a gateway,
the CLI or plain SQL) runs a trigger that sends ``pg_notify(CHANNEL, payload)``
with the payload ``"<table>:<id>"``; a change to a provider's models reports
its provider (``"providers:<provider id>"``). Gateways LISTEN on :data:`CHANNEL`
and refresh their key caches (:mod:`aigw.proxy.keycache`).

The first migration installed these triggers from its own copy of this SQL
(migrations are history and never import code that may change);
``tests/db/test_notify.py`` holds the two equal, and a change to the contract
needs a new migration.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

CHANNEL = "aigw_changes"
FUNCTION = "aigw_notify_change"
# The tables whose rows a cached key is made of.
TABLES = ("api_keys", "providers", "provider_models")
# A table that reports its parent's id instead of its own: (parent table, column).
REPORTS_PARENT = {"provider_models": ("providers", "provider_id")}


@dataclass(frozen=True, slots=True)
class Change:
    """One notification: a row of *table* (one of :data:`TABLES`, or the parent a
    table reports as) changed."""

    table: str
    id: uuid.UUID


def parse_payload(payload: str) -> Change | None:
    """The change a payload names, or None for a payload this contract does not make."""
    table, _, raw_id = payload.partition(":")
    try:
        return Change(table, uuid.UUID(raw_id))
    except ValueError:
        return None


def function_body() -> str:
    """The PL/pgSQL body of the trigger function (as ``pg_proc.prosrc`` holds it)."""
    (child, (parent, column)) = next(iter(REPORTS_PARENT.items()))
    return f"""
DECLARE
    payload text;
BEGIN
    IF TG_TABLE_NAME = '{child}' THEN
        payload := '{parent}:' || COALESCE(NEW.{column}, OLD.{column})::text;
    ELSE
        payload := TG_TABLE_NAME || ':' || COALESCE(NEW.id, OLD.id)::text;
    END IF;
    PERFORM pg_notify('{CHANNEL}', payload);
    RETURN NULL;
END """


def trigger_sql() -> tuple[str, ...]:
    """The statements that install the contract: the function, then one trigger a table."""
    return (
        f"\nCREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $${function_body()}$$\n",
        *(
            f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {FUNCTION}()"
            for table in TABLES
        ),
    )
