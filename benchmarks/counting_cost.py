"""Worker CPU per MB of the adversarial bodies (issue 10, item 1), per endpoint.

Runs each endpoint's worker function (:mod:`aigw.proxy.counting.workers`) on the
bodies of ``tests/reliability/test_counting_attacks.py`` in this process and
prints CPU milliseconds (``time.process_time``, best of 3) per MB of body, with
the load average. Usage: ``python -m benchmarks.counting_cost``.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from tests.reliability.test_counting_attacks import (
    MODEL,
    _slow_bodies,
    _slow_bodies_other_endpoints,
)

from aigw.proxy.counting.workers import (
    inspect_chat_body,
    inspect_messages_body,
    inspect_responses_body,
    translate_chat,
)

ENCODING = "o200k_base"
MAX_CHARS = 2_000_000


def _best_cpu(work: Callable[[], Any], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best


def _report(endpoint: str, name: str, raw: bytes, work: Callable[[], Any]) -> None:
    cpu = _best_cpu(work) * 1000
    mb = len(raw) / 1e6
    print(f"{endpoint:22} {name:22} {mb:6.2f} MB {cpu:7.0f} ms CPU {cpu / mb:6.1f} ms/MB")


def main() -> None:
    inspect_chat_body(b'{"messages":[{"role":"user","content":"x"}]}', ENCODING, 10)  # load
    print(f"load average before: {os.getloadavg()}")
    for name, raw in _slow_bodies().items():
        _report("chat", name, raw, functools.partial(inspect_chat_body, raw, ENCODING, MAX_CHARS))
    for (path, name), raw in _slow_bodies_other_endpoints().items():
        if path == "/v1/responses":
            work = functools.partial(inspect_responses_body, raw, MODEL, ENCODING, MAX_CHARS)
            _report("responses", name, raw, work)
            continue
        for kind in ("openai", "anthropic"):
            work = functools.partial(
                inspect_messages_body,
                raw,
                MODEL,
                ENCODING,
                MAX_CHARS,
                kind=kind,
                require_max_tokens=True,
                translate=True,
            )
            _report(f"messages (to {kind})", name, raw, work)
    chat = _slow_bodies()["tiny_messages"]
    for kind in ("anthropic", "gemini"):
        _report(
            f"chat (to {kind})",
            "tiny_messages",
            chat,
            functools.partial(translate_chat, chat, {}, kind),
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
