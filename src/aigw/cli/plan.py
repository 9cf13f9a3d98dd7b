"""The plan behind ``aigw apply``: what to change so the gateway matches the file, and
carrying it out.

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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aigw.cli.client import AdminClient, Record
from aigw.cli.errors import UsageError
from aigw.cli.keys import KEYS
from aigw.cli.output import Output
from aigw.cli.providers import PROVIDERS

if TYPE_CHECKING:
    from aigw.cli.applyfile import ApplyFile, KeySpec, ProviderSpec

Action = Literal["create", "update", "unchanged", "delete"]
Kind = Literal["provider", "key"]


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


def _models_of(spec: ProviderSpec) -> list[dict[str, str]]:
    from aigw.providers.schemas import default_encoding

    return [
        {"name": model.name, "encoding": model.encoding or default_encoding(model.name)}
        | ({"deployment": model.deployment} if model.deployment else {})
        for model in spec.models
    ]


def model_map(models: list[Any]) -> dict[str, tuple[str, str | None]]:
    return {model["name"]: (model["encoding"], model.get("deployment")) for model in models}


def _settings_of(spec: ProviderSpec) -> dict[str, Any]:
    """The kind-specific settings the file means (omitted: the API's defaults)."""
    from aigw.providers.schemas import DEFAULT_AZURE_API_VERSION

    api_version = spec.api_version
    if api_version is None and spec.kind == "azure_openai":
        api_version = DEFAULT_AZURE_API_VERSION
    return {
        "api_version": api_version,
        "input_counting": spec.input_counting,
        "counting_margin": spec.counting_margin,
    }


def plan_provider(spec: ProviderSpec, current: Record | None) -> Step:
    desired_models = _models_of(spec)
    settings = _settings_of(spec)
    if current is None:
        body = {
            "name": spec.name,
            "kind": spec.kind,
            "base_url": spec.base_url,
            "models": desired_models,
            **{name: value for name, value in settings.items() if value is not None},
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
    defaults = {"api_version": None, "input_counting": "tiktoken", "counting_margin": 10}
    for name, after in settings.items():
        before = current.get(name, defaults[name])
        if before != after:
            step.changes[name] = (before, after)
            if after is not None:  # leaving azure_openai clears api_version itself
                step.body[name] = after
    have, want = model_map(current["models"]), model_map(desired_models)
    if have != want:
        step.changes["models"] = (current["models"], desired_models)
        removed = [dict(model) for model in current["models"] if model["name"] not in want]
        # Keep models that are going away until the keys have moved off them.
        interim = desired_models + removed
        if model_map(interim) != have:
            step.body["models"] = interim
        if removed:
            step.final_models = desired_models
    if step.changes:
        step.action = "update"
    return step


# Budget and rate fields with the API's defaults: a create sends and lists only
# those the file sets otherwise; a gateway that predates them reads as these.
KEY_BUDGET_DEFAULTS: dict[str, Any] = {
    "budget_tokens": 0,
    "budget_period": "month",
    "rpm_limit": 0,
    "tpm_limit": 0,
}


def plan_key(
    spec: KeySpec, key_code: str, current: Record | None, *, replace_key_code: bool
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
        "budget_tokens": spec.budget_tokens,
        "budget_period": spec.budget_period,
        "rpm_limit": spec.rpm_limit,
        "tpm_limit": spec.tpm_limit,
    }
    new_mask = mask_secret(key_code)
    if current is None:
        # Budget fields left at the API's defaults are not sent, nor shown as news.
        body = {
            name: value
            for name, value in desired.items()
            if name not in KEY_BUDGET_DEFAULTS or KEY_BUDGET_DEFAULTS[name] != value
        }
        changes: dict[str, tuple[Any, Any]] = {
            name: (None, value) for name, value in body.items() if name != "alias"
        }
        changes["key_code"] = (None, new_mask)
        return Step(
            "create", "key", spec.alias, changes=changes, body={**body, "key_code": key_code}
        )
    step = Step("unchanged", "key", current["alias"], id=current["id"], version=current["version"])
    for name, after in desired.items():
        before = (
            current.get(name, KEY_BUDGET_DEFAULTS[name])
            if name in KEY_BUDGET_DEFAULTS
            else current[name]
        )
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
    spec: ApplyFile, server_providers: dict[str, Record], *, prune: bool
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
    providers = {provider["name"].lower(): provider for provider in PROVIDERS.iterate(client)}
    problems = check_references(spec, providers, prune=prune)
    if problems:
        raise UsageError(
            "the file does not fit the gateway: " + "; ".join(problems), code="invalid_reference"
        )
    keys = {key["alias"].lower(): key for key in KEYS.iterate(client, sort="alias")}
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


def execute(client: AdminClient, plan: Plan, output: Output) -> None:
    """Carry out *plan* in reference-safe order; each finished step is marked done."""
    providers = [step for step in plan.steps if step.kind == "provider"]
    keys = [step for step in plan.steps if step.kind == "key"]

    for step in providers:
        if step.action == "create":
            created = PROVIDERS.create(client, step.body)
            step.id, step.version = created["id"], created["version"]
        elif step.action == "update":
            assert step.id is not None
            if step.body:
                updated = PROVIDERS.update(client, step.id, step.body, version=step.version)
                step.version = updated["version"]
        else:
            continue
        if step.final_models is None:
            _done(step, output)
    for step in keys:
        if step.action == "create":
            created_key = KEYS.create(client, step.body)
            step.id, step.token = created_key["id"], created_key.get("token")
        elif step.action == "update":
            assert step.id is not None
            KEYS.update(client, step.id, step.body, version=step.version)
        else:
            continue
        _done(step, output)
    for step in keys:
        if step.action == "delete":
            assert step.id is not None
            KEYS.delete(client, step.id, version=step.version)
            _done(step, output)
    for step in providers:
        if step.action == "update" and step.final_models is not None:
            assert step.id is not None
            PROVIDERS.update(client, step.id, {"models": step.final_models}, version=step.version)
            _done(step, output)
    for step in providers:
        if step.action == "delete":
            assert step.id is not None
            PROVIDERS.delete(client, step.id, version=step.version)
            _done(step, output)


_PAST = {"create": "created", "update": "updated", "delete": "deleted", "unchanged": "kept"}


def _done(step: Step, output: Output) -> None:
    step.done = True
    output.note(f"{_PAST[step.action]} {step.kind} {step.name}")
