"""The time-travel property suite of the pure schedule (ADR 0009): random plans, zones
(with daylight saving, UTC+14 and UTC−11), anchors on the 28th to 31st, leap years,
trials, pauses, skips and cancellations over five simulated years. Every invoice the
schedule makes is compared with a reference model written here, independently: months
are stepped one at a time, days counted by hand and local times resolved by searching
the zone's offsets, not by ``zoneinfo``'s fold."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from stallholder.billing import periods, schedule
from stallholder.billing.periods import Plan

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Pacific/Auckland",
    "Pacific/Kiritimati",  # UTC+14
    "Pacific/Niue",  # UTC−11
    "Pacific/Pago_Pago",  # UTC−11
    "Australia/Lord_Howe",  # a 30-minute daylight-saving change
    "America/St_Johns",  # a half-hour offset with daylight saving
]
YEARS = 5


# The reference model ----------------------------------------------------------------------


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        is_leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if is_leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _offsets_near(zone: ZoneInfo, wall: datetime) -> set[timedelta]:
    """Every UTC offset the zone uses within two days of ``wall``."""
    found: set[timedelta] = set()
    for hours in range(-48, 49, 6):
        probe = (wall - timedelta(hours=hours)).replace(tzinfo=UTC)
        offset = probe.astimezone(zone).utcoffset()
        assert offset is not None
        found.add(offset)
    return found


def reference_instant(wall: datetime, zone_name: str) -> datetime:
    """The instant of a local wall time: the earliest instant showing it; for a time the
    clocks skipped, the wall time read with the offset in force before the skip."""
    zone = ZoneInfo(zone_name)
    matches = []
    for offset in _offsets_near(zone, wall):
        instant = (wall - offset).replace(tzinfo=UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            matches.append(instant)
    if matches:
        return min(matches)
    # Skipped: the offset an hour … two days earlier (before the change).
    before = (wall - timedelta(days=2)).replace(tzinfo=UTC).astimezone(zone).utcoffset()
    assert before is not None
    return (wall - before).replace(tzinfo=UTC)


def reference_boundaries(
    anchor_wall: datetime, zone_name: str, interval: str, count: int, until: datetime
) -> list[datetime]:
    """Boundaries from the anchor until ``until``, stepping month by month (or day by day)."""
    found: list[datetime] = []
    year, month = anchor_wall.year, anchor_wall.month
    day = anchor_wall.date()
    while True:
        if interval in ("day", "week"):
            wall = datetime.combine(day, anchor_wall.time())
            days = count * (7 if interval == "week" else 1)
            day = day + timedelta(days=days)
        else:
            wall = anchor_wall.replace(
                year=year, month=month, day=min(anchor_wall.day, _days_in_month(year, month))
            )
            months = count * (12 if interval == "year" else 1)
            for _ in range(months):
                month += 1
                if month == 13:
                    year, month = year + 1, 1
        instant = reference_instant(wall, zone_name)
        if instant >= until:
            return found
        found.append(instant)


@dataclass(frozen=True)
class Scenario:
    interval: str
    count: int
    zone_name: str
    start_wall: datetime
    trial_days: int
    amount: int
    pauses: list[tuple[int, int]]  # (from day, length in days) after the start
    skipped: frozenset[int]
    cancel_after_days: int | None


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    interval = draw(st.sampled_from(["day", "week", "month", "month", "month", "year"]))
    count = {
        "day": draw(st.integers(1, 45)),
        "week": draw(st.integers(1, 8)),
        "month": draw(st.sampled_from([1, 1, 1, 2, 3, 6, 12])),
        "year": 1,
    }[interval]
    year = draw(st.integers(2023, 2028))
    month = draw(st.integers(1, 12))
    day = draw(st.one_of(st.integers(28, 31), st.integers(1, 31)))
    day = min(day, _days_in_month(year, month))
    # Early-morning hours on purpose: that is when clocks change.
    hour = draw(st.one_of(st.integers(1, 3), st.integers(0, 23)))
    minute = draw(st.sampled_from([0, 15, 30, 45]))
    pauses = draw(st.lists(st.tuples(st.integers(0, 365 * YEARS), st.integers(1, 120)), max_size=3))
    return Scenario(
        interval=interval,
        count=count,
        zone_name=draw(st.sampled_from(ZONES)),
        start_wall=datetime(year, month, day, hour, minute),  # noqa: DTZ001 (a wall time)
        trial_days=draw(st.one_of(st.just(0), st.integers(1, 60))),
        amount=draw(st.integers(1, 100_000)),
        pauses=pauses,
        skipped=frozenset(draw(st.lists(st.integers(0, 80), max_size=5))),
        cancel_after_days=draw(st.one_of(st.none(), st.integers(0, 365 * YEARS))),
    )


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_five_years_of_invoices_match_the_reference_model(scenario: Scenario) -> None:
    zone_name = scenario.zone_name
    start = reference_instant(scenario.start_wall, zone_name)
    until = start + timedelta(days=365 * YEARS)
    terms = schedule.Terms(
        plan=Plan(scenario.interval, scenario.count),  # type: ignore[arg-type]
        zone_name=zone_name,
        start=start,
        amount=scenario.amount,
        trial_days=scenario.trial_days,
    )
    pauses = [
        schedule.Pause(start=start + timedelta(days=at), end=start + timedelta(days=at + length))
        for at, length in scenario.pauses
    ]
    cancel_at = (
        None
        if scenario.cancel_after_days is None
        else start + timedelta(days=scenario.cancel_after_days)
    )
    changes = schedule.Changes(pauses=pauses, skipped=scenario.skipped, cancel_at=cancel_at)
    made = schedule.due_invoices(terms, changes, until=until)

    # The reference: the trial ends trial_days local days later at the same wall time.
    start_wall = start.astimezone(ZoneInfo(zone_name)).replace(tzinfo=None)
    anchor = reference_instant(start_wall + timedelta(days=scenario.trial_days), zone_name)
    anchor_wall = anchor.astimezone(ZoneInfo(zone_name)).replace(tzinfo=None)
    bounds = reference_boundaries(anchor_wall, zone_name, scenario.interval, scenario.count, until)
    expected: list[tuple[int, datetime, int]] = []
    for index, boundary in enumerate(bounds):
        if cancel_at is not None and boundary >= cancel_at:
            break
        if any(pause.start <= boundary < pause.end for pause in pauses if pause.end):
            continue
        if index in scenario.skipped:
            continue
        expected.append((index, boundary, scenario.amount))
    assert [(due.period.index, due.period.start, due.amount) for due in made] == expected

    # Exactly one invoice per due period: indexes distinct, every period a day or more.
    assert len({due.period.index for due in made}) == len(made)
    for due in made:
        assert due.period.end > due.period.start
        assert due.period.end == periods.boundary(
            anchor=terms.anchor, zone_name=zone_name, plan=terms.plan, n=due.period.index + 1
        )


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_periods_tile_time_without_gaps_or_overlaps(scenario: Scenario) -> None:
    """Consecutive periods share their boundary, each is non-empty, and any instant in
    the five years belongs to exactly the period ``period_at`` names."""
    zone_name = scenario.zone_name
    anchor = reference_instant(scenario.start_wall, zone_name)
    plan = Plan(scenario.interval, scenario.count)  # type: ignore[arg-type]
    listed = periods.periods_between(
        anchor=anchor,
        zone_name=zone_name,
        plan=plan,
        start=anchor,
        end=anchor + timedelta(days=365 * YEARS),
    )
    for earlier, later in itertools.pairwise(listed):
        assert earlier.end == later.start
        assert earlier.index + 1 == later.index
        assert earlier.start < earlier.end
    for found in listed[:: max(1, len(listed) // 20)]:
        for instant in (found.start, found.end - timedelta(seconds=1)):
            assert (
                periods.period_at(anchor=anchor, zone_name=zone_name, plan=plan, instant=instant)
                == found
            )
