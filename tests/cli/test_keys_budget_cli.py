"""``aigw keys create/update/get`` with budgets and rates, against a real gateway
process and the fake upstream.

The budget used is what the fake upstream billed for the one request made
(its own rules: OpenAI's cookbook formula for the prompt, one token per
generated word), never the gateway's own arithmetic; the period end is the
next UTC midnight, worked out here from the clock.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from tests.cli.conftest import Cli
from tests.fakes import FakeUpstream, start_fake_upstream

MODEL = "gpt-4o-mini"
BUDGET = 1000
OUTPUT_WORDS = 10


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with start_fake_upstream() as server:
        yield server


def _next_utc_midnight(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def _create(cli: Cli, fake: FakeUpstream, *extra: str) -> dict[str, Any]:
    cli.ok("providers", "create", "--name", "fake", "--base-url", fake.url, "--model", MODEL)
    return dict(
        cli.json(
            "keys", "create", "--alias", "team-budget", "--provider", "fake", "--model", MODEL,
            "--input-limit", "0", "--enabled", "--key-code-env", "UPSTREAM_KEY", *extra,
            env={"UPSTREAM_KEY": "sk-upstream-" + secrets.token_hex(8)},
        )
    )  # fmt: skip


def _one_request(cli: Cli, token: str) -> int:
    """One chat completion; returns the tokens the fake upstream billed for it."""
    client = openai.OpenAI(base_url=f"{cli.url}/v1", api_key=token, max_retries=0, timeout=30)
    deadline = time.monotonic() + 10
    while True:
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "go"}]
            )
            break
        except openai.AuthenticationError:
            # a new key reaches the proxy's cache within a second
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert reply.usage is not None
    assert (
        reply.usage.completion_tokens
        == OUTPUT_WORDS
        == len(reply.choices[0].message.content.split())
    )  # type: ignore[union-attr]
    return reply.usage.prompt_tokens + reply.usage.completion_tokens


def _used_when_settled(cli: Cli, expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        key = dict(cli.json("keys", "get", "team-budget"))
        if key["budget_used"] == expected or time.monotonic() > deadline:
            return key
        time.sleep(0.1)  # settlements are written in batches, off the request path


def test_budget_and_rates_through_create_get_and_update(cli: Cli, fake: FakeUpstream) -> None:
    fake.reset()
    fake.set_scenario(tokens=OUTPUT_WORDS)
    before = datetime.now(UTC)
    created = _create(
        cli, fake,
        "--budget-tokens", str(BUDGET), "--budget-period", "day",
        "--rpm-limit", "60", "--tpm-limit", "50000",
    )  # fmt: skip
    assert (created["budget_tokens"], created["budget_period"]) == (BUDGET, "day")
    assert (created["rpm_limit"], created["tpm_limit"]) == (60, 50000)
    assert created["budget_used"] == 0

    billed = _one_request(cli, created["token"])
    key = _used_when_settled(cli, billed)
    assert key["budget_used"] == billed
    resets_at = datetime.fromisoformat(key["budget_resets_at"])
    assert resets_at in {_next_utc_midnight(before), _next_utc_midnight(datetime.now(UTC))}

    # --json is the API's document, unchanged
    assert set(key) >= {"budget_tokens", "budget_period", "rpm_limit", "tpm_limit", "budget_used"}
    assert "token" not in key

    # the table: budget used of budget, period, used, when it resets, the rates
    table = cli.ok("keys", "get", "team-budget").stdout
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines() if line.strip()}
    assert lines["Budget"].split()[1:] == [f"{BUDGET:,}", "tokens"]
    assert lines["Budget period"].split()[-1] == "day"
    share = f"({billed / BUDGET * 100:.1f}%)"
    assert lines["Budget used"].split()[2:] == [str(billed), "of", f"{BUDGET:,}", share]
    utc = resets_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    assert lines["Budget resets at"].split()[3:] == [*utc.split(), "UTC"]
    assert lines["RPM limit"].split()[-1] == "60"
    assert lines["TPM limit"].split()[-1] == "50,000"

    # update: only the fields given change
    updated = cli.json(
        "keys", "update", "team-budget", "--budget-period", "total", "--rpm-limit", "0",
        "--tpm-limit", "7",
    )  # fmt: skip
    assert (updated["budget_tokens"], updated["budget_period"]) == (BUDGET, "total")
    assert (updated["rpm_limit"], updated["tpm_limit"]) == (0, 7)
    assert updated["budget_resets_at"] is None
    assert updated["version"] == key["version"] + 1
    table = cli.ok("keys", "get", "team-budget").stdout
    assert "never (total)" in table
    assert any(
        line.startswith("RPM limit") and line.split()[-1] == "none" for line in table.splitlines()
    )
    human = cli.ok("keys", "update", "team-budget", "--budget-tokens", "0")
    assert "updated AI API key team-budget: budget_tokens" in human.stderr
    assert any(
        line.startswith("Budget ") and line.split()[-1] == "none"
        for line in human.stdout.splitlines()
    )


def test_budget_defaults_and_invalid_values(cli: Cli, fake: FakeUpstream) -> None:
    plain = _create(cli, fake)
    assert (plain["budget_tokens"], plain["budget_period"]) == (0, "month")
    assert (plain["rpm_limit"], plain["tpm_limit"], plain["budget_resets_at"]) == (0, 0, None)
    table = cli.ok("keys", "get", "team-budget").stdout
    assert any(
        line.startswith("Budget ") and line.split()[-1] == "none" for line in table.splitlines()
    )

    # refused by the CLI itself (exit 2), and nothing changed
    for option, value in (
        ("--budget-tokens", "-1"),
        ("--budget-tokens", str(10**12 + 1)),
        ("--budget-tokens", "ten"),
        ("--budget-period", "year"),
        ("--rpm-limit", "-5"),
        ("--rpm-limit", str(10**7 + 1)),
        ("--tpm-limit", str(10**12 + 1)),
        ("--tpm-limit", "1.5"),
    ):
        result = cli("keys", "update", "team-budget", option, value)
        assert result.exit_code == 2, (option, value, result.stdout)
        assert option in result.stderr
    assert cli.json("keys", "get", "team-budget")["version"] == plain["version"]

    # the largest values the API allows are accepted
    top = cli.json(
        "keys", "update", "team-budget", "--budget-tokens", str(10**12), "--rpm-limit",
        str(10**7), "--tpm-limit", str(10**12), "--budget-period", "week",
    )  # fmt: skip
    assert (top["budget_tokens"], top["rpm_limit"], top["tpm_limit"]) == (10**12, 10**7, 10**12)
    # a week budget ends at the next Monday 00:00 UTC
    resets_at = datetime.fromisoformat(top["budget_resets_at"])
    assert (resets_at.weekday(), resets_at.time().isoformat(), resets_at.utcoffset()) == (
        0,
        "00:00:00",
        timedelta(0),
    )
    assert timedelta(0) < resets_at - datetime.now(UTC) <= timedelta(days=7)
    assert json.loads(cli("keys", "get", "team-budget", "--json").stdout)["budget_period"] == "week"
