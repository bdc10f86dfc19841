"""A savepoint inside a unit of work (``begin_nested``) and what the transaction must
still do before its commit (``kit.db``: its duties, such as writes waiting for the flush,
and its final steps): a savepoint's release keeps them; rolling back to one, or a flush
failing inside one, forgets only what was added since it began. What the transaction read
ahead (``transaction_memo``) is kept through a release and read again after a rollback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events.models import Event
from stallholder.kit.db import (
    Database,
    defer_until_commit,
    transaction_duties,
    transaction_memo,
)
from tests import factories
from tests.conftest import T0

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _step(session: AsyncSession, ran: list[str], name: str) -> None:
    async def run(_session: AsyncSession) -> None:
        ran.append(name)

    defer_until_commit(session, run)


async def test_duties_and_final_steps_from_before_a_savepoint_outlive_it(
    database: Database,
) -> None:
    ran: list[str] = []
    async with database.unit_of_work() as session:
        _step(session, ran, "before")
        transaction_duties(session)["writes"] = ["before"]
        transaction_duties(session)["by invoice"] = {"in_1": {1: "attempt 1"}}
        transaction_memo(session)["read ahead"] = "before"
        savepoint = await session.begin_nested()
        _step(session, ran, "rolled back")
        transaction_duties(session)["writes"].append("rolled back")
        transaction_duties(session)["by invoice"]["in_1"][2] = "attempt 2"
        transaction_duties(session)["only inside"] = True
        await savepoint.rollback()
        assert transaction_duties(session) == {
            "writes": ["before"],
            "by invoice": {"in_1": {1: "attempt 1"}},
        }
        assert transaction_memo(session) == {}  # read again when asked
        transaction_memo(session)["read ahead"] = "again"
        async with session.begin_nested():
            _step(session, ran, "released")
            transaction_duties(session)["writes"].append("released")
        assert transaction_duties(session)["writes"] == ["before", "released"]
        assert transaction_memo(session) == {"read ahead": "again"}
    assert ran == ["before", "released"]
    async with database.unit_of_work() as session:
        assert transaction_duties(session) == {}  # the transaction's own, gone with it
        assert transaction_memo(session) == {}


def taken_event(creator_id: str) -> Event:
    """The event ``add_taken_in_a_savepoint`` collides with."""
    return _event("evt_taken", creator_id)


def _event(event_id: str, creator_id: str) -> Event:
    return Event(
        id=event_id,
        creator_id=creator_id,
        type="order.paid",
        api_version="2026-11-01",
        data={},
        created_at=T0,
    )


async def add_taken_in_a_savepoint(
    session: AsyncSession, creator_id: str, *, first: Callable[[], Awaitable[None]] | None = None
) -> None:
    """In a savepoint: ``first``, then add an event under the id ``evt_taken`` (which must
    exist) and flush. The flush fails and rolls back to the savepoint; the context manager
    then only closes it (no rollback event is sent for the savepoint itself)."""
    async with session.begin_nested():
        if first is not None:
            await first()
        session.add(taken_event(creator_id))
        await session.flush()


async def test_a_flush_failing_inside_a_savepoint_forgets_only_what_was_added_in_it(
    database: Database,
) -> None:
    ran: list[str] = []
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        session.add(taken_event(creator.id))
    async with database.unit_of_work() as session:
        _step(session, ran, "before")
        transaction_duties(session)["writes"] = ["before"]

        async def inside() -> None:
            _step(session, ran, "inside")
            transaction_duties(session)["writes"].append("inside")
            transaction_memo(session)["read ahead"] = "inside"

        with pytest.raises(IntegrityError):
            await add_taken_in_a_savepoint(session, creator.id, first=inside)
        assert transaction_duties(session) == {"writes": ["before"]}
        assert transaction_memo(session) == {}
        session.add(_event("evt_after", creator.id))
    assert ran == ["before"]
    async with database.read() as session:
        assert await session.get(Event, "evt_after") is not None
