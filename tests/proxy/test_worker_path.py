"""The worker-process path of admission gives the same answers as the in-process one.

A body larger than ``AIGW_COUNT_PROCESS_BYTES`` is parsed, checked, converted,
counted and (when the gateway edits or translates it) re-encoded in a counting
worker process (:mod:`aigw.proxy.counting.workers`) instead of the gateway's
own. The tests below are tests of ``test_responses.py`` and ``test_messages.py``
(both provider kinds: the client's bytes to ``anthropic``, the translation to
``openai``), run again unchanged with that threshold at 0, so that every body
takes the worker path: same counts, same refusals (model, shape, duplicate
names, ``input_not_countable``, limits), same bodies upstream. Each gateway's
pool has warm workers before the test (a cold worker imports the gateway's
modules and loads an encoding: seconds on a busy machine, longer than the SDK
clients' timeouts some tests set; the module's gateways share them), and each
test must have sent bodies to them.
The other provider kinds' translations: ``test_worker_path_kinds.py``.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson
import pytest

from aigw.proxy.counting.offload import _lower_priority
from aigw.proxy.counting.workers import (
    inspect_chat_body,
    inspect_messages_body,
    inspect_responses_body,
)
from tests.proxy.conftest import WORKER_PATH_GROUP
from tests.proxy.test_messages import (  # noqa: F401 (fixtures and tests run again here)
    fake_anthropic,
    target,
    test_auth_and_errors,
    test_create_and_stream,
    test_input_limit,
    test_policy_table_output,
    test_tools,
)
from tests.proxy.test_responses import (  # noqa: F401 (fixtures and tests run again here)
    app,
    fake,
    o200k,
    test_counts_instructions_tools_and_history_like_chat,
    test_create_whole_stream_and_stream_helper,
    test_input_too_deeply_nested_to_count_fails_closed,
    test_model_is_filled_in_and_other_models_refused,
    test_reject_input_limit,
    test_reject_without_max_asks_upstream_for_the_limit,
    test_stored_context_under_reject_with_an_input_limit_is_refused,
    test_use_anyway_requested_output_over_limit,
)

# The three worker-path modules share one warm pool (``_workers``): one xdist worker
# runs them all.
pytestmark = pytest.mark.xdist_group(WORKER_PATH_GROUP)

_HI = orjson.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
# One call of each endpoint's worker function: imports its modules and the encoding.
_WARM_UP: tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...] = (
    (inspect_chat_body, (_HI, "o200k_base", 100)),
    (inspect_responses_body, (orjson.dumps({"input": "hi"}), "m", "o200k_base", 100)),
    (
        functools.partial(
            inspect_messages_body, kind=None, require_max_tokens=True, translate=False
        ),
        (_HI, "m", "o200k_base", 100),
    ),
)


def _warm_executor(held: list[ProcessPoolExecutor], processes: int) -> ProcessPoolExecutor:
    for executor in held:
        if executor._max_workers == processes and not executor._broken:
            return executor
    executor = ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_lower_priority
    )
    for work, args in _WARM_UP:
        executor.submit(work, *args).result()
    held.append(executor)
    return executor


@pytest.fixture
async def gateway(
    gateway: Callable[..., Awaitable[Any]], _workers: list[ProcessPoolExecutor]
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """The proxy tests' gateway factory, with every body counted in a worker (the
    warm ones of tests/proxy/conftest.py's ``_workers``)."""
    started: list[Any] = []

    async def start(**overrides: Any) -> Any:
        gateway_app = await gateway(**{"count_process_bytes": 0, **overrides})
        pool = gateway_app.state.proxy.admission.pool
        assert pool.processes > 0 and pool.takes(b"{}") and not pool.started
        executor = await asyncio.to_thread(_warm_executor, _workers, pool.processes)
        pool._executor = executor
        # The record's counts (bodies admitted on their size) go to the second pool
        # after the answer; warm too, or a test waiting seconds for its usage rows
        # waits for a cold worker's imports instead.
        record_pool = gateway_app.state.proxy.admission.record_pool
        record_pool._executor = executor
        started.append((pool, executor, pool.submitted, record_pool))
        return gateway_app

    yield start
    for pool, executor, warm, record_pool in started:
        assert pool.submitted > warm, "no request body went to a worker"
        for each in (pool, record_pool):
            if each._executor is executor:
                each._executor = None  # the gateway's shutdown leaves the module's workers be
