"""The durable job queue and the worker's sweeps, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout.models import CheckoutSession
from stallholder.events.models import Event
from stallholder.events.tasks import dispatch_events
from stallholder.jobs import queue
from stallholder.jobs.models import Job
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests import factories
from tests.conftest import T0, Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def test_worker_sweep_expires_open_sessions_past_their_time(
    database: Database, clock: FrozenClock
) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_price(session, creator_id=creator.id, now=T0)
        old = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0
        )
        fresh = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0 + timedelta(minutes=20)
        )
    clock.set(T0 + timedelta(minutes=30))

    await Worker(database, clock).run_once()

    async with database.unit_of_work() as session:
        rows = await session.execute(select(CheckoutSession.id, CheckoutSession.status))
        statuses = {row.id: row.status for row in rows}
    assert statuses == {old.id: "expired", fresh.id: "open"}


async def test_jobs_run_once_retry_with_backoff_and_give_up(
    database: Database, clock: FrozenClock
) -> None:
    seen: list[dict[str, Any]] = []

    async def flaky(_session: Any, payload: dict[str, Any], _now: Any) -> None:
        seen.append(payload)
        if payload["n"] == 2:
            raise RuntimeError("boom")

    async with database.unit_of_work() as session:
        await queue.enqueue(session, kind="test.flaky", payload={"n": 1}, due_at=T0, now=T0)
        failing = await queue.enqueue(
            session, kind="test.flaky", payload={"n": 2}, due_at=T0, now=T0, max_attempts=2
        )
        await queue.enqueue(
            session, kind="test.flaky", payload={"n": 3}, due_at=T0 + timedelta(hours=1), now=T0
        )
    worker = Worker(database, clock, handlers={"test.flaky": flaky})

    await worker.run_once()
    assert [p["n"] for p in seen] == [1, 2]
    async with database.unit_of_work() as session:
        job = await session.get(Job, failing.id)
        assert job is not None
        assert (job.status, job.attempts, job.due_at) == ("pending", 1, T0 + timedelta(seconds=2))

    clock.set(T0 + timedelta(seconds=2))
    await worker.run_once()
    assert [p["n"] for p in seen] == [1, 2, 2]
    async with database.unit_of_work() as session:
        job = await session.get(Job, failing.id)
        assert job is not None
        assert (job.status, job.attempts, job.last_error) == ("failed", 2, "RuntimeError('boom')")

    await worker.run_once()
    assert len(seen) == 3  # nothing else due; the hour-later job waits


async def test_two_workers_claim_disjoint_jobs(database: Database, clock: FrozenClock) -> None:
    async with database.unit_of_work() as session:
        for n in range(30):
            await queue.enqueue(session, kind="test.count", payload={"n": n}, due_at=T0, now=T0)
    ran: list[int] = []

    async def count(_session: Any, payload: dict[str, Any], _now: Any) -> None:
        await asyncio.sleep(0.01)
        ran.append(payload["n"])

    workers = [
        Worker(database, clock, batch_size=5, handlers={"test.count": count}) for _ in range(2)
    ]
    while len(ran) < 30:
        done = await asyncio.gather(*(w.run_once() for w in workers))
        assert sum(done) > 0
    assert sorted(ran) == list(range(30))


async def test_an_event_whose_consumer_fails_stays_in_the_outbox_and_holds_up_nothing(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    session = await api.session(creator["secret_key"], price=price["id"])
    assert (await api.confirm(creator["secret_key"], session["id"])).status_code == 200
    seen: list[str] = []
    ordered = [e.type for e in await _events(database)]
    broken = ordered[0]  # the first one fails: the one after it must still go out
    assert broken == "order.paid"

    async def record(db: AsyncSession, event: Event, now: datetime) -> None:
        await queue.enqueue(db, kind="seen", payload={"event": event.id}, due_at=now, now=now)
        seen.append(event.type)

    async def broken_on_orders(db: AsyncSession, event: Event, now: datetime) -> None:
        if event.type == broken:
            raise RuntimeError("a bug in one consumer")

    async with database.unit_of_work() as db:
        dispatched = await dispatch_events(db, clock.now(), consumers=[record, broken_on_orders])
    assert dispatched == 2

    async with database.unit_of_work() as db:
        rows = (await db.execute(select(Event.type, Event.dispatched_at))).all()
        jobs = (await db.execute(select(Job.payload))).scalars().all()
    assert {type_: at is not None for type_, at in rows} == {
        "checkout.session.completed": True,
        "order.paid": False,
    }
    # The failed event's own writes were rolled back with it.
    order_paid = next(e for e in (await _events(database)) if e.type == "order.paid")
    assert [j["event"] for j in jobs] == [
        e.id for e in await _events(database) if e.type != "order.paid"
    ]
    assert order_paid.dispatched_at is None
    assert sorted(seen) == ["checkout.session.completed", "order.paid"]


async def _events(database: Database) -> list[Event]:
    async with database.unit_of_work() as db:
        return list((await db.execute(select(Event).order_by(Event.id))).scalars())
