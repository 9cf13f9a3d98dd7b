"""The served schema names the budget store's 503 wherever an answer carries
``budget_used``: with ``AIGW_REDIS_URL`` set, those reads go to Redis, and a
Redis that does not answer makes them 503 ``budget_store_unavailable``
(tests/budgets/test_budgets.py shows the 503 itself)."""

from __future__ import annotations

import json
from typing import Any


def _carries_budget_used(schema: dict[str, Any], components: dict[str, Any]) -> bool:
    """Whether *schema* holds ``budget_used``, following ``$ref``s (each component
    once)."""
    seen: set[str] = set()
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "budget_used" in node.get("properties", {}):
                return True
            ref = node.get("$ref")
            if isinstance(ref, str) and ref not in seen:
                seen.add(ref)
                stack.append(components[ref.rsplit("/", 1)[1]])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def test_every_operation_answering_budget_used_documents_the_store_503() -> None:
    from aigw.openapi import render

    schema = json.loads(render())
    components = schema["components"]["schemas"]
    checked = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            success = [r for code, r in operation["responses"].items() if code.startswith("2")]
            if not any(_carries_budget_used(r, components) for r in success):
                continue
            checked.append(f"{method.upper()} {path}")
            unavailable = operation["responses"].get("503", {})
            assert "budget_store_unavailable" in unavailable.get("description", ""), (
                method,
                path,
                unavailable,
            )
            assert "application/problem+json" in unavailable["content"], (method, path)
    # The key routes that answer with a key: create, search, read, update, rotate.
    assert len(checked) == 5, checked
