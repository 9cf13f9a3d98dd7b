"""End to end with a real ``aigw serve`` process: the official SDK's
``responses.create`` (whole and ``stream=True``), ``responses.stream(...)``,
``embeddings.create`` and ``models.retrieve`` against the Responses-speaking fake."""

from __future__ import annotations

import openai

from tests.fakes.billing import load_encoding
from tests.fakes.responses import start_fake_responses, words
from tests.proxy.conftest import MODEL, usage_rows
from tests.proxy.test_e2e import setup_key, wait_usable
from tests.support import Gateway

L = 12


async def test_sdk_calls_through_aigw_serve(gateway_process: Gateway, db: str) -> None:
    fake, runner = await start_fake_responses()
    try:
        gateway = gateway_process  # the worker's shared gateway: usage written every 0.05 s
        key = setup_key(gateway, fake.url, output_limit=L)
        wait_usable(gateway, key["token"])
        encoding = load_encoding("o200k_base")
        fake.script.output_tokens = 3 * L
        fake.script.honour_max = False
        expected = "".join(words(L))
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=key["token"], max_retries=0
        ) as client:
            response = await client.responses.create(model=MODEL, input="Tell me about foxes.")
            assert response.status == "incomplete"
            assert response.incomplete_details is not None
            assert response.incomplete_details.reason == "max_output_tokens"
            assert len(encoding.encode_ordinary(response.output_text)) == L
            assert response.output_text == expected

            stream = await client.responses.create(
                model=MODEL, input="Tell me about foxes.", stream=True
            )
            events = [event async for event in stream]
            assert events[-1].type == "response.incomplete"
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert len(encoding.encode_ordinary(text)) == L and text == expected

            async with client.responses.stream(model=MODEL, input="Tell me about foxes.") as helper:
                seen = [event async for event in helper]
            assert seen[-1].type == "response.incomplete"
            assert seen[-1].response.output_text == expected

            fake.script.output_tokens = 4
            async with client.responses.stream(model=MODEL, input="Hi") as helper:
                final = await helper.get_final_response()
            assert final.output_text == "".join(words(4)) and final.status == "completed"

            embedded = await client.embeddings.create(model=MODEL, input=["a fox", "a dog"])
            assert len(embedded.data) == 2 and embedded.usage.prompt_tokens == 4

            model = await client.models.retrieve(MODEL)
            assert model.id == MODEL
    finally:
        await runner.cleanup()
    rows = await usage_rows(db, expected=5)
    assert [r["endpoint"] for r in rows] == ["responses"] * 4 + ["embeddings"]
    assert [r["output_tokens"] for r in rows] == [L, L, L, 4, 0]
    assert [r["outcome"] for r in rows] == ["truncated"] * 3 + ["completed"] * 2
    assert key["token"] not in gateway.logs()
    assert "Traceback" not in gateway.logs()
