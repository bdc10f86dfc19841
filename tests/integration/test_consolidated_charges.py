"""Consolidated charges exactly once (ADR 0019), on SQLite and PostgreSQL: one buyer's
renewals with three creators, due at the same instant, are one gateway charge whatever
runs twice; a crash between the charge and its outcome is resolved by the payments
settler asking the gateway again with the same key, and the invoices are paid once each,
one order each, the ledger balanced and each creator's share exact."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.billing import consolidation, renewal, tasks
from stallholder.billing.models import ConsolidatedCharge, Invoice
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments import service as payments
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import SandboxCharge
from stallholder.payments.tasks import resolve_stale_attempts
from stallholder.settings import Settings
from tests import factories
from tests.conftest import T0

pytestmark = pytest.mark.anyio
RENEWED_AT = T0 + timedelta(days=31)  # 1 April 12:00 UTC, period 1 of each


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _three_renewals(database: Database, gateway: SandboxGateway) -> list[str]:
    """One buyer with a $3, $5 and $7 monthly plan at three creators, signed up at T0 and
    renewed into period 1: the three renewal invoices, open and not yet attempted."""
    policy = tasks.policy_from(Settings())
    renewals = []
    for unit_amount in (300, 500, 700):
        async with database.unit_of_work() as session:
            creator = await factories.create_creator(session, now=T0)
            price = await factories.create_plan(
                session, creator_id=creator.id, now=T0, unit_amount=unit_amount
            )
            customer = await accounts.create_customer(
                session,
                creator_id=creator.id,
                email="reader@example.com",
                name=None,
                time_zone="UTC",
                now=T0,
            )
        subscription_id, _ = await factories.subscribe(
            database,
            gateway,
            creator_id=creator.id,
            customer_id=customer.id,
            price_id=price.id,
            policy=policy,
            now=T0,
        )
        async with database.unit_of_work() as session:
            invoice = await renewal.renew(
                session, subscription_id=subscription_id, period_index=1, now=RENEWED_AT
            )
            assert invoice is not None
            renewals.append(invoice.id)
    return renewals


async def _count(database: Database, model: type[object], *where: object) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        return int((await session.execute(statement.where(*where))).scalar_one())  # type: ignore[arg-type]


async def _check_paid_once(database: Database, renewals: list[str]) -> None:
    async with database.unit_of_work() as session:
        invoices = (
            (await session.execute(select(Invoice).where(Invoice.id.in_(renewals)))).scalars().all()
        )
        assert sorted((i.status, i.amount_paid) for i in invoices) == [
            ("paid", 300),
            ("paid", 500),
            ("paid", 700),
        ]
        (charge,) = (await session.execute(select(ConsolidatedCharge))).scalars().all()
        assert {i.consolidated_charge_id for i in invoices} == {charge.id}
        # 2.9% of 1500 (43.5, rounded half up: 44) + 30 = 74, split 300:500:700 by
        # largest remainder: 14.8, 24.67, 34.53 -> 15, 25, 34.
        assert sorted(
            (part.amount, part.estimated_processor_fee, part.processor_fee) for part in charge.parts
        ) == [(300, 15, 15), (500, 25, 25), (700, 34, 34)]
        orders = (
            (await session.execute(select(Order).where(Order.invoice_id.in_(renewals))))
            .scalars()
            .all()
        )
        assert sorted((o.amount_total, o.processor_fee) for o in orders) == [
            (300, 15),
            (500, 25),
            (700, 34),
        ]
        assert len({o.payment_attempt_id for o in orders}) == 1
        assert (await ledger.verify(session)).is_clean
    charges = await _count(database, SandboxCharge, SandboxCharge.amount == 1500)
    assert charges == 1


async def test_three_jobs_at_once_make_one_consolidated_charge(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    renewals = await _three_renewals(database, gateway)
    policy = tasks.policy_from(settings)
    await asyncio.gather(
        *(
            consolidation.charge_invoice(
                database, gateway, invoice_id=invoice, attempt=1, policy=policy, now=RENEWED_AT
            )
            for invoice in renewals
        )
    )
    await _check_paid_once(database, renewals)
    # Three signups and one consolidated charge, asked once.
    assert await _count(database, SandboxCharge) == 4
    assert await _count(database, SandboxCharge, SandboxCharge.calls > 1) == 0


async def test_one_batch_holding_them_makes_one_consolidated_charge(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    """The worker's batch reads its invoices' buyers ahead: a buyer with three renewals
    due is gathered as by three jobs, and the batch run again changes nothing."""
    renewals = await _three_renewals(database, gateway)
    for _ in range(2):
        await factories.charge_in_one_batch(
            database, gateway, invoice_ids=list(renewals), settings=settings, now=RENEWED_AT
        )
        await _check_paid_once(database, renewals)
    assert await _count(database, SandboxCharge) == 4
    assert await _count(database, SandboxCharge, SandboxCharge.calls > 1) == 0


async def test_batches_at_once_each_holding_one_of_them_make_one_consolidated_charge(
    database: Database,
    gateway: SandboxGateway,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three workers' batches at once, each with one of the buyer's renewals: none holds
    its invoice locked while gathering the others (that would deadlock on PostgreSQL and
    leave each batch to run again job by job), and one charge pays all three."""
    renewals = await _three_renewals(database, gateway)
    policy = tasks.policy_from(settings)
    results = await asyncio.gather(
        *(
            consolidation.charge_invoices(
                database,
                gateway,
                requests=[consolidation.ChargeRequest(key=invoice, invoice_id=invoice, attempt=1)],
                policy=policy,
                now=RENEWED_AT,
                concurrency=1,
            )
            for invoice in renewals
        )
    )
    assert results == [{invoice: None} for invoice in renewals]
    assert [record.message for record in caplog.records if record.levelname == "ERROR"] == []
    await _check_paid_once(database, renewals)


async def test_a_crash_between_charge_and_outcome_is_settled_with_the_same_key(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    renewals = await _three_renewals(database, gateway)
    policy = tasks.policy_from(settings)
    # Steps 1 and 2, then the worker dies before step 3.
    async with database.unit_of_work() as session:
        call = await consolidation.begin_charge(
            session, gateway, invoice_id=renewals[1], attempt=1, policy=policy, now=RENEWED_AT
        )
    assert call is not None
    assert call.purpose == "consolidated_charge"
    await payments.call_gateway(gateway, call)
    # The other invoices' jobs, before resolve_after, leave the charge to its maker.
    for invoice in renewals:
        await consolidation.charge_invoice(
            database, gateway, invoice_id=invoice, attempt=1, policy=policy, now=RENEWED_AT
        )
    async with database.unit_of_work() as session:
        assert (
            await session.execute(
                select(func.count()).select_from(Invoice).where(Invoice.status == "paid")
            )
        ).scalar_one() == 3  # the signups only
    # After resolve_after the payments settler asks the gateway again with the same key.
    later = RENEWED_AT + timedelta(seconds=settings.payment_resolve_after_seconds + 1)
    resolved = await resolve_stale_attempts(
        database,
        FrozenClock(later),
        gateway=gateway,
        completers={
            consolidation.PURPOSE: functools.partial(consolidation.complete_attempt, policy=policy)
        },
    )
    assert resolved == 1
    await _check_paid_once(database, renewals)
    async with database.unit_of_work() as session:
        (asked,) = (
            await session.execute(select(SandboxCharge.calls).where(SandboxCharge.amount == 1500))
        ).scalars()
    assert asked == 2  # the same key twice, one charge
    # A job run again afterwards changes nothing.
    await consolidation.charge_invoice(
        database, gateway, invoice_id=renewals[0], attempt=1, policy=policy, now=later
    )
    await _check_paid_once(database, renewals)
