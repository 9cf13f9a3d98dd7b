"""What used to be parsed and counted in the gateway's own threads goes to the
counting workers too (issue 10):

* ``/v1/embeddings`` bodies past ``AIGW_COUNT_PROCESS_BYTES``, and the bodies
  of keys whose provider counts input itself (``input_counting: upstream``;
  the body its counter is asked with is made in the worker as well): tests of
  ``test_surface.py`` and ``test_upstream_count.py`` run again with that
  threshold at 0 (the gateway factory of ``test_worker_path.py`` checks that
  bodies went to a worker);
* a body of any size that may hold a file (a PDF inflates to up to 16 MiB):
  a chat ``file`` part, a Responses ``input_file``, a Messages ``document``,
  however its member names are spelled in JSON;
* a worker stops inflating a PDF once its bound passes a ``reject`` key's
  limit, as the gateway's own path does.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import orjson
import pytest

from aigw.proxy.counting.files import INFLATE_STATS
from aigw.proxy.counting.offload import CountingPool
from aigw.proxy.counting.workers import inspect_chat_body
from tests.proxy.conftest import WORKER_PATH_GROUP
from tests.proxy.test_surface import (  # noqa: F401 (fixtures and tests run again here)
    app,
    fake,
    o200k,
    test_embeddings_create_whole_list_and_token_arrays,
    test_embeddings_input_limit_reject,
    test_embeddings_input_limit_use_anyway,
)
from tests.proxy.test_upstream_count import (  # noqa: F401 (tests run again here)
    gemini,
    test_anthropic_counter_through_both_doors,
    test_the_providers_count_decides,
)
from tests.proxy.test_worker_path import gateway  # noqa: F401 (every body to a worker, one warm pool)
from tests.reliability.test_file_inputs import HIDDEN, make_pdf

pytestmark = pytest.mark.xdist_group(WORKER_PATH_GROUP)

_DATA = "data:application/pdf;base64," + base64.b64encode(make_pdf(["x"])).decode()
_FILE = {"type": "file", "file": {"filename": "a.pdf", "file_data": _DATA}}
_INPUT_FILE = {"type": "input_file", "filename": "a.pdf", "file_data": _DATA}
_DOCUMENT = {
    "type": "document",
    "source": {"type": "base64", "media_type": "application/pdf", "data": _DATA[28:]},
}


def _escaped(raw: str, word: str) -> str:
    """*raw* with each *word* spelled as JSON escapes of its letters."""
    return raw.replace(word, "".join(f"\\u{ord(c):04x}" for c in word))


def _chat(part: dict[str, Any]) -> str:
    return json.dumps({"messages": [{"role": "user", "content": [part]}]})


HOLDING_FILES = [
    _chat(_FILE),
    json.dumps({"input": [{"role": "user", "content": [_INPUT_FILE]}]}),
    json.dumps({"max_tokens": 5, "messages": [{"role": "user", "content": [_DOCUMENT]}]}),
    _escaped(_chat(_FILE), "file_data"),
    _escaped(_chat(_FILE), "_"),
    _escaped(json.dumps({"messages": [{"role": "user", "content": [_DOCUMENT]}]}), "document"),
]
PLAIN = [
    _chat({"type": "text", "text": 'Summarize the "document" and its file_data.'}),
    # What clients escape: control characters, quotes, non-ASCII, at most <>&.
    json.dumps({"messages": [{"role": "user", "content": "café <b>&\n\t é 文"}]}),
    json.dumps({"input": "a \u00e9\u00ff\u0100 \u2028"}, ensure_ascii=True),
]


@pytest.mark.parametrize("raw", HOLDING_FILES)
def test_a_small_body_that_may_hold_a_file_goes_to_a_worker(raw: str) -> None:
    # The bodies as the gateway's JSON reader sees them hold a file's data.
    assert "file_data" in str(json.loads(raw)) or "'document'" in str(json.loads(raw))
    pool = CountingPool(processes=1, min_bytes=1 << 20, queue=1)
    assert pool.takes(raw.encode())


@pytest.mark.parametrize("raw", PLAIN)
def test_a_small_body_without_a_file_stays_in_the_gateway(raw: str) -> None:
    pool = CountingPool(processes=1, min_bytes=1 << 20, queue=1)
    assert not pool.takes(raw.encode())
    assert pool.takes(raw.encode() + b" " * (1 << 20))  # past the size: a worker


def test_a_worker_stops_inflating_once_the_bound_passes_a_reject_limit() -> None:
    # A page of ~200 KB of text, then 15 MiB of zeros (under the 16 MiB cap).
    compressor = zlib.compressobj(9)
    zeros = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(15)) + compressor.flush()
    pdf = make_pdf([HIDDEN]).replace(
        b"trailer",
        b"99 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(zeros)
        + zeros
        + b"\nendstream\nendobj\ntrailer",
    )
    data = "data:application/pdf;base64," + base64.b64encode(pdf).decode()
    part = {"type": "file", "file": {"filename": "a.pdf", "file_data": data}}
    raw = orjson.dumps({"messages": [{"role": "user", "content": [part]}]})
    limit = 100_000

    def inflated(stop_above: int | None) -> tuple[int, Any]:
        before = INFLATE_STATS.out
        # What a worker runs (in this process here, so its counter can be read).
        inspected = inspect_chat_body(raw, "o200k_base", 2_000_000, stop_above)
        return INFLATE_STATS.out - before, inspected.count

    whole, whole_count = inflated(None)
    stopped, stopped_count = inflated(limit)
    assert whole >= 15 << 20
    assert 0 < stopped <= limit
    assert whole_count.tokens > stopped_count.tokens > limit
