"""Our count against the ``prompt_tokens`` the OpenAI API reported, for every
published (request → prompt_tokens) pair we found.

The pairs live in ``published_cases.json``, one object per case, each with
its ``source`` (repository @ commit and test name, notebook cell, or thread
URL) and a ``note`` on how the request was transcribed. ``count_as`` is the
snapshot the request reached when it was measured (``snapshot_reason`` says
how we know); the request is counted under that name. Where the snapshot is
known the count must agree exactly. Where it is not (``snapshot_known``
false) the count may only err high, by at most ``over_by_at_most`` tokens,
for the reason given in ``why_not_exact`` (also in docs/proxy.md,
"Input counting"). Expected figures come from the sources, never from aigw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aigw.proxy.counting import Encoders, count_chat_input

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "published_cases.json").read_text(encoding="utf-8")
)


def _case_id(case: dict[str, Any]) -> str:
    source = case["source"]
    return f"{source.split()[0].rsplit('/', 1)[-1][:40]}-{CASES.index(case)}"


def test_the_table_is_large_and_mostly_exact() -> None:
    assert len(CASES) >= 60
    assert sum(case["snapshot_known"] for case in CASES) >= 60
    for case in CASES:
        assert case["source"] and isinstance(case["prompt_tokens"], int)
        assert case["snapshot_known"] or case["why_not_exact"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_published_prompt_tokens(encoders: Encoders, case: dict[str, Any]) -> None:
    body = {**case["request"], "model": case["count_as"]}
    counted = count_chat_input(body, encoders.for_model(case["count_as"]))
    if case["snapshot_known"]:
        assert counted == case["prompt_tokens"], case["source"]
    else:
        assert 0 <= counted - case["prompt_tokens"] <= case["over_by_at_most"], case["source"]
