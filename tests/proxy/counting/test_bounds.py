"""The size bound of a request (aigw.proxy.counting.bounds): no bound once a body
may hold a file part, however its name is spelled; images bounded by the body's
shape otherwise."""

from __future__ import annotations

import pytest

from aigw.proxy.counting.bounds import NO_BOUND, input_upper_bound
from aigw.proxy.counting.images import max_image_tokens

MODEL = "gpt-4o-mini"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages":[{"role":"user","content":[{"type":"file","file":{}}]}]}',
        b'{"messages":[{"role":"user","content":[{"type":"\\u0066ile"}]}]}',
        b'{"messages":[{"role":"user","content":[{"type":"fi\\u006Ce"}]}]}',
        b'{"messages":[{"role":"user","content":[{"type":"f\\u0069le"}]}]}',
    ],
)
def test_a_body_that_may_hold_a_file_has_no_bound(raw: bytes) -> None:
    assert input_upper_bound(raw, MODEL) == NO_BOUND


def test_images_are_bounded_by_their_name_or_else_by_the_size() -> None:
    plain = b'{"messages":[{"role":"user","content":[{"type":"image_url","image_url":"x"}]}]}'
    assert input_upper_bound(plain, MODEL) == 3 * len(plain) + 16 + 2 * max_image_tokens(MODEL)
    # With an escape, "image_url" may be spelled otherwise: one per 20 bytes.
    escaped = b'{"messages":[{"role":"user","content":"caf\\u00e9 \\u0041"}]}'
    images = len(escaped) // 20
    assert input_upper_bound(escaped, MODEL) == 3 * len(escaped) + 16 + images * max_image_tokens(
        MODEL
    )
