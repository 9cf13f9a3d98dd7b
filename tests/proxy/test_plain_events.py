"""Below the byte bound no cut is possible, so plain content events are relayed
without being accounted one by one (issue 15); the recorded count and the cut
stay exact. The counts expected are tiktoken's over the text the client got."""

from __future__ import annotations

from typing import Any

import pytest

from aigw.proxy.accounting import Output
from tests.conftest import SharedFakeUpstream
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk, usage_rows

# ~600 tokens of prose, one token per event: the stream is mostly plain events.
TEXT = "The gateway relays every event as it arrives, unless it must change it. " * 40


@pytest.fixture(scope="module")
def fake(shared_fake_upstream: SharedFakeUpstream) -> FakeUpstream:
    return shared_fake_upstream.fresh()


@pytest.fixture
async def app(gateway: Any, fake: FakeUpstream, db: str) -> Any:
    app = await gateway()
    await create_provider(app.admin, fake.url)
    return app


@pytest.fixture
def accounted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many deltas the relay accounted one by one (Output.take_message calls)."""
    calls: list[int] = []
    take_message = Output.take_message

    def counted(self: Output, state: Any, message: dict[str, Any]) -> bool:
        calls.append(1)
        return take_message(self, state, message)

    monkeypatch.setattr(Output, "take_message", counted)
    return calls


async def _stream(app: Any, token: str) -> tuple[str, str | None, int]:
    stream = await sdk(app, token).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "go"}], stream=True
    )
    parts: list[str] = []
    finish = None
    events = 0
    async for chunk in stream:
        if chunk.choices:
            events += 1
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(parts), finish, events


async def test_far_from_the_limit_plain_events_are_not_accounted_one_by_one(
    app: Any, fake: FakeUpstream, db: str, accounted: list[int]
) -> None:
    encoding = app.state.encoders.get("o200k_base")
    total = len(encoding.encode_ordinary(TEXT))
    key = await ready_key(app, output_limit=100_000)
    fake.set_scenario(content=TEXT, ignore_max_tokens=True, chunk_tokens=1)
    relayed, finish, events = await _stream(app, key["token"])
    assert relayed == TEXT and finish == "stop"
    assert events > total  # one event per token, plus the role and finish events
    # The role chunk, the first content chunk (the model of the plain ones) and the finish.
    assert len(accounted) <= 4, len(accounted)
    rows = await usage_rows(db)
    assert rows[0]["output_tokens"] == total and rows[0]["outcome"] == "completed"


@pytest.mark.parametrize("limit", [40, 150, 500])
async def test_near_the_limit_the_cut_and_the_record_stay_exact(
    app: Any, fake: FakeUpstream, db: str, accounted: list[int], limit: int
) -> None:
    encoding = app.state.encoders.get("o200k_base")
    key = await ready_key(app, output_limit=limit)
    fake.set_scenario(content=TEXT, ignore_max_tokens=True, chunk_tokens=1)
    relayed, finish, events = await _stream(app, key["token"])
    assert TEXT.startswith(relayed) and finish == "length"
    assert len(encoding.encode_ordinary(relayed)) == limit
    # Below the byte bound the events went by without being accounted.
    assert len(accounted) < events - 1, (len(accounted), events)
    rows = await usage_rows(db)
    assert rows[0]["output_tokens"] == limit and rows[0]["outcome"] == "truncated"
