"""Handled inbox events are kept 30 days, then pruned hourly; events never handled stay."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from stallholder.events import inbox
from stallholder.events.models import InboxEvent
from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _record(database: Database, clock: FrozenClock, external_id: str, handled: bool) -> None:
    async with database.unit_of_work() as session:
        assert await inbox.record(
            session,
            source="channel",
            external_id=external_id,
            type="orders/create",
            payload={},
            now=clock.now(),
        )
        if handled:
            [event] = (
                await session.execute(
                    select(InboxEvent).where(InboxEvent.external_id == external_id)
                )
            ).scalars()
            inbox.mark_processed(event, now=clock.now())


async def _kept(database: Database) -> list[str]:
    async with database.unit_of_work() as session:
        return list(
            (
                await session.execute(select(InboxEvent.external_id).order_by(InboxEvent.id))
            ).scalars()
        )


async def test_handled_events_older_than_30_days_are_pruned_in_batches(
    database: Database, clock: FrozenClock
) -> None:
    for number in range(5):
        await _record(database, clock, f"old-{number}", handled=number != 2)
    clock.advance(timedelta(days=1))
    await _record(database, clock, "new", handled=True)
    clock.advance(timedelta(days=29))  # the old ones are 30 days old, "new" 29

    async with database.unit_of_work() as session:
        assert await inbox.prune_handled(session, before=clock.now() - inbox.RETENTION) == 0
    clock.advance(timedelta(seconds=1))
    async with database.unit_of_work() as session:
        before = clock.now() - inbox.RETENTION
        assert await inbox.prune_handled(session, before=before, batch=3) == 3
        assert await inbox.prune_handled(session, before=before, batch=3) == 1
        assert await inbox.prune_handled(session, before=before, batch=3) == 0

    assert await _kept(database) == ["old-2", "new"]  # never handled: kept


async def test_the_worker_prunes_the_inbox_every_hour(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    await _record(database, clock, "w-1", handled=True)
    async with database.unit_of_work() as session:
        await work.ensure_periodic(session, [inbox.PRUNE_INBOX], now=clock.now())
    worker = Worker(database, clock, settings=settings, kinds=[inbox.PRUNE_INBOX])
    await worker.run_once()
    assert await _kept(database) == ["w-1"]

    clock.advance(timedelta(days=31))
    await worker.run_once()

    assert await _kept(database) == []
    async with database.unit_of_work() as session:
        items = (
            await session.execute(
                select(work.WorkItem).where(work.WorkItem.kind == inbox.PRUNE_KIND)
            )
        ).scalars()
        [item] = list(items)
    assert (item.state, item.due_at) == ("pending", clock.now() + timedelta(hours=1))
