"""The pro-rata split of a consolidated charge's fee (billing/allocation.py)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stallholder.billing.allocation import allocate
from stallholder.billing.fees_report import percent_of


def test_three_equal_invoices_share_a_fee_that_does_not_divide_by_three() -> None:
    # $9.00 charged once: 2.9% + 30 cents = 56 cents; 56 / 3 = 18.67 each.
    assert allocate(56, [300, 300, 300]) == [19, 19, 18]


def test_the_left_over_units_go_to_the_largest_remainders() -> None:
    # Exact shares: 100 * 500/1000 = 50, 100 * 333/1000 = 33.3, 100 * 167/1000 = 16.7.
    assert allocate(100, [500, 333, 167]) == [50, 33, 17]
    # 10 over 1, 2, 4: 1.43, 2.86, 5.71 → floors 1, 2, 5 and one unit left for 2.86.
    assert allocate(10, [1, 2, 4]) == [1, 3, 6]


def test_exact_shares_need_no_rounding() -> None:
    assert allocate(60, [100, 200, 300]) == [10, 20, 30]
    assert allocate(0, [300, 300]) == [0, 0]


def test_a_zero_weight_gets_nothing() -> None:
    assert allocate(7, [0, 5, 0, 5]) == [0, 4, 0, 3]


def test_one_payee_bears_the_whole_fee() -> None:
    assert allocate(39, [300]) == [39]


def test_impossible_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="never negative"):
        allocate(-1, [1])
    with pytest.raises(ValueError, match="never negative"):
        allocate(1, [1, -1])
    with pytest.raises(ValueError, match="zero weights"):
        allocate(1, [0, 0])
    assert allocate(0, []) == []


@given(
    total=st.integers(min_value=0, max_value=10**12),
    weights=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30).filter(
        lambda weights: sum(weights) > 0
    ),
)
def test_parts_sum_to_the_total_and_each_is_within_one_unit_of_its_share(
    total: int, weights: list[int]
) -> None:
    parts = allocate(total, weights)
    assert sum(parts) == total
    whole = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        exact = Fraction(total * weight, whole)
        assert exact - 1 < part <= exact + 1
        assert part in (exact.__floor__(), exact.__ceil__())
        if weight == 0:
            assert part == 0


@given(
    total=st.integers(min_value=0, max_value=10**6),
    weights=st.lists(st.integers(min_value=1, max_value=10**6), min_size=2, max_size=10),
)
def test_a_larger_weight_never_gets_less(total: int, weights: list[int]) -> None:
    parts = allocate(total, weights)
    for i, weight_i in enumerate(weights):
        for j, weight_j in enumerate(weights):
            if weight_i > weight_j:
                assert parts[i] >= parts[j]


def test_fee_percentages_are_two_decimals_rounded_half_up_from_integers() -> None:
    assert percent_of(26, 600) == "4.33"
    assert percent_of(78, 600) == "13.00"
    assert percent_of(65, 900) == "7.22"
    assert percent_of(1, 8) == "12.50"
    assert percent_of(1, 200) == "0.50"
    assert percent_of(1, 3) == "33.33"
    assert percent_of(2, 3) == "66.67"
    assert percent_of(5, 0) == "0.00"
