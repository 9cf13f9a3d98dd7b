"""SPEC §3's policy table, cell by cell, at limit-1, limit and limit+1."""

from __future__ import annotations

import pytest

from aigw.proxy.policy import (
    INPUT_LIMIT_EXCEEDED,
    OUTPUT_LIMIT_EXCEEDED,
    Decision,
    Limits,
    decide,
    flags_output,
    is_over,
    output_exceeded,
)

L = 100


@pytest.mark.parametrize(("n", "over"), [(L - 1, False), (L, False), (L + 1, True)])
def test_over_means_strictly_greater(n: int, over: bool) -> None:
    assert is_over(n, L) is over
    assert is_over(n, 0) is False  # 0 = unlimited


@pytest.mark.parametrize(("n", "rejected"), [(L - 1, False), (L, False), (L + 1, True)])
def test_reject_input_over_limit(n: int, rejected: bool) -> None:
    decision = decide(Limits(L, 0, "reject"), n, None)
    assert decision.rejection == (INPUT_LIMIT_EXCEEDED if rejected else None)
    assert decision.exceeded_header() == ("input" if rejected else None)


@pytest.mark.parametrize(("n", "over"), [(L - 1, False), (L, False), (L + 1, True)])
def test_use_anyway_input_over_limit_is_forwarded_and_flagged(n: int, over: bool) -> None:
    decision = decide(Limits(L, 0, "use_anyway"), n, None)
    assert decision.rejection is None
    assert decision.input_exceeded is over
    assert decision.exceeded_header() == ("input" if over else None)
    assert decision.inject_max_tokens is None and decision.cut_output_at is None


@pytest.mark.parametrize(("requested", "rejected"), [(L - 1, False), (L, False), (L + 1, True)])
def test_reject_requested_max_over_output_limit(requested: int, rejected: bool) -> None:
    decision = decide(Limits(0, L, "reject"), 10, requested)
    assert decision.rejection == (OUTPUT_LIMIT_EXCEEDED if rejected else None)
    if not rejected:
        # The client's own bound stands; the cut-off still guards the limit.
        assert decision.inject_max_tokens is None
        assert decision.cut_output_at == L


@pytest.mark.parametrize(("requested", "over"), [(L - 1, False), (L, False), (L + 1, True)])
def test_use_anyway_requested_max_over_output_limit(requested: int, over: bool) -> None:
    decision = decide(Limits(0, L, "use_anyway"), 10, requested)
    assert decision.rejection is None
    assert decision.output_exceeded is over
    assert decision.exceeded_header() == ("output" if over else None)
    assert decision.cut_output_at is None and decision.inject_max_tokens is None


def test_reject_without_max_asks_upstream_for_the_limit_and_cuts_there() -> None:
    decision = decide(Limits(0, L, "reject"), 10, None)
    assert decision == Decision(inject_max_tokens=L, cut_output_at=L)


def test_use_anyway_without_max_is_unchanged() -> None:
    assert decide(Limits(0, L, "use_anyway"), 10, None) == Decision()


def test_unlimited_output_changes_nothing() -> None:
    assert decide(Limits(0, 0, "reject"), 10**6, None) == Decision()
    assert decide(Limits(0, 0, "reject"), 10, 10**6) == Decision()


def test_input_is_judged_before_output() -> None:
    decision = decide(Limits(L, L, "reject"), L + 1, L + 1)
    assert decision.rejection == INPUT_LIMIT_EXCEEDED


def test_both_over_with_use_anyway() -> None:
    decision = decide(Limits(L, L, "use_anyway"), L + 1, L + 1)
    assert decision.exceeded_header() == "input,output"


def test_a_lower_bound_count_fails_closed() -> None:
    # Too large to count exactly: a lower bound within the limit proves nothing.
    assert decide(Limits(L, 0, "reject"), L - 50, None, input_exact=False).rejection == (
        INPUT_LIMIT_EXCEEDED
    )
    assert decide(Limits(0, 0, "reject"), L - 50, None, input_exact=False).rejection is None


@pytest.mark.parametrize(("n", "over"), [(L - 1, False), (L, False), (L + 1, True)])
def test_generated_output_over_limit(n: int, over: bool) -> None:
    assert output_exceeded(Limits(0, L, "use_anyway"), n) is over
    assert output_exceeded(Limits(0, 0, "use_anyway"), n) is False


@pytest.mark.parametrize(("n", "flagged"), [(L - 1, False), (L, False), (L + 1, True)])
def test_only_use_anyway_flags_output_over_limit(n: int, flagged: bool) -> None:
    assert flags_output(Limits(0, L, "use_anyway"), n) is flagged
    assert flags_output(Limits(0, L, "reject"), n) is False  # cut there instead
