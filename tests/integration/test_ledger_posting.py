"""``ledger.post`` writes the same rows on both databases: on PostgreSQL in one statement
(the transaction and its lines as CTEs of the balances' upsert), on SQLite in three."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import Split
from stallholder.ledger.models import Balance, JournalLine, JournalTransaction
from tests import factories
from tests.conftest import T0
from tests.statements import statements

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def test_a_posting_writes_its_transaction_lines_and_balances_and_adds_to_balances(
    database: Database,
) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
    split = Split(gross=1500, platform_fee=75, processor_fee=74)
    ids = []
    for n in range(2):
        async with database.unit_of_work() as session:
            with statements(database) as sent:
                ids.append(
                    await ledger.post(
                        session,
                        creator_id=creator.id,
                        kind="payment",
                        reference_id=f"ord_{n}",
                        currency="usd",
                        lines=ledger.payment_lines(creator.id, split),
                        description=f"Payment for order {n}",
                        now=T0,
                    )
                )
            writes = [s for s in sent if not s.startswith(("BEGIN", "SAVEPOINT", "RELEASE"))]
            assert len(writes) == (3 if database.is_sqlite else 1)

    async with database.read() as session:
        transactions = (
            await session.execute(select(JournalTransaction).order_by(JournalTransaction.id))
        ).scalars()
        lines = (
            await session.execute(
                select(JournalLine).order_by(JournalLine.transaction_id, JournalLine.id)
            )
        ).scalars()
        balances = (await session.execute(select(Balance))).scalars()
        report = await ledger.verify(session)
        assert [
            (t.id, t.creator_id, t.kind, t.reference_id, t.description, t.created_at)
            for t in transactions
        ] == [
            (ids[0], creator.id, "payment", "ord_0", "Payment for order 0", T0),
            (ids[1], creator.id, "payment", "ord_1", "Payment for order 1", T0),
        ]
        assert [(li.transaction_id, li.account, li.currency, li.amount) for li in lines] == [
            (txn, account, "usd", amount)
            for txn in sorted(ids)
            for account, amount in [
                (ledger.BUYER_FUNDS, -1500),
                (ledger.creator_account(creator.id), 1351),
                (ledger.PLATFORM_FEES, 75),
                (ledger.PROCESSOR_FEES, 74),
            ]
        ]
        assert {(b.account, b.currency): b.amount for b in balances} == {
            (ledger.BUYER_FUNDS, "usd"): -3000,
            (ledger.creator_account(creator.id), "usd"): 2702,
            (ledger.PLATFORM_FEES, "usd"): 150,
            (ledger.PROCESSOR_FEES, "usd"): 148,
        }
        assert report.is_clean
