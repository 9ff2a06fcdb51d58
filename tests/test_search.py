"""The pure max-batch search over peak(B) -> bytes."""

import pytest

from advisor.memory.search import SEARCH_LIMIT, affine_fit, largest_fitting_batch


def brute_force(peak, budget, limit=10**6):
    best = 0
    for b in range(1, limit):
        if peak(b) > budget:
            return best
        best = b
    return best


def counting(peak):
    calls = []

    def wrapped(b):
        calls.append(b)
        return peak(b)
    return wrapped, calls


@pytest.mark.parametrize("budget", [5_000_000, 123_456_789, 20e9])
def test_affine_curve_found_exactly_in_few_evaluations(budget):
    peak = lambda b: max(500_000, 355_376 + 2_808 * b)  # noqa: E731 — the shape DESIGN predicts
    wrapped, calls = counting(peak)
    result = largest_fitting_batch(wrapped, budget)
    expected = int((budget - 355_376) // 2_808)
    assert result.max_batch == expected
    assert peak(result.max_batch) <= budget < peak(result.max_batch + 1)
    assert len(calls) <= 6


@pytest.mark.parametrize("peak", [
    lambda b: 1000 * b ** 1.3,                  # convex: activations that grow faster than B
    lambda b: 40_000 + 900 * b - (b % 7) * 50,  # ragged: allocator-like rounding
    lambda b: 10_000 * (1 + b // 64),           # steps: memory grows in blocks
])
def test_curves_that_are_not_affine_still_give_the_exact_boundary(peak):
    budget = 3_000_000
    assert largest_fitting_batch(peak, budget).max_batch == brute_force(peak, budget)


def test_nothing_fits():
    assert largest_fitting_batch(lambda b: 10 * b + 100, 50).max_batch == 0


def test_limit_reported_when_everything_fits():
    result = largest_fitting_batch(lambda b: 1, 10, limit=1000)
    assert result.max_batch == 1000 and result.hit_limit
    assert SEARCH_LIMIT >= 2**20


def test_shared_cache_makes_a_second_budget_cheap():
    peak = lambda b: 1000 + 10 * b  # noqa: E731
    peaks = {}
    largest_fitting_batch(peak, 1_000_000, peaks=peaks)
    wrapped, calls = counting(peak)
    assert largest_fitting_batch(wrapped, 900_000, peaks=peaks).max_batch == 89_900
    assert len(calls) <= 3


def test_affine_fit_through_largest_points():
    fixed, per_sample = affine_fit({1: 9999, 100: 1000 + 100 * 7, 200: 1000 + 200 * 7})
    assert (fixed, per_sample) == (1000, 7)


def test_search_can_start_above_one():
    peak = lambda b: 100 * b  # noqa: E731
    assert largest_fitting_batch(peak, 1000, smallest=2).max_batch == 10
    assert largest_fitting_batch(peak, 150, smallest=2).max_batch == 0
