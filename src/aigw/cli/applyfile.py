"""The ``aigw apply`` file: its schema, loading, and the key codes it points at.

Field rules are the admin API's own (the same annotated types), so a file that
loads here is refused by the gateway only for reasons that depend on the
gateway's state. Messages never echo input values: a misplaced secret must not
end up in a CI log through an error message.

.. code-block:: yaml

    providers:
      - name: openai-main
        kind: openai                      # or anthropic, gemini, azure_openai; default openai
        base_url: https://api.openai.com/v1
        models:
          - gpt-4o-mini                   # shorthand for {name: gpt-4o-mini}
          - name: gpt-4
            encoding: cl100k_base         # optional; chosen from the name otherwise
      - name: google
        kind: gemini
        base_url: https://generativelanguage.googleapis.com/v1beta
        input_counting: upstream          # or tiktoken (default); gemini and anthropic
        counting_margin: 10               # percent added to the fallback estimate
        models: [gemini-2.5-flash]
      - name: azure
        kind: azure_openai
        base_url: https://contoso.openai.azure.com
        api_version: "2024-10-21"         # azure_openai only; this is the default
        models:
          - name: gpt-4o-mini
            deployment: prod-4o-mini      # azure_openai only; default: the model's name
    keys:
      - alias: team-a
        provider: openai-main
        model: gpt-4o-mini
        status: enabled                   # default disabled
        input_limit: 4000                 # required; 0 = unlimited
        output_limit: 1000                # default 0 = unlimited
        usage_limit: reject               # or use_anyway; default reject
        budget_tokens: 1000000            # per period, input + output; default 0 = no budget
        budget_period: month              # day, week, month (default) or total
        rpm_limit: 60                     # requests per minute; default 0 = none
        tpm_limit: 100000                 # tokens per minute; default 0 = none
        key_code_env: TEAM_A_OPENAI_KEY   # the secret, from this environment variable
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from aigw.apikeys.schemas import (
    Alias,
    BudgetPeriod,
    BudgetTokens,
    ModelRef,
    ProviderRef,
    RpmLimit,
    Status,
    TokenLimit,
    TpmLimit,
    UsageLimit,
)
from aigw.providers.schemas import (
    ApiVersion,
    BaseUrl,
    CountingMargin,
    Deployment,
    Encoding,
    InputCounting,
    ModelName,
    ProviderKind,
    ProviderName,
    check_kind_settings,
)

EnvVarName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=255)]
# The gateway's own settings (the admin token, the encryption keys, the database
# URL) live in AIGW_* variables: a file must not be able to send one of them, as
# a key code, to a base_url the same file chooses.
_RESERVED_ENV_PREFIX = "AIGW_"
_KEY_CODE = re.compile(r"[\x20-\x7e]{1,4096}")


class FileError(Exception):
    """The file cannot be used; ``errors`` lists ``{field, message}`` per problem."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSpec(_Spec):
    name: ModelName
    encoding: Encoding | None = None
    deployment: Deployment | None = None


class ProviderSpec(_Spec):
    name: ProviderName
    kind: ProviderKind = "openai"
    base_url: BaseUrl
    models: Annotated[list[ModelSpec], Field(min_length=1, max_length=500)]
    api_version: ApiVersion | None = None
    input_counting: InputCounting = "tiktoken"
    counting_margin: CountingMargin = 10

    @model_validator(mode="after")
    def _settings_fit_kind(self) -> ProviderSpec:
        check_kind_settings(
            self.kind,
            api_version=self.api_version,
            input_counting=self.input_counting,
            models=self.models,
        )
        return self

    @field_validator("models", mode="before")
    @classmethod
    def _names_as_models(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("models")
    @classmethod
    def _unique_models(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        names = [model.name for model in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"model {name!r} is listed twice")
        return value


class KeySpec(_Spec):
    alias: Alias
    provider: ProviderRef
    model: ModelRef
    status: Status = "disabled"
    input_limit: TokenLimit
    output_limit: TokenLimit = 0
    usage_limit: UsageLimit = "reject"
    budget_tokens: BudgetTokens = 0
    budget_period: BudgetPeriod = "month"
    rpm_limit: RpmLimit = 0
    tpm_limit: TpmLimit = 0
    key_code_env: EnvVarName

    @field_validator("key_code_env")
    @classmethod
    def _not_a_gateway_setting(cls, value: str) -> str:
        if value.upper().startswith(_RESERVED_ENV_PREFIX):
            raise ValueError(
                f"{value} is one of the gateway's own settings ({_RESERVED_ENV_PREFIX}*), "
                "never a key code; put the upstream secret in a variable of its own"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key_code(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key_code" in data:
            raise ValueError(
                "a literal key_code is not allowed in the file; put the secret in an "
                "environment variable and name it with key_code_env"
            )
        return data


class ApplyFile(_Spec):
    providers: list[ProviderSpec] = []
    keys: list[KeySpec] = []

    @field_validator("providers", "keys", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="after")
    def _unique_names(self) -> ApplyFile:
        seen: set[str] = set()
        for provider in self.providers:
            if provider.name.lower() in seen:
                raise ValueError(f"provider {provider.name!r} is listed twice")
            seen.add(provider.name.lower())
        seen = set()
        for key in self.keys:
            if key.alias.lower() in seen:
                raise ValueError(f"key alias {key.alias!r} is listed twice")
            seen.add(key.alias.lower())
        return self


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def load_apply_file(text: str) -> ApplyFile:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: the offending line may hold a secret.
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FileError(f"not valid YAML{where}: {exc.problem or 'syntax error'}") from None
    except yaml.YAMLError:
        raise FileError("not valid YAML") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FileError("the top level must be a mapping with 'providers' and/or 'keys'")
    try:
        return ApplyFile.model_validate(data)
    except ValidationError as exc:
        errors = [
            {
                "field": _location(error["loc"]),
                "message": error["msg"].removeprefix("Value error, "),
            }
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        raise FileError("invalid file", errors) from None


def read_key_codes(spec: ApplyFile) -> dict[str, str]:
    """Each key's code from its environment variable, by lower-cased alias.

    Every variable must be set and non-empty, also for keys that exist already,
    since a change is detected by comparing masks.
    """
    codes: dict[str, str] = {}
    errors: list[dict[str, Any]] = []
    for index, key in enumerate(spec.keys):
        value = os.environ.get(key.key_code_env, "")
        where = f"keys[{index}].key_code_env"
        if not value:
            errors.append(
                {
                    "field": where,
                    "message": f"environment variable {key.key_code_env} is unset or empty",
                }
            )
        elif not _KEY_CODE.fullmatch(value):
            errors.append(
                {
                    "field": where,
                    "message": f"the value of {key.key_code_env} must be 1-4096 printable ASCII characters",
                }
            )
        else:
            codes[key.alias.lower()] = value
    if errors:
        raise FileError("missing or invalid key code variables", errors)
    return codes
