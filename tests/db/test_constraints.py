"""Constraint names map onto domain errors: the names the services use are the
names the migrated database reports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from aigw.db.constraints import flush, violated_constraint
from aigw.db.engine import async_url
from aigw.db.models import ApiKey, Provider, ProviderModel


class Taken(Exception):
    pass


@pytest.fixture
async def session(db: str) -> AsyncIterator[AsyncSession]:
    engine = create_async_engine(async_url(db))
    try:
        async with AsyncSession(engine) as session:
            yield session
            await session.rollback()
    finally:
        await engine.dispose()


def _provider(name: str) -> Provider:
    return Provider(
        id=uuid.uuid4(),
        name=name,
        kind="openai",
        base_url="http://127.0.0.1:9",
        models=[ProviderModel(name="m", encoding="o200k_base")],
    )


async def test_a_named_violation_becomes_its_error(session: AsyncSession) -> None:
    session.add(_provider("Same"))
    await session.flush()
    session.add(_provider("same"))  # unique on lower(name)
    with pytest.raises(Taken):
        await flush(session, {"uq_providers_lower_name": Taken})


async def test_another_violation_propagates_with_its_name(session: AsyncSession) -> None:
    session.add(_provider("one"))
    await session.flush()
    session.add(_provider("ONE"))
    with pytest.raises(IntegrityError) as caught:
        await flush(session, {"uq_api_keys_lower_alias": Taken})
    assert violated_constraint(caught.value) == "uq_providers_lower_name"


async def test_a_referenced_model_names_the_keys_foreign_key(session: AsyncSession) -> None:
    provider = _provider("p")
    session.add(provider)
    await session.flush()
    session.add(
        ApiKey(
            alias="k",
            provider_id=provider.id,
            model_id=provider.models[0].id,
            key_code_ciphertext="x",
            key_code_masked="x",
            token_hash=b"\0" * 32,
            token_prefix="x",
            input_limit=0,
        )
    )
    await session.flush()
    with pytest.raises(IntegrityError) as caught:
        await session.execute(
            delete(ProviderModel).where(ProviderModel.id == provider.models[0].id)
        )
    assert violated_constraint(caught.value) == "fk_api_keys_model_id_provider_models"
