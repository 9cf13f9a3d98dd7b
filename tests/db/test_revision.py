"""The schema-is-current check that lets a warm ``aigw serve`` skip the migration
child: its heads agree with alembic's own, and anything unclear means "migrate"."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from aigw.db.engine import libpq_url
from aigw.db.migrate import alembic_config
from aigw.db.revision import database_revisions, head_revisions, schema_is_current, versions_dir


def test_heads_are_alembics_heads(database_url: str) -> None:
    from alembic.script import ScriptDirectory

    versions = versions_dir()
    assert versions is not None
    expected = ScriptDirectory.from_config(alembic_config(database_url)).get_heads()
    assert head_revisions(versions) == frozenset(expected)


def _migration(folder: Path, revision: str, down: str) -> None:
    (folder / f"{revision}_m.py").write_text(
        f"revision: str = '{revision}'\ndown_revision = {down}\n"
    )


def test_branches_merges_and_unclear_files(tmp_path: Path) -> None:
    _migration(tmp_path, "0001", "None")
    _migration(tmp_path, "0002", "'0001'")
    _migration(tmp_path, "0003", "'0001'")
    assert head_revisions(tmp_path) == {"0002", "0003"}
    _migration(tmp_path, "0004", "('0002', '0003')")
    assert head_revisions(tmp_path) == {"0004"}
    (tmp_path / "0005_odd.py").write_text("revision = make_id()\ndown_revision = '0004'\n")
    assert head_revisions(tmp_path) is None
    assert head_revisions(tmp_path / "missing") is None


async def test_current_only_when_the_database_is_at_head(database_url: str) -> None:
    assert await schema_is_current(database_url)
    # The server's own "postgres" database has no alembic_version: not current.
    other = make_url(libpq_url(database_url)).set(database="postgres")
    empty = other.render_as_string(hide_password=False)
    assert await database_revisions(empty) is None
    assert not await schema_is_current(empty)
    assert not await schema_is_current("postgresql://nobody@127.0.0.1:9/none")
