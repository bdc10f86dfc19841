"""Stock arithmetic: available, where a hold draws from, thresholds crossed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stallholder.inventory.quantities import (
    Quantities,
    Take,
    available,
    crossing,
    delta_for,
    in_key_order,
    plan_takes,
    total_available,
)


def test_available_is_on_hand_less_promised_and_safety_stock_never_negative() -> None:
    assert available(on_hand=20, reserved=3, allocated=5, safety_stock=2) == 10
    assert available(on_hand=5, reserved=2, allocated=1, safety_stock=4) == 0
    level = Quantities(on_hand=7, reserved=1, allocated=2, safety_stock=1)
    assert (level.available, level.committed) == (3, 3)


def test_total_available_sums_each_locations_own_available() -> None:
    # The second location's safety stock exceeds its free units: it adds 0, not -2.
    levels = [
        Quantities(on_hand=5, reserved=1, allocated=0, safety_stock=0),
        Quantities(on_hand=3, reserved=0, allocated=1, safety_stock=4),
    ]
    assert total_available(levels) == 4
    assert (levels[0] + levels[1]).on_hand == 8


def test_plan_takes_prefers_one_location_that_has_them_all() -> None:
    assert plan_takes([(7, 2), (3, 5)], 4) == [Take(level_id=3, quantity=4)]
    assert plan_takes([(7, 5), (3, 5)], 4) == [Take(level_id=7, quantity=4)]


def test_plan_takes_splits_in_location_order_when_no_one_location_has_them() -> None:
    assert plan_takes([(7, 2), (3, 0), (5, 3)], 4) == [
        Take(level_id=7, quantity=2),
        Take(level_id=5, quantity=2),
    ]
    assert plan_takes([(7, 2), (3, 1)], 4) is None
    assert plan_takes([], 1) is None
    with pytest.raises(ValueError, match="at least one unit"):
        plan_takes([(1, 5)], 0)


@given(
    st.lists(st.tuples(st.integers(1, 50), st.integers(0, 10)), unique_by=lambda c: c[0]),
    st.integers(1, 30),
)
def test_a_plan_takes_exactly_the_quantity_and_never_more_than_a_location_has(
    candidates: list[tuple[int, int]], quantity: int
) -> None:
    plan = plan_takes(candidates, quantity)
    free = dict(candidates)
    if sum(free.values()) < quantity:
        assert plan is None
        return
    assert plan is not None
    assert sum(take.quantity for take in plan) == quantity
    assert all(0 < take.quantity <= free[take.level_id] for take in plan)


def test_takes_lock_in_key_order_one_per_level() -> None:
    takes = [Take(level_id=9, quantity=1), Take(level_id=2, quantity=3), Take(9, 2)]
    assert in_key_order(takes) == [Take(level_id=2, quantity=3), Take(level_id=9, quantity=3)]


def test_crossings_are_reported_once_on_the_way_down() -> None:
    assert crossing(before=5, after=3, low_threshold=3) == "low"
    assert crossing(before=3, after=2, low_threshold=3) is None  # already low
    assert crossing(before=2, after=0, low_threshold=3) == "out_of_stock"
    assert crossing(before=5, after=0, low_threshold=3) == "out_of_stock"
    assert crossing(before=0, after=4, low_threshold=3) is None  # going up
    assert crossing(before=5, after=1, low_threshold=None) is None
    assert crossing(before=0, after=0, low_threshold=3) is None


def test_an_adjustment_is_a_delta_or_a_count() -> None:
    assert delta_for(on_hand=10, delta=-3, set_to=None) == -3
    assert delta_for(on_hand=10, delta=None, set_to=4) == -6
    with pytest.raises(ValueError, match="exactly one"):
        delta_for(on_hand=10, delta=1, set_to=4)
