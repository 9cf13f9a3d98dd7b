"""Is the schema already current? Answered without loading alembic.

``aigw serve`` migrates in a child process (alembic never loads into the
serving process); on a warm start the database is almost always at head
already, and that child is most of the start-up time. This module reads the
head revisions from the migration files' ``revision`` / ``down_revision``
lines and the database's ``alembic_version`` row, so the child runs only when
they differ. Anything it cannot read with certainty answers "not current",
and alembic decides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import asyncpg

from aigw.db.engine import libpq_url

_PACKAGE = Path(__file__).resolve().parent.parent  # .../aigw


def versions_dir() -> Path | None:
    """``versions/`` of the migrations :func:`aigw.db.migrate.script_location` uses
    (the same search, without importing alembic)."""
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate / "versions"
    return None


def head_revisions(versions: Path) -> frozenset[str] | None:
    """The revisions no other migration revises, or None when a file is unclear."""
    revisions: set[str] = set()
    revised: set[str] = set()
    files = sorted(versions.glob("*.py"))
    if not files:
        return None
    for path in files:
        try:
            module = ast.parse(path.read_text())
        except (OSError, SyntaxError, ValueError):
            return None
        found: dict[str, object] = {}
        for node in module.body:
            target, value = _assignment(node)
            if target in ("revision", "down_revision") and value is not None:
                try:
                    found[target] = ast.literal_eval(value)
                except ValueError:
                    return None
        revision, down = found.get("revision"), found.get("down_revision")
        if not isinstance(revision, str):
            return None
        revisions.add(revision)
        if isinstance(down, str):
            revised.add(down)
        elif isinstance(down, tuple | list):
            revised.update(str(item) for item in down)
        elif down is not None:
            return None
    heads = revisions - revised
    return frozenset(heads) if heads else None


def _assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id, node.value
    if (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
    ):
        return node.targets[0].id, node.value
    return None, None


async def database_revisions(url: str) -> frozenset[str] | None:
    """The revisions in ``alembic_version``, or None when it cannot be read."""
    try:
        conn = await asyncpg.connect(libpq_url(url), timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version")
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()
    return frozenset(str(row["version_num"]) for row in rows)


async def schema_is_current(url: str) -> bool:
    versions = versions_dir()
    heads = head_revisions(versions) if versions is not None else None
    return heads is not None and await database_revisions(url) == heads
