"""``kit.flush.flush_together``: what a flush writes, in one statement on PostgreSQL, read
back the same on both databases; an update that matches no row still fails; a flush it
cannot write as one statement is an ordinary flush."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, inspect, select
from sqlalchemy.orm.exc import StaleDataError

from stallholder.accounts.models import Creator
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
        with statements(database, as_=shape) as sent:
            await flush_together(session)
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
        with session.no_autoflush:  # the changes stay unflushed while the row goes
            await session.execute(
                delete(Event).where(Event.id == "evt_3"),
                execution_options={"synchronize_session": False},
            )
        with pytest.raises(StaleDataError):
            await flush_together(session)


async def test_a_row_whose_key_the_database_makes_is_flushed_as_usual(
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
        session.add_all(
            [
                JournalLine(
                    creator_id=creator_id,
                    transaction_id="txn_1",
                    account=f"test:{n}",
                    currency="usd",
                    amount=amount,
                )
                for n, amount in ((1, 5), (2, -5))
            ]
        )
        with statements(database, as_=shape) as sent:
            await flush_together(session)
        # A serial id: the ORM's own insert, which reads the ids back.
        assert all(statement.startswith(("INSERT journal_lines", "BEGIN")) for statement in sent)
        assert sent
