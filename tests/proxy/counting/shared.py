"""The bundled encodings, built once per test process for the counting modules
that only read them.

``tests/proxy/counting/conftest.py``'s ``encoders`` fixture builds them once per
module (``Encoders.load()``: about a second of CPU each time); a module that
imports :func:`encoders_fixture` (the fixture ``encoders``) shares this one build
instead (its ``cl100k`` and ``o200k`` fixtures follow). Never closed: its
tokenizer threads start only when a test submits work, and end with the
process.
"""

from __future__ import annotations

import functools

import pytest

from aigw.proxy.counting import Encoders


@functools.cache
def shared_encoders() -> Encoders:
    return Encoders.load()


@pytest.fixture(scope="module", name="encoders")
def encoders_fixture() -> Encoders:
    return shared_encoders()
