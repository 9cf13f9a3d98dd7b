"""What the CLI's start-up pays for: an admin command talks HTTP, so importing the
command line must not import the ORM, the web framework or the tokenizer (each
``aigw`` invocation paid ~0.4 s of CPU for SQLAlchemy alone, issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT


def test_importing_the_cli_leaves_the_server_stack_alone() -> None:
    probe = (
        "import json, sys; import aigw.cli; "
        "print(json.dumps(sorted(m for m in ('sqlalchemy', 'fastapi', 'tiktoken', 'asyncpg')"
        " if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, check=True, cwd=REPO_ROOT
    )
    assert json.loads(result.stdout) == []


def _loaded_after(code: str, *modules: str) -> list[str]:
    """Which of *modules* a fresh interpreter holds after running *code* (its
    stdout and stderr piped, as under a service manager or a test)."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps([m for m in {list(modules)!r} if m in sys.modules]), file=sys.stderr)"
    )
    # Without a width of its own (COLUMNS, TERMINAL_WIDTH), as a service would run it.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )
    loaded: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return loaded


def test_the_whole_command_line_builds_without_settings_or_http_client() -> None:
    # `aigw --help` (and every command: the whole command line is built for an
    # admin command) loads neither the server settings (pydantic-settings,
    # ~0.15 s of CPU) nor the HTTP client (~0.1 s): a command that reads
    # settings or sends a request imports them (issue 15).
    code = "import aigw.cli; aigw.cli.build_app()"
    assert _loaded_after(code, "aigw.config", "pydantic_settings", "httpx") == []


def test_a_piped_server_command_leaves_rich_help_rendering_unloaded(tmp_path: Path) -> None:
    # Piped, help and errors are rendered 200 columns wide (TERMINAL_WIDTH), but
    # the renderer (rich's Markdown, Pygments) loads only to print them: before,
    # every piped command imported it, and `aigw serve` kept it in the gateway's
    # memory (~5 MB, issue 15). The width itself: test_first_hour_cli's
    # test_piped_help_and_messages_are_not_cut_at_80_columns.
    code = (
        "import os, sys\n"
        f"os.environ['AIGW_DATA_DIR'] = {str(tmp_path)!r}\n"
        "sys.argv = ['aigw', 'admin-token', '--path']\n"
        "from aigw.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    rendering = ("typer.rich_utils", "rich.markdown", "markdown_it", "pygments")
    assert _loaded_after(code, *rendering) == []
