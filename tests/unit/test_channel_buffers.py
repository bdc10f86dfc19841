"""What a channel is shown: ``available`` less its buffers, exactly (channels.buffers)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stallholder.channels.buffers import Rules, shown


@pytest.mark.parametrize(
    ("available", "rules", "expected"),
    [
        (20, Rules(), 20),
        (20, Rules(buffer_units=2), 18),
        (1, Rules(buffer_units=2), 0),
        (15, Rules(buffer_percent=10), 13),  # 10% of 15 is 1.5: 2 kept back
        (20, Rules(buffer_percent=10), 18),
        (20, Rules(buffer_units=1, buffer_percent=10), 17),
        (4, Rules(zero_below=5), 0),
        (5, Rules(zero_below=5), 5),
        (7, Rules(buffer_units=3, zero_below=5), 0),  # 4 left after the buffer: below 5
        (50, Rules(max_shown=10), 10),
        (6, Rules(max_shown=10), 6),
        (0, Rules(), 0),
        (-3, Rules(), 0),
        (100, Rules(buffer_percent=100), 0),
    ],
)
def test_shown(available: int, rules: Rules, expected: int) -> None:
    assert shown(available, rules) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"buffer_units": -1},
        {"buffer_percent": 101},
        {"buffer_percent": -1},
        {"zero_below": -1},
        {"max_shown": -1},
    ],
)
def test_rules_refuse_impossible_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        Rules(**kwargs)


rules = st.builds(
    Rules,
    buffer_units=st.integers(0, 50),
    buffer_percent=st.integers(0, 100),
    zero_below=st.none() | st.integers(0, 50),
    max_shown=st.none() | st.integers(0, 500),
)


@given(available=st.integers(-10, 10_000), rules=rules)
def test_a_channel_never_sees_more_than_is_free_nor_less_than_zero(
    available: int, rules: Rules
) -> None:
    assert 0 <= shown(available, rules) <= max(0, available)


@given(available=st.integers(0, 10_000), more=st.integers(0, 100), rules=rules)
def test_more_stock_never_shows_less(available: int, more: int, rules: Rules) -> None:
    assert shown(available + more, rules) >= shown(available, rules)
