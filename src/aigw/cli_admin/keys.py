"""``aigw keys …``: AI API keys on a running gateway, for people and CI scripts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from aigw.cli_admin.client import DEFAULT_URL, ApiKeyRecord, UsageError, resolve_key
from aigw.cli_admin.common import (
    EXIT_CODES_EPILOG,
    JsonOption,
    TokenFileOption,
    UrlOption,
    YesOption,
    confirm_or_exit,
    connect,
    secret_from_env,
)
from aigw.cli_admin.output import Output

MAX_LIMIT = 10_000_000

app = typer.Typer(
    name="keys",
    help="Create, search, view, update, rotate and delete AI API keys.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key codes
)


class StatusChoice(StrEnum):
    enabled = "enabled"
    disabled = "disabled"


class UsageLimitChoice(StrEnum):
    reject = "reject"
    use_anyway = "use_anyway"


class SortChoice(StrEnum):
    alias = "alias"
    alias_desc = "-alias"
    created_at = "created_at"
    created_at_desc = "-created_at"
    updated_at = "updated_at"
    updated_at_desc = "-updated_at"


KeyRef = Annotated[str, typer.Argument(metavar="ID_OR_ALIAS", help="The key's id or alias.")]
InputLimit = Annotated[
    int,
    typer.Option(
        "--input-limit", min=0, max=MAX_LIMIT, help="Max input tokens per request; 0 = unlimited."
    ),
]
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
    sort: Annotated[SortChoice, typer.Option("--sort")] = SortChoice.created_at_desc,
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
    output = Output(json_output)
    filters: dict[str, Any] = {
        "q": q,
        "status": status.value if status else None,
        "provider": provider,
        "model": model,
        "usage_limit": usage_limit.value if usage_limit else None,
        "sort": sort.value,
    }
    with connect(output, url, admin_token_file) as client:
        if all_pages:
            items = list(client.iter_keys(**filters))
            output.keys(items, total=len(items), next_cursor=None)
            return
        page = client.list_keys(**filters, limit=limit, cursor=cursor)
        output.keys(page["items"], total=page["total"], next_cursor=page["next_cursor"])


@app.command("get", epilog=EXIT_CODES_EPILOG)
def get_key(
    ref: KeyRef,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Show one key (by id or alias); the key code only ever appears masked."""
    output = Output(json_output)
    with connect(output, url, admin_token_file) as client:
        output.key(resolve_key(client, ref))


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
    ] = UsageLimitChoice.reject,
    enabled: Annotated[
        bool, typer.Option("--enabled/--disabled", help="Status of the new key.")
    ] = False,
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
    key_code = secret_from_env(key_code_env, "--key-code-env")
    output = Output(json_output)
    body = {
        "alias": alias,
        "provider": provider,
        "model": model,
        "status": "enabled" if enabled else "disabled",
        "key_code": key_code,
        "input_limit": input_limit,
        "output_limit": output_limit,
        "usage_limit": usage_limit.value,
    }
    with connect(output, url, admin_token_file) as client:
        created = client.create_key(body, idempotency_key=idempotency_key)
    output.note(f"created AI API key {created['alias']} ({created['id']})")
    output.key(created)


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
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Change the fields given; the others stay as they are.

    The change is made only if nobody else changed the key since it was read
    (otherwise exit code 3).
    """
    output = Output(json_output)
    body: dict[str, Any] = {
        name: value
        for name, value in (
            ("alias", alias),
            ("provider", provider),
            ("model", model),
            ("input_limit", input_limit),
            ("output_limit", output_limit),
            ("usage_limit", usage_limit.value if usage_limit else None),
        )
        if value is not None
    }
    if enabled is not None:
        body["status"] = "enabled" if enabled else "disabled"
    if key_code_env is not None:
        body["key_code"] = secret_from_env(key_code_env, "--key-code-env")
    if not body:
        output.fail(UsageError("nothing to update: give at least one field option", code="usage"))
    with connect(output, url, admin_token_file) as client:
        current = resolve_key(client, ref)
        updated = client.update_key(current["id"], body, version=current["version"])
    changed = sorted(set(body) - {"key_code"}) + (["key_code"] if "key_code" in body else [])
    output.note(f"updated AI API key {updated['alias']}: {', '.join(changed)}")
    output.key(updated)


@app.command("delete", epilog=EXIT_CODES_EPILOG)
def delete_key(
    ref: KeyRef,
    yes: YesOption = False,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Delete a key (its usage history stays readable). Asks first unless --yes."""
    output = Output(json_output)
    with connect(output, url, admin_token_file) as client:
        key = resolve_key(client, ref)
        confirm_or_exit(
            output, f"Confirm Delete? AI API key {key['alias']!r} ({key['id']})", yes=yes
        )
        client.delete_key(key["id"], version=key["version"])
    output.note(f"deleted AI API key {key['alias']} ({key['id']})")
    if json_output:
        output.emit_json(_deleted(key))


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
        key = resolve_key(client, ref)
        rotated = client.rotate_token(key["id"], version=key["version"])
    output.note(f"rotated the client token of {rotated['alias']}; the old token no longer works")
    if json_output:
        output.emit_json(rotated)
    else:
        output.token(rotated["token"])


def _deleted(key: ApiKeyRecord) -> dict[str, Any]:
    return {"deleted": True, "id": key["id"], "alias": key["alias"]}
