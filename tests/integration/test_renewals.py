"""Renewals and invoice charges exactly once (ADR 0010), on SQLite and PostgreSQL: a
renewal job run twice or at once by two workers makes one invoice; a charge run twice,
concurrently, or again after a crash between its steps charges the gateway once per
attempt key and pays the invoice once, with one order and a balanced ledger."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.billing import renewal, subscriptions, tasks
from stallholder.billing.models import Invoice, Subscription
from stallholder.catalog import service as catalog
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments import methods
from stallholder.payments import service as payments
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import SandboxCharge
from stallholder.settings import Settings
from tests import factories
from tests.conftest import T0

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _subscribed(
    database: Database, gateway: SandboxGateway, *, token: str = "tok_visa"
) -> tuple[str, str]:
    """A $3/month subscription created at T0 with its first invoice open: (sub, invoice)."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        product = await catalog.create_product(
            session,
            creator_id=creator.id,
            kind="digital",
            name="Zine club",
            description="",
            status="published",
            variants=[],
            now=T0,
        )
        price = await catalog.create_price(
            session,
            creator_id=creator.id,
            product_id=product.id,
            now=T0,
            spec=catalog.PriceSpec(currency="usd", unit_amount=300, recurring_interval="month"),
        )
        customer = await accounts.create_customer(
            session,
            creator_id=creator.id,
            email="reader@example.com",
            name=None,
            time_zone="Europe/Berlin",
            now=T0,
        )
    await methods.save_payment_method(
        database, gateway, creator_id=creator.id, customer_id=customer.id, token=token, now=T0
    )
    async with database.unit_of_work() as session:
        created = await subscriptions.create_subscription(
            session,
            creator_id=creator.id,
            customer_id=customer.id,
            items=[subscriptions.ItemRequest(price.id, 1)],
            default_payment_method_id=None,
            metadata={},
            consent=None,
            now=T0,
        )
        assert created.invoice is not None
        return created.subscription.id, created.invoice.id


def _policy(settings: Settings) -> renewal.BillingPolicy:
    return tasks.policy_from(settings)


async def _count(database: Database, model: type[object], *where: object) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        return int((await session.execute(statement.where(*where))).scalar_one())  # type: ignore[arg-type]


async def _ledger_is_clean(database: Database) -> bool:
    async with database.unit_of_work() as session:
        return (await ledger.verify(session)).is_clean


async def test_a_charge_run_twice_at_once_charges_once_and_pays_once(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    _, invoice_id = await _subscribed(database, gateway)
    policy = _policy(settings)
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
    # Those that lost the race did nothing; run once more as a retried job would.
    await renewal.charge_invoice(
        database, gateway, invoice_id=invoice_id, attempt=1, policy=policy, now=T0
    )
    async with database.unit_of_work() as session:
        invoice = await session.get(Invoice, invoice_id)
        assert invoice is not None
        assert (invoice.status, invoice.amount_paid, invoice.attempt_count) == ("paid", 300, 1)
        keys = (await session.execute(select(SandboxCharge.idempotency_key))).scalars().all()
    assert keys == [f"{invoice_id}:attempt:1"]
    assert await _count(database, Order, Order.invoice_id == invoice_id) == 1
    assert await _ledger_is_clean(database)


async def test_a_crash_after_recording_the_attempt_is_finished_with_the_same_key(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    _, invoice_id = await _subscribed(database, gateway)
    policy = _policy(settings)
    # Step 1 committed, then the process died before calling the gateway.
    async with database.unit_of_work() as session:
        call = await renewal._begin(
            session, gateway, invoice_id=invoice_id, number=1, policy=policy, now=T0
        )
    assert call is not None
    # And a crash after the gateway answered, before the outcome was recorded.
    await payments.call_gateway(gateway, call)
    # The job runs again (its lease ran out): the gateway is asked again with the key.
    await renewal.charge_invoice(
        database, gateway, invoice_id=invoice_id, attempt=1, policy=policy, now=T0
    )
    async with database.unit_of_work() as session:
        (charge,) = (await session.execute(select(SandboxCharge))).scalars().all()
        invoice = await session.get(Invoice, invoice_id)
    assert (charge.idempotency_key, charge.calls, charge.status) == (
        f"{invoice_id}:attempt:1",
        2,
        "succeeded",
    )
    assert invoice is not None
    assert invoice.status == "paid"
    assert await _count(database, Order) == 1
    assert await _ledger_is_clean(database)


async def test_a_renewal_run_twice_or_by_two_workers_makes_one_invoice(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    subscription_id, invoice_id = await _subscribed(database, gateway)
    await renewal.charge_invoice(
        database, gateway, invoice_id=invoice_id, attempt=1, policy=_policy(settings), now=T0
    )
    async with database.unit_of_work() as session:
        subscription = await session.get(Subscription, subscription_id)
        assert subscription is not None
        due = subscription.current_period_end

    async def renew() -> None:
        async with database.unit_of_work() as session:
            await renewal.renew(session, subscription_id=subscription_id, period_index=1, now=due)

    results = await asyncio.gather(renew(), renew(), return_exceptions=True)
    # On SQLite the second waits for the write lock; on PostgreSQL for the row lock.
    assert [r for r in results if r is not None] == []
    await renew()
    async with database.unit_of_work() as session:
        rows = (
            await session.execute(
                select(Invoice.period_index, Invoice.period_start, Invoice.billing_reason)
                .where(Invoice.subscription_id == subscription_id)
                .order_by(Invoice.period_index)
            )
        ).all()
    # 1 March 13:00 CET → 1 April 13:00 CEST: the same local time on Berlin's calendar.
    assert [tuple(row) for row in rows] == [
        (0, T0, "subscription_create"),
        (1, T0 + timedelta(days=31, hours=-1), "subscription_cycle"),
    ]


async def test_the_worker_renews_and_charges_due_subscriptions_once(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    subscription_id, _ = await _subscribed(database, gateway)
    clock = FrozenClock(T0)
    worker = Worker(database, clock, settings=settings, gateway=gateway)
    await worker.run_once()  # the first invoice's safety-net charge: charged once, now
    clock.set(T0 + timedelta(days=31))
    for _ in range(4):
        await worker.run_once()
    async with database.unit_of_work() as session:
        statuses = (
            await session.execute(
                select(Invoice.period_index, Invoice.status, Invoice.attempt_count)
                .where(Invoice.subscription_id == subscription_id)
                .order_by(Invoice.period_index)
            )
        ).all()
        subscription = await session.get(Subscription, subscription_id)
    assert [tuple(row) for row in statuses] == [(0, "paid", 1), (1, "paid", 1)]
    assert subscription is not None
    assert (subscription.status, subscription.current_period_index) == ("active", 1)
    assert await _count(database, SandboxCharge) == 2
    assert await _count(database, Order) == 2
    assert await _ledger_is_clean(database)
