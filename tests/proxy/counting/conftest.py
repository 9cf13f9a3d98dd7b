"""The bundled encodings, loaded once per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tiktoken

from aigw.proxy.counting import Encoders


@pytest.fixture(scope="module")
def encoders() -> Iterator[Encoders]:
    loaded = Encoders.load()
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def cl100k(encoders: Encoders) -> tiktoken.Encoding:
    return encoders.get("cl100k_base")


@pytest.fixture(scope="module")
def o200k(encoders: Encoders) -> tiktoken.Encoding:
    return encoders.get("o200k_base")
