"""What the proxy keeps for the life of a process, built in the app's lifespan.

``async with proxy_runtime(app, settings):`` builds, in order, and puts on
``app.state``: the metrics (``metrics``), the usage recorder (``recorder``),
the bundled token encoders (``encoders``), the key cache with its LISTEN
connection (``keys``), the one shared upstream client (``upstream``), and the
:class:`Pipeline` the ``/v1`` endpoints use (``proxy``). On exit, in
reverse: the upstream client closes, LISTEN stops, and the recorder flushes
what is pending within ``shutdown_grace`` seconds (uvicorn has already let the
in-flight requests finish by then).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from zoneinfo import ZoneInfo

from aigw.budgets.backend import create_budget_store
from aigw.budgets.guard import Limiter
from aigw.budgets.periods import PeriodClock
from aigw.config import Settings
from aigw.db.engine import libpq_url
from aigw.metrics import Metrics
from aigw.proxy.counting import O200K_BASE, Encoders
from aigw.proxy.counting.offload import CountingPool
from aigw.proxy.counting.workers import warm_up
from aigw.proxy.keycache import KeyCache
from aigw.proxy.pipeline import Pipeline
from aigw.proxy.upstream import create_upstream_session
from aigw.runtime_memory import release_free_memory
from aigw.usage.recorder import UsageRecorder
from aigw.usage.spool import SPOOL_DIR, Spool

#: Seconds after the runtime is built before the counting pool is warmed: the
#: server is serving by then, and its start does not compete with the warm-up.
_WARM_AFTER = 1.0


def _counting_pool(settings: Settings, stack: AsyncExitStack) -> CountingPool:
    """A :class:`CountingPool` as *settings* configure it, closed with *stack*."""
    pool = CountingPool(
        processes=settings.count_processes,
        min_bytes=settings.count_process_bytes,
        queue=settings.count_queue,
        idle_seconds=settings.count_process_idle,
    )
    stack.callback(pool.close)
    return pool


@asynccontextmanager
async def proxy_runtime(app: Any, settings: Settings) -> AsyncIterator[Pipeline]:
    state = app.state
    async with AsyncExitStack() as stack:
        metrics = Metrics(max_aliases=settings.metrics_max_aliases)
        state.metrics = metrics

        recorder = UsageRecorder(
            state.engine,
            flush_interval=settings.usage_flush_interval,
            batch_size=settings.usage_batch_size,
            buffer_limit=settings.usage_buffer_limit,
            on_record=metrics.observe,
            on_rejected=metrics.usage_rejected.inc,
            spool=Spool(settings.data_dir / SPOOL_DIR, max_bytes=settings.usage_spool_max_bytes)
            if settings.usage_spool_max_bytes
            else None,
        )
        recorder.start()
        stack.push_async_callback(recorder.aclose, settings.shutdown_grace)
        state.recorder = recorder

        # Only the encodings in use are loaded (parsed off the loop; see Encoders): the key
        # cache loads the ones its keys count with before it serves them, at start
        # and on every change it is notified of.
        encoders = Encoders({})  # built once per process, shared
        stack.callback(encoders.close)
        state.encoders = encoders

        async def prepare(names: set[str]) -> None:
            loaded = len(encoders.names)
            await encoders.preload(names)
            if len(encoders.names) > loaded:
                release_free_memory()  # the parse's garbage, a few ms (~4 MB of RSS)

        assert settings.database_url is not None
        keys = KeyCache(
            state.engine,
            state.keyring,
            libpq_url(settings.database_url),
            allow_private_upstreams=settings.allow_private_upstreams,
            prepare=prepare,
        )
        await keys.start()
        stack.push_async_callback(keys.aclose)
        state.keys = keys
        # Without keys, the encoding most models count with is loaded all the same: a
        # first key is then served within a second of its creation (loaded on its
        # change notice instead, that took 6.4 s at load 8 in
        # test_a_change_through_one_process_reaches_another_within_a_second).
        if not keys.encodings_in_use():  # readiness reports the encodings loaded
            await encoders.aget(O200K_BASE)

        session = create_upstream_session(settings)
        stack.push_async_callback(session.close)
        state.upstream = session

        # Budgets and rates (PostgreSQL, or Redis with AIGW_REDIS_URL): the store
        # opens connections on first use only.
        budget_store = create_budget_store(settings)
        budget_store.start()
        stack.push_async_callback(budget_store.aclose, settings.shutdown_grace)
        state.budget_store = budget_store
        limiter = Limiter(
            budget_store,
            PeriodClock(ZoneInfo(settings.budget_timezone)),
            output_slice=settings.budget_output_slice,
        )

        pipeline = Pipeline(
            settings=settings,
            keys=keys,
            hasher=state.hasher,
            encoders=encoders,
            session=session,
            recorder=recorder,
            metrics=metrics,
            limiter=limiter,
        )
        # Large bodies (and bodies holding files) are parsed and counted in worker
        # processes (issue 10); the counts of large bodies admitted on their size
        # bound, for the record, in workers of their own (started on first use
        # too), so that a back-to-back client's next large body is parsed at once
        # rather than after them.
        pool = _counting_pool(settings, stack)
        pipeline.admission.pool = pool
        pipeline.admission.record_pool = _counting_pool(settings, stack)
        if settings.count_warm:
            # Once the app is serving: one worker imports and loads the encodings
            # in use, so that the first large body does not wait for it.
            encodings = tuple(sorted(keys.encodings_in_use())) or (O200K_BASE,)
            warming = asyncio.get_running_loop().call_later(
                _WARM_AFTER, pool.warm, warm_up, encodings
            )
            stack.callback(warming.cancel)
        state.proxy = pipeline
        yield pipeline
