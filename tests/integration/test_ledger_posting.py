"""``ledger.post`` writes the same rows on both databases: on PostgreSQL in one statement
(the transaction and its lines as CTEs of the balances' upsert), on SQLite in three."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Creator
from stallholder.kit.db import Database, run_final_steps
from stallholder.kit.flush import flush_together
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import Split
from stallholder.ledger.models import Balance, JournalLine, JournalTransaction
from tests import factories
from tests.conftest import T0
from tests.integration.test_savepoints import add_taken_in_a_savepoint, taken_event
from tests.statements import shape, statements

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


async def _post_with_flush(session: AsyncSession, creator_id: str, n: int) -> str:
    return await ledger.post(
        session,
        creator_id=creator_id,
        kind="payment",
        reference_id=f"ord_{n}",
        currency="usd",
        lines=ledger.payment_lines(
            creator_id, Split(gross=1500, platform_fee=75, processor_fee=74)
        ),
        description=f"Payment for order {n}",
        now=T0,
        with_flush=True,
    )


async def _balances(database: Database) -> dict[str, int]:
    async with database.read() as session:
        assert (await ledger.verify(session)).is_clean
        rows = (await session.execute(select(Balance.account, Balance.amount))).all()
    return dict(rows)


async def test_a_posting_with_the_flush_is_part_of_its_statement(database: Database) -> None:
    """``with_flush``: the posting waits for the next ``flush_together`` and is written in
    its statement on PostgreSQL; postings waiting together are one write, each balance
    moved once by their sum; those left waiting are written at the commit."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
    async with database.unit_of_work() as session:
        with statements(database, as_=shape) as sent:
            await _post_with_flush(session, creator.id, 1)
            assert sent == (
                ["BEGIN", "INSERT journal_transactions", "INSERT journal_lines", "INSERT balances"]
                if database.is_sqlite
                else []  # waiting for the flush
            )
            creator.display_name = "Renamed"
            session.add(creator)
            await flush_together(session)
        if not database.is_sqlite:
            assert sent == ["WITH w0_posted_transaction"]  # with the creator's update
    async with database.unit_of_work() as session:
        with statements(database, as_=shape) as sent:
            await _post_with_flush(session, creator.id, 2)
            await _post_with_flush(session, creator.id, 3)  # gathered with the second
        if not database.is_sqlite:
            assert sent == []
        with statements(database) as committed:
            await run_final_steps(session)  # the commit's flush: both in one statement
        if not database.is_sqlite:
            (statement,) = committed
            assert statement.count("INSERT INTO journal_transactions") == 1
            assert statement.count("INSERT INTO balances") == 1
    assert await _balances(database) == {
        ledger.BUYER_FUNDS: -4500,
        ledger.creator_account(creator.id): 3 * 1351,
        ledger.PLATFORM_FEES: 3 * 75,
        ledger.PROCESSOR_FEES: 3 * 74,
    }
    async with database.read() as session:
        references = (
            await session.execute(
                select(JournalTransaction.reference_id).order_by(JournalTransaction.reference_id)
            )
        ).scalars()
        assert list(references) == ["ord_1", "ord_2", "ord_3"]
        renamed = await session.get(Creator, creator.id)
        assert renamed is not None
        assert renamed.display_name == "Renamed"


async def test_a_posting_waiting_for_the_flush_is_gone_with_a_rollback(database: Database) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)

    async def changing_my_mind() -> None:
        async with database.unit_of_work() as session:
            await _post_with_flush(session, creator.id, 1)
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await changing_my_mind()
    async with database.sessionmaker() as session:
        # A session used again after a rollback (the idempotency middleware's, storing a
        # problem) sends nothing the rolled-back work left waiting.
        await session.get(Creator, creator.id)  # the transaction has begun
        await _post_with_flush(session, creator.id, 2)
        await session.rollback()
        await _post_with_flush(session, creator.id, 3)
        await run_final_steps(session)
        await session.commit()
    assert (await _balances(database))[ledger.PLATFORM_FEES] == 75
    async with database.read() as session:
        references = (await session.execute(select(JournalTransaction.reference_id))).scalars()
        assert list(references) == ["ord_3"]


async def _references(database: Database) -> list[str]:
    async with database.read() as session:
        references = (
            await session.execute(
                select(JournalTransaction.reference_id).order_by(JournalTransaction.reference_id)
            )
        ).scalars()
        return list(references)


async def test_rolling_back_to_a_savepoint_forgets_only_the_postings_made_since(
    database: Database,
) -> None:
    # It used to forget every posting waiting for the flush, and the commit's flush with
    # them: the commit then wrote none of those begun before the savepoint.
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
    async with database.unit_of_work() as session:
        await _post_with_flush(session, creator.id, 1)
        savepoint = await session.begin_nested()
        await _post_with_flush(session, creator.id, 2)  # gathered with the first
        await savepoint.rollback()
        await _post_with_flush(session, creator.id, 3)
    assert await _references(database) == ["ord_1", "ord_3"]
    assert (await _balances(database))[ledger.PLATFORM_FEES] == 2 * 75


async def test_a_released_savepoint_leaves_the_postings_waiting(database: Database) -> None:
    # Releasing it used to raise (the commit check took it for the transaction's commit)
    # and forget every waiting posting.
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
    async with database.unit_of_work() as session:
        await _post_with_flush(session, creator.id, 1)
        async with session.begin_nested():
            await _post_with_flush(session, creator.id, 2)
            async with session.begin_nested():
                await _post_with_flush(session, creator.id, 3)
    assert await _references(database) == ["ord_1", "ord_2", "ord_3"]
    assert await _balances(database) == {
        ledger.BUYER_FUNDS: -4500,
        ledger.creator_account(creator.id): 3 * 1351,
        ledger.PLATFORM_FEES: 3 * 75,
        ledger.PROCESSOR_FEES: 3 * 74,
    }


async def test_a_flush_failing_inside_a_savepoint_forgets_only_the_postings_made_in_it(
    database: Database,
) -> None:
    # Its rollback used to forget every posting waiting for the flush; and where no
    # rollback event came (SQLAlchemy only closes such a savepoint), a posting made inside
    # it stayed gathered with the others and was written for work the database undid.
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        session.add(taken_event(creator.id))
    async with database.unit_of_work() as session:
        await _post_with_flush(session, creator.id, 1)

        async def inside() -> None:
            await _post_with_flush(session, creator.id, 2)  # gathered with the first

        with pytest.raises(IntegrityError):
            await add_taken_in_a_savepoint(session, creator.id, first=inside)
        await _post_with_flush(session, creator.id, 3)
    assert await _references(database) == ["ord_1", "ord_3"]
    assert (await _balances(database))[ledger.PLATFORM_FEES] == 2 * 75
