from __future__ import annotations

import pytest

from stallholder.kit.money import (
    Money,
    apply_basis_points,
    exponent,
    is_currency,
    normalize_currency,
    prorate,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("usd", True),
        ("JPY", True),
        ("eur", True),
        ("usx", False),
        ("xts", False),
        ("us", False),
        ("xau", False),
    ],
)
def test_is_currency(code: str, expected: bool) -> None:
    assert is_currency(code) is expected


def test_normalize_currency_lowercases_and_refuses_unknown() -> None:
    assert normalize_currency("USD") == "usd"
    with pytest.raises(ValueError, match="unknown currency 'usx'"):
        normalize_currency("usx")


@pytest.mark.parametrize(("code", "digits"), [("usd", 2), ("jpy", 0), ("kwd", 3)])
def test_exponent_comes_from_babel(code: str, digits: int) -> None:
    assert exponent(code) == digits


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(3000, "usd"), "$30.00"),
        (Money(5, "usd"), "$0.05"),
        (Money(1500, "jpy"), "¥1,500"),
        (Money(1234, "kwd"), "KWD1.234"),
    ],
)
def test_format_uses_the_currency_exponent(money: Money, text: str) -> None:
    assert money.format() == text


def test_money_refuses_floats_and_bools() -> None:
    with pytest.raises(TypeError):
        Money(12.5, "usd")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "usd")


@pytest.mark.parametrize(
    ("amount", "bps", "expected"),
    [
        (3000, 290, 87),
        (1000, 290, 29),
        (50, 290, 1),
        (17, 290, 0),
        (10_000, 500, 500),
        (1, 5000, 1),
        (3, 5000, 2),
    ],
)
def test_apply_basis_points_rounds_half_up(amount: int, bps: int, expected: int) -> None:
    assert apply_basis_points(amount, bps) == expected


def test_prorate_rounds_down_and_checks_bounds() -> None:
    assert prorate(1000, 3000, 117) == 39
    assert prorate(3000, 3000, 117) == 117
    with pytest.raises(ValueError, match="within"):
        prorate(3001, 3000, 117)
