"""``aigw providers …``: upstream providers and their models on a running gateway."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.text import Text

from aigw.cli import resource
from aigw.cli.client import DEFAULT_URL, Record
from aigw.cli.common import (
    EXIT_CODES_EPILOG,
    JsonOption,
    TokenFileOption,
    UrlOption,
    choices,
    command_group,
)
from aigw.cli.errors import UsageError
from aigw.cli.output import Column, when
from aigw.providers.schemas import Encoding, InputCounting, ProviderKind

if TYPE_CHECKING:
    KindChoice = ProviderKind
    CountingChoice = InputCounting
else:
    KindChoice = choices("KindChoice", ProviderKind)
    CountingChoice = choices("CountingChoice", InputCounting)

ENCODINGS: tuple[str, ...] = get_args(Encoding)


def _models_text(provider: Record) -> Text:
    models = Text()
    for index, model in enumerate(provider["models"]):
        if index:
            models.append("\n")
        models.append(model["name"])
        models.append(f"  {model['encoding']}", style="dim")
        if model.get("deployment"):
            models.append(f"  deployment {model['deployment']}", style="dim")
    return models


def _details(provider: Record) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        (label, Text(value))
        for label, value in (
            ("ID", provider["id"]),
            ("Name", provider["name"]),
            ("Kind", provider["kind"]),
            ("Base URL", provider["base_url"]),
            ("API version", provider.get("api_version") or "-"),
            (
                "Input counting",
                f"{provider.get('input_counting', 'tiktoken')}"
                + (
                    f" (fallback margin {provider.get('counting_margin', 10)}%)"
                    if provider.get("input_counting") == "upstream"
                    else ""
                ),
            ),
            ("Created", when(provider["created_at"])),
            ("Updated", when(provider["updated_at"])),
            ("Version", str(provider["version"])),
        )
    ]
    return [*rows, ("Models", _models_text(provider))]


PROVIDERS = resource.Resource(
    collection="/providers",
    noun="provider",
    short_noun="provider",
    name_field="name",
    columns=(
        Column("NAME", lambda provider: Text(provider["name"])),
        Column("KIND", lambda provider: Text(provider["kind"]), overflow="ellipsis"),
        Column("BASE URL", lambda provider: Text(provider["base_url"])),
        Column(
            "MODELS",
            lambda provider: Text(", ".join(model["name"] for model in provider["models"])),
        ),
        Column("ID", lambda provider: Text(provider["id"]), style="dim"),
    ),
    details=_details,
)

app = command_group(
    "providers",
    "Register upstream providers (OpenAI-compatible, Anthropic, Gemini, Azure OpenAI) "
    "and their models.",
)

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


ModelDeploymentOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model-deployment",
        metavar="MODEL=DEPLOYMENT",
        help="azure_openai: the deployment serving a model (default: the model's name); "
        "repeatable.",
    ),
]
ApiVersionOption = Annotated[
    str | None,
    typer.Option("--api-version", help="azure_openai: the api-version of every call."),
]
InputCountingOption = Annotated[
    CountingChoice | None,
    typer.Option(
        "--input-counting",
        help="Who counts input for input limits: tiktoken, or upstream (the provider's "
        "token-counting API; gemini and anthropic).",
    ),
]
CountingMarginOption = Annotated[
    int | None,
    typer.Option(
        "--counting-margin",
        min=0,
        max=100,
        help="Percent added to the tiktoken estimate when the upstream counter fails.",
    ),
]


def settings_body(
    api_version: str | None, input_counting: str | None, counting_margin: int | None
) -> dict[str, Any]:
    return {
        field: value
        for field, value in (
            ("api_version", api_version),
            ("input_counting", input_counting),
            ("counting_margin", counting_margin),
        )
        if value is not None
    }


def parse_deployments(values: list[str] | None, models: list[str]) -> dict[str, str]:
    """``MODEL=DEPLOYMENT`` pairs, split off the right like encodings."""
    deployments: dict[str, str] = {}
    for value in values or []:
        name, sep, deployment = value.rpartition("=")
        if not sep or not name or not deployment:
            raise typer.BadParameter(
                f"{value!r}: expected MODEL=DEPLOYMENT", param_hint="--model-deployment"
            )
        if name not in models:
            raise typer.BadParameter(
                f"{name!r} is not one of the provider's models", param_hint="--model-deployment"
            )
        deployments[name] = deployment
    return deployments


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
    names: list[str],
    encodings: dict[str, str],
    keep: list[Record] | None = None,
    deployments: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    """The ``models`` body: explicit encodings and deployments win, then the current
    ones (*keep*)."""
    current = {model["name"]: model for model in keep or []}
    out: list[dict[str, str]] = []
    for name in names:
        entry = {"name": name}
        encoding = encodings.get(name) or current.get(name, {}).get("encoding")
        if encoding:
            entry["encoding"] = encoding
        deployment = (deployments or {}).get(name) or current.get(name, {}).get("deployment")
        if deployment:
            entry["deployment"] = deployment
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
    resource.list_command(
        PROVIDERS,
        {"q": q, "kind": kind},
        limit=limit,
        cursor=cursor,
        all_pages=all_pages,
        json_output=json_output,
        url=url,
        token_file=admin_token_file,
    )


resource.add_get_command(app, PROVIDERS, ProviderRef, "Show one provider and its models.")


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
        KindChoice,
        typer.Option(
            "--kind",
            help="openai = any Chat Completions API; anthropic = the Messages API; gemini = "
            "the Gemini API (base URL …/v1beta); azure_openai = an Azure OpenAI resource "
            "(base URL https://<resource>.openai.azure.com).",
        ),
    ] = "openai",
    model_encoding: ModelEncodingOption = None,
    model_deployment: ModelDeploymentOption = None,
    api_version: ApiVersionOption = None,
    input_counting: InputCountingOption = None,
    counting_margin: CountingMarginOption = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Register a provider.

    aigw providers create --name openai-main --kind openai --base-url https://api.openai.com/v1 --model gpt-4o-mini --model gpt-4.1

    aigw providers create --name google --kind gemini --base-url https://generativelanguage.googleapis.com/v1beta --model gemini-2.5-flash --input-counting upstream
    """
    names = _unique(models)
    encodings = parse_encodings(model_encoding, names)
    deployments = parse_deployments(model_deployment, names)
    body = {
        "name": name,
        "kind": kind,
        "base_url": base_url,
        "models": model_list(names, encodings, deployments=deployments),
        **settings_body(api_version, input_counting, counting_margin),
    }
    resource.create_command(
        PROVIDERS, body, json_output=json_output, url=url, token_file=admin_token_file
    )


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
    model_deployment: ModelDeploymentOption = None,
    api_version: ApiVersionOption = None,
    input_counting: InputCountingOption = None,
    counting_margin: CountingMarginOption = None,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Change the fields given. Models keep their encoding unless --model-encoding says
    otherwise; a model still used by a key cannot be removed (exit code 3)."""
    if models and (add_models or remove_models):
        raise typer.BadParameter(
            "--model replaces the list; do not combine it with --add-model/--remove-model",
            param_hint="--model",
        )
    body: dict[str, Any] = {
        field: value
        for field, value in (("name", name), ("kind", kind), ("base_url", base_url))
        if value is not None
    }
    body.update(settings_body(api_version, input_counting, counting_margin))

    def set_models(current: Record, body: dict[str, Any]) -> None:
        body["models"] = _new_models(
            current, models, add_models, remove_models, model_encoding, model_deployment
        )

    touches_models = bool(
        models or add_models or remove_models or model_encoding or model_deployment
    )
    resource.update_command(
        PROVIDERS,
        ref,
        body,
        complete=set_models if touches_models else None,
        json_output=json_output,
        url=url,
        token_file=admin_token_file,
    )


def _new_models(
    current: Record,
    models: list[str] | None,
    add_models: list[str] | None,
    remove_models: list[str] | None,
    model_encoding: list[str] | None,
    model_deployment: list[str] | None = None,
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
    deployments = parse_deployments(model_deployment, names)
    return model_list(names, encodings, keep=current["models"], deployments=deployments)


resource.add_delete_command(
    app,
    PROVIDERS,
    ProviderRef,
    "Delete a provider that no AI API key refers to. Asks first unless --yes.",
)
