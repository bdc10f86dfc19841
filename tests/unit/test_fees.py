from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from stallholder.kit.money import Money
from stallholder.ledger.fees import (
    FeePolicy,
    FeeSchedule,
    Split,
    creator_share_left,
    payment_split,
    platform_fee,
    refund_split,
)
from stallholder.ledger.service import payment_lines, platform_fee_policy, refund_lines
from stallholder.payments.gateway import sandbox_processor_fee
from stallholder.settings import Settings


def test_platform_fee_is_bps_plus_fixed() -> None:
    assert platform_fee(3000, FeePolicy(bps=500, fixed=0), processor_fee=117) == 150
    assert platform_fee(3000, FeePolicy(bps=250, fixed=20), processor_fee=117) == 95


def test_platform_fee_never_exceeds_what_the_processor_leaves() -> None:
    # A 50-cent sale: the processor keeps 31, so the platform can take at most 19.
    assert platform_fee(50, FeePolicy(bps=1000, fixed=30), processor_fee=31) == 19


def test_sandbox_processor_fee_is_2_9_percent_plus_30_cents_in_usd() -> None:
    assert [sandbox_processor_fee(a, "usd") for a in (3000, 300, 10, 0)] == [117, 39, 10, 0]


def test_sandbox_processor_fee_takes_its_fixed_part_in_the_charges_currency() -> None:
    # ¥3000: 2.9% is ¥87 and JPY cards have no fixed part (not ¥30).
    assert sandbox_processor_fee(3000, "jpy") == 87
    # €30.00: 2.9% + 25 cents.
    assert sandbox_processor_fee(3000, "EUR") == 112
    # 3.000 KWD: 2.9% is 87 fils, no fixed part listed for kwd (not 0.030 KWD).
    assert sandbox_processor_fee(3000, "kwd") == 87


# One schedule, three currencies with 2, 0 and 3 decimals: 5% plus 30 cents, ¥0 and
# 0.100 KWD. The fixed part is looked up in the charge's own currency, never reused.
SCHEDULE = FeeSchedule(bps=500, fixed={"usd": 30, "jpy": 0, "kwd": 100})


@pytest.mark.parametrize(
    ("amount", "currency", "expected_fee", "shown"),
    [
        (3000, "usd", 180, "$1.80"),  # $30.00: $1.50 + $0.30
        (3000, "jpy", 150, "¥150"),  # ¥3000: ¥150, not ¥180
        (3000, "kwd", 250, "KWD0.250"),  # 3.000 KWD: 0.150 + 0.100, not + 0.030
        (3000, "eur", 150, "€1.50"),  # no fixed part for eur in this schedule
    ],
)
def test_the_fixed_fee_is_in_minor_units_of_the_charges_currency(
    amount: int, currency: str, expected_fee: int, shown: str
) -> None:
    fee = platform_fee(amount, SCHEDULE.for_currency(currency), processor_fee=0)
    assert fee == expected_fee
    assert Money(fee, currency).format().replace("\xa0", "") == shown


def test_a_creators_terms_override_per_currency() -> None:
    mine = SCHEDULE.overridden(bps=None, fixed={"JPY": 50})
    assert mine.for_currency("jpy") == FeePolicy(bps=500, fixed=50)
    assert mine.for_currency("usd") == FeePolicy(bps=500, fixed=30)
    assert SCHEDULE.overridden(bps=0, fixed=None).for_currency("kwd") == FeePolicy(bps=0, fixed=100)
    assert SCHEDULE.for_currency("KWD") == FeePolicy(bps=500, fixed=100)


def test_split_creator_share() -> None:
    assert payment_split(3000, platform_fee=150, processor_fee=117).creator == 2733
    with pytest.raises(ValueError, match="at most the gross"):
        payment_split(100, platform_fee=80, processor_fee=40)


def test_refund_split_of_a_partial_refund() -> None:
    payment = payment_split(3000, platform_fee=150, processor_fee=117)
    assert refund_split(payment, refunded_before=0, amount=1000) == Split(1000, 50, 39)
    assert refund_split(payment, refunded_before=1000, amount=2000) == Split(2000, 100, 78)


def test_a_partial_refund_never_takes_more_than_the_creator_received() -> None:
    # 2 units: the processor kept 1, the platform 1, the creator nothing. Refunding 1
    # must come out of the fees, not out of a creator share of 0 (found by hypothesis).
    payment = payment_split(2, platform_fee=1, processor_fee=1)
    first = refund_split(payment, refunded_before=0, amount=1)
    assert (first.creator, first.platform_fee, first.processor_fee) == (0, 0, 1)
    second = refund_split(payment, refunded_before=1, amount=1)
    assert (second.creator, second.platform_fee, second.processor_fee) == (0, 1, 0)


def test_refund_split_refuses_more_than_remains() -> None:
    payment = payment_split(3000, platform_fee=150, processor_fee=117)
    with pytest.raises(ValueError, match="not exceed"):
        refund_split(payment, refunded_before=2500, amount=501)


@given(
    gross=st.integers(min_value=1, max_value=10**9),
    fee_share=st.floats(min_value=0, max_value=1),
    processor_share=st.floats(min_value=0, max_value=1),
    cuts=st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=8),
)
def test_refunds_that_add_up_to_the_payment_reverse_it_exactly(
    gross: int, fee_share: float, processor_share: float, cuts: list[int]
) -> None:
    # Floats only pick test fees here; the code under test sees integers.
    processor = int(gross * processor_share)
    platform = int((gross - processor) * fee_share)
    payment = payment_split(gross, platform_fee=platform, processor_fee=processor)
    parts: list[int] = []
    remaining = gross
    for cut in cuts:
        if remaining == 0:
            break
        part = min(remaining, cut)
        parts.append(part)
        remaining -= part
    if remaining:
        parts.append(remaining)
    refunded = 0
    reversed_parts = []
    for part in parts:
        reversed_parts.append(refund_split(payment, refunded_before=refunded, amount=part))
        refunded += part
    assert sum(p.gross for p in reversed_parts) == gross
    assert sum(p.platform_fee for p in reversed_parts) == platform
    assert sum(p.processor_fee for p in reversed_parts) == processor
    assert sum(p.creator for p in reversed_parts) == payment.creator
    assert all(
        p.creator >= 0 and p.platform_fee >= 0 and p.processor_fee >= 0 for p in reversed_parts
    )


def test_payment_and_refund_lines_each_sum_to_zero() -> None:
    payment = payment_split(3000, platform_fee=150, processor_fee=117)
    assert sum(line.amount for line in payment_lines("cr_1", payment)) == 0
    part = refund_split(payment, refunded_before=0, amount=1000)
    assert [line.amount for line in refund_lines("cr_1", part)] == [1000, -911, -50, -39]


def test_settings_read_fixed_fees_as_a_json_object_per_currency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STALLHOLDER_PLATFORM_FEE_FIXED", '{"USD": 30, "jpy": 0}')
    settings = Settings()
    assert settings.platform_fee_fixed == {"usd": 30, "jpy": 0}
    assert settings.stripe_fee_fixed["usd"] == 30
    assert platform_fee_policy(settings).for_currency("usd") == FeePolicy(bps=500, fixed=30)


@pytest.mark.parametrize("value", ['{"zzz": 30}', '{"usd": -1}', '{"usd": 100000000}', "30"])
def test_settings_refuse_a_fixed_fee_without_a_currency_or_out_of_range(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("STALLHOLDER_PLATFORM_FEE_FIXED", value)
    with pytest.raises(ValidationError, match="platform_fee_fixed"):
        Settings()


def test_the_creator_share_left_after_refunds_is_what_the_ledger_keeps() -> None:
    payment = payment_split(300, platform_fee=15, processor_fee=20)
    assert creator_share_left(payment, refunded=0) == 265
    assert creator_share_left(payment, refunded=100) == 265 - 88  # 88.33 rounded down
    assert creator_share_left(payment, refunded=300) == 0


@given(
    gross=st.integers(min_value=1, max_value=100_000),
    data=st.data(),
)
def test_the_creator_share_left_matches_the_refunds_reversed(
    gross: int, data: st.DataObject
) -> None:
    platform = data.draw(st.integers(min_value=0, max_value=gross))
    processor = data.draw(st.integers(min_value=0, max_value=gross - platform))
    payment = payment_split(gross, platform_fee=platform, processor_fee=processor)
    refunds = data.draw(st.lists(st.integers(min_value=1, max_value=gross), max_size=5))
    refunded = 0
    reversed_from_creator = 0
    for amount in refunds:
        if refunded + amount > gross:
            break
        split = refund_split(payment, refunded_before=refunded, amount=amount)
        reversed_from_creator += split.creator
        refunded += amount
    assert creator_share_left(payment, refunded=refunded) == payment.creator - reversed_from_creator
