"""``aigw providers …``: upstream providers and their models on a running gateway."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from aigw.cli_admin.client import (
    DEFAULT_URL,
    ModelRecord,
    ProviderRecord,
    UsageError,
    resolve_provider,
)
from aigw.cli_admin.common import (
    EXIT_CODES_EPILOG,
    JsonOption,
    TokenFileOption,
    UrlOption,
    YesOption,
    confirm_or_exit,
    connect,
)
from aigw.cli_admin.output import Output

ENCODINGS = ("o200k_base", "cl100k_base")

app = typer.Typer(
    name="providers",
    help="Register upstream providers (OpenAI-compatible or Anthropic) and their models.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold key codes
)


class KindChoice(StrEnum):
    openai = "openai"
    anthropic = "anthropic"


ProviderRef = Annotated[
    str, typer.Argument(metavar="ID_OR_NAME", help="The provider's id or name.")
]
ModelEncodingOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model-encoding",
        metavar="MODEL=ENCODING",
        help="Token-counting encoding of a model (o200k_base or cl100k_base); repeatable. "
        "Without it the gateway picks one from the model name.",
    ),
]


def parse_encodings(values: list[str] | None, models: list[str]) -> dict[str, str]:
    """``MODEL=ENCODING`` pairs; the encoding is split off the right, since model
    names (e.g. Ollama's ``llama3:8b``) may contain almost any character."""
    encodings: dict[str, str] = {}
    for value in values or []:
        name, sep, encoding = value.rpartition("=")
        if not sep or not name or encoding not in ENCODINGS:
            raise typer.BadParameter(
                f"{value!r}: expected MODEL=ENCODING with ENCODING one of {', '.join(ENCODINGS)}",
                param_hint="--model-encoding",
            )
        if name not in models:
            raise typer.BadParameter(
                f"{name!r} is not one of the provider's models", param_hint="--model-encoding"
            )
        encodings[name] = encoding
    return encodings


def model_list(
    names: list[str], encodings: dict[str, str], keep: list[ModelRecord] | None = None
) -> list[dict[str, str]]:
    """The ``models`` body: explicit encodings win, then the current ones (*keep*)."""
    current = {model["name"]: model["encoding"] for model in keep or []}
    out: list[dict[str, str]] = []
    for name in names:
        entry = {"name": name}
        encoding = encodings.get(name) or current.get(name)
        if encoding:
            entry["encoding"] = encoding
        out.append(entry)
    return out


def _unique(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


@app.command("list", epilog=EXIT_CODES_EPILOG)
def list_providers(
    q: Annotated[
        str | None, typer.Option("--q", "-q", help="Case-insensitive substring of the name.")
    ] = None,
    kind: Annotated[KindChoice | None, typer.Option("--kind")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=200, help="Page size.")] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Continue after a previous page.")
    ] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Follow every page.")] = False,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """List providers by name."""
    output = Output(json_output)
    kind_value = kind.value if kind else None
    with connect(output, url, admin_token_file) as client:
        if all_pages:
            items = list(client.iter_providers(q=q, kind=kind_value))
            output.providers(items, total=len(items), next_cursor=None)
            return
        page = client.list_providers(q=q, kind=kind_value, limit=limit, cursor=cursor)
        output.providers(page["items"], total=page["total"], next_cursor=page["next_cursor"])


@app.command("get", epilog=EXIT_CODES_EPILOG)
def get_provider(
    ref: ProviderRef,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Show one provider and its models."""
    output = Output(json_output)
    with connect(output, url, admin_token_file) as client:
        output.provider(resolve_provider(client, ref))


@app.command("create", epilog=EXIT_CODES_EPILOG)
def create_provider(
    name: Annotated[
        str, typer.Option("--name", help="Unique name: 1-64 of letters, digits, '.', '_', '-'.")
    ],
    base_url: Annotated[str, typer.Option("--base-url", help="e.g. https://api.openai.com/v1")],
    models: Annotated[
        list[str], typer.Option("--model", metavar="MODEL", help="A model it serves; repeatable.")
    ],
    kind: Annotated[
        KindChoice, typer.Option("--kind", help="openai = any Chat Completions API.")
    ] = KindChoice.openai,
    model_encoding: ModelEncodingOption = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Register a provider.

    aigw providers create --name openai-main --kind openai --base-url https://api.openai.com/v1 --model gpt-4o-mini --model gpt-4.1
    """
    names = _unique(models)
    encodings = parse_encodings(model_encoding, names)
    output = Output(json_output)
    body = {
        "name": name,
        "kind": kind.value,
        "base_url": base_url,
        "models": model_list(names, encodings),
    }
    with connect(output, url, admin_token_file) as client:
        created = client.create_provider(body)
    output.note(f"created provider {created['name']} ({created['id']})")
    output.provider(created)


@app.command("update", epilog=EXIT_CODES_EPILOG)
def update_provider(
    ref: ProviderRef,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    kind: Annotated[KindChoice | None, typer.Option("--kind")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url")] = None,
    models: Annotated[
        list[str] | None,
        typer.Option("--model", metavar="MODEL", help="Replace the model list; repeatable."),
    ] = None,
    add_models: Annotated[
        list[str] | None,
        typer.Option("--add-model", metavar="MODEL", help="Add a model; repeatable."),
    ] = None,
    remove_models: Annotated[
        list[str] | None,
        typer.Option("--remove-model", metavar="MODEL", help="Remove a model; repeatable."),
    ] = None,
    model_encoding: ModelEncodingOption = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Change the fields given. Models keep their encoding unless --model-encoding says
    otherwise; a model still used by a key cannot be removed (exit code 3)."""
    output = Output(json_output)
    if models and (add_models or remove_models):
        raise typer.BadParameter(
            "--model replaces the list; do not combine it with --add-model/--remove-model",
            param_hint="--model",
        )
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if kind is not None:
        body["kind"] = kind.value
    if base_url is not None:
        body["base_url"] = base_url
    touches_models = bool(models or add_models or remove_models or model_encoding)
    if not body and not touches_models:
        output.fail(UsageError("nothing to update: give at least one field option", code="usage"))
    with connect(output, url, admin_token_file) as client:
        current = resolve_provider(client, ref)
        if touches_models:
            body["models"] = _new_models(current, models, add_models, remove_models, model_encoding)
        updated = client.update_provider(current["id"], body, version=current["version"])
    output.note(f"updated provider {updated['name']}: {', '.join(sorted(body))}")
    output.provider(updated)


def _new_models(
    current: ProviderRecord,
    models: list[str] | None,
    add_models: list[str] | None,
    remove_models: list[str] | None,
    model_encoding: list[str] | None,
) -> list[dict[str, str]]:
    existing = [model["name"] for model in current["models"]]
    if models:
        names = _unique(models)
    else:
        missing = [name for name in remove_models or [] if name not in existing]
        if missing:
            raise UsageError(
                f"provider {current['name']!r} has no model {missing[0]!r}", code="unknown_model"
            )
        removed = set(remove_models or [])
        names = _unique([name for name in existing if name not in removed] + (add_models or []))
    if not names:
        raise UsageError("a provider needs at least one model", code="usage")
    encodings = parse_encodings(model_encoding, names)
    return model_list(names, encodings, keep=current["models"])


@app.command("delete", epilog=EXIT_CODES_EPILOG)
def delete_provider(
    ref: ProviderRef,
    yes: YesOption = False,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Delete a provider that no AI API key refers to. Asks first unless --yes."""
    output = Output(json_output)
    with connect(output, url, admin_token_file) as client:
        provider = resolve_provider(client, ref)
        confirm_or_exit(
            output, f"Confirm Delete? provider {provider['name']!r} ({provider['id']})", yes=yes
        )
        client.delete_provider(provider["id"], version=provider["version"])
    output.note(f"deleted provider {provider['name']} ({provider['id']})")
    if json_output:
        output.emit_json({"deleted": True, "id": provider["id"], "name": provider["name"]})
