"""``aigw apply`` with key budgets and rates: the file's rules, the plan, and a
real gateway (create, no-op second run, change, back to the defaults)."""

from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path
from typing import Any

import pytest

from aigw.cli.applyfile import FileError, load_apply_file
from aigw.cli.plan import plan_key
from tests.cli.conftest import Cli

SECRET = "sk-proj-abcdefghijklmnop-WXYZ"

KEY_YAML = """
keys:
  - alias: team-a
    provider: openai-main
    model: gpt-4o-mini
    input_limit: 10
    key_code_env: TEAM_A_KEY
"""


def _key(**overrides: Any) -> Any:
    record = {
        "id": "k1",
        "alias": "team-a",
        "provider": "openai-main",
        "model": "gpt-4o-mini",
        "status": "disabled",
        "key_code_masked": "sk-p…WXYZ",
        "token_prefix": "aigw-abc",
        "input_limit": 10,
        "output_limit": 0,
        "usage_limit": "reject",
        "budget_tokens": 0,
        "budget_period": "month",
        "rpm_limit": 0,
        "tpm_limit": 0,
        "budget_used": 0,
        "budget_resets_at": None,
        "created_at": "",
        "updated_at": "",
        "version": 7,
    }
    record.update(overrides)
    return record


def _spec(extra: str = "") -> Any:
    return load_apply_file(KEY_YAML + textwrap.indent(textwrap.dedent(extra), "    ")).keys[0]


BUDGETED = """\
budget_tokens: 5000
budget_period: day
rpm_limit: 30
tpm_limit: 9000
"""


def test_file_takes_the_four_fields_with_the_api_defaults() -> None:
    plain = _spec()
    assert (plain.budget_tokens, plain.budget_period, plain.rpm_limit, plain.tpm_limit) == (
        0,
        "month",
        0,
        0,
    )
    budgeted = _spec(BUDGETED)
    assert (budgeted.budget_tokens, budgeted.budget_period) == (5000, "day")
    assert (budgeted.rpm_limit, budgeted.tpm_limit) == (30, 9000)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("budget_tokens: -1", "keys[0].budget_tokens"),
        (f"budget_tokens: {10**12 + 1}", "keys[0].budget_tokens"),
        ('budget_tokens: "100"', "keys[0].budget_tokens"),  # strict: a string is not a number
        ("budget_tokens: 1.5", "keys[0].budget_tokens"),
        ("budget_tokens: true", "keys[0].budget_tokens"),
        ("budget_period: year", "keys[0].budget_period"),
        ("budget_period: DAY", "keys[0].budget_period"),
        ("rpm_limit: -1", "keys[0].rpm_limit"),
        (f"rpm_limit: {10**7 + 1}", "keys[0].rpm_limit"),
        (f"tpm_limit: {10**12 + 1}", "keys[0].tpm_limit"),
        ("budget_used: 3", "keys[0].budget_used"),  # read only: not a file field
        ("budget_resets_at: 2026-01-01", "keys[0].budget_resets_at"),
    ],
)
def test_file_refuses_out_of_range_and_unknown_values(line: str, field: str) -> None:
    with pytest.raises(FileError) as caught:
        _spec(line + "\n")
    assert [error["field"] for error in caught.value.errors] == [field]


def test_a_new_key_lists_only_the_budget_fields_it_sets() -> None:
    plain = plan_key(_spec(), SECRET, None, replace_key_code=False)
    assert not {"budget_tokens", "budget_period", "rpm_limit", "tpm_limit"} & set(plain.changes)
    assert not {"budget_tokens", "budget_period", "rpm_limit", "tpm_limit"} & set(plain.body)
    budgeted = plan_key(_spec(BUDGETED), SECRET, None, replace_key_code=False)
    assert budgeted.action == "create"
    assert {name: budgeted.changes[name] for name in ("budget_tokens", "budget_period")} == {
        "budget_tokens": (None, 5000),
        "budget_period": (None, "day"),
    }
    assert (budgeted.changes["rpm_limit"], budgeted.changes["tpm_limit"]) == (
        (None, 30),
        (None, 9000),
    )
    assert (budgeted.body["rpm_limit"], budgeted.body["tpm_limit"]) == (30, 9000)


def test_existing_key_budget_changes_and_no_ops() -> None:
    current = _key(budget_tokens=5000, budget_period="day", rpm_limit=30, tpm_limit=9000)
    # what is used of the budget and when it resets never count as a difference
    same = plan_key(
        _spec(BUDGETED),
        SECRET,
        {**current, "budget_used": 4321, "budget_resets_at": "2026-12-03T00:00:00Z"},
        replace_key_code=False,
    )
    assert same.action == "unchanged" and same.changes == {} and same.body == {}

    changed = plan_key(
        _spec(BUDGETED.replace("5000", "6000").replace("day", "week")),
        SECRET,
        current,
        replace_key_code=False,
    )
    assert changed.action == "update"
    assert changed.changes == {"budget_tokens": (5000, 6000), "budget_period": ("day", "week")}
    assert changed.body == {"budget_tokens": 6000, "budget_period": "week"}

    # the file is the whole truth: leaving the fields out means the defaults
    dropped = plan_key(_spec(), SECRET, current, replace_key_code=False)
    assert dropped.changes == {
        "budget_tokens": (5000, 0),
        "budget_period": ("day", "month"),
        "rpm_limit": (30, 0),
        "tpm_limit": (9000, 0),
    }


def test_a_gateway_without_the_fields_reads_as_the_defaults() -> None:
    old = _key()
    for name in ("budget_tokens", "budget_period", "rpm_limit", "tpm_limit"):
        del old[name]
    assert plan_key(_spec(), SECRET, old, replace_key_code=False).action == "unchanged"


FILE = """\
providers:
  - name: openai-main
    base_url: https://api.openai.com/v1
    models: [gpt-4o-mini]
keys:
  - alias: team-a
    provider: openai-main
    model: gpt-4o-mini
    input_limit: 1000
    budget_tokens: 250000
    budget_period: week
    rpm_limit: 120
    tpm_limit: 40000
    key_code_env: TEAM_A_KEY
  - alias: team-b
    provider: openai-main
    model: gpt-4o-mini
    input_limit: 0
    key_code_env: TEAM_A_KEY
"""


def test_apply_budgets_on_a_real_gateway(cli: Cli, tmp_path: Path) -> None:
    env = {"TEAM_A_KEY": "sk-a-" + secrets.token_hex(16)}
    path = tmp_path / "keys.yaml"
    path.write_text(FILE)

    dry = cli.ok("apply", "-f", str(path), "--dry-run", env=env).stdout
    assert "budget_tokens: 250000" in dry and "budget_period: week" in dry
    assert "rpm_limit: 120" in dry and "tpm_limit: 40000" in dry

    first = cli.json("apply", "-f", str(path), env=env)
    assert first["summary"] == {"create": 3, "update": 0, "delete": 0, "unchanged": 0}
    steps = {step["name"]: step for step in first["steps"]}
    assert steps["team-a"]["changes"]["budget_tokens"] == {"before": None, "after": 250000}
    assert "budget_tokens" not in steps["team-b"]["changes"]  # the default is not news
    team_a = cli.json("keys", "get", "team-a")
    assert (team_a["budget_tokens"], team_a["budget_period"]) == (250000, "week")
    assert (team_a["rpm_limit"], team_a["tpm_limit"]) == (120, 40000)
    team_b = cli.json("keys", "get", "team-b")
    assert (team_b["budget_tokens"], team_b["budget_period"], team_b["rpm_limit"]) == (
        0,
        "month",
        0,
    )

    # idempotent: the second run changes nothing
    second = cli.json("apply", "-f", str(path), env=env)
    assert second["changed"] is False and second["summary"]["unchanged"] == 3
    assert cli.json("keys", "get", "team-a")["version"] == team_a["version"]

    # a change made outside the file (the CLI) is planned back, field by field
    cli.ok("keys", "update", "team-a", "--tpm-limit", "1", "--budget-period", "day")
    cli.ok("keys", "update", "team-b", "--budget-tokens", "77")
    plan = cli.ok("apply", "-f", str(path), "--dry-run", env=env).stdout
    assert "tpm_limit: 1 → 40000" in plan and "budget_period: day → week" in plan
    assert "budget_tokens: 77 → 0" in plan
    third = cli.json("apply", "-f", str(path), env=env)
    steps = {step["name"]: step for step in third["steps"]}
    assert steps["team-a"]["changes"] == {
        "budget_period": {"before": "day", "after": "week"},
        "tpm_limit": {"before": 1, "after": 40000},
    }
    assert steps["team-b"]["changes"] == {"budget_tokens": {"before": 77, "after": 0}}
    assert cli.json("keys", "get", "team-a")["tpm_limit"] == 40000
    assert cli.json("keys", "get", "team-b")["budget_tokens"] == 0
    assert cli.json("apply", "-f", str(path), env=env)["changed"] is False

    # a bad value in the file: refused before anything is sent, pointing at the field
    path.write_text(FILE.replace("budget_period: week", "budget_period: fortnight"))
    refused = cli("apply", "-f", str(path), "--json", env=env)
    assert refused.exit_code == 2 and refused.stdout == ""
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == "invalid_file"
    assert [item["field"] for item in error["errors"]] == ["keys[0].budget_period"]
    assert cli.json("keys", "get", "team-a")["budget_period"] == "week"
    cli.assert_never_shown(env["TEAM_A_KEY"])
