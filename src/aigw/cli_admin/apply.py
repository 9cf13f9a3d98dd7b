"""``aigw apply -f keys.yaml``: make the gateway's providers and keys match a file.

The file is the whole truth for every provider and key it names: fields it
leaves out take the API's defaults (a key without ``status`` is ``disabled``).
Things the file does not name are left alone unless ``--prune``.

Plan, then apply, in an order that never trips over references:

1. create providers; update providers (models about to be removed are kept
   for now, since keys may still use them)
2. create and update keys
3. ``--prune``: delete keys the file does not name
4. remove the models dropped from providers
5. ``--prune``: delete providers the file does not name

Key codes are write-only: the API shows only ``key_code_masked``. A key code
comes from the environment variable the file names (``key_code_env``; a
literal ``key_code`` in the file is refused), is sent when a key is created,
and for an existing key when the mask of the variable's value differs from the
stored mask — so a new secret with the same first and last characters (at
most four each) goes unnoticed; ``--replace-key-codes`` sends every key code
regardless. Model order within a provider is not compared.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.table import Table
from rich.text import Text

from aigw.cli_admin.client import (
    DEFAULT_URL,
    AdminClient,
    AdminError,
    ApiKeyRecord,
    ProviderRecord,
    UsageError,
)
from aigw.cli_admin.common import JsonOption, TokenFileOption, UrlOption, connect
from aigw.cli_admin.output import TOKEN_NOTE, Output

if TYPE_CHECKING:
    from aigw.cli_admin.applyfile import ApplyFile, KeySpec, ProviderSpec

Action = Literal["create", "update", "unchanged", "delete"]
Kind = Literal["provider", "key"]
_SYMBOL = {"create": "+", "update": "~", "unchanged": "=", "delete": "-"}
_STYLE = {"create": "green", "update": "yellow", "unchanged": "dim", "delete": "red"}


@dataclass
class Step:
    """One resource's part of the plan. ``body`` may hold a key code: never printed."""

    action: Action
    kind: Kind
    name: str
    id: str | None = None
    version: int | None = None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict, repr=False)
    # Providers losing models: the list to set once keys no longer use them.
    final_models: list[dict[str, str]] | None = None
    done: bool = False
    token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "id": self.id,
            "changes": {
                name: {"before": before, "after": after}
                for name, (before, after) in self.changes.items()
            },
            "done": self.done,
        }
        if self.token is not None:
            out["token"] = self.token
        return out


@dataclass
class Plan:
    steps: list[Step]

    def count(self, action: Action) -> int:
        return sum(1 for step in self.steps if step.action == action)

    @property
    def changed(self) -> bool:
        return any(step.action != "unchanged" for step in self.steps)

    def summary(self) -> dict[str, int]:
        return {
            action: self.count(action) for action in ("create", "update", "delete", "unchanged")
        }


# --- planning -----------------------------------------------------------------


def _models_of(spec: ProviderSpec) -> list[dict[str, str]]:
    from aigw.providers.schemas import default_encoding

    return [
        {"name": model.name, "encoding": model.encoding or default_encoding(model.name)}
        for model in spec.models
    ]


def _model_map(models: list[Any]) -> dict[str, str]:
    return {model["name"]: model["encoding"] for model in models}


def plan_provider(spec: ProviderSpec, current: ProviderRecord | None) -> Step:
    desired_models = _models_of(spec)
    if current is None:
        body = {
            "name": spec.name,
            "kind": spec.kind,
            "base_url": spec.base_url,
            "models": desired_models,
        }
        changes = {
            "kind": (None, spec.kind),
            "base_url": (None, spec.base_url),
            "models": (None, desired_models),
        }
        return Step("create", "provider", spec.name, changes=changes, body=body)
    step = Step(
        "unchanged", "provider", current["name"], id=current["id"], version=current["version"]
    )
    for name, before, after in (
        ("name", current["name"], spec.name),
        ("kind", current["kind"], spec.kind),
        ("base_url", current["base_url"], spec.base_url),
    ):
        if before != after:
            step.changes[name] = (before, after)
            step.body[name] = after
    have, want = _model_map(current["models"]), _model_map(desired_models)
    if have != want:
        step.changes["models"] = (current["models"], desired_models)
        removed = [dict(model) for model in current["models"] if model["name"] not in want]
        # Keep models that are going away until the keys have moved off them.
        interim = desired_models + removed
        if _model_map(interim) != have:
            step.body["models"] = interim
        if removed:
            step.final_models = desired_models
    if step.changes:
        step.action = "update"
    return step


def plan_key(
    spec: KeySpec, key_code: str, current: ApiKeyRecord | None, *, replace_key_code: bool
) -> Step:
    from aigw.crypto import mask_secret

    desired: dict[str, Any] = {
        "alias": spec.alias,
        "provider": spec.provider,
        "model": spec.model,
        "status": spec.status,
        "input_limit": spec.input_limit,
        "output_limit": spec.output_limit,
        "usage_limit": spec.usage_limit,
    }
    new_mask = mask_secret(key_code)
    if current is None:
        changes: dict[str, tuple[Any, Any]] = {
            name: (None, value) for name, value in desired.items() if name != "alias"
        }
        changes["key_code"] = (None, new_mask)
        return Step(
            "create", "key", spec.alias, changes=changes, body={**desired, "key_code": key_code}
        )
    step = Step("unchanged", "key", current["alias"], id=current["id"], version=current["version"])
    for name, after in desired.items():
        before = current[name]  # type: ignore[literal-required]
        same = before.lower() == after.lower() if name == "provider" else before == after
        if not same:
            step.changes[name] = (before, after)
            step.body[name] = after
    if replace_key_code or current["key_code_masked"] != new_mask:
        step.changes["key_code"] = (current["key_code_masked"], new_mask)
        step.body["key_code"] = key_code
    if step.changes:
        step.action = "update"
    return step


def check_references(
    spec: ApplyFile, server_providers: dict[str, ProviderRecord], *, prune: bool
) -> list[str]:
    """Every key must name a provider and model that will exist after the apply."""
    models: dict[str, set[str]] = {
        name: {model["name"] for model in provider["models"]}
        for name, provider in server_providers.items()
    }
    in_file = {provider.name.lower() for provider in spec.providers}
    for provider in spec.providers:
        models[provider.name.lower()] = {model.name for model in provider.models}
    problems = []
    for index, key in enumerate(spec.keys):
        where = f"keys[{index}] ({key.alias})"
        ref = key.provider.lower()
        if ref not in models:
            problems.append(f"{where}: no provider {key.provider!r} in the file or on the gateway")
        elif key.model not in models[ref]:
            problems.append(f"{where}: provider {key.provider!r} has no model {key.model!r}")
        elif prune and ref not in in_file:
            problems.append(
                f"{where}: provider {key.provider!r} is not in the file, so --prune would delete it"
            )
    return problems


def make_plan(
    client: AdminClient,
    spec: ApplyFile,
    key_codes: dict[str, str],
    *,
    prune: bool,
    replace_key_codes: bool,
) -> Plan:
    providers = {provider["name"].lower(): provider for provider in client.iter_providers()}
    problems = check_references(spec, providers, prune=prune)
    if problems:
        raise UsageError(
            "the file does not fit the gateway: " + "; ".join(problems), code="invalid_reference"
        )
    keys = {key["alias"].lower(): key for key in client.iter_keys(sort="alias")}
    steps = [plan_provider(p, providers.get(p.name.lower())) for p in spec.providers]
    steps += [
        plan_key(
            k,
            key_codes[k.alias.lower()],
            keys.get(k.alias.lower()),
            replace_key_code=replace_key_codes,
        )
        for k in spec.keys
    ]
    if prune:
        wanted_keys = {key.alias.lower() for key in spec.keys}
        wanted_providers = {provider.name.lower() for provider in spec.providers}
        steps += [
            Step("delete", "key", key["alias"], id=key["id"], version=key["version"])
            for name, key in keys.items()
            if name not in wanted_keys
        ]
        steps += [
            Step(
                "delete",
                "provider",
                provider["name"],
                id=provider["id"],
                version=provider["version"],
            )
            for name, provider in providers.items()
            if name not in wanted_providers
        ]
    return Plan(steps)


# --- applying -----------------------------------------------------------------


def execute(client: AdminClient, plan: Plan, output: Output) -> None:
    """Carry out *plan* in reference-safe order; each finished step is marked done."""
    providers = [step for step in plan.steps if step.kind == "provider"]
    keys = [step for step in plan.steps if step.kind == "key"]

    for step in providers:
        if step.action == "create":
            created = client.create_provider(step.body)
            step.id, step.version = created["id"], created["version"]
        elif step.action == "update":
            assert step.id is not None
            if step.body:
                updated = client.update_provider(step.id, step.body, version=step.version)
                step.version = updated["version"]
        else:
            continue
        if step.final_models is None:
            _done(step, output)
    for step in keys:
        if step.action == "create":
            created_key = client.create_key(step.body)
            step.id, step.token = created_key["id"], created_key.get("token")
        elif step.action == "update":
            assert step.id is not None
            client.update_key(step.id, step.body, version=step.version)
        else:
            continue
        _done(step, output)
    for step in keys:
        if step.action == "delete":
            assert step.id is not None
            client.delete_key(step.id, version=step.version)
            _done(step, output)
    for step in providers:
        if step.action == "update" and step.final_models is not None:
            assert step.id is not None
            client.update_provider(step.id, {"models": step.final_models}, version=step.version)
            _done(step, output)
    for step in providers:
        if step.action == "delete":
            assert step.id is not None
            client.delete_provider(step.id, version=step.version)
            _done(step, output)


_PAST = {"create": "created", "update": "updated", "delete": "deleted", "unchanged": "kept"}


def _done(step: Step, output: Output) -> None:
    step.done = True
    output.note(f"{_PAST[step.action]} {step.kind} {step.name}")


# --- showing ------------------------------------------------------------------


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):  # a model list
        return ", ".join(f"{model['name']} ({model['encoding']})" for model in value)
    return str(value)


def _describe(step: Step) -> Text:
    text = Text()
    for index, (name, (before, after)) in enumerate(step.changes.items()):
        if index:
            text.append("\n")
        text.append(f"{name}: ", style="bold")
        if name == "models" and before is not None:
            have, want = _model_map(before), _model_map(after)
            parts = [f"+{m}" for m in want if m not in have]
            parts += [f"-{m}" for m in have if m not in want]
            parts += [
                f"{m}: {have[m]} → {want[m]}" for m in want if m in have and have[m] != want[m]
            ]
            text.append(" ".join(parts))
        elif step.action == "create":
            text.append(_show(after))
        else:
            text.append(f"{_show(before)} → {_show(after)}")
    return text


def render_plan(output: Output, plan: Plan, source: str) -> None:
    table = Table(title=f"Plan for {source}", title_justify="left", header_style="bold")
    table.add_column("")
    table.add_column("KIND")
    table.add_column("NAME", overflow="fold")
    table.add_column("CHANGES", overflow="fold")
    for step in plan.steps:
        style = _STYLE[step.action]
        table.add_row(
            Text(f"{_SYMBOL[step.action]} {step.action}", style=style),
            step.kind,
            Text(step.name),
            _describe(step),
        )
    output.out.print(table)
    summary = plan.summary()
    output.out.print(
        f"Plan: {summary['create']} to create, {summary['update']} to update, "
        f"{summary['delete']} to delete, {summary['unchanged']} unchanged."
    )


def result_document(plan: Plan, source: str, *, dry_run: bool) -> dict[str, Any]:
    return {
        "file": source,
        "dry_run": dry_run,
        "in_sync": not plan.changed,
        "changed": plan.changed and not dry_run,
        "summary": plan.summary(),
        "steps": [step.to_dict() for step in plan.steps],
    }


# --- the command --------------------------------------------------------------


def apply(
    file: Annotated[
        str,
        typer.Option(
            "--file", "-f", metavar="FILE", help="YAML file with providers and keys ('-' = stdin)."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and change nothing.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option("--prune", help="Also delete keys and providers the file does not name."),
    ] = False,
    replace_key_codes: Annotated[
        bool,
        typer.Option(
            "--replace-key-codes",
            help="Send every key code, even when its mask matches the stored one.",
        ),
    ] = False,
    json_output: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    admin_token_file: TokenFileOption = None,
) -> None:
    """Create or update providers and AI API keys to match a YAML file; idempotent.

    Key codes come only from environment variables named in the file
    (key_code_env: VAR). See docs/cli.md for the file format.
    """
    from aigw.cli_admin.applyfile import FileError, load_apply_file, read_key_codes

    output = Output(json_output)
    source = "<stdin>" if file == "-" else file
    with output.reporting():
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {source}: {exc}", code="usage") from None
        try:
            spec = load_apply_file(text)
            key_codes = read_key_codes(spec)
        except FileError as exc:
            raise UsageError(f"{source}: {exc}", code="invalid_file", errors=exc.errors) from None

    with connect(output, url, admin_token_file) as client:
        plan = make_plan(client, spec, key_codes, prune=prune, replace_key_codes=replace_key_codes)
        if not json_output:
            render_plan(output, plan, source)
        if dry_run or not plan.changed:
            if json_output:
                output.emit_json(result_document(plan, source, dry_run=dry_run))
            elif not plan.changed:
                output.out.print(
                    Text(f"No changes: the gateway already matches {source}.", style="green")
                )
            else:
                output.out.print(Text("Dry run: nothing was changed.", style="yellow"))
            return
        try:
            execute(client, plan, output)
        except AdminError:
            if json_output:
                output.emit_json(result_document(plan, source, dry_run=False))
            done = sum(1 for step in plan.steps if step.done)
            output.note(
                f"apply stopped after {done} change(s); run it again once fixed", style="red"
            )
            _show_tokens(output, plan)
            raise
    if json_output:
        output.emit_json(result_document(plan, source, dry_run=False))
        return
    summary = plan.summary()
    output.out.print(
        Text(
            f"Applied: {summary['create']} created, {summary['update']} updated, "
            f"{summary['delete']} deleted, {summary['unchanged']} unchanged.",
            style="green",
        )
    )
    _show_tokens(output, plan)


def _show_tokens(output: Output, plan: Plan) -> None:
    """Client tokens of keys created by this run, in human mode (JSON has them per step)."""
    created = [step for step in plan.steps if step.token]
    if output.json_mode or not created:
        return
    table = Table(title="Client tokens of the new keys", title_justify="left", header_style="bold")
    table.add_column("ALIAS", overflow="fold")
    table.add_column("TOKEN", overflow="fold")
    for step in created:
        table.add_row(Text(step.name), Text(step.token or ""))
    output.out.print(table)
    output.out.print(Text(TOKEN_NOTE, style="yellow"))
