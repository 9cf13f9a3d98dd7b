"""The usage-limit policy of SPEC §3, as pure decisions.

``n`` counted tokens are over a limit ``L`` when ``L > 0 and n > L`` (0 means
unlimited). Nothing here does I/O; the proxy asks, then acts:

=====================================  ===============================  ===========================
situation                              ``reject``                       ``use_anyway``
=====================================  ===============================  ===========================
input over the input limit             400 input_token_limit_exceeded   forwarded, flagged
input not countable (a ``file_id``)    400 input_not_countable          forwarded, flagged input
requested max over the output limit    400 output_token_limit_exceeded  forwarded, flagged
no max requested, output limit set     ask upstream for at most ``L``   forwarded unchanged
generated output reaches the limit     cut at ``L`` tokens, "length"    delivered, flagged
=====================================  ===============================  ===========================
"""

from __future__ import annotations

from dataclasses import dataclass

# The two policies are "reject" and "use_anyway"; only the second is tested for
# by name (anything else rejects, as the database constraint allows no third).
USE_ANYWAY = "use_anyway"

INPUT_LIMIT_EXCEEDED = "input_token_limit_exceeded"
# Part of the input cannot be counted (a file referenced by id, a file whose
# text cannot be bounded): refused like an input over the limit, with its own code.
INPUT_NOT_COUNTABLE = "input_not_countable"
OUTPUT_LIMIT_EXCEEDED = "output_token_limit_exceeded"


def is_over(tokens: int, limit: int) -> bool:
    return limit > 0 and tokens > limit


@dataclass(frozen=True, slots=True)
class Limits:
    input_limit: int
    output_limit: int
    usage_limit: str  # "reject" | USE_ANYWAY

    @property
    def use_anyway(self) -> bool:
        return self.usage_limit == USE_ANYWAY


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request before anything goes upstream.

    ``rejection`` is the error code when the request must be refused;
    ``inject_max_tokens`` the output bound to ask upstream for when the client
    gave none; ``cut_output_at`` the number of output tokens after which the
    gateway ends the response itself.
    """

    rejection: str | None = None
    input_exceeded: bool = False
    output_exceeded: bool = False
    inject_max_tokens: int | None = None
    cut_output_at: int | None = None

    def exceeded_header(self, output_exceeded: bool | None = None) -> str | None:
        """Value of ``x-aigw-limit-exceeded`` (``input``, ``output``, ``input,output``)."""
        output = self.output_exceeded if output_exceeded is None else output_exceeded
        if self.input_exceeded and output:
            return "input,output"
        if self.input_exceeded:
            return "input"
        if output:
            return "output"
        return None


def decide(
    limits: Limits, input_tokens: int, requested_max: int | None, *, input_exact: bool = True
) -> Decision:
    """The decision for a request counted at *input_tokens* asking for at most
    *requested_max* output tokens (``None``: the client set no bound).

    A count that is only a lower bound (*input_exact* false: the prompt was too
    large to tokenize whole) and does not prove the request within a set input
    limit counts as over it: the limit fails closed.
    """
    input_over = is_over(input_tokens, limits.input_limit) or (
        not input_exact and limits.input_limit > 0
    )
    output_over = requested_max is not None and is_over(requested_max, limits.output_limit)
    if limits.use_anyway:
        return Decision(input_exceeded=input_over, output_exceeded=output_over)
    if input_over:
        return Decision(rejection=INPUT_LIMIT_EXCEEDED, input_exceeded=True)
    if output_over:
        return Decision(rejection=OUTPUT_LIMIT_EXCEEDED, output_exceeded=True)
    if limits.output_limit > 0:
        return Decision(
            inject_max_tokens=limits.output_limit if requested_max is None else None,
            cut_output_at=limits.output_limit,
        )
    return Decision()


def refusal_limit(limits: Limits) -> int | None:
    """The input count past which a request is refused (a ``reject`` key's
    input limit), so counting may stop there; ``None`` when no count is."""
    if limits.input_limit > 0 and not limits.use_anyway:
        return limits.input_limit
    return None


def output_exceeded(limits: Limits, output_tokens: int) -> bool:
    """Whether generated output went past the output limit."""
    return is_over(output_tokens, limits.output_limit)


def flags_output(limits: Limits, output_tokens: int) -> bool:
    """Whether a response is marked for passing the output limit: ``use_anyway``
    only (a ``reject`` key's output is cut at the limit instead)."""
    return limits.use_anyway and output_exceeded(limits, output_tokens)
