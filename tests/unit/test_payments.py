from __future__ import annotations

import pytest

from stallholder.payments.service import (
    CardNumberRejected,
    InvalidPaymentMethod,
    check_payment_method,
    looks_like_card_number,
)


@pytest.mark.parametrize(
    "value",
    [
        "4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "4000056655665556",
        "378282246310005",
        "6011111111111117",
        "3056930009020004",
        " 4242424242424242 ",
        "4242424242424",
        "4242424242424242424",
    ],
)
def test_card_numbers_are_recognised(value: str) -> None:
    assert looks_like_card_number(value)
    with pytest.raises(CardNumberRejected, match="send the token"):
        check_payment_method(value)


@pytest.mark.parametrize("value", ["424242424242", "42424242424242424242", "tok_visa", "4242 abcd"])
def test_other_values_are_not_card_numbers(value: str) -> None:
    assert not looks_like_card_number(value)


@pytest.mark.parametrize("value", ["tok_visa", "tok_visa_3ds_confirmed", "pm_1Abc"])
def test_tokens_pass(value: str) -> None:
    assert check_payment_method(value) == value


@pytest.mark.parametrize("value", ["visa", "tok_", "tok_with space", "sk_live_x"])
def test_non_tokens_are_refused(value: str) -> None:
    with pytest.raises(InvalidPaymentMethod):
        check_payment_method(value)
