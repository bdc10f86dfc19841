"""Test clocks, as Stripe has them (ADR 0010, docs/billing.md).

A clock holds a frozen time. Customers created on it are billed at that time, and their
due work is enqueued under the clock's own kinds (``kinds.kind_for``), which the
real-time worker never registers, so nothing of theirs runs until the clock moves.
Advancing runs, in time order, every item of the clock's kinds due up to the new time,
with the clock set to each item's due time: renewals, charges and retries, reminders
(emails are queued then; the worker sends them). It returns when all of it is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import TestClock
from stallholder.accounts.service import TestClockNotFound
from stallholder.billing import tasks
from stallholder.billing.kinds import clock_kinds
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.errors import Conflict, InvalidRequest
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.payments.gateway import Gateway
from stallholder.settings import Settings


class ClockAdvancing(Conflict):
    slug = "test-clock-advancing"
    title = "The test clock is advancing"
    retry_after_seconds = 2


class ClockAdvanceTooFar(InvalidRequest):
    slug = "test-clock-advance-too-far"
    title = "A test clock advances at most six years at a time"


# One advance runs every renewal on the way; this bounds how much one request does.
MAX_ADVANCE = timedelta(days=6 * 366)


class ClockCannotGoBack(InvalidRequest):
    slug = "test-clock-backwards"
    title = "A test clock only moves forward"


@dataclass(frozen=True, slots=True)
class ClockResources:
    settings: Settings
    gateway: Gateway


def _visible_to(clock: TestClock, creator_id: str | None) -> bool:
    """The admin (``creator_id`` None) sees every clock; a creator its own and the
    platform-wide ones."""
    return creator_id is None or clock.creator_id in (None, creator_id)


async def create_clock(
    session: AsyncSession,
    *,
    creator_id: str | None,
    frozen_time: datetime,
    name: str | None,
    now: datetime,
) -> TestClock:
    """A clock of ``creator_id`` (None: the admin's, usable by every creator)."""
    clock = TestClock(
        id=new_id("clock"),
        creator_id=creator_id,
        name=name,
        frozen_time=frozen_time,
        status="ready",
        created_at=now,
    )
    session.add(clock)
    await session.flush()
    return clock


async def get_clock(session: AsyncSession, *, creator_id: str | None, clock_id: str) -> TestClock:
    """Raises TestClockNotFound, for a clock the caller may not use too."""
    clock = await session.get(TestClock, clock_id, populate_existing=True)
    if clock is None or not _visible_to(clock, creator_id):
        raise TestClockNotFound(f"no test clock {clock_id!r}")
    return clock


async def list_clocks(
    session: AsyncSession, *, creator_id: str | None, limit: int, starting_after: str | None
) -> Page[TestClock]:
    statement = select(TestClock)
    if creator_id is not None:
        statement = statement.where(
            (TestClock.creator_id == creator_id) | TestClock.creator_id.is_(None)
        )
    return await paginate(
        session, statement, id_column=TestClock.id, limit=limit, starting_after=starting_after
    )


async def _next_due(database: Database, kinds: list[str]) -> datetime | None:
    async with database.unit_of_work() as session:
        return (
            await session.execute(
                select(func.min(work.WorkItem.due_at)).where(
                    work.WorkItem.kind.in_(kinds), work.WorkItem.state.in_(work.LIVE_STATES)
                )
            )
        ).scalar_one_or_none()


async def _set_time(database: Database, clock_id: str, at: datetime, *, status: str) -> None:
    async with database.unit_of_work() as session:
        await session.execute(
            update(TestClock).where(TestClock.id == clock_id).values(frozen_time=at, status=status)
        )


async def advance(
    database: Database,
    *,
    settings: Settings,
    gateway: Gateway,
    creator_id: str | None,
    clock_id: str,
    frozen_time: datetime,
) -> TestClock:
    """Move the clock to ``frozen_time``, running all of its due work on the way, and
    return it when done. One advance at a time per clock (``advancing`` is claimed by a
    conditional update).

    Raises:
        TestClockNotFound, ClockCannotGoBack, ClockAdvanceTooFar, ClockAdvancing.
    """
    async with database.unit_of_work() as session:
        clock = await get_clock(session, creator_id=creator_id, clock_id=clock_id)
        if frozen_time < clock.frozen_time:
            raise ClockCannotGoBack(
                f"frozen_time {frozen_time.isoformat()} is before the clock's "
                f"{clock.frozen_time.isoformat()}"
            )
        if frozen_time - clock.frozen_time > MAX_ADVANCE:
            raise ClockAdvanceTooFar(
                f"advance to {(clock.frozen_time + MAX_ADVANCE).isoformat()} or sooner; "
                "then advance again"
            )
        claimed = await session.execute(
            update(TestClock)
            .where(TestClock.id == clock_id, TestClock.status == "ready")
            .values(status="advancing")
            .returning(TestClock.id)
        )
        if claimed.scalar_one_or_none() is None:
            raise ClockAdvancing(f"test clock {clock_id} is advancing; retry when it is ready")
        current = clock.frozen_time
    names = clock_kinds(clock_id)
    kinds = tasks.kinds(test_clock_id=clock_id)
    reached = False
    try:
        while (due := await _next_due(database, names)) is not None and due <= frozen_time:
            current = max(current, due)
            await _set_time(database, clock_id, current, status="advancing")
            context = work.Context(
                database=database,
                clock=FrozenClock(current),
                resources=ClockResources(settings=settings, gateway=gateway),
            )
            await work.run_due(database, kinds, context, now=current)
        reached = True
    finally:
        # A failure leaves the clock where its work had got to, ready to advance again.
        await _set_time(database, clock_id, frozen_time if reached else current, status="ready")
    async with database.unit_of_work() as session:
        return await get_clock(session, creator_id=creator_id, clock_id=clock_id)
