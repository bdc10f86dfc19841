"""The time-travel property suite over the service, with a test clock (ADR 0009, 0010):
random plans, zones (daylight saving in both hemispheres, UTC+14, UTC−11), anchors on the
28th to 31st, leap years, trials, pauses, skips and cancellations over five simulated
years. The clock is advanced through them with the real renewal and charging code, and
the invoices it made are compared with the reference model of
``tests/unit/test_billing_time_travel.py`` (written independently of ``periods``):
exactly one invoice per due period, none skipped, none duplicated, each for the plan's
amount and paid once at the gateway."""

from __future__ import annotations

import asyncio
import calendar
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from stallholder.accounts import service as accounts
from stallholder.billing import cancellation, clocks, lifecycle, tasks
from stallholder.billing.models import Invoice
from stallholder.kit.db import Database
from stallholder.kit.errors import DomainError
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import SandboxCharge
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.settings import Settings
from tests import factories
from tests.unit.test_billing_time_travel import (
    ZONES,
    reference_boundaries,
    reference_instant,
)

YEARS = 5
# Actions happen in the five years; the clock then runs a day past them.
HORIZON = timedelta(days=YEARS * 365 + 1)
PLANS = [("month", 1), ("month", 1), ("month", 2), ("month", 3), ("year", 1), ("week", 4)]
Action = tuple[int, str]  # (seconds after the start, what)


@dataclass(frozen=True)
class Story:
    interval: str
    count: int
    zone_name: str
    start_wall: datetime
    trial_days: int
    amount: int
    actions: list[Action]


@st.composite
def stories(draw: st.DrawFn) -> Story:
    interval, count = draw(st.sampled_from(PLANS))
    year = draw(st.integers(2023, 2027))
    month = draw(st.integers(1, 12))
    day = draw(st.sampled_from([28, 29, 30, 31, 1, 15]))
    day = min(day, calendar.monthrange(year, month)[1])
    hour = draw(st.sampled_from([0, 1, 2, 3, 12, 23]))
    horizon = YEARS * 365 * 86400
    # Action times are whole minutes plus 17 s after the start: never exactly a boundary.
    times = draw(st.lists(st.integers(1, horizon // 60), max_size=6, unique=True))
    kinds = draw(
        st.lists(
            st.sampled_from(["pause", "resume", "skip", "cancel", "undo_cancel"]),
            min_size=len(times),
            max_size=len(times),
        )
    )
    return Story(
        interval=interval,
        count=count,
        zone_name=draw(st.sampled_from(ZONES)),
        start_wall=datetime(year, month, day, hour, 30),  # noqa: DTZ001 (a wall time)
        trial_days=draw(st.sampled_from([0, 0, 0, 7, 30])),
        amount=draw(st.integers(50, 5000)),
        actions=sorted(zip([t * 60 + 17 for t in times], kinds, strict=True)),
    )


def expected_invoices(
    story: Story, start: datetime, applied: list[tuple[datetime, str]]
) -> list[tuple[int, datetime, int]]:
    """The reference: periods from the trial's end, less those paused, skipped or after a
    cancellation took effect."""
    until = start + HORIZON + timedelta(seconds=1)  # advancing runs work due at its target
    start_wall = start.astimezone(ZoneInfo(story.zone_name)).replace(tzinfo=None)
    anchor = reference_instant(start_wall + timedelta(days=story.trial_days), story.zone_name)
    anchor_wall = anchor.astimezone(ZoneInfo(story.zone_name)).replace(tzinfo=None)
    bounds = reference_boundaries(anchor_wall, story.zone_name, story.interval, story.count, until)

    def following(at: datetime) -> int:
        return next((i for i, b in enumerate(bounds) if b > at), len(bounds))

    pauses: list[tuple[datetime, datetime | None]] = []
    skipped: set[int] = set()
    cancel_index: int | None = None
    for at, what in applied:
        if what == "pause":
            pauses.append((at, None))
        elif what == "resume":
            pauses[-1] = (pauses[-1][0], at)
        elif what == "skip":
            skipped.add(following(at))
        elif what == "cancel":
            cancel_index = following(at)
        elif what == "undo_cancel":
            cancel_index = None
    found = []
    for index, boundary in enumerate(bounds):
        if cancel_index is not None and index >= cancel_index:
            break
        if any(begin <= boundary and (end is None or boundary < end) for begin, end in pauses):
            continue
        if index in skipped:
            continue
        found.append((index, boundary, story.amount))
    return found


async def _run(url: str, story: Story) -> None:
    database = Database(url)
    gateway = SandboxGateway(DatabaseChargeStore(database))
    config = Settings(database_url=url, worker_retry_jitter=0.0)
    start = reference_instant(story.start_wall, story.zone_name)
    try:
        async with database.unit_of_work() as session:
            creator = await factories.create_creator(session, now=start)
            price = await factories.create_plan(
                session,
                creator_id=creator.id,
                now=start,
                unit_amount=story.amount,
                interval=story.interval,
                interval_count=story.count,
                trial_days=story.trial_days,
            )
            clock = await clocks.create_clock(
                session, creator_id=creator.id, frozen_time=start, name=None, now=start
            )
            customer = await accounts.create_customer(
                session,
                creator_id=creator.id,
                email="r@example.com",
                name=None,
                time_zone=story.zone_name,
                now=start,
                test_clock_id=clock.id,
            )
        policy = tasks.policy_from(config)
        subscription_id, _ = await factories.subscribe(
            database,
            gateway,
            creator_id=creator.id,
            customer_id=customer.id,
            price_id=price.id,
            policy=policy,
            now=start,
        )
        applied: list[tuple[datetime, str]] = []
        changes = {
            "pause": cancellation.pause,
            "resume": cancellation.resume,
            "undo_cancel": cancellation.undo_cancellation,
        }
        for seconds, what in story.actions:
            at = start + timedelta(seconds=seconds)
            await clocks.advance(
                database,
                settings=config,
                gateway=gateway,
                creator_id=creator.id,
                clock_id=clock.id,
                frozen_time=at,
            )
            try:
                async with database.unit_of_work() as session:
                    if what == "skip":
                        await cancellation.skip_next_cycle(
                            session,
                            creator_id=creator.id,
                            subscription_id=subscription_id,
                            skip=True,
                            now=at,
                        )
                    elif what == "cancel":
                        await cancellation.cancel(
                            session,
                            creator_id=creator.id,
                            subscription_id=subscription_id,
                            at_period_end=True,
                            reason=None,
                            now=at,
                        )
                    else:
                        await changes[what](
                            session,
                            creator_id=creator.id,
                            subscription_id=subscription_id,
                            now=at,
                        )
            except (DomainError, lifecycle.InvalidTransition):
                continue
            applied.append((at, what))
        await clocks.advance(
            database,
            settings=config,
            gateway=gateway,
            creator_id=creator.id,
            clock_id=clock.id,
            frozen_time=start + HORIZON,
        )
        async with database.unit_of_work() as session:
            made = (
                await session.execute(
                    select(
                        Invoice.period_index,
                        Invoice.period_start,
                        Invoice.amount_due,
                        Invoice.status,
                    )
                    .where(Invoice.subscription_id == subscription_id)
                    .order_by(Invoice.period_index)
                )
            ).all()
            charges = (
                (
                    await session.execute(
                        select(SandboxCharge.calls).where(SandboxCharge.creator_id == creator.id)
                    )
                )
                .scalars()
                .all()
            )
        assert [(i, s, a) for i, s, a, _ in made] == expected_invoices(story, start, applied)
        assert {status for *_, status in made} <= {"paid"}
        assert len(charges) == len(made)  # one gateway charge per invoice, asked once
        assert set(charges) <= {1}
    finally:
        await database.dispose()


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(story=stories())
def test_five_years_through_a_test_clock_match_the_reference(
    sqlite_template: Path, tmp_path: Path, story: Story
) -> None:
    path = tmp_path / "time_travel.db"
    shutil.copyfile(sqlite_template, path)
    asyncio.run(_run(f"sqlite:///{path}", story))


@pytest.mark.postgres
@settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(story=stories())
def test_five_years_through_a_test_clock_on_postgres(
    postgres_server_url: str, story: Story
) -> None:
    asyncio.run(_run(postgres_server_url, story))
