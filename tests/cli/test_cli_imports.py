"""What the CLI's start-up pays for: an admin command talks HTTP, so importing the
command line must not import the ORM, the web framework or the tokenizer (each
``aigw`` invocation paid ~0.4 s of CPU for SQLAlchemy alone, issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys

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
