"""The pure parts of retention discounts and the right of withdrawal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stallholder.billing.cooling_off import EU_UK_COUNTRIES, cooling_off_days
from stallholder.billing.discounts import discounted


@pytest.mark.parametrize(
    ("unit_amount", "percent_off", "expected"),
    [(300, 50, 150), (299, 50, 150), (1, 50, 1), (999, 33, 670), (500, 100, 0), (7, 1, 7)],
)
def test_a_discount_is_rounded_in_the_buyers_favour_never_below_the_percentage(
    unit_amount: int, percent_off: int, expected: int
) -> None:
    assert discounted(unit_amount, percent_off) == expected


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=100))
def test_a_discount_takes_at_most_the_percentage_and_less_than_a_unit_short_of_it(
    unit_amount: int, percent_off: int
) -> None:
    taken = unit_amount - discounted(unit_amount, percent_off)
    assert 0 <= taken * 100 <= unit_amount * percent_off < (taken + 1) * 100


@pytest.mark.parametrize("percent_off", [0, 101, -5])
def test_a_discount_outside_1_to_100_percent_is_refused(percent_off: int) -> None:
    with pytest.raises(ValueError, match="percent_off is 1 to 100"):
        discounted(300, percent_off)


@pytest.mark.parametrize(
    ("country", "days"),
    [("DE", 14), ("fr", 14), ("GB", 14), ("IE", 14), ("GR", 14), ("US", 0), ("CH", 0),
     ("NO", 0), ("EL", 0), (None, 0)],
)  # fmt: skip
def test_only_buyers_in_the_eu_and_uk_have_fourteen_days(country: str | None, days: int) -> None:
    assert cooling_off_days(country) == days


def test_the_list_is_the_27_member_states_and_the_uk() -> None:
    assert len(EU_UK_COUNTRIES) == 28
