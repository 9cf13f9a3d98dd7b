"""The CLI and ``aigw apply`` with the provider kinds gemini and azure_openai and
their settings."""

from __future__ import annotations

from typing import Any

import pytest

from aigw.cli.applyfile import FileError, load_apply_file
from aigw.cli.plan import plan_provider
from tests.cli.conftest import Cli

FILE = """
providers:
  - name: google
    kind: gemini
    base_url: https://generativelanguage.googleapis.com/v1beta
    input_counting: upstream
    counting_margin: 15
    models: [gemini-2.5-flash]
  - name: azure
    kind: azure_openai
    base_url: https://contoso.openai.azure.com
    models:
      - name: gpt-4o-mini
        deployment: prod-4o-mini
      - gpt-4o
"""


def _server(spec: Any, **overrides: Any) -> dict[str, Any]:
    """What the API answers for the provider the file describes, changed by *overrides*."""
    record: dict[str, Any] = {
        "id": "p1",
        "name": spec.name,
        "kind": spec.kind,
        "base_url": spec.base_url,
        "models": [
            {"name": m.name, "encoding": "o200k_base"}
            | ({"deployment": m.deployment} if m.deployment else {})
            for m in spec.models
        ],
        "api_version": "2024-10-21" if spec.kind == "azure_openai" else None,
        "input_counting": spec.input_counting,
        "counting_margin": spec.counting_margin,
        "version": 1,
    }
    record.update(overrides)
    return record


def test_plan_creates_with_the_settings() -> None:
    google, azure = load_apply_file(FILE).providers
    step = plan_provider(google, None)
    assert step.body["input_counting"] == "upstream" and step.body["counting_margin"] == 15
    assert "api_version" not in step.body
    step = plan_provider(azure, None)
    assert step.body["api_version"] == "2024-10-21"  # the default, said explicitly
    assert step.body["models"][0] == {
        "name": "gpt-4o-mini",
        "encoding": "o200k_base",
        "deployment": "prod-4o-mini",
    }


def test_plan_is_idempotent_and_sees_setting_changes() -> None:
    google, azure = load_apply_file(FILE).providers
    assert plan_provider(google, _server(google)).action == "unchanged"
    assert plan_provider(azure, _server(azure)).action == "unchanged"
    step = plan_provider(google, _server(google, input_counting="tiktoken"))
    assert step.action == "update" and step.body == {"input_counting": "upstream"}
    moved = _server(azure)
    moved["models"][0]["deployment"] = "old"
    step = plan_provider(azure, moved)
    assert step.action == "update" and step.body["models"][0]["deployment"] == "prod-4o-mini"


@pytest.mark.parametrize(
    "bad",
    [
        "    api_version: '2024-10-21'\n",  # gemini takes none
        "    input_counting: sometimes\n",
    ],
)
def test_file_settings_are_checked_against_the_kind(bad: str) -> None:
    text = FILE.replace("    counting_margin: 15\n", "    counting_margin: 15\n" + bad)
    with pytest.raises(FileError):
        load_apply_file(text)


def test_cli_options(cli: Cli) -> None:
    created = cli.json(
        "providers", "create", "--name", "azure", "--kind", "azure_openai",
        "--base-url", "https://contoso.openai.azure.com", "--model", "gpt-4o-mini",
        "--model-deployment", "gpt-4o-mini=prod-4o-mini", "--api-version", "2024-10-21",
    )  # fmt: skip
    assert created["api_version"] == "2024-10-21"
    assert created["models"][0]["deployment"] == "prod-4o-mini"
    detail = cli.ok("providers", "get", "azure")
    assert "prod-4o-mini" in detail.stdout and "2024-10-21" in detail.stdout
    # Models keep their deployment when the list changes.
    updated = cli.json("providers", "update", "azure", "--add-model", "gpt-4o")
    assert updated["models"][0]["deployment"] == "prod-4o-mini"
    google = cli.json(
        "providers", "create", "--name", "google", "--kind", "gemini",
        "--base-url", "https://generativelanguage.googleapis.com/v1beta",
        "--model", "gemini-2.5-flash", "--input-counting", "upstream", "--counting-margin", "20",
    )  # fmt: skip
    assert (google["input_counting"], google["counting_margin"]) == ("upstream", 20)
    refused = cli("providers", "update", "google", "--api-version", "2024-10-21")
    assert refused.exit_code != 0
