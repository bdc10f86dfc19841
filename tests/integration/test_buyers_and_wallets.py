"""Buyers across creators, payment methods on the buyer, and prepaid wallets (ADR 0011),
on SQLite and PostgreSQL: one buyer behind two creators' customers, a card seen by every
creator but charged only with the buyer's grant, top-ups credited exactly once under
retries and crashes, wallet payments that never overdraw, auto top-up, and a clean
ledger."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Buyer, Customer
from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeePolicy
from stallholder.payments import methods
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import (
    PaymentAttempt,
    PaymentMethod,
    PaymentMethodGrant,
    SandboxCharge,
)
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.settings import Settings
from stallholder.wallets import service as wallets
from stallholder.wallets.models import Wallet, WalletTopUp, WalletTransaction
from tests import factories
from tests.conftest import T0

pytestmark = pytest.mark.anyio

RESOLVE_AFTER = T0 + timedelta(minutes=2)
# 5% and 30 cents, so a $3 wallet payment keeps 15 + 30 = 45 for the platform.
POLICY = FeePolicy(bps=500, fixed=30)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _two_creators_one_buyer(database: Database) -> tuple[list[str], list[str], str]:
    """Two creators, each with a customer for the same person (the address spelled
    differently); returns the creators, their customers and the buyer."""
    async with database.unit_of_work() as session:
        kiln = await factories.create_creator(session, now=T0, name="Kiln")
        zines = await factories.create_creator(session, now=T0, name="Zines")
        first = await accounts.create_customer(
            session,
            creator_id=kiln.id,
            email="Ana@Example.com",
            name="Ana",
            time_zone="UTC",
            now=T0,
        )
        second = await accounts.customer_for_email(
            session, creator_id=zines.id, email="ana@example.com", now=T0
        )
        assert first.buyer_id == second.buyer_id
        return [kiln.id, zines.id], [first.id, second.id], first.buyer_id


async def _count(database: Database, model: type[Any], *where: Any) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        for condition in where:
            statement = statement.where(condition)
        return int((await session.execute(statement)).scalar_one())


async def _balance(database: Database, account: str) -> dict[str, int]:
    async with database.unit_of_work() as session:
        return await ledger.balances_of(session, account=account)


async def _wallet_balance(database: Database, buyer_id: str) -> int:
    async with database.unit_of_work() as session:
        wallet = await wallets.find_wallet(session, buyer_id=buyer_id, currency="usd")
        return -1 if wallet is None else wallet.balance


async def _verify(database: Database) -> None:
    """``ledger verify``: the books balance and each wallet equals its ledger account."""
    async with database.unit_of_work() as session:
        report = await ledger.verify(session)
        _, mismatched = await wallets.mismatched_wallets(session)
    assert report.is_clean, report
    assert mismatched == []


async def _save(
    database: Database, gateway: SandboxGateway, creator: str, customer: str, token: str
) -> methods.CustomerPaymentMethod:
    return await methods.save_payment_method(
        database, gateway, creator_id=creator, customer_id=customer, token=token, now=T0
    )


async def _top_up(
    database: Database,
    gateway: SandboxGateway,
    creator: str,
    customer: str,
    amount: int,
    *,
    request_key: str | None = None,
) -> wallets.TopUpOutcome:
    return await wallets.top_up(
        database,
        gateway,
        creator_id=creator,
        customer_id=customer,
        amount=amount,
        currency="usd",
        payment_method_id=None,
        request_key=request_key,
        resolve_after=RESOLVE_AFTER,
        now=T0,
    )


async def _pay(
    database: Database, buyer: str, creator: str, amount: int, purpose_id: str
) -> wallets.WalletPayment:
    async with database.unit_of_work() as session:
        return await wallets.pay_from_wallet(
            session,
            buyer_id=buyer,
            creator_id=creator,
            amount=amount,
            currency="usd",
            purpose="invoice",
            purpose_id=purpose_id,
            fee_policy=POLICY,
            now=T0,
        )


# Buyers ------------------------------------------------------------------------------------


async def test_customer_for_email_creates_a_new_buyer_and_then_finds_the_oldest_customer(
    database: Database,
) -> None:
    """On PostgreSQL one statement finds or creates (with the buyer); on SQLite three.
    Either way: a new address makes a buyer and a customer, the same address finds that
    customer again, and of two customers with one address the oldest is found."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0, name="Kiln")
        made = await accounts.customer_for_email(
            session, creator_id=creator.id, email="new.buyer@example.com", now=T0
        )
    async with database.unit_of_work() as session:
        found = await accounts.customer_for_email(
            session,
            creator_id=creator.id,
            email="new.buyer@example.com",
            now=T0 + timedelta(hours=1),
        )
        later = await accounts.create_customer(
            session,
            creator_id=creator.id,
            email="new.buyer@example.com",
            name=None,
            time_zone="UTC",
            now=T0 + timedelta(hours=2),
        )
        oldest = await accounts.customer_for_email(
            session,
            creator_id=creator.id,
            email="new.buyer@example.com",
            now=T0 + timedelta(hours=3),
        )
    assert (made.creator_id, made.email, made.name, made.time_zone, made.country) == (
        creator.id,
        "new.buyer@example.com",
        None,
        "UTC",
        None,
    )
    assert (made.test_clock_id, made.created_at) == (None, T0)
    assert made.id.startswith("cus_")
    assert made.buyer_id.startswith("byr_")
    assert found.id == oldest.id == made.id
    assert later.id != made.id
    assert later.buyer_id == made.buyer_id
    assert await _count(database, Customer) == 2
    assert await _count(database, Buyer) == 1


async def test_one_buyer_behind_two_creators_customers_each_creator_sees_only_its_own(
    database: Database,
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    async with database.unit_of_work() as session:
        again = await accounts.customer_for_email(
            session, creator_id=creators[1], email="ana@example.com", now=T0
        )
        other = await accounts.create_customer(
            session,
            creator_id=creators[1],
            email="ana+zines@example.com",
            name=None,
            time_zone="UTC",
            now=T0,
        )
        kiln = await accounts.list_customers(
            session, creator_id=creators[0], limit=10, starting_after=None
        )
        zines = await accounts.list_customers(
            session, creator_id=creators[1], limit=10, starting_after=None
        )
        with pytest.raises(accounts.CustomerNotFound):
            await accounts.get_customer(session, creator_id=creators[0], customer_id=customers[1])

    assert again.id == customers[1]
    assert other.buyer_id != buyer  # a +tag is another address here
    assert [c.id for c in kiln.data] == [customers[0]]
    assert [c.id for c in zines.data] == [other.id, customers[1]]


async def test_two_first_customers_of_one_new_buyer_at_once_find_one_buyer(
    database: Database,
) -> None:
    async with database.unit_of_work() as session:
        creators = [
            (await factories.create_creator(session, now=T0, name=name)).id
            for name in ("A", "B", "C")
        ]

    async def customer(creator: str) -> str:
        async with database.unit_of_work() as session:
            made = await accounts.create_customer(
                session,
                creator_id=creator,
                email="new@example.com",
                name=None,
                time_zone="UTC",
                now=T0,
            )
            return made.buyer_id

    buyers = await asyncio.gather(*(customer(c) for c in creators))

    assert len(set(buyers)) == 1


# Payment methods on the buyer ------------------------------------------------------------


async def test_a_card_saved_with_one_creator_is_seen_by_another_but_charged_only_with_a_grant(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, _ = await _two_creators_one_buyer(database)
    saved = await _save(database, gateway, creators[0], customers[0], "tok_visa")

    async with database.unit_of_work() as session:
        seen = await methods.list_payment_methods(
            session,
            creator_id=creators[1],
            customer_id=customers[1],
            limit=10,
            starting_after=None,
        )
    assert [(v.method.id, v.is_granted, v.is_default) for v in seen.data] == [
        (saved.method.id, False, False)
    ]

    def charge(payment_method_id: str | None, purpose_id: str) -> Any:
        return methods.charge_saved_method(
            database,
            gateway,
            creator_id=creators[1],
            customer_id=customers[1],
            payment_method_id=payment_method_id,
            purpose="invoice",
            purpose_id=purpose_id,
            amount=300,
            currency="usd",
            platform_fee=45,
            estimated_processor_fee=39,
            resolve_after=RESOLVE_AFTER,
            now=T0,
        )

    with pytest.raises(methods.PaymentMethodNotGranted):
        await charge(saved.method.id, "in_1")
    with pytest.raises(methods.NoDefaultPaymentMethod):
        await charge(None, "in_1")
    with pytest.raises(methods.PaymentMethodNotGranted):
        await methods.detach_payment_method(
            database,
            gateway,
            creator_id=creators[1],
            customer_id=customers[1],
            payment_method_id=saved.method.id,
            now=T0,
        )
    assert await _count(database, PaymentAttempt) == 0

    # The buyer saves the same card with the second creator: a grant, not a second card.
    granted = await _save(database, gateway, creators[1], customers[1], "tok_visa")
    assert (granted.method.id, granted.is_granted, granted.is_default) == (
        saved.method.id,
        True,
        True,
    )
    attempt = await charge(None, "in_1")
    assert (attempt.status, attempt.saved_payment_method_id, attempt.gateway_customer) == (
        "succeeded",
        saved.method.id,
        saved.method.gateway_customer,
    )

    # The first creator withdraws its use: the card stays the buyer's for the second.
    first_out = await methods.detach_payment_method(
        database,
        gateway,
        creator_id=creators[0],
        customer_id=customers[0],
        payment_method_id=saved.method.id,
        now=T0,
    )
    assert (first_out.is_granted, first_out.method.detached_at) == (False, None)
    assert (await charge(None, "in_2")).status == "succeeded"
    last_out = await methods.detach_payment_method(
        database,
        gateway,
        creator_id=creators[1],
        customer_id=customers[1],
        payment_method_id=saved.method.id,
        now=T0,
    )
    assert last_out.method.detached_at == T0
    with pytest.raises(methods.NoDefaultPaymentMethod):
        await charge(None, "in_3")


async def test_two_creators_saving_the_same_card_at_once_find_one_card(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, _ = await _two_creators_one_buyer(database)
    # Both saves have looked for the buyer's card (and found none) before either records.
    both_at_gateway = asyncio.Barrier(2)

    class Together(SandboxGateway):
        async def save_payment_method(self, **kwargs: Any) -> Any:
            await both_at_gateway.wait()
            return await super().save_payment_method(**kwargs)

    together = Together()
    saved = await asyncio.gather(
        *(
            _save(database, together, creator, customer, "tok_visa")
            for creator, customer in zip(creators, customers, strict=True)
        )
    )

    assert saved[0].method.id == saved[1].method.id
    assert [(v.is_granted, v.is_default) for v in saved] == [(True, True), (True, True)]
    assert await _count(database, PaymentMethod) == 1
    assert await _count(database, PaymentMethodGrant) == 2


async def test_one_gateway_customer_per_buyer_and_a_default_per_creator(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, _ = await _two_creators_one_buyer(database)
    visa = await _save(database, gateway, creators[0], customers[0], "tok_visa")
    failing = await _save(database, gateway, creators[1], customers[1], "tok_chargeCustomerFail")
    await _save(database, gateway, creators[1], customers[1], "tok_visa")
    async with database.unit_of_work() as session:
        await methods.set_default_payment_method(
            session,
            creator_id=creators[0],
            customer_id=customers[0],
            payment_method_id=visa.method.id,
        )
        kiln = await methods.list_payment_methods(
            session, creator_id=creators[0], customer_id=customers[0], limit=10, starting_after=None
        )
        zines = await methods.list_payment_methods(
            session, creator_id=creators[1], customer_id=customers[1], limit=10, starting_after=None
        )

    assert failing.method.gateway_customer == visa.method.gateway_customer
    assert [(v.method.id, v.is_granted, v.is_default) for v in kiln.data] == [
        (failing.method.id, False, False),
        (visa.method.id, True, True),
    ]
    assert [(v.method.id, v.is_granted, v.is_default) for v in zines.data] == [
        (failing.method.id, True, True),
        (visa.method.id, True, False),
    ]


# Top-ups -------------------------------------------------------------------------------------


async def test_a_top_up_credits_the_wallet_once_and_posts_a_liability(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")

    first = await _top_up(database, gateway, creators[0], customers[0], 2000, request_key="k1")
    again = await _top_up(database, gateway, creators[0], customers[0], 2000, request_key="k1")

    assert (first.error, again.error) == (None, None)
    assert (first.top_up.id, first.top_up.status) == (again.top_up.id, "succeeded")
    assert await _wallet_balance(database, buyer) == 2000
    fee = gateway.estimate_processor_fee(amount=2000, currency="usd")
    assert fee == 88  # 2.9% + 30
    assert await _balance(database, ledger.wallet_account(buyer)) == {"usd": 2000}
    assert await _balance(database, ledger.BUYER_FUNDS) == {"usd": -2000}
    assert await _balance(database, ledger.PROCESSOR_FEES) == {"usd": 88}
    assert await _balance(database, ledger.PLATFORM_FEES) == {"usd": -88}
    async with database.unit_of_work() as session:
        charges = (await session.execute(select(SandboxCharge.idempotency_key))).scalars().all()
        attempt = (await session.execute(select(PaymentAttempt))).scalar_one()
    assert charges == [f"{first.top_up.id}:attempt:1"]
    assert (attempt.purpose, attempt.connected_account, attempt.is_off_session) == (
        "wallet_top_up",
        None,
        True,
    )
    assert await _count(database, WalletTransaction) == 1
    await _verify(database)


async def test_two_top_ups_under_one_key_at_once_charge_once(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")

    outcomes = await asyncio.gather(
        *(
            _top_up(database, gateway, creators[0], customers[0], 1000, request_key="same")
            for _ in range(2)
        ),
        return_exceptions=True,
    )

    succeeded = [
        o
        for o in outcomes
        if isinstance(o, wallets.TopUpOutcome) and o.top_up.status == "succeeded"
    ]
    # The other found the first (in progress, or done) or lost the insert race: a 409.
    others = [o for o in outcomes if o not in succeeded]
    assert len(succeeded) >= 1, outcomes
    for other in others:
        error = other.error if isinstance(other, wallets.TopUpOutcome) else other
        assert getattr(error, "status", None) == 409, outcomes
    assert await _count(database, SandboxCharge) == 1
    assert await _count(database, WalletTopUp) == 1
    assert await _wallet_balance(database, buyer) == 1000
    await _verify(database)


async def test_a_declined_top_up_adds_nothing_and_is_the_same_failure_on_retry(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_chargeCustomerFail")

    first = await _top_up(database, gateway, creators[0], customers[0], 2000, request_key="k")
    again = await _top_up(database, gateway, creators[0], customers[0], 2000, request_key="k")

    assert first.error is not None
    assert again.error is not None
    assert first.error.problem()["decline_code"] == "card_declined"
    assert (first.top_up.status, first.top_up.decline_code) == ("failed", "card_declined")
    assert again.top_up.id == first.top_up.id
    assert await _wallet_balance(database, buyer) == 0
    assert await _count(database, SandboxCharge) == 1
    assert await _count(database, WalletTransaction) == 0
    assert await _balance(database, ledger.wallet_account(buyer)) == {}


async def test_a_crash_after_the_top_up_charge_is_credited_once_by_the_worker(
    database: Database,
    gateway: SandboxGateway,
    clock: FrozenClock,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")

    class Crash(Exception):
        pass

    async def die(*_: Any, **__: Any) -> None:
        raise Crash

    with monkeypatch.context() as crashing:
        crashing.setattr(wallets, "complete_top_up", die)
        with pytest.raises(Crash):
            await _top_up(database, gateway, creators[0], customers[0], 1500, request_key="k")
    assert await _wallet_balance(database, buyer) == 0
    # The retry finds the top-up waiting for the gateway's answer: nothing charged again.
    waiting = await _top_up(database, gateway, creators[0], customers[0], 1500, request_key="k")
    assert (waiting.top_up.status, waiting.error is not None) == ("processing", True)
    assert waiting.error is not None
    assert waiting.error.status == 409

    clock.advance(timedelta(minutes=3))
    restarted = SandboxGateway(DatabaseChargeStore(database))
    await Worker(database, clock, settings=settings, gateway=restarted).run_once()
    await Worker(database, clock, settings=settings, gateway=restarted).run_once()

    done = await _top_up(database, gateway, creators[0], customers[0], 1500, request_key="k")
    assert (done.top_up.id, done.top_up.status, done.error) == (
        waiting.top_up.id,
        "succeeded",
        None,
    )
    assert await _wallet_balance(database, buyer) == 1500
    async with database.unit_of_work() as session:
        [(key, calls)] = (
            await session.execute(select(SandboxCharge.idempotency_key, SandboxCharge.calls))
        ).all()
    assert (key, calls) == (f"{waiting.top_up.id}:attempt:1", 2)
    assert await _count(database, WalletTransaction) == 1
    await _verify(database)


# Paying from the wallet ------------------------------------------------------------------------


async def test_paying_from_the_wallet_moves_the_liability_to_the_creator_once(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")
    await _top_up(database, gateway, creators[0], customers[0], 2000)

    paid = await _pay(database, buyer, creators[1], 300, "in_1")
    again = await _pay(database, buyer, creators[1], 300, "in_1")
    with pytest.raises(wallets.WalletPaymentConflict):
        await _pay(database, buyer, creators[1], 400, "in_1")
    with pytest.raises(wallets.InsufficientWalletBalance):
        await _pay(database, buyer, creators[0], 1701, "in_2")

    assert again.transaction.id == paid.transaction.id
    assert (paid.split.gross, paid.split.platform_fee, paid.split.creator) == (300, 45, 255)
    assert (paid.transaction.amount, paid.transaction.balance_after) == (-300, 1700)
    assert await _wallet_balance(database, buyer) == 1700
    assert await _balance(database, ledger.wallet_account(buyer)) == {"usd": 1700}
    assert await _balance(database, ledger.creator_account(creators[1])) == {"usd": 255}
    assert await _balance(database, ledger.creator_account(creators[0])) == {}
    assert await _balance(database, ledger.PLATFORM_FEES) == {"usd": 45 - 88}
    await _verify(database)


async def test_two_concurrent_debits_that_together_exceed_the_balance_one_succeeds(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")
    await _top_up(database, gateway, creators[0], customers[0], 1000)

    outcomes = await asyncio.gather(
        _pay(database, buyer, creators[0], 600, "in_a"),
        _pay(database, buyer, creators[1], 600, "in_b"),
        return_exceptions=True,
    )

    paid = [o for o in outcomes if isinstance(o, wallets.WalletPayment)]
    refused = [o for o in outcomes if isinstance(o, wallets.InsufficientWalletBalance)]
    assert (len(paid), len(refused)) == (1, 1), outcomes
    assert await _wallet_balance(database, buyer) == 400
    assert await _balance(database, ledger.wallet_account(buyer)) == {"usd": 400}
    assert await _count(database, WalletTransaction, WalletTransaction.type == "payment") == 1
    await _verify(database)


async def test_a_payment_below_the_threshold_tops_the_wallet_up_through_the_worker(
    database: Database, gateway: SandboxGateway, clock: FrozenClock, settings: Settings
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")
    await _top_up(database, gateway, creators[0], customers[0], 1000)
    async with database.unit_of_work() as session:
        await wallets.set_auto_top_up(
            session,
            creator_id=creators[0],
            customer_id=customers[0],
            currency="usd",
            threshold=500,
            amount=2000,
            payment_method_id=None,
            now=T0,
        )
    await _pay(database, buyer, creators[1], 400, "in_1")  # 600 left: above
    assert (
        await _count(database, work.WorkItem, work.WorkItem.kind == wallets.AUTO_TOP_UP_KIND) == 0
    )
    await _pay(database, buyer, creators[1], 300, "in_2")  # 300 left: below
    await _pay(database, buyer, creators[1], 100, "in_3")  # still below: one top-up waits
    assert (
        await _count(database, work.WorkItem, work.WorkItem.kind == wallets.AUTO_TOP_UP_KIND) == 1
    )

    worker = Worker(database, clock, settings=settings, gateway=gateway)
    await worker.run_once()
    await worker.run_once()

    assert await _wallet_balance(database, buyer) == 2200
    async with database.unit_of_work() as session:
        automatic = (
            (await session.execute(select(WalletTopUp).where(WalletTopUp.is_automatic)))
            .scalars()
            .all()
        )
    assert [(t.amount, t.status, t.creator_id) for t in automatic] == [
        (2000, "succeeded", creators[0])
    ]
    assert (
        await _count(database, work.WorkItem, work.WorkItem.kind == wallets.AUTO_TOP_UP_KIND) == 0
    )
    await _verify(database)


async def test_a_creator_sees_top_ups_and_its_own_wallet_payments_only(
    database: Database, gateway: SandboxGateway
) -> None:
    creators, customers, buyer = await _two_creators_one_buyer(database)
    await _save(database, gateway, creators[0], customers[0], "tok_visa")
    top = await _top_up(database, gateway, creators[0], customers[0], 1000)
    await _pay(database, buyer, creators[0], 300, "in_kiln")
    await _pay(database, buyer, creators[1], 200, "in_zines")

    async with database.unit_of_work() as session:
        seen = {
            creator: [
                (t.type, t.amount, t.reference_id)
                for t in (
                    await wallets.list_transactions(
                        session,
                        creator_id=creator,
                        customer_id=customer,
                        limit=10,
                        starting_after=None,
                    )
                ).data
            ]
            for creator, customer in zip(creators, customers, strict=True)
        }
        with pytest.raises(accounts.CustomerNotFound):
            await wallets.get_wallets(session, creator_id=creators[1], customer_id=customers[0])
        wallet = (await session.execute(select(Wallet))).scalar_one()

    assert seen[creators[0]] == [("payment", -300, "in_kiln"), ("top_up", 1000, top.top_up.id)]
    assert seen[creators[1]] == [("payment", -200, "in_zines"), ("top_up", 1000, top.top_up.id)]
    assert wallet.balance == 500
