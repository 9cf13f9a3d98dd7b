"""``aigw keys …``: AI API keys on a running gateway, for people and CI scripts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from aigw.apikeys.bounds import MAX_BUDGET, MAX_LIMIT, MAX_RPM
from aigw.apikeys.schemas import BudgetPeriod, SortField, Status, UsageLimit
from aigw.cli import resource
from aigw.cli.client import DEFAULT_URL, item_path
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
from aigw.cli.keyview import details, instant, print_usage
from aigw.cli.output import Column, Output, limit_text, status_text

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
    details=details,
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
    params = {"from": instant(start, "--from"), "to": instant(end, "--to")}
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
        print_usage(output, usage)
