"""``aigw apply -f FILE`` against a real gateway: plan, apply, idempotence."""

from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path
from typing import Any

from tests.cli.conftest import Cli

FILE = """\
providers:
  - name: openai-main
    kind: openai
    base_url: https://api.openai.com/v1
    models:
      - gpt-4o-mini
      - name: gpt-4
        encoding: cl100k_base
  - name: local-vllm
    base_url: http://127.0.0.1:8000/v1/
    models: [llama3:8b]
keys:
  - alias: team-a
    provider: openai-main
    model: gpt-4o-mini
    status: enabled
    input_limit: 1000
    key_code_env: TEAM_A_KEY
  - alias: team-b
    provider: local-vllm
    model: llama3:8b
    input_limit: 0
    output_limit: 500
    usage_limit: use_anyway
    key_code_env: TEAM_B_KEY
"""


TEAM_C = """\
  - alias: team-c
    provider: openai-main
    model: gpt-4
    input_limit: 10
    key_code_env: TEAM_B_KEY
"""

FILE_OPENAI_ONLY = """\
providers:
  - name: openai-main
    base_url: https://api.openai.com/v1
    models:
      - gpt-4.1
      - name: gpt-4
        encoding: cl100k_base
keys:
  - alias: team-a
    provider: openai-main
    model: gpt-4.1
    status: enabled
    input_limit: 2000
    key_code_env: TEAM_A_KEY
"""


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _steps(result: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(step["kind"], step["name"]): step for step in result["steps"]}


def test_apply_creates_then_changes_nothing_then_updates(cli: Cli, tmp_path: Path) -> None:
    env = {
        "TEAM_A_KEY": "sk-a-" + secrets.token_hex(16),
        "TEAM_B_KEY": "vllm-" + secrets.token_hex(16),
    }
    # a key naming a provider that exists neither in the file nor on the gateway:
    # refused before any change
    path = _write(tmp_path, "refs.yaml", """\
        keys:
          - alias: a
            provider: nope
            model: m
            input_limit: 1
            key_code_env: K
    """)  # fmt: skip
    result = cli("apply", "-f", path, "--json", env={"K": "sk-" + secrets.token_hex(8)})
    assert result.exit_code == 2 and result.stdout == ""
    assert json.loads(result.stderr)["error"]["code"] == "invalid_reference"
    assert cli.json("keys", "list")["total"] == 0

    path = _write(tmp_path, "keys.yaml", FILE)

    dry = cli.json("apply", "-f", path, "--dry-run", env=env)
    assert dry["dry_run"] is True and dry["changed"] is False and dry["in_sync"] is False
    assert dry["summary"] == {"create": 4, "update": 0, "delete": 0, "unchanged": 0}
    assert cli.json("providers", "list")["total"] == 0  # nothing applied

    first = cli.json("apply", "-f", path, env=env)
    assert first["changed"] is True
    assert first["summary"] == {"create": 4, "update": 0, "delete": 0, "unchanged": 0}
    steps = _steps(first)
    assert all(step["done"] for step in first["steps"])
    tokens = {name: steps[("key", name)]["token"] for name in ("team-a", "team-b")}
    assert all(token.startswith("aigw-") for token in tokens.values())
    team_a = cli.json("keys", "get", "team-a")
    assert (team_a["status"], team_a["input_limit"], team_a["output_limit"]) == ("enabled", 1000, 0)
    assert team_a["key_code_masked"] == f"{env['TEAM_A_KEY'][:4]}…{env['TEAM_A_KEY'][-4:]}"
    team_b = cli.json("keys", "get", "team-b")
    assert (team_b["status"], team_b["usage_limit"], team_b["output_limit"]) == (
        "disabled",
        "use_anyway",
        500,
    )
    assert cli.json("providers", "get", "local-vllm")["base_url"] == "http://127.0.0.1:8000/v1"
    assert {
        m["name"]: m["encoding"] for m in cli.json("providers", "get", "openai-main")["models"]
    } == {
        "gpt-4o-mini": "o200k_base",
        "gpt-4": "cl100k_base",
    }

    # idempotent: a second run changes nothing, and says so
    second = cli.json("apply", "-f", path, env=env)
    assert second["changed"] is False and second["in_sync"] is True
    assert second["summary"] == {"create": 0, "update": 0, "delete": 0, "unchanged": 4}
    assert not any("token" in step for step in second["steps"])
    from_stdin = cli("apply", "-f", "-", "--json", env=env, input=FILE)
    assert from_stdin.exit_code == 0 and json.loads(from_stdin.stdout)["changed"] is False
    human = cli.ok("apply", "-f", path, env=env)
    assert "No changes" in human.stdout
    assert cli.json("keys", "get", "team-a")["version"] == team_a["version"]

    # a changed file: a new limit, a model moved away from and dropped, a new key
    # code, a new key; the providers-before-keys order makes the model swap work
    changed = FILE.replace("      - gpt-4o-mini\n", "      - gpt-4.1\n")
    changed = changed.replace("    model: gpt-4o-mini\n", "    model: gpt-4.1\n")
    changed = changed.replace("input_limit: 1000", "input_limit: 2000")
    changed += TEAM_C
    path2 = _write(tmp_path, "keys2.yaml", changed)
    env2 = {**env, "TEAM_A_KEY": "sk-a-" + secrets.token_hex(16)}
    plan = cli.ok("apply", "-f", path2, "--dry-run", env=env2)
    assert "Dry run: nothing was changed." in plan.stdout
    assert "+gpt-4.1 -gpt-4o-mini" in plan.stdout
    assert "input_limit: 1000 → 2000" in plan.stdout
    applied = cli.ok("apply", "-f", path2, env=env2)
    assert "Applied: 1 created, 2 updated, 0 deleted, 2 unchanged." in applied.stdout
    assert "team-c" in applied.stdout and "you will not see it again" in applied.stdout
    team_a2 = cli.json("keys", "get", "team-a")
    assert (team_a2["model"], team_a2["input_limit"]) == ("gpt-4.1", 2000)
    assert team_a2["key_code_masked"] == f"{env2['TEAM_A_KEY'][:4]}…{env2['TEAM_A_KEY'][-4:]}"
    assert [m["name"] for m in cli.json("providers", "get", "openai-main")["models"]] == [
        "gpt-4.1",
        "gpt-4",
    ]
    assert cli.json("apply", "-f", path2, env=env2)["changed"] is False

    # --replace-key-codes sends key codes even when the masks match
    forced = cli.json("apply", "-f", path2, "--replace-key-codes", env=env2)
    assert forced["summary"]["update"] == 3
    assert all(
        set(step["changes"]) == {"key_code"} for step in forced["steps"] if step["kind"] == "key"
    )

    # --prune deletes what the file does not name (keys first, then providers)
    cli.ok("keys", "create", "--alias", "stray", "--provider", "local-vllm", "--model", "llama3:8b",
           "--input-limit", "1", "--key-code-env", "TEAM_B_KEY", env=env)  # fmt: skip
    only_openai = FILE_OPENAI_ONLY + TEAM_C
    path3 = _write(tmp_path, "keys3.yaml", only_openai)
    pruned = cli.json("apply", "-f", path3, "--prune", env=env2)
    deleted = {(s["kind"], s["name"]) for s in pruned["steps"] if s["action"] == "delete"}
    assert deleted == {("key", "team-b"), ("key", "stray"), ("provider", "local-vllm")}
    assert [k["alias"] for k in cli.json("keys", "list", "--sort", "alias")["items"]] == [
        "team-a",
        "team-c",
    ]
    assert [p["name"] for p in cli.json("providers", "list")["items"]] == ["openai-main"]
    assert cli.json("apply", "-f", path3, "--prune", env=env2)["changed"] is False

    for value in (*env.values(), *env2.values()):
        cli.assert_never_shown(value)


def test_apply_rejects_literal_key_codes_and_unset_variables(
    offline_cli: Cli, tmp_path: Path
) -> None:
    """File problems are found before the gateway is contacted (nothing listens here)."""
    literal = "sk-literal-" + secrets.token_hex(12)
    path = _write(
        tmp_path,
        "literal.yaml",
        f"""\
        keys:
          - alias: team-a
            provider: openai-main
            model: gpt-4o-mini
            input_limit: 1
            key_code: {literal}
    """,
    )
    result = offline_cli("apply", "-f", path)
    assert result.exit_code == 2
    assert "literal key_code is not allowed" in result.stderr
    as_json = offline_cli("apply", "-f", path, "--json")
    assert as_json.exit_code == 2 and as_json.stdout == ""
    error = json.loads(as_json.stderr)["error"]
    assert error["code"] == "invalid_file" and error["errors"][0]["field"] == "keys[0]"

    broken = _write(tmp_path, "broken.yaml", f"keys:\n  - alias: [x\n    key_code: {literal}\n")
    assert offline_cli("apply", "-f", broken).exit_code == 2
    offline_cli.assert_never_shown(literal)

    unset = _write(tmp_path, "unset.yaml", """\
        keys:
          - alias: team-a
            provider: openai-main
            model: gpt-4o-mini
            input_limit: 1
            key_code_env: TEST_SURELY_UNSET_KEY
    """)  # fmt: skip
    result = offline_cli("apply", "-f", unset, "--json")
    assert result.exit_code == 2
    assert (
        "TEST_SURELY_UNSET_KEY is unset or empty"
        in json.loads(result.stderr)["error"]["errors"][0]["message"]
    )

    for text, needle in (
        ("keys:\n  - alias: a\n    provider: p\n    model: m\n    key_code_env: K\n", "keys[0].input_limit"),
        ("providers:\n  - name: p\n    base_url: https://x.example\n    models: []\n", "providers[0].models"),
        ("providers:\n  - name: p\n    base_url: https://x.example\n    models: [m]\n    api_key: s\n", "api_key"),
        ("- just a list\n", "top level"),
        ("keys:\n  - {alias: a, provider: p, model: m, input_limit: 1, key_code_env: K}\n"
         "  - {alias: A, provider: p, model: m, input_limit: 1, key_code_env: K}\n", "listed twice"),
    ):  # fmt: skip
        path = _write(tmp_path, "invalid.yaml", text)
        result = offline_cli("apply", "-f", path, env={"K": "x"})
        assert result.exit_code == 2, text
        assert needle in result.stderr, (needle, result.stderr)
    assert offline_cli("apply", "-f", str(tmp_path / "missing.yaml")).exit_code == 2
