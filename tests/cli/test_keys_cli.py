"""``aigw keys …`` against a real gateway: the CRUD path, secrets, exit codes."""

from __future__ import annotations

import json
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.cli.conftest import Cli
from tests.support import AIGW_BIN


def _provider(cli: Cli) -> None:
    cli.ok(
        "providers", "create", "--name", "openai-main", "--base-url", "https://api.openai.com/v1",
        "--model", "gpt-4o-mini", "--model", "gpt-4",
    )  # fmt: skip


def _proxy_status(cli: Cli, token: str) -> int:
    """Whether the gateway accepts *token* (401 = unknown token; anything else = known)."""
    response = httpx.get(
        f"{cli.url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return response.status_code


def test_key_lifecycle_never_shows_the_secret(cli: Cli) -> None:
    _provider(cli)
    secret = "sk-proj-" + secrets.token_urlsafe(24)
    second_secret = "sk-live-" + secrets.token_urlsafe(24)
    env = {"TEAM_A_KEY": secret, "TEAM_A_NEW_KEY": second_secret}

    created = cli.ok(
        "keys", "create", "--alias", "team-a", "--provider", "openai-main", "--model", "gpt-4o-mini",
        "--input-limit", "1000", "--output-limit", "200", "--usage-limit", "use_anyway", "--enabled",
        "--key-code-env", "TEAM_A_KEY", env=env,
    )  # fmt: skip
    assert "you will not see it again" in created.stdout
    token = next(
        word for word in created.stdout.split() if word.startswith("aigw-") and len(word) > 30
    )

    created_json = cli.json(
        "keys", "create", "--alias", "team-b", "--provider", "openai-main", "--model", "gpt-4",
        "--input-limit", "0", "--key-code-env", "TEAM_A_KEY", env=env,
    )  # fmt: skip
    assert created_json["token"].startswith("aigw-")
    assert created_json["status"] == "disabled"
    assert created_json["usage_limit"] == "reject"
    assert created_json["output_limit"] == 0

    # list, with filters, paging and as a table
    page = cli.json("keys", "list")
    assert page["total"] == 2 and page["next_cursor"] is None
    assert all("token" not in item for item in page["items"])
    assert [k["alias"] for k in cli.json("keys", "list", "--sort", "alias")["items"]] == [
        "team-a",
        "team-b",
    ]
    assert [k["alias"] for k in cli.json("keys", "list", "--sort=-alias")["items"]] == [
        "team-b",
        "team-a",
    ]
    assert [k["alias"] for k in cli.json("keys", "list", "--status", "enabled")["items"]] == [
        "team-a"
    ]
    assert [k["alias"] for k in cli.json("keys", "list", "--model", "gpt-4")["items"]] == ["team-b"]
    assert cli.json("keys", "list", "--usage-limit", "use_anyway")["total"] == 1
    assert cli.json("keys", "list", "--provider", "openai-main", "--q", "TEAM-")["total"] == 2
    one = cli.json("keys", "list", "--limit", "1", "--sort", "alias")
    assert one["items"][0]["alias"] == "team-a" and one["next_cursor"]
    assert cli.json("keys", "list", "--limit", "1", "--all")["total"] == 2
    table = cli.ok("keys", "list")
    assert "team-a" in table.stdout and "openai-main/gpt-4o-mini" in table.stdout
    assert "unlimited" in table.stdout  # team-b's input limit

    # get by id and by alias (case-insensitive); the key code only masked
    by_alias = cli.json("keys", "get", "TEAM-A")
    key_id = by_alias["id"]
    assert cli.json("keys", "get", key_id) == by_alias
    assert by_alias["key_code_masked"] == f"{secret[:4]}…{secret[-4:]}"
    assert "token" not in by_alias
    detail = cli.ok("keys", "get", "team-a")
    assert (
        by_alias["key_code_masked"] in detail.stdout and by_alias["token_prefix"] in detail.stdout
    )

    # update every writable field; a new key code from another variable
    updated = cli.json(
        "keys", "update", "team-a", "--alias", "team-a1", "--model", "gpt-4", "--disabled",
        "--input-limit", "5000", "--output-limit", "0", "--usage-limit", "reject",
        "--key-code-env", "TEAM_A_NEW_KEY", env=env,
    )  # fmt: skip
    assert updated["alias"] == "team-a1"
    assert (updated["model"], updated["status"], updated["input_limit"]) == (
        "gpt-4",
        "disabled",
        5000,
    )
    assert (updated["output_limit"], updated["usage_limit"]) == (0, "reject")
    assert updated["key_code_masked"] == f"{second_secret[:4]}…{second_secret[-4:]}"
    assert updated["version"] == by_alias["version"] + 1
    enabled = cli.ok("keys", "update", key_id, "--enabled")
    assert "updated AI API key team-a1: status" in enabled.stderr

    # rotate: a new token, once; the old one stops working
    assert _proxy_status(cli, token) != 401
    rotated = cli.json("keys", "rotate-token", "team-a1")
    assert rotated["token"].startswith("aigw-") and rotated["token"] != token
    assert _proxy_status(cli, token) == 401
    assert _proxy_status(cli, rotated["token"]) != 401
    human = cli.ok("keys", "rotate-token", "team-a1")
    assert "you will not see it again" in human.stdout
    assert "the old token no longer works" in human.stderr

    # delete
    assert cli("keys", "delete", "team-a1").exit_code == 2  # no TTY, no --yes
    deleted = cli.json("keys", "delete", "team-a1", "--yes")
    assert deleted == {"deleted": True, "id": key_id, "alias": "team-a1"}
    assert cli("keys", "get", key_id).exit_code == 1
    assert cli.ok("keys", "delete", "team-b", "-y").stdout == ""
    assert cli.json("keys", "list")["total"] == 0

    cli.assert_never_shown(secret)
    cli.assert_never_shown(second_secret)


def test_exit_codes(cli: Cli, tmp_path: Path) -> None:
    _provider(cli)
    env = {"KEY_CODE": "sk-" + secrets.token_hex(16)}
    create = ("keys", "create", "--alias", "ci", "--provider", "openai-main", "--model", "gpt-4o-mini",
              "--input-limit", "10", "--key-code-env", "KEY_CODE")  # fmt: skip
    cli.ok(*create, env=env)

    # 1: not found, by alias and by id
    assert cli("keys", "get", "nobody").exit_code == 1
    assert cli("keys", "rotate-token", "00000000-0000-4000-8000-000000000000").exit_code == 1
    assert cli("providers", "delete", "nobody", "--yes").exit_code == 1

    # 2: usage and validation
    unset = cli(*create[:-1], "NOT_SET_ANYWHERE")
    assert unset.exit_code == 2 and "NOT_SET_ANYWHERE" in unset.stderr
    assert cli(*create, env={"KEY_CODE": ""}).exit_code == 2
    assert cli("keys", "create", "--alias", "x", "--provider", "openai-main", "--model", "m",
               "--input-limit", "10", "--key-code-env", "KEY_CODE", env=env).exit_code == 2  # fmt: skip
    assert cli("keys", "list", "--status", "maybe").exit_code == 2
    assert cli("keys", "update", "ci").exit_code == 2
    assert cli("keys", "create", "--alias", "y").exit_code == 2  # missing required options
    unknown = cli("keys", "create", "--alias", "z", "--provider", "nope", "--model", "m",
                  "--input-limit", "1", "--key-code-env", "KEY_CODE", "--json", env=env)  # fmt: skip
    assert unknown.exit_code == 2
    problem = json.loads(unknown.stderr)["error"]
    assert (problem["code"], problem["status"], problem["exit_code"]) == (
        "unknown_provider",
        422,
        2,
    )

    # 3: conflict
    taken = cli(*create, "--json", env=env)
    assert taken.exit_code == 3 and json.loads(taken.stderr)["error"]["code"] == "alias_taken"
    assert cli("providers", "delete", "openai-main", "--yes").exit_code == 3  # in use
    assert cli("providers", "update", "openai-main", "--remove-model", "gpt-4o-mini").exit_code == 3

    # 4: authentication
    wrong = cli("keys", "list", env={"AIGW_ADMIN_TOKEN": "not-the-admin-token"})
    assert wrong.exit_code == 4 and "unauthorized" in wrong.stderr
    token_file = tmp_path / "admin-token"
    token_file.write_text(cli.admin_token + "\n")
    assert (
        cli(
            "keys", "list", "--admin-token-file", str(token_file), env={"AIGW_ADMIN_TOKEN": "wrong"}
        ).exit_code
        == 0
    )
    no_token = cli(
        "keys", "list", env={"AIGW_ADMIN_TOKEN": "", "AIGW_DATA_DIR": str(tmp_path / "empty")}
    )
    assert no_token.exit_code == 4 and "AIGW_ADMIN_TOKEN" in no_token.stderr
    # a local gateway's generated token is found in the data folder, never sent elsewhere
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "admin_token").write_text(cli.admin_token)
    local = cli("keys", "list", env={"AIGW_ADMIN_TOKEN": "", "AIGW_DATA_DIR": str(data_dir)})
    assert local.exit_code == 0, local.stderr
    remote = cli(
        "keys",
        "list",
        "--url",
        "http://gateway.invalid",
        env={"AIGW_ADMIN_TOKEN": "", "AIGW_DATA_DIR": str(data_dir)},
    )
    assert remote.exit_code == 4

    # 5: nothing listening
    down = cli("keys", "list", "--url", "http://127.0.0.1:9", "--json")
    assert down.exit_code == 5 and json.loads(down.stderr)["error"]["code"] == "connection_error"

    # the same codes through the installed entry point, in real processes: side by
    # side, as none changes anything (each is ~0.8 s of CPU, mostly imports)
    base_env = {"PATH": "/usr/bin:/bin", "AIGW_URL": cli.url, "AIGW_ADMIN_TOKEN": cli.admin_token}

    def run(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(AIGW_BIN), *args],
            env={**base_env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    runs = {
        "list": (("keys", "list", "--json"), {}),
        "missing": (("keys", "get", "nobody"), {}),
        "taken": (create, env),
        "unauthorized": (("keys", "list"), {"AIGW_ADMIN_TOKEN": "bad"}),
        "help": (("keys", "--help"), {"COLUMNS": "200"}),
    }
    with ThreadPoolExecutor(len(runs)) as pool:
        done = dict(zip(runs, pool.map(lambda item: run(*item), runs.values()), strict=True))
    listed = done["list"]
    assert listed.returncode == 0 and json.loads(listed.stdout)["items"][0]["alias"] == "ci"
    assert done["missing"].returncode == 1
    assert done["taken"].returncode == 3
    assert done["unauthorized"].returncode == 4
    assert "Exit codes: 0 ok · 1 not found · 2 usage" in done["help"].stdout
    cli.assert_never_shown(env["KEY_CODE"])
