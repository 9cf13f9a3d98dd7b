"""What a new user meets first: ``aigw admin-token``, ``aigw serve`` on a busy
port and the next steps it prints, and help and messages that read well when piped."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aigw.cli import app
from tests.support import AIGW_BIN, Gateway, free_port

TOKEN_IN_FILE = "aigw-admin-" + "f" * 43


def _aigw(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed ``aigw`` program, its output piped (not a terminal)."""
    return subprocess.run(
        [str(AIGW_BIN), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AIGW_") and name not in ("COLUMNS", "TERMINAL_WIDTH")
    }
    return {**env, **extra}


# -- aigw admin-token ---------------------------------------------------------------


def test_admin_token_reads_the_data_folder_named_by_aigw_data_dir(tmp_path: Path) -> None:
    runner = CliRunner()
    env: dict[str, str | None] = {"AIGW_DATA_DIR": str(tmp_path), "AIGW_ADMIN_TOKEN": None}

    missing = runner.invoke(app, ["admin-token"], env=env)
    assert missing.exit_code == 1
    assert missing.stdout == ""
    assert str(tmp_path / "admin_token") in missing.stderr and "make serve" in missing.stderr
    assert not (tmp_path / "admin_token").exists(), "reading must not generate a token"

    (tmp_path / "admin_token").write_text(TOKEN_IN_FILE + "\n")
    found = runner.invoke(app, ["admin-token"], env=env)
    assert (found.exit_code, found.stdout) == (0, TOKEN_IN_FILE + "\n")
    where = runner.invoke(app, ["admin-token", "--path"], env=env)
    assert where.stdout == f"{tmp_path / 'admin_token'}\n"

    chosen = "chosen-admin-token-0123456789"
    from_env = runner.invoke(app, ["admin-token"], env={**env, "AIGW_ADMIN_TOKEN": chosen})
    assert (from_env.exit_code, from_env.stdout) == (0, chosen + "\n")


# -- aigw serve ---------------------------------------------------------------------


def test_serve_on_a_busy_port_says_so_once_and_starts_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        result = _aigw(
            "serve", "--port", str(port), env=_clean_env(AIGW_DATA_DIR=str(data)), timeout=30
        )
        took = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]
    assert "--port" in lines[0]
    assert result.stdout == ""
    # Nothing started: no generated secrets, no embedded PostgreSQL in the data folder.
    assert not data.exists() or list(data.iterdir()) == []
    assert "PostgreSQL" not in result.stderr and "startup" not in result.stderr.lower()
    assert took < 20, f"refusing took {took:.1f}s"


def test_serve_refuses_a_host_it_cannot_bind(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this machine.
    result = _aigw(
        "serve", "--host", "192.0.2.1", "--port", str(free_port()),
        env=_clean_env(AIGW_DATA_DIR=str(tmp_path / "data")), timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "192.0.2.1" in result.stderr and "cannot be bound" in result.stderr
    assert not (tmp_path / "data").exists()


def test_serve_prints_the_next_steps(start_gateway_process: Callable[..., Gateway]) -> None:
    gateway = start_gateway_process(PATH="/usr/bin:/bin")
    log = gateway.logs()
    assert f"console:     {gateway.url}/ui" in log
    assert "admin token: the value of AIGW_ADMIN_TOKEN" in log
    assert f"proxy:       {gateway.url}/v1" in log
    # The venv's bin is not on this PATH, so it says how to put aigw on it.
    cli_line = next(line for line in log.splitlines() if line.startswith("CLI:"))
    assert "bin/aigw --help" in cli_line and "bin/activate" in cli_line


# -- piped output and help -------------------------------------------------------------


def test_piped_help_and_messages_are_not_cut_at_80_columns(tmp_path: Path) -> None:
    env = _clean_env(AIGW_DATA_DIR=str(tmp_path))
    help_text = _aigw("keys", "create", "--help", env=env).stdout
    sentence = (
        "Name of the environment variable holding the upstream API key code "
        "(never pass the secret itself on the command line)."
    )
    assert sentence in help_text, help_text
    message = _aigw("admin-token", env=env).stderr
    assert len(message.strip().splitlines()) == 1 and len(message) > 100, message


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"], ["migrate"], ["admin-token"], ["new-encryption-key"], ["rotate-keys"],
        ["apply"],
        ["keys"], ["keys", "list"], ["keys", "get"], ["keys", "create"], ["keys", "update"],
        ["keys", "delete"], ["keys", "rotate-token"], ["keys", "usage"],
        ["providers"], ["providers", "list"], ["providers", "get"], ["providers", "create"],
        ["providers", "update"], ["providers", "delete"],
    ],
)  # fmt: skip
def test_help_has_no_doubled_backticks(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "``" not in result.output


# -- what the serving process loads (issue 15: idle memory per worker) ---------------

_LOADED_AFTER = """
import sys
sys.argv = ["aigw", *sys.argv[1:]]
from aigw.cli import main
try:
    main()
except SystemExit:
    pass
admin = ("aigw.cli.keys", "aigw.cli.providers", "aigw.cli.apply", "aigw.cli.client", "httpx")
print(" ".join(name for name in admin if name in sys.modules), file=sys.stderr)
"""


def _admin_modules_loaded(*args: str, env: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run(
        [str(AIGW_BIN.with_name("python")), "-c", _LOADED_AFTER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def test_server_commands_leave_the_admin_commands_unloaded(tmp_path: Path) -> None:
    # `aigw serve` goes on to be the gateway's process: the admin commands' HTTP
    # client and tables would stay in its memory for nothing.
    env = _clean_env(AIGW_DATA_DIR=str(tmp_path))
    commands = (
        ("serve", "--help"),
        ("admin-token", "--help"),
        ("--help",),
        ("keys", "list", "--help"),
    )
    with ThreadPoolExecutor(len(commands)) as pool:  # four processes side by side
        serve, admin_token, top, keys_list = pool.map(
            lambda args: _admin_modules_loaded(*args, env=env), commands
        )
    out, loaded = serve
    assert "Migrate the database and serve the gateway" in out
    assert loaded == ""
    out, loaded = admin_token
    assert "Print the admin token" in out and loaded == ""
    # The whole command line is still there for the rest.
    out, loaded = top
    assert all(command in out for command in ("serve", "keys", "providers", "apply"))
    out, loaded = keys_list
    assert "--json" in out and "aigw.cli.keys" in loaded
