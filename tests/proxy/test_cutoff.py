"""Cut-off exactness: with a ``reject`` key and output limit L, the text relayed
is exactly L tokens, whatever the text and however the upstream chunks it
(the fake upstream ignores max_tokens here, so only the gateway's cut applies)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SharedFakeUpstream
from tests.fakes import FakeUpstream
from tests.proxy.conftest import MODEL, create_provider, ready_key, sdk

TEXTS = {
    "prose": "The gateway relays every event as it arrives, unless it must change it. " * 8,
    "code": "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n" * 6,
    "numbers": "3.14159265358979 2.71828182845904 1234567890 0xdeadbeef 1e-9 " * 8,
    "unicode": "Größe café naïve 東京タワー 🚀🎉 مرحبا Ελληνικά " * 6,
    "whitespace": "a  b\t\tc\n\n\nd    e " * 20,
}
LIMITS = (1, 2, 3, 7, 16, 31, 64)


@pytest.fixture(scope="module")
def fake(shared_fake_upstream: SharedFakeUpstream) -> FakeUpstream:
    return shared_fake_upstream.fresh()


@pytest.fixture
async def app(gateway: Any, fake: FakeUpstream) -> Any:
    app = await gateway()
    await create_provider(app.admin, fake.url)
    return app


@pytest.mark.parametrize("name", sorted(TEXTS))
async def test_relayed_output_is_exactly_the_limit(app: Any, fake: FakeUpstream, name: str) -> None:
    encoding = app.state.encoders.get("o200k_base")
    text = TEXTS[name]
    total = len(encoding.encode_ordinary(text))
    for limit in LIMITS:
        assert total > limit
        key = await ready_key(app, output_limit=limit)
        client = sdk(app, key["token"])
        for chunk_tokens in (1, 3):
            scenario = {"content": text, "ignore_max_tokens": True, "chunk_tokens": chunk_tokens}
            fake.set_scenario(**scenario)
            completion = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "go"}]
            )
            relayed = completion.choices[0].message.content or ""
            assert len(encoding.encode_ordinary(relayed)) == limit, (name, limit, "json")
            assert text.startswith(relayed) and completion.choices[0].finish_reason == "length"

            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "go"}], stream=True
            )
            parts: list[str] = []
            finish = None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            relayed = "".join(parts)
            assert len(encoding.encode_ordinary(relayed)) == limit, (name, limit, chunk_tokens)
            assert text.startswith(relayed) and finish == "length"
