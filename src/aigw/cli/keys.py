"""``aigw keys …``: AI API keys on a running gateway, for people and CI scripts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from aigw.apikeys.models import MAX_BUDGET, MAX_LIMIT, MAX_RPM
from aigw.apikeys.schemas import BudgetPeriod, SortField, Status, UsageLimit
from aigw.cli import resource
from aigw.cli.client import DEFAULT_URL, Record, item_path
from aigw.cli.common import (
    EXIT_CODES_EPILOG,
    JsonOption,
    TokenFileOption,
    UrlOption,
    choices,
    command_group,
    connect,
    secret_from_env,
)
from aigw.cli.errors import NotFoundError
from aigw.cli.output import Column, Output, limit_text, status_text, when

if TYPE_CHECKING:
    StatusChoice = Status
    UsageLimitChoice = UsageLimit
    SortChoice = SortField
    BudgetPeriodChoice = BudgetPeriod
else:
    StatusChoice = choices("StatusChoice", Status)
    UsageLimitChoice = choices("UsageLimitChoice", UsageLimit)
    SortChoice = choices("SortChoice", SortField)
    BudgetPeriodChoice = choices("BudgetPeriodChoice", BudgetPeriod)


def _budget_text(key: Record) -> str:
    budget = key.get("budget_tokens", 0)
    return f"{budget:,} tokens" if budget else "none"


def _used_text(key: Record) -> str:
    """Tokens charged in the current period, and the share of the budget."""
    used, budget = key.get("budget_used", 0), key.get("budget_tokens", 0)
    return f"{used:,} of {budget:,} ({used / budget:.1%})" if budget else f"{used:,}"


def _resets_text(key: Record) -> str:
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


def _rate_text(value: int) -> str:
    return "none" if value == 0 else f"{value:,}"


def _details(key: Record) -> list[tuple[str, Any]]:
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
        ("Budget", Text(_budget_text(key))),
        ("Budget period", Text(key.get("budget_period", "month"))),
        ("Budget used", Text(_used_text(key))),
        ("Budget resets at", Text(_resets_text(key))),
        ("RPM limit", Text(_rate_text(key.get("rpm_limit", 0)))),
        ("TPM limit", Text(_rate_text(key.get("tpm_limit", 0)))),
        ("Created", when(key["created_at"])),
        ("Updated", when(key["updated_at"])),
        ("Version", str(key["version"])),
    ]


KEYS = resource.Resource(
    collection="/apikeys",
    noun="AI API key",
    short_noun="key",
    name_field="alias",
    columns=(
        Column("ALIAS", lambda key: Text(key["alias"])),
        Column("STATUS", lambda key: status_text(key["status"]), overflow="ellipsis"),
        Column("PROVIDER/MODEL", lambda key: Text(f"{key['provider']}/{key['model']}")),
        Column("INPUT", lambda key: limit_text(key["input_limit"]), justify="right"),
        Column("OUTPUT", lambda key: limit_text(key["output_limit"]), justify="right"),
        Column("USAGE LIMIT", lambda key: Text(key["usage_limit"])),
        Column("KEY CODE", lambda key: Text(key["key_code_masked"])),
        Column("ID", lambda key: Text(key["id"]), style="dim"),
    ),
    details=_details,
    trim_names=True,
    find_params={"sort": "alias"},
    secret_fields=frozenset({"key_code"}),
    idempotent_create=True,
)

app = command_group("keys", "Create, search, view, update, rotate and delete AI API keys.")

KeyRef = Annotated[str, typer.Argument(metavar="ID_OR_ALIAS", help="The key's id or alias.")]
InputLimit = Annotated[
    int,
    typer.Option(
        "--input-limit", min=0, max=MAX_LIMIT, help="Max input tokens per request; 0 = unlimited."
    ),
]
BUDGET_HELP = "Budget and rates"
BudgetTokensHelp = "Tokens (input + output) per budget period; 0 = no budget."
BudgetPeriodHelp = (
    "Calendar period of the budget (UTC unless the gateway sets AIGW_BUDGET_TIMEZONE); "
    "total never resets."
)
RpmHelp = "Requests per minute; 0 = none."
TpmHelp = "Tokens per minute; 0 = none."
KeyCodeEnvHelp = (
    "Name of the environment variable holding the upstream API key code "
    "(never pass the secret itself on the command line)."
)


@app.command("list", epilog=EXIT_CODES_EPILOG)
def list_keys(
    q: Annotated[
        str | None, typer.Option("--q", "-q", help="Case-insensitive substring of the alias.")
    ] = None,
    status: Annotated[StatusChoice | None, typer.Option("--status")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Provider name.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name.")] = None,
    usage_limit: Annotated[UsageLimitChoice | None, typer.Option("--usage-limit")] = None,
    sort: Annotated[SortChoice, typer.Option("--sort")] = "-created_at",
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="Page size.")] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue after a previous page.")
    ] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Search AI API keys (newest first by default)."""
    filters = {
        "q": q,
        "status": status,
        "provider": provider,
        "model": model,
        "usage_limit": usage_limit,
        "sort": sort,
    }
    resource.list_command(
        KEYS,
        filters,
        limit=limit,
        cursor=cursor,
        all_pages=all_pages,
        json_output=json_output,
        url=url,
        token_file=admin_token_file,
    )


resource.add_get_command(
    app, KEYS, KeyRef, "Show one key (by id or alias); the key code only ever appears masked."
)


@app.command("create", epilog=EXIT_CODES_EPILOG)
def create_key(
    alias: Annotated[str, typer.Option("--alias", help="Unique name of the key (1-64 chars).")],
    provider: Annotated[str, typer.Option("--provider", help="Provider name.")],
    model: Annotated[str, typer.Option("--model", help="One of the provider's models.")],
    input_limit: InputLimit,
    key_code_env: Annotated[
        str, typer.Option("--key-code-env", metavar="VAR", help=KeyCodeEnvHelp)
    ],
    output_limit: Annotated[
        int,
        typer.Option(
            "--output-limit", min=0, max=MAX_LIMIT, help="Max output tokens; 0 = unlimited."
        ),
    ] = 0,
    usage_limit: Annotated[
        UsageLimitChoice,
        typer.Option("--usage-limit", help="What to do with requests over a limit."),
    ] = "reject",
    enabled: Annotated[
        bool, typer.Option("--enabled/--disabled", help="Status of the new key.")
    ] = False,
    budget_tokens: Annotated[
        int,
        typer.Option(
            "--budget-tokens",
            min=0,
            max=MAX_BUDGET,
            help=BudgetTokensHelp,
            rich_help_panel=BUDGET_HELP,
        ),
    ] = 0,
    budget_period: Annotated[
        BudgetPeriodChoice,
        typer.Option("--budget-period", help=BudgetPeriodHelp, rich_help_panel=BUDGET_HELP),
    ] = "month",
    rpm_limit: Annotated[
        int,
        typer.Option("--rpm-limit", min=0, max=MAX_RPM, help=RpmHelp, rich_help_panel=BUDGET_HELP),
    ] = 0,
    tpm_limit: Annotated[
        int,
        typer.Option(
            "--tpm-limit", min=0, max=MAX_BUDGET, help=TpmHelp, rich_help_panel=BUDGET_HELP
        ),
    ] = 0,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Make a retried create safe: the same key and body give the same result.",
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Create an AI API key; prints its client token once.

    The key code is read from the environment variable named by --key-code-env,
    so it never shows in argv, shell history or CI logs:

    OPENAI_KEY=sk-... aigw keys create --alias team-a --provider openai-main --model gpt-4o-mini --input-limit 4000 --enabled --key-code-env OPENAI_KEY
    """
    body = {
        "alias": alias,
        "provider": provider,
        "model": model,
        "status": "enabled" if enabled else "disabled",
        "key_code": secret_from_env(key_code_env, "--key-code-env"),
        "input_limit": input_limit,
        "output_limit": output_limit,
        "usage_limit": usage_limit,
        "budget_tokens": budget_tokens,
        "budget_period": budget_period,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
    }
    resource.create_command(
        KEYS,
        body,
        idempotency_key=idempotency_key,
        json_output=json_output,
        url=url,
        token_file=admin_token_file,
    )


@app.command("update", epilog=EXIT_CODES_EPILOG)
def update_key(
    ref: KeyRef,
    alias: Annotated[str | None, typer.Option("--alias", help="New alias.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="New provider.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="New model.")] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="New status.", show_default=False)
    ] = None,
    key_code_env: Annotated[
        str | None,
        typer.Option(
            "--key-code-env", metavar="VAR", help="Replace the key code with this variable's value."
        ),
    ] = None,
    input_limit: Annotated[
        int | None, typer.Option("--input-limit", min=0, max=MAX_LIMIT, help="0 = unlimited.")
    ] = None,
    output_limit: Annotated[
        int | None, typer.Option("--output-limit", min=0, max=MAX_LIMIT, help="0 = unlimited.")
    ] = None,
    usage_limit: Annotated[UsageLimitChoice | None, typer.Option("--usage-limit")] = None,
    budget_tokens: Annotated[
        int | None,
        typer.Option(
            "--budget-tokens",
            min=0,
            max=MAX_BUDGET,
            help=BudgetTokensHelp,
            rich_help_panel=BUDGET_HELP,
        ),
    ] = None,
    budget_period: Annotated[
        BudgetPeriodChoice | None,
        typer.Option("--budget-period", help=BudgetPeriodHelp, rich_help_panel=BUDGET_HELP),
    ] = None,
    rpm_limit: Annotated[
        int | None,
        typer.Option("--rpm-limit", min=0, max=MAX_RPM, help=RpmHelp, rich_help_panel=BUDGET_HELP),
    ] = None,
    tpm_limit: Annotated[
        int | None,
        typer.Option(
            "--tpm-limit", min=0, max=MAX_BUDGET, help=TpmHelp, rich_help_panel=BUDGET_HELP
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Change the fields given; the others stay as they are.

    The change is made only if nobody else changed the key since it was read
    (otherwise exit code 3).
    """
    body: dict[str, Any] = {
        name: value
        for name, value in (
            ("alias", alias),
            ("provider", provider),
            ("model", model),
            ("input_limit", input_limit),
            ("output_limit", output_limit),
            ("usage_limit", usage_limit),
            ("budget_tokens", budget_tokens),
            ("budget_period", budget_period),
            ("rpm_limit", rpm_limit),
            ("tpm_limit", tpm_limit),
        )
        if value is not None
    }
    if enabled is not None:
        body["status"] = "enabled" if enabled else "disabled"
    if key_code_env is not None:
        body["key_code"] = secret_from_env(key_code_env, "--key-code-env")
    resource.update_command(
        KEYS, ref, body, json_output=json_output, url=url, token_file=admin_token_file
    )


resource.add_delete_command(
    app, KEYS, KeyRef, "Delete a key (its usage history stays readable). Asks first unless --yes."
)


@app.command("rotate-token", epilog=EXIT_CODES_EPILOG)
def rotate_token(
    ref: KeyRef,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Issue a new client token for a key; the old one stops working at once."""
    output = Output(json_output)
    with connect(output, url, admin_token_file) as client:
        key = KEYS.resolve(client, ref)
        path = item_path(KEYS.collection, key["id"]) + "/token"
        rotated = client.post(path, version=key["version"])
    output.note(f"rotated the client token of {rotated['alias']}; the old token no longer works")
    if json_output:
        output.emit_json(rotated)
    else:
        output.token(rotated["token"])


def _instant(value: str | None, option: str) -> str | None:
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


def _usage_row(label: str, figures: Record) -> list[str]:
    return [
        label,
        f"{figures['requests']:,}",
        f"{figures['input_tokens']:,}",
        f"{figures['output_tokens']:,}",
        f"{figures['input_limit_exceeded']:,}",
        f"{figures['output_limit_exceeded']:,}",
    ]


def _print_usage(output: Output, usage: Record) -> None:
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
        table.add_row(*_usage_row(day["date"], day))
    table.add_row(*_usage_row("total", usage["totals"]), style="bold", end_section=True)
    output.out.print(table)
    outcomes = usage["totals"]["by_outcome"]
    output.out.print(
        Text("outcomes: ", style="bold")
        + Text(", ".join(f"{name} {figures['requests']:,}" for name, figures in outcomes.items()))
    )
    output.note(f"{len(active)} of {len(usage['days'])} days had requests", style="dim")


@app.command("usage", epilog=EXIT_CODES_EPILOG)
def key_usage(
    ref: KeyRef,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="WHEN",
            help="Start of the period, inclusive (ISO 8601; naive times are UTC). "
            "Default: 30 days before --to.",
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="WHEN",
            help="End of the period, exclusive (ISO 8601). Default: now. At most 366 days.",
        ),
    ] = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Token usage of a key: totals, outcomes and the days with requests.

    A deleted key's history stays readable by its id. With --json, stdout is the
    API's usage document (GET /apikeys/{id}/usage), one bucket per UTC day.
    """
    params = {"from": _instant(start, "--from"), "to": _instant(end, "--to")}
    output = Output(json_output)
    with connect(output, url, admin_token_file) as client:
        try:
            key_id = KEYS.resolve(client, ref)["id"]
        except NotFoundError:
            # A deleted key is no longer found, but its history is, by id.
            key_id = resource.as_uuid(ref)
            if key_id is None:
                raise
        usage = client.read(item_path(KEYS.collection, key_id) + "/usage", params)
    if json_output:
        output.emit_json(usage)
    else:
        _print_usage(output, usage)
