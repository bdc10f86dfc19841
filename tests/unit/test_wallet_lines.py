"""The ledger lines of wallet top-ups and payments (ADR 0011): balanced, and exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeePolicy, payment_split, platform_fee


def _by_account(lines: list[ledger.Line]) -> dict[str, int]:
    return {line.account: line.amount for line in lines}


def test_a_top_up_credits_the_whole_amount_and_the_platform_bears_the_card_fee() -> None:
    lines = ledger.wallet_top_up_lines("byr_1", amount=2000, processor_fee=88)
    assert _by_account(lines) == {
        "external:buyer_funds": -2000,
        "wallet:byr_1": 2000,
        "processor:fees": 88,
        "platform:fees": -88,
    }


def test_a_wallet_payment_moves_the_liability_to_the_creator_less_the_platform_fee() -> None:
    split = payment_split(
        300,
        platform_fee=platform_fee(300, FeePolicy(bps=500, fixed=30), processor_fee=0),
        processor_fee=0,
    )
    lines = ledger.wallet_payment_lines("byr_1", "cr_1", split)
    assert _by_account(lines) == {
        "wallet:byr_1": -300,
        "creator:cr_1:balance": 255,
        "platform:fees": 45,
        "processor:fees": 0,
    }


@given(
    amount=st.integers(min_value=1, max_value=10**11),
    bps=st.integers(min_value=0, max_value=10_000),
    fixed=st.integers(min_value=0, max_value=10**6),
    processor_fee=st.integers(min_value=0, max_value=10**11),
)
def test_wallet_lines_always_balance(amount: int, bps: int, fixed: int, processor_fee: int) -> None:
    processor = min(amount, processor_fee)
    top_up = ledger.wallet_top_up_lines("byr_1", amount=amount, processor_fee=processor)
    fee = platform_fee(amount, FeePolicy(bps=bps, fixed=fixed), processor_fee=0)
    payment = ledger.wallet_payment_lines(
        "byr_1", "cr_1", payment_split(amount, platform_fee=fee, processor_fee=0)
    )
    assert sum(line.amount for line in top_up) == 0
    assert sum(line.amount for line in payment) == 0
    assert _by_account(payment)["creator:cr_1:balance"] >= 0
