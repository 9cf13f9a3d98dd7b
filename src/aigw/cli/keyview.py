"""How the CLI shows an AI API key and its usage report (tables for people;
``--json`` prints the API's own documents instead)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from rich.text import Text

from aigw.cli.client import Record
from aigw.cli.output import Output, limit_text, status_text, when


def budget_text(key: Record) -> str:
    budget = key.get("budget_tokens", 0)
    return f"{budget:,} tokens" if budget else "none"


def used_text(key: Record) -> str:
    """Tokens charged in the current period, and the share of the budget."""
    used, budget = key.get("budget_used", 0), key.get("budget_tokens", 0)
    return f"{used:,} of {budget:,} ({used / budget:.1%})" if budget else f"{used:,}"


def resets_text(key: Record) -> str:
    if not key.get("budget_tokens", 0):
        return "—"
    resets_at = key.get("budget_resets_at")
    if not resets_at:
        return "never (total)"
    # The API gives the period's end in AIGW_BUDGET_TIMEZONE; shown in UTC like the rest.
    try:
        instant = datetime.fromisoformat(resets_at).astimezone(UTC)
    except ValueError:
        return str(resets_at)
    return instant.strftime("%Y-%m-%d %H:%M:%S UTC")


def rate_text(value: int) -> str:
    return "none" if value == 0 else f"{value:,}"


def details(key: Record) -> list[tuple[str, Any]]:
    return [
        ("ID", Text(key["id"])),
        ("Alias", Text(key["alias"])),
        ("Status", status_text(key["status"])),
        ("Provider/Model", Text(f"{key['provider']}/{key['model']}")),
        ("Key code", Text(key["key_code_masked"])),
        ("Token prefix", Text(key["token_prefix"])),
        ("Input limit", limit_text(key["input_limit"])),
        ("Output limit", limit_text(key["output_limit"])),
        ("Usage limit", Text(key["usage_limit"])),
        ("Budget", Text(budget_text(key))),
        ("Budget period", Text(key.get("budget_period", "month"))),
        ("Budget used", Text(used_text(key))),
        ("Budget resets at", Text(resets_text(key))),
        ("RPM limit", Text(rate_text(key.get("rpm_limit", 0)))),
        ("TPM limit", Text(rate_text(key.get("tpm_limit", 0)))),
        ("Created", when(key["created_at"])),
        ("Updated", when(key["updated_at"])),
        ("Version", str(key["version"])),
    ]


def instant(value: str | None, option: str) -> str | None:
    """*value* unchanged when it is an ISO 8601 date or time (the API's format)."""
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-12-01 or 2026-12-01T12:00:00Z)",
            param_hint=option,
        ) from None
    return value


def usage_row(label: str, figures: Record) -> list[str]:
    return [
        label,
        f"{figures['requests']:,}",
        f"{figures['input_tokens']:,}",
        f"{figures['output_tokens']:,}",
        f"{figures['input_limit_exceeded']:,}",
        f"{figures['output_limit_exceeded']:,}",
    ]


def print_usage(output: Output, usage: Record) -> None:
    from rich.table import Table

    deleted = " (deleted)" if usage["deleted"] else ""
    output.out.print(
        Text(f"{usage['alias']}{deleted} ", style="bold")
        + Text(f"{when(usage['from'])} to {when(usage['to'])} UTC", style="dim")
    )
    table = Table(header_style="bold", expand=False)
    table.add_column("DAY")
    for header in ("REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "OVER INPUT", "OVER OUTPUT"):
        table.add_column(header, justify="right")
    active = [day for day in usage["days"] if day["requests"]]
    for day in active:
        table.add_row(*usage_row(day["date"], day))
    table.add_row(*usage_row("total", usage["totals"]), style="bold", end_section=True)
    output.out.print(table)
    outcomes = usage["totals"]["by_outcome"]
    output.out.print(
        Text("outcomes: ", style="bold")
        + Text(", ".join(f"{name} {figures['requests']:,}" for name, figures in outcomes.items()))
    )
    output.note(f"{len(active)} of {len(usage['days'])} days had requests", style="dim")
