"""The engine for due work (``kit.work``) and the worker that runs it, on SQLite and
PostgreSQL: dedupe, leases, SKIP LOCKED, backoff with jitter, dead work and its retry,
the registry, periodic sweeps (checkout expiry, settlement), the outbox, and waking up."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout import service as checkout_service
from stallholder.checkout import tasks as checkout_tasks
from stallholder.checkout.models import CheckoutSession
from stallholder.events import service as events
from stallholder.events.models import Event
from stallholder.events.tasks import dispatch_events
from stallholder.jobs import worker as worker_module
from stallholder.jobs.worker import Resources, Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.payments import service as payments
from stallholder.settings import Settings
from tests import factories
from tests.conftest import T0, Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _kind(
    name: str, seen: list[dict[str, Any]], *, fail_when: int | None = None, **options: Any
) -> work.Kind[object]:
    async def handle(_context: work.Context[object], item: work.Claimed) -> None:
        seen.append(item.payload)
        if fail_when is not None and item.payload.get("n") == fail_when:
            raise RuntimeError("boom")

    return work.Kind(name=name, handler=handle, **options)


def _worker(
    database: Database, clock: FrozenClock, settings: Settings, *kinds: work.Kind[Resources]
) -> Worker:
    return Worker(database, clock, settings=settings, kinds=kinds, draw=lambda: 0.0)


async def _items(database: Database) -> list[work.WorkItem]:
    async with database.unit_of_work() as session:
        return list(
            (await session.execute(select(work.WorkItem).order_by(work.WorkItem.id))).scalars()
        )


async def _enqueue(database: Database, **fields: Any) -> str | None:
    values: dict[str, Any] = {"kind": "test.k", "payload": {}, "due_at": T0, "now": T0, **fields}
    async with database.unit_of_work() as session:
        return await work.enqueue(session, **values)


async def test_a_live_duplicate_is_not_enqueued_twice(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    first = await _enqueue(database, dedupe_key="once", creator_id="cr_1", payload={"n": 1})
    assert first is not None
    assert await _enqueue(database, dedupe_key="once", payload={"n": 2}) is None
    async with database.unit_of_work() as session:  # twice in one transaction: still one
        assert await work.enqueue(
            session, kind="test.k", payload={}, due_at=T0, now=T0, dedupe_key="twice"
        )
        assert (
            await work.enqueue(
                session, kind="test.k", payload={}, due_at=T0, now=T0, dedupe_key="twice"
            )
            is None
        )
    [once, twice] = await _items(database)
    assert (once.id, once.payload, once.creator_id, once.state) == (
        first,
        {"n": 1},
        "cr_1",
        "pending",
    )
    assert twice.dedupe_key == "twice"

    seen: list[dict[str, Any]] = []
    await _worker(database, clock, settings, _kind("test.k", seen)).run_once()
    assert seen == [{"n": 1}, {}]
    assert await _items(database) == []  # finished work is deleted: the key is free again
    assert await _enqueue(database, dedupe_key="once", payload={"n": 3}) is not None


async def test_a_dead_item_does_not_block_its_key_and_comes_back_with_retry(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    seen: list[dict[str, Any]] = []
    kind = _kind("test.k", seen, fail_when=1, max_attempts=1)
    dead_id = await _enqueue(database, dedupe_key="key", payload={"n": 1})
    await _worker(database, clock, settings, kind).run_once()
    [dead] = await _items(database)
    assert (dead.id, dead.state, dead.attempts, dead.last_error) == (
        dead_id,
        "dead",
        1,
        "RuntimeError: boom",
    )

    live_id = await _enqueue(database, dedupe_key="key", payload={"n": 2})
    assert live_id is not None
    async with database.unit_of_work() as session:
        with pytest.raises(work.WorkNotDead, match=f"{live_id} does the same work"):
            await work.retry(session, work_id=dead_id or "", now=T0)
    await _worker(database, clock, settings, kind).run_once()  # the live one runs
    async with database.unit_of_work() as session:
        revived = await work.retry(session, work_id=dead_id or "", now=T0 + timedelta(hours=1))
    assert (revived.state, revived.attempts, revived.due_at) == (
        "pending",
        0,
        T0 + timedelta(hours=1),
    )
    async with database.unit_of_work() as session:
        with pytest.raises(work.WorkNotDead, match="is pending, not dead"):
            await work.retry(session, work_id=dead_id or "", now=T0)
        with pytest.raises(work.WorkNotFound):
            await work.retry(session, work_id="wrk_nope", now=T0)


async def test_failures_back_off_exponentially_with_jitter_then_die_with_the_last_error(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    seen: list[dict[str, Any]] = []
    kind = _kind("test.k", seen, fail_when=1, max_attempts=3, retry=work.Backoff())
    draws = iter([0.5, 0.999])
    worker = Worker(
        database,
        clock,
        settings=settings.model_copy(update={"worker_retry_jitter": 0.1}),
        kinds=[kind],
        draw=lambda: next(draws),
    )
    await _enqueue(database, payload={"n": 1})

    await worker.run_once()
    [item] = await _items(database)
    # 2 s after the first failure, stretched by 0.1 × 0.5.
    assert (item.state, item.attempts, item.due_at) == ("pending", 1, T0 + timedelta(seconds=2.1))
    clock.set(item.due_at - timedelta(microseconds=1))
    assert await worker.run_once() == 0  # not due yet
    clock.set(item.due_at)
    await worker.run_once()
    [item] = await _items(database)
    # 4 s after the second, stretched by 0.1 × 0.999: within [4 s, 4.4 s).
    assert item.due_at == clock.now() + timedelta(seconds=4 * 1.0999)
    clock.set(item.due_at)
    await worker.run_once()
    [item] = await _items(database)
    assert (item.state, item.attempts, item.last_error) == ("dead", 3, "RuntimeError: boom")
    assert len(seen) == 3
    clock.advance(timedelta(days=1))
    assert await worker.run_once() == 0  # dead work is never claimed


def test_jitter_stays_within_its_bounds() -> None:
    assert work.jittered(timedelta(seconds=10), jitter=0.25, draw=lambda: 0.0) == timedelta(
        seconds=10
    )
    assert work.jittered(timedelta(seconds=10), jitter=0.25, draw=lambda: 0.5) == timedelta(
        seconds=11.25
    )
    highest = work.jittered(timedelta(seconds=10), jitter=0.25, draw=lambda: 0.999999)
    assert timedelta(seconds=12.49) < highest < timedelta(seconds=12.5)
    assert [work.Backoff().delay(n) for n in (1, 2, 3, 11, 12)] == [
        timedelta(seconds=2),
        timedelta(seconds=4),
        timedelta(seconds=8),
        timedelta(seconds=2048),
        timedelta(hours=1),
    ]
    schedule = work.Schedule((timedelta(seconds=5), timedelta(minutes=5)))
    assert [schedule.delay(n) for n in (1, 2, 3)] == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        None,
    ]


async def test_a_lease_that_runs_out_is_claimed_again_and_the_old_claim_settles_nothing(
    database: Database, settings: Settings
) -> None:
    kind = work.Kind(name="test.k", handler=_noop, lease=timedelta(minutes=5))
    await _enqueue(database)
    async with database.unit_of_work() as session:
        [first] = await work.claim(session, kind=kind, now=T0)
    assert first.attempt == 1
    async with database.unit_of_work() as session:
        assert await work.claim(session, kind=kind, now=T0 + timedelta(minutes=4)) == []
    async with database.unit_of_work() as session:
        [second] = await work.claim(session, kind=kind, now=T0 + timedelta(minutes=5))
    assert (second.id, second.attempt) == (first.id, 2)

    async with database.unit_of_work() as session:  # the first worker wakes up and reports
        await work.settle(
            session, kind=kind, outcomes={first.id: None}, items=[first], now=T0, jitter=0
        )
    [item] = await _items(database)
    assert (item.state, item.attempts) == ("running", 2)
    async with database.unit_of_work() as session:
        await work.settle(
            session, kind=kind, outcomes={second.id: None}, items=[second], now=T0, jitter=0
        )
    assert await _items(database) == []


async def _noop(_context: work.Context[object], _item: work.Claimed) -> None:
    return None


@pytest.mark.postgres
async def test_two_claimers_on_postgresql_get_disjoint_rows(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        kind = work.Kind(name="test.k", handler=_noop, batch_size=6)
        async with database.unit_of_work() as session:
            for n in range(10):
                await work.enqueue(session, kind="test.k", payload={"n": n}, due_at=T0, now=T0)
        async with database.unit_of_work() as first:
            mine = await work.claim(first, kind=kind, now=T0)  # rows stay locked: not committed
            async with database.unit_of_work() as second:
                theirs = await work.claim(second, kind=kind, now=T0)
        assert (len(mine), len(theirs)) == (6, 4)
        assert {i.id for i in mine}.isdisjoint({i.id for i in theirs})
        assert sorted(i.payload["n"] for i in mine + theirs) == list(range(10))
    finally:
        await database.dispose()


async def test_a_worker_claims_only_the_kinds_it_has_registered(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    seen: list[dict[str, Any]] = []
    await _enqueue(database, kind="test.mine", payload={"n": 1})
    await _enqueue(database, kind="test.other", payload={"n": 2})
    await _worker(database, clock, settings, _kind("test.mine", seen)).run_once()
    assert seen == [{"n": 1}]
    [left] = await _items(database)
    assert (left.kind, left.state, left.attempts) == ("test.other", "pending", 0)
    registry: work.Registry[object] = work.Registry([_kind("test.mine", seen)])
    with pytest.raises(ValueError, match=r"'test\.mine' is registered already"):
        registry.register(_kind("test.mine", seen))
    with pytest.raises(ValueError, match="exactly one of handler, batch_handler"):
        work.Kind(name="test.none")


async def test_a_periodic_kind_is_due_again_after_each_run(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    seen: list[dict[str, Any]] = []
    kind = _kind("test.hourly", seen, every=timedelta(hours=1))
    async with database.unit_of_work() as session:
        await work.ensure_periodic(session, [kind], now=T0)
        await work.ensure_periodic(session, [kind], now=T0)  # a second worker starting
    worker = _worker(database, clock, settings, kind)
    await worker.run_once()
    [item] = await _items(database)
    assert (len(seen), item.state, item.attempts, item.due_at) == (
        1,
        "pending",
        0,
        T0 + timedelta(hours=1),
    )
    assert await worker.run_once() == 0
    clock.set(T0 + timedelta(hours=1))
    await worker.run_once()
    assert len(seen) == 2


async def test_open_sessions_past_their_time_are_expired_by_the_sweep_with_an_event(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """Nothing is enqueued per session: the sweep finds the open sessions past their
    ``expires_at`` and expires each with ``checkout.session.expired``; a fresh one stays
    open until a run after its time."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_price(session, creator_id=creator.id, now=T0)
        old = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0
        )
        fresh = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0 + timedelta(minutes=20)
        )
    assert await _items(database) == []
    clock.set(old.expires_at)
    worker = Worker(database, clock, settings=settings)

    await worker.run_once()

    async with database.unit_of_work() as session:
        rows = await session.execute(select(CheckoutSession.id, CheckoutSession.status))
        statuses = {row.id: row.status for row in rows}
        events = (await session.execute(select(Event))).scalars().all()
    assert statuses == {old.id: "expired", fresh.id: "open"}
    assert [(e.type, e.data["id"], e.data["status"]) for e in events] == [
        ("checkout.session.expired", old.id, "expired")
    ]
    assert "client_secret" not in events[0].data
    [sweep] = [i for i in await _items(database) if i.kind == "checkout.expire_sessions"]
    assert (sweep.dedupe_key, sweep.state, sweep.due_at) == (
        "checkout.expire_sessions",
        "pending",
        old.expires_at + timedelta(seconds=settings.checkout_expiry_sweep_seconds),
    )
    clock.set(fresh.expires_at)
    await worker.run_once()
    async with database.read() as session:
        again = await session.get(CheckoutSession, fresh.id)
    assert again is not None
    assert again.status == "expired"


async def test_the_expiry_sweep_takes_every_due_session_in_batches_and_skips_one_that_fails(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(checkout_tasks, "EXPIRE_BATCH", 2)
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_price(session, creator_id=creator.id, now=T0)
        ids = [
            (
                await factories.create_session(
                    session, creator_id=creator.id, price_id=price.id, now=T0
                )
            ).id
            for _ in range(5)
        ]
    broken = sorted(ids)[1]
    expire = checkout_service.expire_session

    async def expire_or_fail(session: AsyncSession, *, session_id: str, **rest: Any) -> bool:
        if session_id == broken:
            raise RuntimeError("boom")
        return await expire(session, session_id=session_id, **rest)

    monkeypatch.setattr(checkout_service, "expire_session", expire_or_fail)
    clock.set(T0 + timedelta(hours=1))

    await Worker(database, clock, settings=settings).run_once()

    async with database.read() as session:
        rows = await session.execute(select(CheckoutSession.id, CheckoutSession.status))
        statuses = {row.id: row.status for row in rows}
    assert statuses == {i: "open" if i == broken else "expired" for i in ids}


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

    async def record(db: AsyncSession, batch: Sequence[Event], now: datetime) -> None:
        for event in batch:
            await work.enqueue(db, kind="seen", payload={"event": event.id}, due_at=now, now=now)
            seen.append(event.type)

    async def broken_on_orders(db: AsyncSession, batch: Sequence[Event], now: datetime) -> None:
        if any(event.type == broken for event in batch):
            raise RuntimeError("a bug in one consumer")

    async with database.unit_of_work() as db:
        dispatched = await dispatch_events(db, clock.now(), consumers=[record, broken_on_orders])
    assert dispatched == 1

    async with database.unit_of_work() as db:
        rows = (await db.execute(select(Event.type, Event.dispatched_at))).all()
        seen_work = (
            (await db.execute(select(work.WorkItem.payload).where(work.WorkItem.kind == "seen")))
            .scalars()
            .all()
        )
    assert {type_: at is not None for type_, at in rows} == {
        "checkout.session.completed": True,
        "order.paid": False,
    }
    # The failed event's own writes were rolled back with it.
    assert [j["event"] for j in seen_work] == [
        e.id for e in await _events(database) if e.type != "order.paid"
    ]
    # The batch failed as a whole, then each event went on its own.
    assert sorted(seen) == sorted([*ordered, *ordered])


async def _events(database: Database) -> list[Event]:
    async with database.unit_of_work() as db:
        return list((await db.execute(select(Event).order_by(Event.id))).scalars())


async def test_an_idle_worker_wakes_when_work_is_enqueued(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """Nothing is due and the idle cap is an hour: only the signal from the enqueueing
    commit can wake the worker before the test's wait ends."""
    ran: list[str] = []
    handled = asyncio.Event()

    async def handle(_context: work.Context[object], item: work.Claimed) -> None:
        ran.append(item.payload["name"])
        handled.set()

    worker = Worker(
        database,
        clock,
        settings=settings.model_copy(update={"worker_poll_seconds": 3600.0}),
        kinds=[work.Kind(name="test.wake", handler=handle)],
    )
    task = asyncio.create_task(worker.run())
    try:
        for name in ("first", "second"):
            handled.clear()
            async with database.unit_of_work() as session:
                await work.enqueue(
                    session, kind="test.wake", payload={"name": name}, due_at=T0, now=T0
                )
            await asyncio.wait_for(handled.wait(), timeout=60)
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)
    assert ran == ["first", "second"]


async def test_work_due_beyond_the_wake_horizon_wakes_no_one(database: Database) -> None:
    """A session's expiry or a charge's settlement is due long after it is enqueued: the
    worker's next look (at most ``WAKE_HORIZON`` away) finds it, so no signal is sent."""
    with work.Wakeup() as wakeup:
        await _enqueue(database, due_at=T0 + work.WAKE_HORIZON + timedelta(seconds=1))
        await asyncio.sleep(0)  # a ring is delivered with call_soon_threadsafe
        assert not wakeup._event.is_set()
        await _enqueue(database, due_at=T0 + work.WAKE_HORIZON)
        await asyncio.sleep(0)
        assert wakeup._event.is_set()
    assert len(await _items(database)) == 2


async def test_the_work_a_worker_enqueues_itself_is_done_in_the_same_pass_and_wakes_no_one(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """Dispatching an event queues its email and the work that sends it: the worker finds
    that work in the same pass, so neither a NOTIFY nor an in-process signal is sent (they
    would only bring it round again for an empty pass)."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        await events.emit(
            session,
            creator_id=creator.id,
            type="webhook_endpoint.disabled",
            data={"id": "we_1", "object": "webhook_endpoint", "url": "https://hooks.example/a"},
            now=T0,
        )
    sent: list[str] = []

    class Mail:
        async def send(self, message: Any) -> None:
            sent.append(str(message["To"]))

    worker = Worker(database, clock, settings=settings, mail=Mail())
    sweeps = len([kind for kind in worker.registry if kind.every is not None])
    with work.Wakeup() as wakeup:
        # The event dispatched, its email sent, and each sweep's first run.
        assert await worker.run_once() == 2 + sweeps
        await asyncio.sleep(0)
        assert not wakeup._event.is_set()
    assert sent == [creator.email]
    left = await _items(database)
    assert [item.kind for item in left if item.dedupe_key != item.kind] == []  # only sweeps
    assert await worker.run_once() == 0  # idle: it read when work next comes due
    next_sweep = min(item.due_at for item in left)
    assert await worker._seconds_until_due() == (next_sweep - T0).total_seconds()


async def test_a_worker_never_sleeps_past_the_wake_horizon(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    await _enqueue(database, due_at=T0 + timedelta(hours=24))
    worker = _worker(
        database,
        clock,
        settings.model_copy(update={"worker_poll_seconds": 3600.0}),
        _kind("test.k", []),
    )
    assert await worker._seconds_until_due() == work.WAKE_HORIZON.total_seconds()


@pytest.mark.postgres
async def test_work_due_beyond_the_wake_horizon_sends_no_notify(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {work.NOTIFY_CHANNEL}")
            async with database.unit_of_work() as session:
                await work.enqueue(
                    session,
                    kind="test.k",
                    payload={},
                    due_at=T0 + work.WAKE_HORIZON + timedelta(seconds=1),
                    now=T0,
                )
            # Notifications arrive in commit order: a marker sent after the enqueue comes
            # first only if the enqueue sent none.
            await listener.execute(f"NOTIFY {work.NOTIFY_CHANNEL}, 'marker'")
            received = [n.payload async for n in listener.notifies(timeout=30, stop_after=1)]
        assert received == ["marker"]
    finally:
        await database.dispose()


async def _enqueue_then_roll_back(database: Database) -> None:
    async with database.unit_of_work() as session:
        await work.enqueue(session, kind="test.k", payload={}, due_at=T0, now=T0)
        raise RuntimeError("rolled back")


@pytest.mark.postgres
async def test_enqueueing_on_postgresql_notifies_listeners_when_it_commits(
    postgres_url: str,
) -> None:
    database = Database(postgres_url)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {work.NOTIFY_CHANNEL}")
            with pytest.raises(RuntimeError, match="rolled back"):
                await _enqueue_then_roll_back(database)
            async with database.unit_of_work() as session:
                await work.enqueue(session, kind="test.k", payload={"n": 1}, due_at=T0, now=T0)
            received = [n.channel async for n in listener.notifies(timeout=30, stop_after=1)]
        assert received == [work.NOTIFY_CHANNEL]
    finally:
        await database.dispose()


@pytest.mark.postgres
async def test_a_notification_names_its_process_and_the_kinds_it_enqueued(
    postgres_url: str,
) -> None:
    """A worker reads from the payload whether its own process sent it (and so rang its
    waiters already) and which kinds were enqueued (so only their lanes wake)."""
    database = Database(postgres_url)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {work.NOTIFY_CHANNEL}")
            async with database.unit_of_work() as session:
                await work.enqueue(session, kind="test.b", payload={}, due_at=T0, now=T0)
                await work.enqueue(session, kind="test.a", payload={}, due_at=T0, now=T0)
            async with database.unit_of_work() as session:
                work.wake_after_commit(session, kinds=())  # as ``events.emit`` does
            async with database.unit_of_work() as session:
                await work.enqueue_many(
                    session, [work.NewWork(kind="test.a", payload={}, due_at=T0)], now=T0
                )
                work.wake_after_commit(session)
            payloads = [n.payload async for n in listener.notifies(timeout=30, stop_after=3)]
        assert [work.read_notification(payload) for payload in payloads] == [
            work.Notification(from_this_process=True, kinds=frozenset({"test.a", "test.b"})),
            work.Notification(from_this_process=True, kinds=frozenset()),  # the outbox
            work.Notification(from_this_process=True, kinds=None),  # every kind
        ]
    finally:
        await database.dispose()


def test_a_notification_from_another_process_or_without_a_payload_is_read_as_such() -> None:
    ours = work.notify_payload({"channel.push"})
    token = ours.split(" ")[0]
    other = "0" * len(token)
    assert work.read_notification(ours) == work.Notification(
        from_this_process=True, kinds=frozenset({"channel.push"})
    )
    assert work.read_notification(f"{other} channel.push,send_email") == work.Notification(
        from_this_process=False, kinds=frozenset({"channel.push", "send_email"})
    )
    assert work.read_notification(f"{other} *") == work.Notification(
        from_this_process=False, kinds=None
    )
    assert work.read_notification(f"{other} ") == work.Notification(
        from_this_process=False, kinds=frozenset()
    )
    for bare in ("", "marker"):  # a plain NOTIFY, or another sender: any kind
        assert work.read_notification(bare) == work.Notification(
            from_this_process=False, kinds=None
        )


async def test_a_notification_wakes_the_main_loop_and_only_the_lanes_it_names(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """Every sale's commit notifies (its events); before, each notification woke every
    lane too, and each lane made a claim and a look for nothing: 12 statements a sale."""
    worker = _worker(
        database,
        clock,
        settings,
        _kind("test.main", []),
        _kind("test.lane_a", [], lane=True),
        _kind("test.lane_b", [], lane=True),
    )
    main = work.Wakeup()
    lane_a, lane_b = work.Wakeup(kinds=["test.lane_a"]), work.Wakeup(kinds=["test.lane_b"])
    worker._lane_wakeups = [lane_a, lane_b]

    elsewhere = functools.partial(work.Notification, from_this_process=False)
    cases = {
        "outbox": (elsewhere(kinds=frozenset()), [True, False, False]),
        "lane a": (elsewhere(kinds=frozenset({"test.lane_a"})), [False, True, False]),
        "main": (elsewhere(kinds=frozenset({"test.main"})), [True, False, False]),
        "both": (elsewhere(kinds=frozenset({"test.main", "test.lane_b"})), [True, False, True]),
        "any": (elsewhere(kinds=None), [True, True, True]),
        "ours": (work.Notification(from_this_process=True, kinds=None), [False, False, False]),
    }
    seen = {}
    for name, (notification, _) in cases.items():
        worker._ring(main, notification)
        await asyncio.sleep(0)  # a ring is scheduled on the loop
        seen[name] = [waiter._event.is_set() for waiter in (main, lane_a, lane_b)]
        for waiter in (main, lane_a, lane_b):
            waiter._event.clear()
    assert seen == {name: expected for name, (_, expected) in cases.items()}


async def test_enqueue_many_inserts_large_batches_and_skips_live_duplicates(
    database: Database,
) -> None:
    await _enqueue(database, dedupe_key="k-7")
    many = [
        work.NewWork(kind="test.k", payload={"n": n}, due_at=T0, dedupe_key=f"k-{n}")
        for n in range(1200)
    ]
    async with database.unit_of_work() as session:
        inserted = await work.enqueue_many(session, many, now=T0)
    assert len(inserted) == 1199  # k-7 was live already
    assert len(set(inserted)) == 1199
    assert len(await _items(database)) == 1200


@pytest.mark.postgres
async def test_a_commit_sends_no_notify_while_a_worker_of_every_kind_runs_here(
    postgres_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    """The embedded worker is woken in-process; a NOTIFY would be a round trip in every
    sale for no one. With no such worker running, the same commit notifies again."""
    database = Database(postgres_url)
    settings = Settings(
        data_dir=tmp_path / "var", database_url=postgres_url, worker_poll_seconds=3600.0
    )

    async def enqueue_and_listen(marker: str) -> list[str]:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {work.NOTIFY_CHANNEL}")
            async with database.unit_of_work() as session:
                await work.enqueue(session, kind="test.k", payload={}, due_at=T0, now=T0)
            # Notifications arrive in commit order: the marker comes first only if the
            # enqueue sent none.
            await listener.execute(f"NOTIFY {work.NOTIFY_CHANNEL}, '{marker}'")
            return [n.payload async for n in listener.notifies(timeout=30, stop_after=1)]

    worker = Worker(database, clock, settings=settings)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.listening.wait(), timeout=60)
        assert work.EveryKindHere.is_running()
        assert await enqueue_and_listen("marker") == ["marker"]
        worker.stop()
        await asyncio.wait_for(task, timeout=60)
        assert not work.EveryKindHere.is_running()
        received = await enqueue_and_listen("after")
        assert received != ["after"]
        assert work.read_notification(received[0]).kinds == frozenset({"test.k"})
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)
        await database.dispose()


@pytest.mark.postgres
async def test_a_worker_on_postgresql_wakes_on_notify_from_another_process(
    postgres_url: str, clock: FrozenClock, tmp_path: Path
) -> None:
    """The row and the NOTIFY come over a plain psycopg connection, as from another
    process: no in-process signal fires, and the idle cap is an hour."""
    database = Database(postgres_url)
    handled = asyncio.Event()

    async def handle(_context: work.Context[object], _item: work.Claimed) -> None:
        handled.set()

    worker = Worker(
        database,
        clock,
        settings=Settings(
            data_dir=tmp_path / "var", database_url=postgres_url, worker_poll_seconds=3600.0
        ),
        kinds=[work.Kind(name="test.elsewhere", handler=handle)],
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.listening.wait(), timeout=60)
        async with await psycopg.AsyncConnection.connect(postgres_url) as other:
            await other.execute(
                "INSERT INTO work_items (id, kind, payload, state, due_at, attempts, "
                "created_at, updated_at) VALUES ('wrk_other', 'test.elsewhere', '{}', "
                "'pending', %(t)s, 0, %(t)s, %(t)s)",
                {"t": T0},
            )
            await other.execute(f"NOTIFY {work.NOTIFY_CHANNEL}")
            await other.commit()
        await asyncio.wait_for(handled.wait(), timeout=60)
        worker.stop()
        await asyncio.wait_for(task, timeout=60)
        assert await _items(database) == []
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)
        await database.dispose()


@pytest.mark.parametrize(("looks", "found"), [(1, [0]), (2, [20, 3]), (3, [20, 20, 20, 20])])
async def test_a_settlement_sweep_looks_again_only_while_it_finds_a_full_batch(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    looks: int,
    found: list[int],
) -> None:
    """Nothing is enqueued per charge: each run of the sweep looks for due charges, and
    again only while a look finds a full batch, at most ``SETTLE_LOOKS`` times."""
    answers = iter(found)
    calls: list[int] = []

    async def resolve(*_args: Any, batch: int, **_kwargs: Any) -> int:
        calls.append(batch)
        return next(answers)

    monkeypatch.setattr(worker_module, "resolve_stale_attempts", resolve)
    monkeypatch.setattr(worker_module, "SETTLE_LOOKS", 3)
    await Worker(database, clock, settings=settings).run_once()
    assert calls == [worker_module.SETTLE_BATCH] * looks
    [sweep] = [i for i in await _items(database) if i.kind == payments.SETTLE_KIND]
    assert (sweep.dedupe_key, sweep.state, sweep.due_at) == (
        payments.SETTLE_KIND,
        "pending",
        T0 + timedelta(seconds=settings.settlement_sweep_seconds),
    )


async def test_run_soon_adds_one_extra_run_of_a_periodic_kind_beside_its_schedule(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    seen: list[dict[str, Any]] = []
    kind = _kind("test.sweep", seen, every=timedelta(hours=1))
    worker = _worker(database, clock, settings, kind)
    await worker.run_once()  # the schedule's first run
    assert len(seen) == 1
    async with database.unit_of_work() as session:
        await work.run_soon(session, kind="test.sweep", now=T0)
    assert await worker.run_once() == 1
    assert len(seen) == 2
    [schedule] = await _items(database)  # the extra run's item is gone, the schedule stays
    assert (schedule.dedupe_key, schedule.state, schedule.due_at) == (
        "test.sweep",
        "pending",
        T0 + timedelta(hours=1),
    )
    assert await worker.run_once() == 0


async def test_a_fresh_retry_starts_the_attempts_over_so_a_later_failure_backs_off_from_the_start(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """Work re-run because it changed (a channel push whose stock moved while it wrote) is
    not failing: ``Retry(fresh=True)`` resets its attempts, and the first real failure
    after many re-runs waits the policy's first delay, not its cap."""
    runs: list[int] = []

    async def handle(_context: work.Context[object], item: work.Claimed) -> None:
        runs.append(item.attempt)
        if len(runs) <= 5:
            raise work.Retry("the stock changed while it was written", at=T0, fresh=True)
        raise RuntimeError("502 from the channel")

    kind = work.Kind(
        name="test.push",
        handler=handle,
        retry=work.Backoff(base=timedelta(seconds=1), cap=timedelta(minutes=5)),
        max_attempts=3,
    )
    await _enqueue(database, kind="test.push")
    worker = _worker(database, clock, settings, kind)
    for _ in range(6):
        await worker.run_once()
    [item] = await _items(database)
    # Six runs with max_attempts 3: each fresh retry started the count again, and the
    # failure (attempt 1 of a fresh count) waits the first delay.
    assert runs == [1, 1, 1, 1, 1, 1]
    assert (item.state, item.attempts, item.due_at) == ("pending", 1, T0 + timedelta(seconds=1))


async def test_a_failing_sweep_is_never_given_up_and_runs_again_by_its_next_period(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """A periodic kind's schedule keeps the sweep alive (session expiry, settlement): when
    it fails past ``max_attempts`` it stays pending, due at the earlier of its policy's
    delay and its next period, with the last error kept; a success clears it."""
    failing = True

    async def handle(_context: work.Context[object], _item: work.Claimed) -> None:
        if failing:
            raise RuntimeError("database unreachable")

    kind = work.Kind(
        name="test.sweep",
        handler=handle,
        every=timedelta(seconds=5),
        retry=work.Backoff(base=timedelta(seconds=2), cap=timedelta(hours=1)),
        max_attempts=2,
    )
    worker = _worker(database, clock, settings, kind)
    for n in range(6):
        await worker.run_once()
        [item] = await _items(database)
        # Backoff 2 s, then 4 s, then capped by the 5 s period.
        delay = min(2 * 2**n, 5)
        assert (item.state, item.attempts, item.due_at) == (
            "pending",
            n + 1,
            clock.now() + timedelta(seconds=delay),
        )
        assert item.last_error == "RuntimeError: database unreachable"
        clock.set(item.due_at)
    failing = False
    await worker.run_once()
    [item] = await _items(database)
    assert (item.state, item.attempts, item.last_error) == ("pending", 0, None)
    assert item.due_at == clock.now() + timedelta(seconds=5)
