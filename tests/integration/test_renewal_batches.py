"""The worker's batches of renewals and charges (``billing.tasks``), on SQLite and
PostgreSQL: a batch reads its rows ahead in one statement per table, so its statements
grow by a fixed number per renewal (counted exactly here: a regression that reads a row
again per renewal shows as a changed count), and reading ahead changes no outcome: each
invoice is charged once, paid once, with one order, its license key, and a clean ledger,
also when one batch holds the same charge twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.billing import tasks
from stallholder.billing.kinds import CHARGE_KIND, RENEW_KIND
from stallholder.billing.models import Invoice
from stallholder.digital import service as digital
from stallholder.digital.models import LicenseKey
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.payments.gateway import Gateway, SandboxGateway
from stallholder.payments.models import SandboxCharge
from stallholder.settings import Settings
from tests import factories
from tests.conftest import T0
from tests.statements import statements

pytestmark = pytest.mark.anyio

RENEWED_AT = T0 + timedelta(days=31)
BUYERS = 3


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@dataclass(frozen=True)
class _Resources:
    settings: Settings
    gateway: Gateway


def _claimed(kind: str, payloads: list[dict[str, Any]]) -> list[work.Claimed]:
    return [
        work.Claimed(
            id=f"wrk_{index}",
            kind=kind,
            payload=payload,
            creator_id=None,
            attempt=1,
            max_attempts=5,
        )
        for index, payload in enumerate(payloads)
    ]


async def _subscribers(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> list[str]:
    """``BUYERS`` buyers (one customer each) on one $3 monthly plan whose product has a
    license key pool, their first invoices paid at T0: the subscriptions' ids."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_plan(session, creator_id=creator.id, now=T0)
        await digital.add_license_keys(
            session,
            creator_id=creator.id,
            product_id=price.product_id,
            keys=[f"KEY-{number}" for number in range(2 * BUYERS)],
            now=T0,
        )
        customers = [
            await accounts.create_customer(
                session,
                creator_id=creator.id,
                email=f"reader{number}@example.com",
                name=None,
                time_zone="Europe/Berlin",
                now=T0,
            )
            for number in range(BUYERS)
        ]
    return [
        (
            await factories.subscribe(
                database,
                gateway,
                creator_id=creator.id,
                customer_id=customer.id,
                price_id=price.id,
                policy=tasks.policy_from(settings),
                now=T0,
            )
        )[0]
        for customer in customers
    ]


async def _renew(context: work.Context[_Resources], subscription_ids: list[str]) -> list[str]:
    """Renew the subscriptions into period 1 as one batch: the period's invoices."""
    outcomes = await tasks.renew(
        context,
        _claimed(RENEW_KIND, [{"subscription": sid, "period": 1} for sid in subscription_ids]),
    )
    assert outcomes == {}
    async with context.database.unit_of_work() as session:
        return list(
            (
                await session.execute(
                    select(Invoice.id)
                    .where(Invoice.period_index == 1, Invoice.subscription_id.in_(subscription_ids))
                    .order_by(Invoice.id)
                )
            ).scalars()
        )


async def _count(database: Database, model: type[object], *where: object) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        return int((await session.execute(statement.where(*where))).scalar_one())  # type: ignore[arg-type]


async def _period_one(database: Database) -> list[tuple[str, int, int]]:
    async with database.unit_of_work() as session:
        rows = await session.execute(
            select(Invoice.status, Invoice.attempt_count, Invoice.amount_paid)
            .where(Invoice.period_index == 1)
            .order_by(Invoice.id)
        )
        return [tuple(row) for row in rows.all()]  # type: ignore[misc]


async def test_a_batch_sends_a_fixed_number_of_statements_per_renewal(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    subscription_ids = await _subscribers(database, gateway, settings)
    context = work.Context(
        database=database,
        clock=FrozenClock(RENEWED_AT),
        resources=_Resources(settings=settings, gateway=gateway),
    )
    # SQLite sends BEGIN IMMEDIATE for each transaction; psycopg begins implicitly, and
    # a transaction that enqueued work due soon wakes the workers with a NOTIFY.
    begin = 1 if database.is_sqlite else 0
    notify = 0 if database.is_sqlite else 1

    with statements(database) as renewing:
        invoice_ids = await _renew(context, subscription_ids)
    # Locking the subscriptions, their items, their customers; then the batch's writes
    # in one flush: on PostgreSQL one statement (ADR 0030), on SQLite the invoices, the
    # subscriptions' updates and the events each in one, and a line per renewal (its key
    # read back); then the work, all of it at once; then the read of the invoices above.
    writes = 3 + BUYERS if database.is_sqlite else 1
    assert len(renewing) == begin + 3 + writes + 1 + notify + (begin + 1)

    with statements(database) as charging:
        outcomes = await tasks.charge_invoice(
            context,
            _claimed(CHARGE_KIND, [{"invoice": iid, "attempt": 1} for iid in invoice_ids]),
        )
    assert outcomes == {f"wrk_{index}": None for index in range(BUYERS)}
    # Step 1: the invoices, their lines, subscriptions, items, customers, payees, grants,
    # cards and wallets, and the buyers' other renewals; then the invoices locked (none
    # can be gathered: one renewal per buyer), their lines and attempts; then every
    # invoice's attempt and update at once (one statement on PostgreSQL, ADR 0030; on
    # SQLite the ORM's flush, an insert and an update of many rows; no settlement work: a
    # sweep finds a charge a crash left processing, ADR 0029).
    step_1 = begin + 13 + (2 if database.is_sqlite else 1)
    # Step 2: the sandbox gateway records each charge in a transaction of its own.
    step_2 = (begin + 1) * BUYERS
    # Step 3: the invoices and subscriptions locked, lines, items, customers, key pools;
    # the attempts' outcomes (one statement on PostgreSQL, one per invoice on SQLite); per
    # invoice the receipt number, the order and its line (one statement on PostgreSQL,
    # three on SQLite), the license key and the journal posting (three statements on
    # SQLite; on PostgreSQL it waits for the flush); then every invoice's update, its
    # events and the postings gathered into one (one statement on PostgreSQL, ADR 0030;
    # on SQLite the ORM flushes each invoice's update and events, two statements, when
    # the next statement is sent); the NOTIFY for the events.
    posting = 3 if database.is_sqlite else 0
    placing = 3 if database.is_sqlite else 1
    settling = 2 if database.is_sqlite else 0
    settled_together = 0 if database.is_sqlite else 1
    recording = BUYERS if database.is_sqlite else 1
    step_3 = (
        begin
        + 6
        + recording
        + (1 + placing + posting + settling) * BUYERS
        + settled_together
        + notify
    )
    assert len(charging) == step_1 + step_2 + step_3

    assert await _period_one(database) == [("paid", 1, 300)] * BUYERS
    assert await _count(database, SandboxCharge) == 2 * BUYERS
    assert await _count(database, Order) == 2 * BUYERS
    assert await _count(database, LicenseKey, LicenseKey.order_id.is_not(None)) == 2 * BUYERS
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean


async def test_a_batch_holding_one_charge_twice_charges_it_once(
    database: Database, gateway: SandboxGateway, settings: Settings
) -> None:
    subscription_ids = await _subscribers(database, gateway, settings)
    context = work.Context(
        database=database,
        clock=FrozenClock(RENEWED_AT),
        resources=_Resources(settings=settings, gateway=gateway),
    )
    invoice_ids = await _renew(context, subscription_ids)
    twice = [invoice_ids[0], *invoice_ids]

    outcomes = await tasks.charge_invoice(
        context, _claimed(CHARGE_KIND, [{"invoice": iid, "attempt": 1} for iid in twice])
    )
    assert outcomes == {f"wrk_{index}": None for index in range(BUYERS + 1)}
    assert await _period_one(database) == [("paid", 1, 300)] * BUYERS
    assert await _count(database, SandboxCharge) == 2 * BUYERS
    assert await _count(database, Order) == 2 * BUYERS
    assert await _count(database, Order, Order.invoice_id == invoice_ids[0]) == 1
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean
