"""``kit.flush.flush_together``: what a flush writes, in one statement on PostgreSQL, read
back the same on both databases; an update that matches no row still fails; a flush it
cannot write as one statement is an ordinary flush."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest
from sqlalchemy import Table, delete, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from stallholder.accounts.models import Creator
from stallholder.checkout.models import CheckoutLineItem, CheckoutSession
from stallholder.events.models import Event
from stallholder.kit.db import Database
from stallholder.kit.flush import flush_together
from stallholder.ledger.models import JournalLine, JournalTransaction
from tests.conftest import Api
from tests.statements import shape, statements

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _event(n: int, creator_id: str) -> Event:
    # ``dispatched_at`` is left unset: written as NULL, as the ORM would.
    return Event(
        id=f"evt_{n}",
        creator_id=creator_id,
        type="order.paid",
        api_version="2026-11-01",
        data={"n": n, "nested": {"amount": 300}},
        created_at=T0,
    )


async def _delete_meanwhile(session: AsyncSession, event_id: str) -> None:
    """Delete an event the session has changed, leaving the changes unflushed: an update
    of it will match no row."""
    with session.no_autoflush:
        await session.execute(
            delete(Event).where(Event.id == event_id),
            execution_options={"synchronize_session": False},
        )


async def _flushed(database: Database, session: AsyncSession) -> list[str]:
    """``flush_together``, and what it sent."""
    with statements(database, as_=shape) as sent:
        await flush_together(session)
    return sent


async def test_new_rows_and_an_update_are_one_statement_and_read_back_the_same(
    api: Api, database: Database
) -> None:
    creator_id = (await api.creator(name="Before"))["id"]
    async with database.unit_of_work() as session:
        creator = (
            await session.execute(select(Creator).where(Creator.id == creator_id))
        ).scalar_one()
        creator.display_name = "After"
        events = [_event(1, creator_id), _event(2, creator_id)]
        session.add_all(events)
        sent = await _flushed(database, session)
        assert sent == (["UPDATE creators", "INSERT events"] if database.is_sqlite else ["WITH w0"])
        # Handed over as written: persistent, nothing left to flush.
        assert all(inspect(event).persistent for event in events)
        assert not session.new
        assert not session.sync_session.is_modified(creator)
        assert events[0].dispatched_at is None
        with statements(database) as again:
            await session.flush()
        assert again == []
    async with database.unit_of_work() as session:
        renamed = await session.get(Creator, creator_id)
        assert renamed is not None
        assert renamed.display_name == "After"
        written = (
            (await session.execute(select(Event).where(Event.id.in_(["evt_1", "evt_2"]))))
            .scalars()
            .all()
        )
        assert sorted((e.id, e.data, e.dispatched_at, e.created_at) for e in written) == [
            ("evt_1", {"n": 1, "nested": {"amount": 300}}, None, T0),
            ("evt_2", {"n": 2, "nested": {"amount": 300}}, None, T0),
        ]


async def test_every_row_is_clean_afterwards_one_set_to_the_value_it_had_too(
    api: Api, database: Database
) -> None:
    # A row left marked changed made every later query's autoflush, and the commit, run
    # the ORM's flush over it again: a confirm ran three such flushes for nothing.
    first = (await api.creator(name="First"))["id"]
    second = (await api.creator(name="Second"))["id"]
    async with database.unit_of_work() as session:
        renamed = await session.get(Creator, first)
        untouched = await session.get(Creator, second)
        assert renamed is not None
        assert untouched is not None
        renamed.display_name = "Renamed"
        untouched.email = untouched.email  # set, not changed
        session.add(_event(5, first))
        await flush_together(session)
        assert list(session.sync_session.dirty) == []
        assert not session.new
    async with database.unit_of_work() as session:
        names = (await session.execute(select(Creator.id, Creator.display_name))).all()
        assert dict(names)[first] == "Renamed"


async def test_an_update_of_a_row_gone_meanwhile_fails_as_a_flush_would(
    api: Api, database: Database
) -> None:
    creator_id = (await api.creator())["id"]
    async with database.unit_of_work() as session:
        session.add(_event(3, creator_id))
    async with database.unit_of_work() as session:
        gone = await session.get(Event, "evt_3")
        assert gone is not None
        gone.dispatched_at = T0
        session.add(_event(4, creator_id))
        await _delete_meanwhile(session, "evt_3")
        with pytest.raises(StaleDataError):
            await flush_together(session)


async def test_keys_the_database_makes_are_read_back_and_other_rows_join_the_statement(
    api: Api, database: Database
) -> None:
    creator_id = (await api.creator())["id"]
    async with database.unit_of_work() as session:
        session.add(
            JournalTransaction(
                id="txn_1",
                creator_id=creator_id,
                kind="adjustment",
                reference_id="ref_1",
                description="test",
                created_at=T0,
            )
        )
        await session.flush()
        lines = [
            JournalLine(
                creator_id=creator_id,
                transaction_id="txn_1",
                account=f"test:{n}",
                currency="usd",
                amount=amount,
            )
            for n, amount in ((1, 5), (2, -5))
        ]
        session.add_all(lines)
        # A row that is not the ORM's, written with the flush.
        other = {"id": "evt_9", "creator_id": creator_id, "type": "order.paid"}
        extra = (
            cast(Table, Event.__table__),
            {**other, "api_version": "2026-11-01", "data": {"n": 9}, "created_at": T0},
        )
        with statements(database, as_=shape) as sent:
            await flush_together(session, also=[extra])
        assert sent == (
            ["INSERT journal_lines", "INSERT journal_lines", "INSERT events"]
            if database.is_sqlite
            else ["WITH w0"]
        )
        ids = [line.id for line in lines]
        assert all(isinstance(id_, int) for id_ in ids)
        assert ids[0] != ids[1]
        assert all(inspect(line).persistent for line in lines)
        with statements(database) as again:
            await session.flush()
        assert again == []
    async with database.unit_of_work() as session:
        written = (
            await session.execute(
                select(JournalLine.id, JournalLine.account, JournalLine.amount)
                .where(JournalLine.transaction_id == "txn_1")
                .order_by(JournalLine.account)
            )
        ).all()
        assert [tuple(row) for row in written] == [(ids[0], "test:1", 5), (ids[1], "test:2", -5)]
        event = await session.get(Event, "evt_9")
        assert event is not None
        assert (event.type, event.data, event.dispatched_at) == ("order.paid", {"n": 9}, None)


async def test_a_new_row_with_new_children_is_one_statement(api: Api, database: Database) -> None:
    creator, price = await api.shop()
    made = await api.session(creator["secret_key"], price=price["id"], email="a@example.com")
    async with database.unit_of_work() as session:
        template = (
            await session.execute(
                select(CheckoutLineItem).where(CheckoutLineItem.session_id == made["id"])
            )
        ).scalar_one()
        checkout = CheckoutSession(
            id="cs_together",
            creator_id=creator["id"],
            status="open",
            client_secret="cs_together_secret",
            currency="usd",
            amount_subtotal=3000,
            amount_total=3000,
            expires_at=T0,
            created_at=T0,
            line_items=[
                CheckoutLineItem(
                    creator_id=creator["id"],
                    position=position,
                    price_id=template.price_id,
                    product_id=template.product_id,
                    variant_id=template.variant_id,
                    sku=template.sku,
                    description=f"line {position}",
                    quantity=1,
                    unit_amount=1500,
                    amount_total=1500,
                )
                for position in (0, 1)
            ],
        )
        session.add(checkout)
        sent = await _flushed(database, session)
        assert sent == (
            [
                "INSERT checkout_sessions",
                "INSERT checkout_line_items",
                "INSERT checkout_line_items",
            ]
            if database.is_sqlite
            else ["WITH w0"]
        )
        # The children's foreign key set from the parent, their keys read back.
        assert [item.session_id for item in checkout.line_items] == ["cs_together"] * 2
        assert all(isinstance(item.id, int) for item in checkout.line_items)
        assert checkout.mode == "payment"  # a scalar default, applied
        with statements(database) as again:
            await session.flush()
            assert len(checkout.line_items) == 2  # loaded, not read again
        assert again == []
    async with database.unit_of_work() as session:
        read = (
            await session.execute(
                select(CheckoutLineItem.position, CheckoutLineItem.description)
                .where(CheckoutLineItem.session_id == "cs_together")
                .order_by(CheckoutLineItem.position)
            )
        ).all()
        assert [tuple(row) for row in read] == [(0, "line 0"), (1, "line 1")]


async def test_a_child_with_a_relationship_of_its_own_is_flushed_as_usual(
    api: Api, database: Database
) -> None:
    creator_id = (await api.creator())["id"]
    async with database.unit_of_work() as session:
        transaction = JournalTransaction(
            id="txn_2",
            creator_id=creator_id,
            kind="adjustment",
            reference_id="ref_2",
            description="test",
            created_at=T0,
            lines=[
                JournalLine(creator_id=creator_id, account="test:1", currency="usd", amount=5),
                JournalLine(creator_id=creator_id, account="test:2", currency="usd", amount=-5),
            ],
        )
        session.add(transaction)
        sent = await _flushed(database, session)
        # The lines' ``transaction`` (a many-to-one) changed too: the ORM's own flush.
        assert sent == (
            [
                "BEGIN",
                "INSERT journal_transactions",
                "INSERT journal_lines",
                "INSERT journal_lines",
            ]
            if database.is_sqlite
            else ["INSERT journal_transactions", "INSERT journal_lines"]  # many rows, one
        )
    async with database.unit_of_work() as session:
        amounts = (
            await session.execute(
                select(JournalLine.amount).where(JournalLine.transaction_id == "txn_2")
            )
        ).scalars()
        assert sorted(amounts) == [-5, 5]


async def test_rows_of_one_table_alike_are_one_part_and_keep_their_own_keys(
    api: Api, database: Database
) -> None:
    # Rows of one table with the same columns are one multi-row CTE: seven journal lines
    # are one insert whose generated keys are handed back to the lines in their order,
    # and three creators' renames one update that must match all three.
    creators = [(await api.creator(name=f"C{n}"))["id"] for n in range(3)]
    async with database.unit_of_work() as session:
        session.add(
            JournalTransaction(
                id="txn_7",
                creator_id=creators[0],
                kind="adjustment",
                reference_id="ref_7",
                description="test",
                created_at=T0,
            )
        )
        await session.flush()
        amounts = [3, -1, 7, -2, 5, -4, -8]
        lines = [
            JournalLine(
                creator_id=creators[0],
                transaction_id="txn_7",
                account=f"test:{n}",
                currency="usd",
                amount=amount,
            )
            for n, amount in enumerate(amounts)
        ]
        loaded = [await session.get(Creator, creator_id) for creator_id in creators]
        session.add_all(lines)
        for n, renamed in enumerate(loaded):
            assert renamed is not None
            renamed.display_name = f"Renamed {n}"
        with statements(database) as sent:
            await flush_together(session)
        if not database.is_sqlite:
            (statement,) = sent
            assert statement.count('INSERT INTO "journal_lines"') == 1
            assert statement.count('UPDATE "creators"') == 1
        ids = [line.id for line in lines]
        assert len(set(ids)) == 7
    async with database.unit_of_work() as session:
        written = (
            await session.execute(
                select(JournalLine.id, JournalLine.account, JournalLine.amount).where(
                    JournalLine.transaction_id == "txn_7"
                )
            )
        ).all()
        assert sorted(tuple(row) for row in written) == sorted(
            (id_, f"test:{n}", amount)
            for n, (id_, amount) in enumerate(zip(ids, amounts, strict=True))
        )
        names = dict((await session.execute(select(Creator.id, Creator.display_name))).all())
        assert [names[creator_id] for creator_id in creators] == [
            "Renamed 0",
            "Renamed 1",
            "Renamed 2",
        ]


async def test_an_update_of_many_alike_fails_when_one_row_is_gone(
    api: Api, database: Database
) -> None:
    creator_id = (await api.creator())["id"]
    async with database.unit_of_work() as session:
        session.add_all([_event(n, creator_id) for n in (11, 12, 13)])
    async with database.unit_of_work() as session:
        events = [await session.get(Event, f"evt_{n}") for n in (11, 12, 13)]
        for event in events:
            assert event is not None
            event.dispatched_at = T0
        session.add(_event(14, creator_id))
        await _delete_meanwhile(session, "evt_12")
        with pytest.raises(StaleDataError):
            await flush_together(session)
    async with database.unit_of_work() as session:
        left = (await session.execute(select(Event.id, Event.dispatched_at))).all()
        assert sorted(left) == [("evt_11", None), ("evt_12", None), ("evt_13", None)]
