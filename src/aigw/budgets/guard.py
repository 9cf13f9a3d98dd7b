"""What the proxy asks about budgets and rates: admit, extend, settle.

:meth:`Limiter.admit` runs after a request's input was counted, only for keys
with a budget or a rate (others never reach it). Under ``reject``:

- rates first: one more request, or its input tokens, over ``rpm``/``tpm`` in
  the current minute → :class:`RateLimited` (``Retry-After``: the minute's end);
- then the budget: reserve the input plus an output slice (the request's max
  output, else ``output_slice``), capped by what is left; when not even the
  input and one output token fit → :class:`BudgetExceeded` (``Retry-After``:
  the period's end; none for a ``total`` budget).

The :class:`Hold` it returns goes with the request. As output passes the
reservation, :meth:`Hold.prepare` (called by the relay before it counts each chunk, with
the UTF-8 size of the chunk's text, which bounds its tokens) extends it by
another slice while the budget has room, and bounds the output to what is
reserved, so the relay cuts exactly where no room is left. :meth:`Hold.settle`
charges what was counted (input plus relayed output; nothing when the request
never reached the upstream) and returns the rest.

Under ``use_anyway`` nothing is reserved or refused: the request is counted,
forwarded, and flagged (``x-aigw-limit-exceeded: budget`` / ``rate``, the usage
record, ``/metrics``) when over.

A store that does not answer fails closed for ``reject`` keys (503
``budget_store_unavailable``; a stream that cannot extend is cut at what it
holds) and open for ``use_anyway`` keys (forwarded; settled once it is back).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from aigw.budgets.backend import BudgetBackend
from aigw.budgets.errors import BudgetExceeded, BudgetStoreUnavailable, RateLimited
from aigw.budgets.periods import PeriodClock, rate_window
from aigw.budgets.rules import KeyBudget
from aigw.budgets.store import Settlement, StoreUnavailable
from aigw.usage.entry import UsageEntry

log = logging.getLogger("aigw.budgets")

# Outcomes after which the upstream never saw the request: nothing is charged.
_NOT_FORWARDED = frozenset({"rejected"})


class OutputCap(Protocol):
    """What :meth:`Hold.prepare` needs of the relay's output accounting."""

    @property
    def tokens(self) -> int: ...

    def cap_total(self, cap: int) -> None: ...


def _utf8_len(text: object) -> int:
    if not isinstance(text, str):
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def text_bytes(chunk: Any, field: str) -> int:
    """UTF-8 bytes of the generated text in *chunk*'s choices (``field``: ``delta``
    for stream chunks, ``message`` for whole answers): a bound of its tokens, since
    every token is at least one byte."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list):
        return 0
    total = 0
    for choice in choices:
        message = choice.get(field) if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        total += _utf8_len(message.get("content")) + _utf8_len(message.get("refusal"))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += _utf8_len(function.get("arguments"))
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            total += _utf8_len(legacy.get("arguments"))
    return total


def _retry_after(now: datetime, end: datetime | None) -> dict[str, str]:
    if end is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil((end - now).total_seconds())))}


class Hold:
    """One request's standing with its key's budget and rates."""

    __slots__ = (
        "_known",
        "_limiter",
        "_pending",
        "budget",
        "budget_over",
        "free_at_admission",
        "input_tokens",
        "key_id",
        "lease",
        "output_reserved",
        "period_start",
        "rate_over",
        "settled",
        "window_start",
    )

    def __init__(self, limiter: Limiter, key_id: uuid.UUID, budget: KeyBudget) -> None:
        self._limiter = limiter
        self.key_id = key_id
        self.budget = budget
        self.lease: uuid.UUID | None = None
        self.period_start: datetime | None = None
        self.window_start: datetime | None = None
        self.input_tokens = 0
        self.output_reserved: int | None = None  # output tokens covered (reject + budget)
        self.free_at_admission: int | None = None
        self.budget_over = False
        self.rate_over = False
        self.settled = False
        self._known = 0
        self._pending = 0

    @property
    def exceeded(self) -> str | None:
        """The ``x-aigw-limit-exceeded`` parts this request earned at admission."""
        flags = (("budget", self.budget_over), ("rate", self.rate_over))
        parts = [name for name, over in flags if over]
        return ",".join(parts) or None

    @property
    def caps_output(self) -> bool:
        return self.output_reserved is not None

    async def prepare(self, incoming: int, output: OutputCap) -> None:
        """Make room for up to *incoming* more output tokens before they are counted:
        extend the reservation when needed and possible, and bound *output* to it."""
        reserved = self.output_reserved
        if reserved is None:
            return
        self._pending += incoming
        if self._known + self._pending <= reserved:
            return  # cheap upper bound: no exact count needed
        used = output.tokens
        self._known, self._pending = used, incoming
        need = used + incoming - reserved
        if need <= 0:
            return
        want = max(self._limiter.output_slice, need)
        assert self.lease is not None and self.period_start is not None
        try:
            granted, _ = await self._limiter.store.reserve(
                self.key_id, self.period_start, self.budget.tokens, self.lease, want, 1
            )
        except StoreUnavailable as exc:
            self._limiter.store_failed(exc)
            granted = 0  # fail closed: the output ends at what is reserved
        if granted:
            self.output_reserved = reserved + granted
            output.cap_total(self.output_reserved)

    def settle(self, outcome: str, input_tokens: int, output_tokens: int) -> bool:
        """Charge the request (once) and release its reservation; returns whether a
        ``use_anyway`` request went past the budget with its output."""
        if self.settled:
            return False
        self.settled = True
        forwarded = outcome not in _NOT_FORWARDED
        charge = input_tokens + output_tokens if forwarded else 0
        over = (
            self.free_at_admission is not None
            and self.output_reserved is None
            and charge > self.free_at_admission
        )
        if self.period_start is None and not (self.window_start and output_tokens):
            return over
        self._limiter.store.settle(
            Settlement(
                api_key_id=self.key_id,
                lease=self.lease,
                period_start=self.period_start,
                charge=charge,
                window_start=self.window_start if self.budget.tpm else None,
                window_tokens=output_tokens if forwarded else 0,
            )
        )
        return over


class Limiter:
    """Budget and rate decisions for one process (see the module docstring)."""

    def __init__(
        self, store: BudgetBackend, clock: PeriodClock, *, output_slice: int = 256
    ) -> None:
        self.store = store
        self.clock = clock
        self.output_slice = output_slice
        self._last_warning = 0.0

    def store_failed(self, cause: StoreUnavailable) -> None:
        """Warn (at most every 10 s) that the store failed a decision, and why
        (the error's type: a timeout, a refused or dropped connection, a script
        error), as the settlement and lease-renewal warnings do."""
        now = time.monotonic()
        if now - self._last_warning > 10.0:
            self._last_warning = now
            log.warning(
                "budget store unavailable (%s): reject keys fail closed, use_anyway open", cause
            )

    async def admit(
        self,
        key_id: uuid.UUID,
        budget: KeyBudget,
        entry: UsageEntry,
        *,
        enforce: bool,
        output_hint: int | None,
    ) -> Hold:
        """Check and reserve for one request counted at ``entry.input_tokens`` (see
        the module docstring), flagging *entry* when over; raises
        :class:`RateLimited`, :class:`BudgetExceeded` or
        :class:`BudgetStoreUnavailable` for a ``reject`` key."""
        hold = Hold(self, key_id, budget)
        hold.input_tokens = entry.input_tokens
        try:
            await self._admit(hold, enforce, output_hint)
        finally:
            entry.budget_exceeded = hold.budget_over
            entry.rate_exceeded = hold.rate_over
        return hold

    async def _admit(self, hold: Hold, enforce: bool, output_hint: int | None) -> None:
        key_id, budget, input_tokens = hold.key_id, hold.budget, hold.input_tokens
        now = datetime.now(UTC)
        try:
            if budget.rpm or budget.tpm:
                window, window_end = rate_window(now)
                hold.window_start = window
                allowed = await self.store.take_rate(
                    key_id, window, budget.rpm, budget.tpm, input_tokens, enforce=enforce
                )
                if not allowed:
                    hold.rate_over = True
                    if enforce:
                        raise RateLimited(
                            f"This key allows {budget.rpm or 'unlimited'} requests and "
                            f"{budget.tpm or 'unlimited'} tokens per minute",
                            headers=_retry_after(now, window_end),
                        )
            if budget.tokens:
                period, period_end = self.clock.bounds(budget.period, now)
                hold.period_start = period
                if enforce:
                    lease = uuid.uuid4()
                    want = input_tokens + (output_hint or self.output_slice)
                    granted, free = await self.store.reserve(
                        key_id, period, budget.tokens, lease, want, input_tokens + 1
                    )
                    if not granted:
                        hold.budget_over = True
                        raise BudgetExceeded(
                            f"The input is {input_tokens} tokens and {free} of this key's "
                            f"{budget.tokens} {budget.period} budget tokens are left",
                            headers=_retry_after(now, period_end),
                        )
                    hold.lease = lease
                    hold.output_reserved = granted - input_tokens
                else:
                    free = await self.store.free(key_id, period, budget.tokens)
                    hold.free_at_admission = free
                    hold.budget_over = input_tokens > free
        except StoreUnavailable as exc:
            self.store_failed(exc)
            if enforce:
                raise BudgetStoreUnavailable(headers={"Retry-After": "1"}) from None
            # use_anyway: forwarded unchecked; still charged once the store is back.
