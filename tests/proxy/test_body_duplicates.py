"""Duplicate member names are found without a second parse when none can be
there (aigw.proxy.body), and still found wherever they are: the answers are
checked against the standard library's parser, which reports every name."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from aigw.proxy.body import ambiguous_names

# Names and texts chosen to trip a count of name endings: backslash runs before a
# quote, escaped quotes followed by a colon, JSON-looking text, whitespace.
_NAMES = ["a", "b", "model", 'q"', "q\\", "q\\\\", '\\"', ":", '":', 'x\\":']
_TEXTS = ['{"k": 1}', 'say \\": here', "end\\", '":', "\\", '\\\\":', "plain", ""]


def _has_duplicate(raw: bytes) -> bool:
    found = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        names = [name for name, _ in items]
        found = found or len(set(names)) != len(names)
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    return found


def _value(rng: random.Random, depth: int) -> str:
    kind = rng.randrange(5 if depth < 3 else 2)
    if kind == 0:
        return json.dumps(rng.choice(_TEXTS))
    if kind == 1:
        return str(rng.randrange(100))
    if kind == 2:
        return "[" + ",".join(_value(rng, depth + 1) for _ in range(rng.randrange(3))) + "]"
    return _object(rng, depth + 1)


def _object(rng: random.Random, depth: int, members: list[str] | None = None) -> str:
    members = members or []
    for _ in range(rng.randrange(4)):
        space = rng.choice(["", " ", "\n\t"])
        members.append(f"{json.dumps(rng.choice(_NAMES))}{space}:{space}{_value(rng, depth)}")
    return "{" + ",".join(members) + "}"


@pytest.mark.parametrize("seed", range(20))
def test_a_duplicate_is_reported_exactly_when_one_is_there(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        raw = _object(rng, 0, ['"model":"m"']).encode()
        body = orjson.loads(raw)
        found = ambiguous_names(raw, body, _SPEC)
        assert (found is not None) == _has_duplicate(raw), raw


def test_a_repeated_name_is_named() -> None:
    raw = b'{"model":"m","messages":[{"role":"user","content":"x\\\\","x":1,"x" :2}]}'
    assert ambiguous_names(raw, orjson.loads(raw), _SPEC) == "x"


def test_text_shaped_like_names_hides_no_duplicate() -> None:
    # The content's text ends names (escaped quotes before colons): no duplicate
    # is missed because of them, and none is invented.
    content = json.dumps('{"a": 1, "a": 2} \\": \\\\')
    clean = f'{{"model":"m","messages":[{{"role":"user","content":{content}}}]}}'.encode()
    assert ambiguous_names(clean, orjson.loads(clean), _SPEC) is None
    repeated = clean[:-1] + b',"model":"m"}'
    assert ambiguous_names(repeated, orjson.loads(repeated), _SPEC) == "model"


# Only duplicates are under test: an empty spec reads no name, so no case variant.
from aigw.proxy.body import names as _names  # noqa: E402

_SPEC = _names(set())


def test_a_duplicate_is_refused_whatever_validation_adds_to_the_body() -> None:
    from aigw.proxy.body import parse_unambiguous
    from aigw.proxy.errors import AmbiguousField

    raw = b'{"model":"m","x":1,"x":2}'
    with pytest.raises(AmbiguousField):
        parse_unambiguous(raw, _SPEC, lambda body: body.setdefault("filled_in", True))
