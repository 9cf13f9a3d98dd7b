"""A key's budget and rates as the proxy holds them (in the key cache)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyBudget:
    """``tokens`` per ``period`` (0: no budget), ``rpm``/``tpm`` per minute (0: none)."""

    tokens: int
    period: str
    rpm: int
    tpm: int

    @classmethod
    def of(cls, tokens: int, period: str, rpm: int, tpm: int) -> KeyBudget | None:
        """The rule, or None for a key with neither budget nor rates (which then
        costs nothing on the hot path)."""
        if not (tokens or rpm or tpm):
            return None
        return cls(tokens, period, rpm, tpm)
