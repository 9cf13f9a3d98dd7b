"""Drive the real ``aigw`` CLI (in process, through typer's runner) against a
real gateway process on a clean PostgreSQL (the worker's shared gateway, reset
for each test: tests/conftest.py's ``gateway_process``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from aigw.cli import app
from tests.support import Gateway

# Variables the CLI reads; cleared so the developer's shell cannot leak in.
_CLI_ENV = ("AIGW_URL", "AIGW_ADMIN_TOKEN", "AIGW_ADMIN_TOKEN_FILE", "COLUMNS")


@dataclass
class Cli:
    """Runs ``aigw …`` against one gateway; keeps every output for secret checks."""

    url: str
    admin_token: str
    gateway: Gateway | None = None
    env: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    argvs: list[list[str]] = field(default_factory=list)

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, input: str | None = None
    ) -> Result:
        full_env = {
            "AIGW_URL": self.url,
            "AIGW_ADMIN_TOKEN": self.admin_token,
            **self.env,
            **(env or {}),
        }
        result = CliRunner().invoke(
            app, list(args), env=full_env, input=input, catch_exceptions=False
        )
        self.argvs.append(list(args))
        self.outputs.append(result.stdout + result.stderr)
        return result

    def ok(self, *args: str, env: dict[str, str] | None = None) -> Result:
        result = self(*args, env=env)
        assert result.exit_code == 0, (
            f"aigw {' '.join(args)} -> {result.exit_code}\n{result.stdout}\n{result.stderr}"
        )
        return result

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        """Run with ``--json``: stdout must be exactly one JSON document."""
        return json.loads(self.ok(*args, "--json", env=env).stdout)

    def assert_never_shown(self, secret: str) -> None:
        for argv in self.argvs:
            assert all(secret not in arg for arg in argv), "a secret was passed in argv"
        for output in self.outputs:
            assert secret not in output, "a secret was printed"
        if self.gateway is not None:
            assert secret not in self.gateway.logs(), "a secret reached the gateway log"


@pytest.fixture(autouse=True)
def _clean_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _CLI_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli(gateway_process: Gateway) -> Cli:
    gateway = gateway_process
    return Cli(url=gateway.url, admin_token=gateway.admin_token, gateway=gateway)


@pytest.fixture
def offline_cli(tmp_path: Any) -> Cli:
    """A CLI pointed at a port nothing listens on, for checks made before any request."""
    return Cli(
        url="http://127.0.0.1:9",
        admin_token="unused-admin-token",
        env={"AIGW_DATA_DIR": str(tmp_path)},
    )
