"""The apply planner on its own: diffs, defaults, the model-removal order, key-code masks."""

from __future__ import annotations

from typing import Any

from aigw.cli.applyfile import load_apply_file
from aigw.cli.plan import plan_key, plan_provider

SECRET = "sk-proj-abcdefghijklmnop-WXYZ"


def _provider(**overrides: Any) -> Any:
    record = {
        "id": "p1",
        "name": "openai-main",
        "kind": "openai",
        "base_url": "https://api.openai.com/v1",
        "models": [
            {"name": "gpt-4o-mini", "encoding": "o200k_base"},
            {"name": "gpt-4", "encoding": "cl100k_base"},
        ],
        "created_at": "",
        "updated_at": "",
        "version": 3,
    }
    record.update(overrides)
    return record


def _key(**overrides: Any) -> Any:
    record = {
        "id": "k1",
        "alias": "team-a",
        "provider": "openai-main",
        "model": "gpt-4o-mini",
        "status": "disabled",
        "key_code_masked": "sk-p…WXYZ",
        "token_prefix": "aigw-abc",
        "input_limit": 10,
        "output_limit": 0,
        "usage_limit": "reject",
        "created_at": "",
        "updated_at": "",
        "version": 7,
    }
    record.update(overrides)
    return record


def _spec(text: str) -> Any:
    return load_apply_file(text)


PROVIDER_YAML = """
providers:
  - name: openai-main
    base_url: https://api.openai.com/v1/
    models: [gpt-4o-mini, {name: gpt-4, encoding: cl100k_base}]
"""


def test_matching_provider_is_unchanged_whatever_the_model_order() -> None:
    spec = _spec(PROVIDER_YAML).providers[0]
    reordered = _provider(models=list(reversed(_provider()["models"])))
    assert plan_provider(spec, reordered).action == "unchanged"


def test_omitted_encoding_means_the_default_for_the_name() -> None:
    spec = _spec(PROVIDER_YAML).providers[0]
    current = _provider(
        models=[
            {"name": "gpt-4o-mini", "encoding": "cl100k_base"},
            {"name": "gpt-4", "encoding": "cl100k_base"},
        ]
    )
    step = plan_provider(spec, current)
    assert step.action == "update" and set(step.changes) == {"models"}
    assert step.final_models is None


def test_removed_models_stay_until_keys_have_moved() -> None:
    spec = _spec(PROVIDER_YAML.replace("gpt-4o-mini", "gpt-4.1")).providers[0]
    step = plan_provider(spec, _provider())
    assert step.action == "update"
    assert [m["name"] for m in step.body["models"]] == ["gpt-4.1", "gpt-4", "gpt-4o-mini"]
    assert step.final_models is not None
    assert [m["name"] for m in step.final_models] == ["gpt-4.1", "gpt-4"]


def test_pure_removal_skips_the_interim_patch() -> None:
    spec = _spec(PROVIDER_YAML.replace("gpt-4o-mini, ", "")).providers[0]
    step = plan_provider(spec, _provider())
    assert step.action == "update" and step.body == {}
    assert step.final_models == [{"name": "gpt-4", "encoding": "cl100k_base"}]


KEY_YAML = """
keys:
  - alias: Team-A
    provider: OPENAI-MAIN
    model: gpt-4o-mini
    input_limit: 10
    key_code_env: K
"""


def test_key_defaults_and_case_insensitive_provider() -> None:
    spec = _spec(KEY_YAML).keys[0]
    step = plan_key(spec, SECRET, _key(), replace_key_code=False)
    # only the alias' case differs; the provider reference is case-insensitive
    assert step.action == "update" and step.changes == {"alias": ("team-a", "Team-A")}
    assert "key_code" not in step.body


def test_key_code_change_is_detected_by_its_mask() -> None:
    spec = _spec(KEY_YAML.replace("Team-A", "team-a")).keys[0]
    assert plan_key(spec, SECRET, _key(), replace_key_code=False).action == "unchanged"
    other = "sk-live-0000000000000000-1234"
    step = plan_key(spec, other, _key(), replace_key_code=False)
    assert step.changes == {"key_code": ("sk-p…WXYZ", "sk-l…1234")}
    assert step.body == {"key_code": other}
    assert other not in repr(step)
    forced = plan_key(spec, SECRET, _key(), replace_key_code=True)
    assert forced.action == "update" and forced.body == {"key_code": SECRET}


def test_new_key_is_created_with_api_defaults() -> None:
    spec = _spec(KEY_YAML).keys[0]
    step = plan_key(spec, SECRET, None, replace_key_code=False)
    assert step.action == "create"
    assert step.body == {
        "alias": "Team-A",
        "provider": "OPENAI-MAIN",
        "model": "gpt-4o-mini",
        "status": "disabled",
        "input_limit": 10,
        "output_limit": 0,
        "usage_limit": "reject",
        "key_code": SECRET,
    }
    assert SECRET not in str(step.to_dict())
