"""Property (ADR 0011): over any sequence of top-ups (some declined), wallet payments to two
creators and pairs of concurrent payments, the wallet never goes below zero, its balance is
what a simple reference model says, it equals its ledger account, each creator is paid
exactly its shares, and the ledger balances."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stallholder.accounts import service as accounts
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeePolicy
from stallholder.payments import methods
from stallholder.payments.gateway import SandboxGateway
from stallholder.wallets import service as wallets
from tests import factories
from tests.conftest import T0

POLICY = FeePolicy(bps=500, fixed=30)


@dataclass(frozen=True)
class TopUp:
    amount: int
    is_declined: bool


@dataclass(frozen=True)
class Pay:
    creator: int
    amount: int


@dataclass(frozen=True)
class PayAtOnce:
    first: int
    second: int


operations = st.lists(
    st.one_of(
        st.builds(TopUp, amount=st.integers(1, 5_000), is_declined=st.booleans()),
        st.builds(Pay, creator=st.integers(0, 1), amount=st.integers(1, 3_000)),
        st.builds(PayAtOnce, first=st.integers(1, 3_000), second=st.integers(1, 3_000)),
    ),
    min_size=1,
    max_size=12,
)


async def _run(url: str, ops: list[TopUp | Pay | PayAtOnce]) -> None:
    database = Database(url)
    gateway = SandboxGateway()
    email = f"{uuid.uuid4().hex}@example.com"  # a new buyer on a reused database
    try:
        async with database.unit_of_work() as session:
            creators = [
                (await factories.create_creator(session, now=T0, name=f"C{i}")).id for i in range(2)
            ]
            customer = await accounts.create_customer(
                session, creator_id=creators[0], email=email, name=None, time_zone="UTC", now=T0
            )
            buyer = customer.buyer_id
        cards = {
            token: (
                await methods.save_payment_method(
                    database,
                    gateway,
                    creator_id=creators[0],
                    customer_id=customer.id,
                    token=token,
                    now=T0,
                )
            ).method.id
            for token in ("tok_visa", "tok_chargeCustomerFail")
        }
        model = 0
        shares = [0, 0]
        purposes = iter(range(10_000))

        async def pay(creator: int, amount: int) -> wallets.WalletPayment | None:
            async with database.unit_of_work() as session:
                try:
                    return await wallets.pay_from_wallet(
                        session,
                        buyer_id=buyer,
                        creator_id=creators[creator],
                        amount=amount,
                        currency="usd",
                        purpose="invoice",
                        purpose_id=f"in_{uuid.uuid4().hex[:12]}_{next(purposes)}",
                        fee_policy=POLICY,
                        now=T0,
                    )
                except wallets.InsufficientWalletBalance:
                    return None

        for op in ops:
            if isinstance(op, TopUp):
                outcome = await wallets.top_up(
                    database,
                    gateway,
                    creator_id=creators[0],
                    customer_id=customer.id,
                    amount=op.amount,
                    currency="usd",
                    payment_method_id=cards[
                        "tok_chargeCustomerFail" if op.is_declined else "tok_visa"
                    ],
                    request_key=None,
                    resolve_after=T0 + timedelta(minutes=2),
                    now=T0,
                )
                assert (outcome.top_up.status == "succeeded") is (not op.is_declined)
                model += 0 if op.is_declined else op.amount
            elif isinstance(op, Pay):
                paid = await pay(op.creator, op.amount)
                assert (paid is not None) is (op.amount <= model)
                if paid is not None:
                    model -= op.amount
                    shares[op.creator] += paid.split.creator
            else:
                both = await asyncio.gather(pay(0, op.first), pay(1, op.second))
                taken = [a for a, p in zip((op.first, op.second), both, strict=True) if p]
                # Whatever order they ran in, the outcome is one of a serial run's.
                if op.first + op.second <= model:
                    assert len(taken) == 2
                elif op.first <= model or op.second <= model:
                    assert len(taken) == 1
                    assert taken[0] <= model
                else:
                    assert taken == []
                model -= sum(taken)
                for index, payment in enumerate(both):
                    if payment is not None:
                        shares[index] += payment.split.creator
            assert model >= 0

        async with database.unit_of_work() as session:
            wallet = await wallets.find_wallet(session, buyer_id=buyer, currency="usd")
            assert (0 if wallet is None else wallet.balance) == model
            balance = await ledger.balances_of(session, account=ledger.wallet_account(buyer))
            assert balance.get("usd", 0) == model
            for creator, share in zip(creators, shares, strict=True):
                paid_in = await ledger.balances_of(session, account=ledger.creator_account(creator))
                assert paid_in.get("usd", 0) == share
            report = await ledger.verify(session)
            assert report.is_clean, report
            _, mismatched = await wallets.mismatched_wallets(session)
            assert mismatched == []
    finally:
        await database.dispose()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_the_wallet_matches_its_model_and_the_ledger(
    sqlite_template: Path, tmp_path: Path, ops: list[TopUp | Pay | PayAtOnce]
) -> None:
    path = tmp_path / "wallet.db"
    shutil.copyfile(sqlite_template, path)
    asyncio.run(_run(f"sqlite:///{path}", ops))


@pytest.mark.postgres
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
def test_the_wallet_matches_its_model_and_the_ledger_on_postgres(
    postgres_url: str, ops: list[TopUp | Pay | PayAtOnce]
) -> None:
    # The database is emptied first (``postgres_url``): the check verifies its whole
    # ledger, which another test's rows on the same database must not decide.
    asyncio.run(_run(postgres_url, ops))
