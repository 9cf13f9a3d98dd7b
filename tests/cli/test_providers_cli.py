"""``aigw providers …`` against a real gateway."""

from __future__ import annotations

import pytest

from aigw.cli import common
from tests.cli.conftest import Cli


def test_provider_lifecycle(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    created = cli.ok(
        "providers", "create", "--name", "openai-main", "--kind", "openai",
        "--base-url", "https://api.openai.com/v1/", "--model", "gpt-4o-mini", "--model", "gpt-4",
        "--model-encoding", "gpt-4=cl100k_base",
    )  # fmt: skip
    assert "openai-main" in created.stdout
    assert "created provider openai-main" in created.stderr

    local = cli.json(
        "providers", "create", "--name", "local-vllm", "--base-url", "http://127.0.0.1:8000/v1",
        "--model", "llama3:8b",
    )  # fmt: skip
    assert local["kind"] == "openai"
    assert local["models"] == [{"name": "llama3:8b", "encoding": "o200k_base"}]

    page = cli.json("providers", "list")
    assert page["total"] == 2
    assert [p["name"] for p in page["items"]] == ["local-vllm", "openai-main"]
    main = next(p for p in page["items"] if p["name"] == "openai-main")
    assert main["base_url"] == "https://api.openai.com/v1"
    assert {m["name"]: m["encoding"] for m in main["models"]} == {
        "gpt-4o-mini": "o200k_base",
        "gpt-4": "cl100k_base",
    }
    assert cli.json("providers", "list", "--q", "VLLM")["total"] == 1
    first = cli.json("providers", "list", "--limit", "1")
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = cli.json("providers", "list", "--limit", "1", "--cursor", first["next_cursor"])
    assert second["items"][0]["name"] == "openai-main"
    assert cli.json("providers", "list", "--all")["total"] == 2
    table = cli.ok("providers", "list")
    assert "openai-main" in table.stdout and main["id"] in table.stdout
    assert "2 of 2 providers" in table.stderr

    # get by id, by name, by name in another case
    assert cli.json("providers", "get", main["id"])["name"] == "openai-main"
    assert cli.json("providers", "get", "OpenAI-Main")["id"] == main["id"]
    detail = cli.ok("providers", "get", "openai-main")
    assert "cl100k_base" in detail.stdout

    # update: add a model, keep existing encodings, change the URL
    updated = cli.json(
        "providers", "update", "openai-main", "--add-model", "gpt-4.1",
        "--base-url", "https://proxy.example.com/v1",
    )  # fmt: skip
    assert updated["base_url"] == "https://proxy.example.com/v1"
    assert {m["name"]: m["encoding"] for m in updated["models"]} == {
        "gpt-4o-mini": "o200k_base",
        "gpt-4": "cl100k_base",
        "gpt-4.1": "o200k_base",
    }
    assert updated["version"] == main["version"] + 1
    removed = cli.json("providers", "update", main["id"], "--remove-model", "gpt-4o-mini")
    assert [m["name"] for m in removed["models"]] == ["gpt-4", "gpt-4.1"]
    replaced = cli.json(
        "providers", "update", "openai-main", "--model", "gpt-4", "--model", "o3",
        "--model-encoding", "gpt-4=o200k_base", "--name", "openai-eu",
    )  # fmt: skip
    assert replaced["name"] == "openai-eu"
    assert replaced["models"] == [
        {"name": "gpt-4", "encoding": "o200k_base"},
        {"name": "o3", "encoding": "o200k_base"},
    ]

    # conflicts and usage errors
    taken = cli(
        "providers",
        "create",
        "--name",
        "OPENAI-EU",
        "--base-url",
        "https://x.example/v1",
        "--model",
        "m",
    )
    assert taken.exit_code == 3 and "provider_name_taken" in taken.stderr
    assert cli("providers", "update", "openai-eu").exit_code == 2  # nothing to update
    bad = cli("providers", "update", "openai-eu", "--model-encoding", "gpt-4=p50k_base")
    assert bad.exit_code == 2
    invalid = cli(
        "providers",
        "create",
        "--name",
        "bad name",
        "--base-url",
        "ftp://x",
        "--model",
        "m",
        "--json",
    )
    assert invalid.exit_code == 2 and invalid.stdout == ""
    assert '"validation_error"' in invalid.stderr

    # delete: refuses without a TTY, asks with one, --yes skips the question
    refused = cli("providers", "delete", "local-vllm")
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    monkeypatch.setattr(common, "interactive", lambda: True)
    declined = cli("providers", "delete", "local-vllm", input="n\n")
    assert declined.exit_code == 2 and "Confirm Delete?" in declined.stderr
    assert cli.json("providers", "get", "local-vllm")["id"] == local["id"]
    confirmed = cli("providers", "delete", "local-vllm", input="y\n")
    assert confirmed.exit_code == 0, confirmed.stderr
    gone = cli.json("providers", "delete", "openai-eu", "--yes")
    assert gone == {"deleted": True, "id": main["id"], "name": "openai-eu"}
    missing = cli("providers", "get", "openai-eu")
    assert missing.exit_code == 1 and "not_found" in missing.stderr
    assert cli.json("providers", "list")["total"] == 0
