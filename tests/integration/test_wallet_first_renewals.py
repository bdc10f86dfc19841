"""Invoices paid from the buyer's wallet first (ADR 0016), on SQLite and PostgreSQL: a
wallet that holds the whole amount pays it with no card charge, once however often or
concurrently the charge runs; a wallet that holds less pays nothing and the card is
charged the whole amount. The ledger balances and each wallet matches its account."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from stallholder.billing import renewal, tasks
from stallholder.billing.models import Invoice, Subscription
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments import methods
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import SandboxCharge
from stallholder.settings import Settings
from stallholder.wallets import service as wallets
from stallholder.wallets.models import Wallet, WalletTransaction
from tests import factories
from tests.conftest import T0
from tests.integration.test_renewals import _subscribed

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _top_up_for(
    database: Database, gateway: SandboxGateway, *, invoice_id: str, amount: int
) -> None:
    async with database.unit_of_work() as session:
        invoice = await session.get(Invoice, invoice_id)
        assert invoice is not None
        creator_id, customer_id = invoice.creator_id, invoice.customer_id
    outcome = await wallets.top_up(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        amount=amount,
        currency="usd",
        payment_method_id=None,
        request_key=None,
        resolve_after=T0 + timedelta(minutes=5),
        now=T0,
    )
    assert outcome.error is None


async def _books_are_exact(database: Database) -> None:
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean
        _, mismatched = await wallets.mismatched_wallets(session)
        assert mismatched == []


async def test_a_wallet_that_holds_the_amount_pays_the_invoice_once_with_no_card_charge(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    _, invoice_id = await _subscribed(database, gateway)
    await _top_up_for(database, gateway, invoice_id=invoice_id, amount=2000)
    policy = tasks.policy_from(settings)
    results = await asyncio.gather(
        *(
            renewal.charge_invoice(
                database, gateway, invoice_id=invoice_id, attempt=1, policy=policy, now=T0
            )
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert results == [None, None, None]
    # A retried job and a dunning retry that comes late find the invoice paid.
    for attempt in (1, 2):
        await renewal.charge_invoice(
            database, gateway, invoice_id=invoice_id, attempt=attempt, policy=policy, now=T0
        )
    async with database.unit_of_work() as session:
        invoice = await session.get(Invoice, invoice_id)
        assert invoice is not None
        assert (invoice.status, invoice.amount_paid, invoice.attempt_count) == ("paid", 300, 0)
        assert invoice.payment_attempt_id is None
        assert invoice.order_id is None
        payments = (
            (
                await session.execute(
                    select(WalletTransaction).where(WalletTransaction.type == "payment")
                )
            )
            .scalars()
            .all()
        )
        assert [(p.id, p.amount, p.reference_id, p.balance_after) for p in payments] == [
            (invoice.wallet_transaction_id, -300, invoice_id, 1700)
        ]
        (balance,) = (await session.execute(select(Wallet.balance))).scalars().all()
        assert balance == 1700
        keys = (await session.execute(select(SandboxCharge.idempotency_key))).scalars().all()
        assert len(keys) == 1  # the top-up only
        assert not any(key.startswith(invoice_id) for key in keys)
        creator_balance = await ledger.balances_of(
            session, account=ledger.creator_account(invoice.creator_id)
        )
    # The default platform fee on $3 with no processor fee.
    fee = settings.platform_fee_bps * 300 // 10_000 + settings.platform_fee_fixed.get("usd", 0)
    assert creator_balance == {"usd": 300 - fee}
    await _books_are_exact(database)


async def test_in_one_batch_the_wallet_pays_what_it_holds_and_the_card_the_rest(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    """The worker's batch reads its buyers' wallets ahead: one buyer's two $3 invoices
    (with two creators) and a wallet holding $3 pay the first from the wallet and charge
    the card for the second, once, however often the batch runs."""
    _, first = await _subscribed(database, gateway)
    _, second = await _subscribed(database, gateway)
    await _top_up_for(database, gateway, invoice_id=first, amount=300)
    invoice_ids = sorted([first, second])
    for _ in range(2):
        await factories.charge_in_one_batch(
            database, gateway, invoice_ids=invoice_ids, settings=settings, now=T0
        )
    async with database.unit_of_work() as session:
        invoices = [await session.get(Invoice, invoice_id) for invoice_id in invoice_ids]
        assert [
            (i.status, i.amount_paid, i.attempt_count, i.wallet_transaction_id is None)
            for i in invoices
            if i is not None
        ] == [("paid", 300, 0, False), ("paid", 300, 1, True)]
        (balance,) = (await session.execute(select(Wallet.balance))).scalars().all()
        assert balance == 0
        keys = (await session.execute(select(SandboxCharge.idempotency_key))).scalars().all()
        assert sorted(key for key in keys if key.startswith("in_")) == [
            f"{invoice_ids[1]}:attempt:1"
        ]
        assert len(keys) == 2  # the top-up and the second invoice
    await _books_are_exact(database)


async def test_a_wallet_that_holds_less_pays_nothing_and_the_card_pays_it_all(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    _, invoice_id = await _subscribed(database, gateway)
    await _top_up_for(database, gateway, invoice_id=invoice_id, amount=299)
    await renewal.charge_invoice(
        database,
        gateway,
        invoice_id=invoice_id,
        attempt=1,
        policy=tasks.policy_from(settings),
        now=T0,
    )
    async with database.unit_of_work() as session:
        invoice = await session.get(Invoice, invoice_id)
        assert invoice is not None
        assert (invoice.status, invoice.amount_paid, invoice.attempt_count) == ("paid", 300, 1)
        assert invoice.wallet_transaction_id is None
        assert invoice.order_id is not None
        order = await session.get(Order, invoice.order_id)
        assert order is not None
        assert order.amount_total == 300
        (balance,) = (await session.execute(select(Wallet.balance))).scalars().all()
        assert balance == 299
        keys = (await session.execute(select(SandboxCharge.idempotency_key))).scalars().all()
        assert f"{invoice_id}:attempt:1" in keys
        assert len(keys) == 2
    await _books_are_exact(database)


async def test_a_top_up_after_a_failed_charge_pays_the_dunning_retry_from_the_wallet(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    subscription_id, invoice_id = await _subscribed(
        database, gateway, token="tok_chargeCustomerFail"
    )
    policy = tasks.policy_from(settings)
    await renewal.charge_invoice(
        database, gateway, invoice_id=invoice_id, attempt=1, policy=policy, now=T0
    )
    async with database.unit_of_work() as session:
        invoice = await session.get(Invoice, invoice_id)
        assert invoice is not None
        assert (invoice.status, invoice.attempt_count) == ("open", 1)
        assert invoice.next_payment_attempt is not None
        creator_id, customer_id = invoice.creator_id, invoice.customer_id
    # The buyer tops the wallet up with another card.
    card = await methods.save_payment_method(
        database, gateway, creator_id=creator_id, customer_id=customer_id, token="tok_visa", now=T0
    )
    outcome = await wallets.top_up(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        amount=1000,
        currency="usd",
        payment_method_id=card.method.id,
        request_key=None,
        resolve_after=T0 + timedelta(minutes=5),
        now=T0,
    )
    assert outcome.error is None
    await renewal.charge_invoice(
        database, gateway, invoice_id=invoice_id, attempt=2, policy=policy, now=T0
    )
    async with database.unit_of_work() as session:
        invoice = await session.get(Invoice, invoice_id)
        subscription = await session.get(Subscription, subscription_id)
        assert invoice is not None
        assert subscription is not None
        assert (invoice.status, invoice.amount_paid, invoice.attempt_count) == ("paid", 300, 1)
        assert invoice.wallet_transaction_id is not None
        assert invoice.next_payment_attempt is None
        assert subscription.status == "active"
        keys = (await session.execute(select(SandboxCharge.idempotency_key))).scalars().all()
        assert f"{invoice_id}:attempt:2" not in keys
    await _books_are_exact(database)
