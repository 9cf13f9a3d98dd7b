"""``aigw keys usage ALIAS [--from --to] [--json]`` against a real gateway process.

The usage comes from real proxied requests: three prompts over a 5-token input
limit, refused and recorded with their counted input. The expected figures are
hand counts (OpenAI's published rule: 3 per message + "user" 1 + "hello" 1 + 3
priming the reply = 8 tokens), not the gateway's own arithmetic.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.cli.conftest import Cli

HELLO_TOKENS = 8
REQUESTS = 3


def _provider_and_key(cli: Cli) -> dict[str, Any]:
    cli.ok(
        "providers", "create", "--name", "openai-main", "--base-url", "https://api.openai.com/v1",
        "--model", "gpt-4o-mini",
    )  # fmt: skip
    key = cli.json(
        "keys", "create", "--alias", "team-usage", "--provider", "openai-main",
        "--model", "gpt-4o-mini", "--input-limit", "5", "--enabled",
        "--key-code-env", "UPSTREAM_KEY", env={"UPSTREAM_KEY": "sk-never-sent-0123456789"},
    )  # fmt: skip
    return dict(key)


def _send_refused_requests(cli: Cli, token: str) -> None:
    deadline = time.monotonic() + 10
    sent = 0
    with httpx.Client(base_url=cli.url, timeout=10) as http:
        while sent < REQUESTS:
            response = http.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
                headers={"Authorization": f"Bearer {token}"},
            )
            if response.status_code == 401 and time.monotonic() < deadline:
                time.sleep(0.05)  # the new key reaches the proxy's cache within a second
                continue
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "input_token_limit_exceeded"
            sent += 1


def _usage_when_recorded(cli: Cli, *args: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        usage = dict(cli.json("keys", "usage", *args))
        if usage["totals"]["requests"] >= REQUESTS or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)  # usage records are written in batches, off the request path


def test_usage_of_a_key_by_alias_as_json_and_as_a_table(cli: Cli) -> None:
    key = _provider_and_key(cli)
    _send_refused_requests(cli, key["token"])

    usage = _usage_when_recorded(cli, "TEAM-USAGE")
    totals = usage["totals"]
    assert (totals["requests"], totals["input_tokens"], totals["output_tokens"]) == (
        REQUESTS,
        REQUESTS * HELLO_TOKENS,
        0,
    )
    assert totals["input_limit_exceeded"] == REQUESTS
    assert totals["by_outcome"]["rejected"]["requests"] == REQUESTS
    assert (usage["api_key_id"], usage["alias"], usage["deleted"]) == (
        key["id"],
        "team-usage",
        False,
    )

    # --json is the API's own document, unchanged (a fixed period: the default ends "now").
    period = {
        "from": "2026-01-01",
        "to": (datetime.now(UTC) + timedelta(days=1)).date().isoformat(),
    }
    shown = cli.json("keys", "usage", key["id"], "--from", period["from"], "--to", period["to"])
    headers = {"Authorization": f"Bearer {cli.admin_token}"}
    with httpx.Client(base_url=cli.url, headers=headers) as api:
        assert api.get(f"/apikeys/{key['id']}/usage", params=period).json() == shown
    assert shown["totals"] == totals

    table = cli.ok("keys", "usage", key["id"]).stdout
    today = datetime.now(UTC).date().isoformat()
    day_rows = [line for line in table.splitlines() if today in line and "UTC" not in line]
    assert len(day_rows) == 1 and f" {REQUESTS * HELLO_TOKENS} " in day_rows[0], table
    (total_row,) = [line for line in table.splitlines() if "total" in line]
    assert f" {REQUESTS} " in total_row and f" {REQUESTS * HELLO_TOKENS} " in total_row
    assert f"rejected {REQUESTS}" in table


def test_usage_period_and_a_deleted_key(cli: Cli) -> None:
    key = _provider_and_key(cli)
    _send_refused_requests(cli, key["token"])
    _usage_when_recorded(cli, "team-usage")

    # A period that ends before the requests holds none of them.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    before = cli.json(
        "keys", "usage", "team-usage", "--from", "2026-01-01", "--to", f"{yesterday}T00:00:00Z"
    )
    assert before["totals"]["requests"] == 0
    assert before["from"].startswith("2026-01-01")

    # Deleted: the alias is gone, the history stays readable by id.
    cli.ok("keys", "delete", "team-usage", "--yes")
    gone = cli("keys", "usage", "team-usage")
    assert gone.exit_code == 1, gone.stderr
    by_id = cli.json("keys", "usage", key["id"])
    assert by_id["deleted"] is True and by_id["totals"]["requests"] == REQUESTS
    assert "(deleted)" in cli.ok("keys", "usage", key["id"]).stdout


def test_usage_refuses_bad_periods_before_asking(offline_cli: Cli, cli: Cli) -> None:
    bad = offline_cli("keys", "usage", "team-a", "--from", "yesterday")
    assert bad.exit_code == 2
    assert "ISO 8601" in bad.stderr
    # Understood locally but refused by the API (from after to): a usage error too.
    _provider_and_key(cli)
    backwards = cli("keys", "usage", "team-usage", "--from", "2026-02-01", "--to", "2026-01-01")
    assert backwards.exit_code == 2, backwards.stderr
    unknown = cli("keys", "usage", "nobody", "--json")
    assert unknown.exit_code == 1 and unknown.stdout == ""
