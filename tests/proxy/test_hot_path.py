"""Issue 15's shortcuts on the chat path keep its rules.

* A long prompt (a large body of few JSON values) is parsed in the gateway's
  process and counted in its tokenizer threads, not sent to a counting worker
  and back; a large body of many values still goes to a worker.
* The gateway's edits that add a member the client did not send are appended
  to the client's bytes; an edit of a member the client sent (even as null)
  replaces it: the upstream never sees a name twice.
* A small body admitted on its size bound is counted at once: the answer
  carries ``x-aigw-input-tokens``.
* The quicker scans (member names quote by quote, ``may_hold_file`` without an
  alternation, the all-known-names fast path of the case-variant check) give
  the answers of the ones they replace.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import orjson
import pytest

from aigw.proxy import body as body_module
from aigw.proxy.admission import with_members
from aigw.proxy.body import CHAT_NAMES, Names, ambiguous_names, names
from aigw.proxy.counting.bounds import NO_BOUND, holds_quoted, input_upper_bound
from aigw.proxy.counting.images import max_image_tokens
from aigw.proxy.counting.offload import PLAIN_BODY_BYTES, few_values, may_hold_file
from tests.proxy.conftest import MODEL, create_provider, ready_key, usage_rows

# Counted by hand in o200k_base: "The", " gateway", " counts", " this", " prompt",
# "." are 6 tokens a sentence (" The" after the first), and the text's last
# space 1 more; a message adds 3 and its role ("user") 1, the reply's priming 3.
_SENTENCE = "The gateway counts this prompt. "
PROSE = _SENTENCE * 12_000  # ~384 KB: past the 256 KiB worker threshold
PROSE_TOKENS = 6 * 12_000 + 1 + 3 + 1 + 3


def _names_by_regex(raw: bytes) -> int:
    """The member count as the regexes of aigw.proxy.body have always found it."""
    found = len(re.findall(rb'"[ \t\n\r]*:', raw))
    for match in re.finditer(rb'\\"[ \t\n\r]*:', raw):
        end = start = match.start()
        while start > 0 and raw[start - 1] == 0x5C:
            start -= 1
        found -= (end + 1 - start) % 2
    return found


def test_names_counted_quote_by_quote_agree_with_the_regexes() -> None:
    rng = random.Random(15)
    alphabet = [b'"', b"\\", b":", b" ", b"\n", b"a", b"{", b"}", b",", b"1"]
    compared = 0
    for _ in range(50_000):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        counted = body_module._names_by_quotes(raw)
        if counted is not None:
            assert counted == _names_by_regex(raw), raw
            compared += 1
    assert compared > 40_000
    # Past its bounds it gives up (the regexes count).
    assert body_module._names_by_quotes(b'"a":1,' * 5000) is None
    assert body_module._names_by_quotes(b"\\" * 100 + b'":') is None


def test_a_large_body_with_a_duplicate_is_still_refused() -> None:
    raw = orjson.dumps({"messages": [{"role": "user", "content": PROSE}], "model": MODEL})
    duplicate = raw[:-1] + b',"model":"other"}'
    assert ambiguous_names(raw, orjson.loads(raw)) is None
    assert ambiguous_names(duplicate, orjson.loads(duplicate)) == "model"
    variant = raw[:-1] + b',"MODEL":"other"}'
    assert ambiguous_names(variant, orjson.loads(variant)) == "MODEL"


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ({"messages": [{"role": "user", "content": "x", "Role": "system"}]}, "messages.0.Role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "TEXT": "x"}]}]},
            "messages.0.content.0.TEXT",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "Text": "x"}]}]},
            "messages.0.content.0.Text",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "Stream": True}, "Stream"),
        ({"messages": [{"role": "user", "content": "x"}], "vendor_extra": 1}, None),
    ],
)
def test_case_variants_are_found_where_they_are(raw: dict[str, Any], path: str | None) -> None:
    encoded = orjson.dumps(raw)
    found = ambiguous_names(encoded, orjson.loads(encoded), CHAT_NAMES)
    assert found == path


def test_known_names_must_be_folded() -> None:
    names({"model"})
    with pytest.raises(ValueError, match="folded"):
        Names(frozenset({"Model"}))


def test_may_hold_file_agrees_with_the_single_regex() -> None:
    old = re.compile(rb'"file_data"|"document"|\\u00[4-7]')
    samples = [
        b'{"file_data":"x"}',
        b'{"type":"document"}',
        b'{"a":"\\u0041"}',
        b'{"a":"\\u0030 \\u00e9"}',
        b'{"a":"document file_data"}',
        b'{"a":"x"}',
        PROSE.encode(),
    ]
    for raw in samples:
        assert may_hold_file(raw) == (old.search(raw) is not None), raw


def test_few_values() -> None:
    prose = orjson.dumps({"messages": [{"role": "user", "content": PROSE}]})
    assert few_values(prose)
    numbers = b'{"messages":[{"role":"user","content":"x"}],"x":[' + b"1," * 20_000 + b"1]}"
    assert not few_values(numbers)
    tiny = orjson.dumps({"messages": [{"role": "user", "content": "x"}] * 5000})
    assert not few_values(tiny)
    assert not few_values(b'{"a":"' + b"x" * PLAIN_BODY_BYTES + b'"}')


def test_members_are_appended_to_the_clients_bytes() -> None:
    raw = b'{ "messages" : [ {"role":"user","content":"hi"} ] }\n  '
    edited = with_members(raw, {"model": MODEL, "stream_options": {"include_usage": True}})
    assert edited.startswith(raw.rstrip()[:-1])
    assert json.loads(edited) == {
        "messages": [{"role": "user", "content": "hi"}],
        "model": MODEL,
        "stream_options": {"include_usage": True},
    }
    with pytest.raises(ValueError):
        with_members(b"[1]", {"model": MODEL})


async def test_a_long_prompt_stays_in_the_gateway_and_edits_never_repeat_a_name(
    gateway: Any, upstream: Any, db: str
) -> None:
    app = await gateway()
    await create_provider(app.admin, upstream.url)
    pool = app.state.proxy.admission.pool
    record_pool = app.state.proxy.admission.record_pool
    # A reject key with an output limit: the gateway adds max_tokens (and the
    # model when omitted); the input limit is under the body's bytes, so only
    # the exact count admits it.
    exact = PROSE_TOKENS
    key = await ready_key(app, input_limit=exact, output_limit=50)
    headers = {"Authorization": f"Bearer {key['token']}"}
    message = {"role": "user", "content": PROSE}
    long_body = orjson.dumps({"messages": [message]})
    response = await app.admin.post("/v1/chat/completions", content=long_body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-input-tokens"] == str(exact)
    sent = upstream.requests[-1]
    assert sent == {"messages": [message], "model": MODEL, "max_tokens": 50}
    assert pool.submitted == 0 and record_pool.submitted == 0  # no worker was asked
    # One token over: refused by the exact count.
    over = await ready_key(app, input_limit=exact - 1, output_limit=50)
    response = await app.admin.post(
        "/v1/chat/completions",
        content=long_body,
        headers={"Authorization": f"Bearer {over['token']}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "input_token_limit_exceeded"
    # Members the client sent as null are replaced, not added a second time.
    raw = b'{"model":null,"max_tokens":null,"messages":[{"role":"user","content":"hi"}]}'
    response = await app.admin.post("/v1/chat/completions", content=raw, headers=headers)
    assert response.status_code == 200, response.text
    assert upstream.raw[-1].count(b'"model"') == 1
    assert upstream.raw[-1].count(b'"max_tokens"') == 1
    assert upstream.requests[-1]["model"] == MODEL
    # A large body of many values still goes to a worker (a key without an input
    # limit: it is 117k tokens).
    unlimited = await ready_key(app, output_limit=50)
    many = orjson.dumps({"messages": [{"role": "user", "content": "x " * 8}] * 9000})
    response = await app.admin.post(
        "/v1/chat/completions",
        content=many,
        headers={"Authorization": f"Bearer {unlimited['token']}"},
    )
    assert response.status_code == 200, response.text
    assert pool.submitted >= 1
    rows = await usage_rows(db, expected=4)
    assert rows[0]["input_tokens"] == exact


async def test_a_small_body_admitted_on_its_bound_is_counted_at_once(
    gateway: Any, upstream: Any
) -> None:
    app = await gateway()
    await create_provider(app.admin, upstream.url)
    key = await ready_key(app, input_limit=100_000, output_limit=50)
    response = await app.admin.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": _SENTENCE}]},
        headers={"Authorization": f"Bearer {key['token']}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-input-tokens"] == str(6 + 1 + 3 + 1 + 3)


def test_a_long_prompt_is_searched_at_its_quotes() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    text = {"type": "text", "text": PROSE + " image_url, not an image"}
    raw = orjson.dumps({"messages": [{"role": "user", "content": [text, image, image, image]}]})
    per_image = max_image_tokens(MODEL)
    # Three parts of type "image_url", each spelling it twice with its quotes (its
    # type and its key); the word in the text is no image (counted before: 7).
    assert input_upper_bound(raw, MODEL) == 3 * len(raw) + 16 + 6 * per_image
    for words in ((b'"file"',), (b'"file_data"', b'"document"'), (b'"image_url"',)):
        assert holds_quoted(raw, words) == any(word in raw for word in words)
    as_file = raw.replace(b'"text":', b'"file":', 1)
    assert holds_quoted(as_file, (b'"file"',)) and input_upper_bound(as_file, MODEL) == NO_BOUND
    # An escaped letter (not one of "file"'s: no bound at all) may spell anything:
    # every 20 bytes could be an image.
    escaped = raw.replace(b"not an image", b"not an ima\\u0067e")
    assert (
        input_upper_bound(escaped, MODEL) == 3 * len(escaped) + 16 + len(escaped) // 20 * per_image
    )
