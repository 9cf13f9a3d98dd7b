"""Small helpers for the counting tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import tiktoken


def n_tokens(encoding: tiktoken.Encoding, text: str) -> int:
    """Tokens of *text* as tiktoken encodes it: the unit every hand count uses."""
    return len(encoding.encode_ordinary(text))


def user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


async def ticks_during(work: Callable[[], Awaitable[object]]) -> int:
    """How many times a busy ticker coroutine got the loop while *work* ran.

    A count, not a clock reading: on a shared 2-core machine the scheduler can
    pause any thread for tens of milliseconds, but a loop blocked by inline
    work cannot tick at all, while a free one ticks thousands of times.
    """
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await work()
    during = ticks - before
    done.set()
    await task
    return during
