"""Billing periods on the customer's local calendar (ADR 0009). Pure: no I/O, no clock.

A subscription's periods are counted from its **anchor**: an instant, read as a wall-clock
time in the customer's IANA zone. Period ``n`` is ``[boundary(n), boundary(n + 1))``,
half-open, and ``boundary(n)`` is computed from the anchor directly, never by adding to
the previous boundary:

- ``day`` and ``week``: the anchor's local date plus ``n × count`` days (× 7), at the
  anchor's local time of day;
- ``month`` and ``year``: the anchor's local year and month plus ``n × count`` months
  (× 12), on the anchor's day of the month, clamped to the month's last day. Because every
  boundary starts again from the anchor, a clamped day recovers: 31 Jan → 28 (or 29) Feb
  → 31 Mar, and 29 Feb 2024 → 28 Feb 2025 → 29 Feb 2028 for a yearly plan.

The local wall time is then turned into an instant in the zone:

- a **nonexistent** local time (the hour skipped when clocks go forward) is read with the
  offset in force just before the change, i.e. it moves forward by the length of the gap:
  02:30 on the day Berlin springs forward is 03:30 CEST (01:30 UTC);
- an **ambiguous** local time (the hour repeated when clocks go back) is its first
  occurrence (``fold=0``, the earlier instant): 02:30 on the day Berlin falls back is
  02:30 CEST (00:30 UTC).

Boundaries of consecutive periods are at least a local day apart, and a daylight-saving
change moves an instant by an hour or so, so boundaries strictly increase: a change of
offset never duplicates or skips a period; a period that spans one is an hour longer or
shorter in elapsed time. (A zone that skipped a whole calendar day, as Pacific/Apia did
on 30 December 2011, would make a daily period of that day empty; no zone has done so
since, and the schedule below never bills an empty period.)

Trials end ``trial_days`` local days after the start, at the start's local time; billing
then anchors at the trial's end, as Stripe does.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Interval = Literal["day", "week", "month", "year"]
INTERVALS: tuple[Interval, ...] = ("day", "week", "month", "year")
# The longest cycle is a year, as catalog prices (and Stripe) allow.
MAX_INTERVAL_COUNT = {"day": 365, "week": 52, "month": 12, "year": 1}


@dataclass(frozen=True, slots=True)
class Plan:
    """How often a price recurs: every ``count`` ``interval``\\s."""

    interval: Interval
    count: int = 1

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS:
            raise ValueError(f"interval must be one of {INTERVALS}, not {self.interval!r}")
        if not 1 <= self.count <= MAX_INTERVAL_COUNT[self.interval]:
            raise ValueError(
                f"interval_count for {self.interval} must be 1 to "
                f"{MAX_INTERVAL_COUNT[self.interval]}, not {self.count}"
            )


@dataclass(frozen=True, slots=True)
class Period:
    """Period ``index`` of a schedule: ``[start, end)``, both aware UTC instants."""

    index: int
    start: datetime
    end: datetime

    def __contains__(self, instant: datetime) -> bool:
        return self.start <= instant < self.end


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def zone(name: str) -> ZoneInfo:
    """The IANA zone; raises ``ValueError`` for an unknown name."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as error:
        raise ValueError(f"unknown IANA time zone {name!r}") from error


def local_wall_time(instant: datetime, zone_name: str) -> datetime:
    """``instant`` as a naive wall-clock time in the zone."""
    _require_aware("instant", instant)
    return instant.astimezone(zone(zone_name)).replace(tzinfo=None)


def to_instant(wall_time: datetime, zone_name: str) -> datetime:
    """A naive wall-clock time in the zone as an aware UTC instant. A nonexistent time
    moves forward by the gap; an ambiguous one is its first occurrence (module doc)."""
    if wall_time.tzinfo is not None:
        raise ValueError("wall_time must be naive (a local wall-clock time)")
    # fold=0: the offset before a transition. For a time in a gap that is the pre-gap
    # offset (so the instant lands after the gap, shifted forward by its length); for a
    # repeated time it is the first occurrence.
    return wall_time.replace(tzinfo=zone(zone_name), fold=0).astimezone(UTC)


def add_months(day: date, months: int, *, anchor_day: int) -> date:
    """The date ``months`` after ``day``'s month on ``anchor_day``, clamped to that
    month's last day."""
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(anchor_day, calendar.monthrange(year, month)[1]))


def local_boundary(anchor_wall: datetime, plan: Plan, n: int) -> datetime:
    """Boundary ``n`` as a local wall-clock time (naive), counted from the anchor's."""
    steps = n * plan.count
    if plan.interval == "day":
        return anchor_wall + timedelta(days=steps)
    if plan.interval == "week":
        return anchor_wall + timedelta(weeks=steps)
    months = steps if plan.interval == "month" else steps * 12
    day = add_months(anchor_wall.date(), months, anchor_day=anchor_wall.day)
    return datetime.combine(day, anchor_wall.time())


def boundary(*, anchor: datetime, zone_name: str, plan: Plan, n: int) -> datetime:
    """The instant period ``n`` starts (and period ``n - 1`` ends)."""
    return to_instant(local_boundary(local_wall_time(anchor, zone_name), plan, n), zone_name)


def period(*, anchor: datetime, zone_name: str, plan: Plan, n: int) -> Period:
    """Period ``n`` (``n ≥ 0``) of the schedule anchored at ``anchor``."""
    if n < 0:
        raise ValueError("period index must be 0 or more")
    wall = local_wall_time(anchor, zone_name)
    return Period(
        index=n,
        start=to_instant(local_boundary(wall, plan, n), zone_name),
        end=to_instant(local_boundary(wall, plan, n + 1), zone_name),
    )


def _approximate_days(plan: Plan) -> float:
    per = {"day": 1.0, "week": 7.0, "month": 30.436875, "year": 365.2425}
    return per[plan.interval] * plan.count


def period_at(*, anchor: datetime, zone_name: str, plan: Plan, instant: datetime) -> Period:
    """The period containing ``instant`` (which must not be before the anchor).

    Found by estimating the index from the average period length and correcting it, so
    the cost does not grow with the subscription's age."""
    _require_aware("instant", instant)
    start = boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=0)
    if instant < start:
        raise ValueError("instant is before the schedule's first period")
    elapsed_days = (instant - start).total_seconds() / 86400
    n = max(0, int(elapsed_days / _approximate_days(plan)) - 1)
    while boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=n) > instant:
        n -= 1
    while boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=n + 1) <= instant:
        n += 1
    return period(anchor=anchor, zone_name=zone_name, plan=plan, n=n)


def periods_between(
    *, anchor: datetime, zone_name: str, plan: Plan, start: datetime, end: datetime
) -> list[Period]:
    """The periods that *start* in ``[start, end)``, in order (empty ones left out)."""
    _require_aware("start", start)
    _require_aware("end", end)
    first = boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=0)
    n = (
        0
        if start <= first
        else period_at(anchor=anchor, zone_name=zone_name, plan=plan, instant=start).index
    )
    found: list[Period] = []
    while True:
        candidate = period(anchor=anchor, zone_name=zone_name, plan=plan, n=n)
        if candidate.start >= end:
            return found
        if candidate.start >= start and candidate.end > candidate.start:
            found.append(candidate)
        n += 1


def trial_end(*, start: datetime, zone_name: str, trial_days: int) -> datetime:
    """When a trial of ``trial_days`` local days begun at ``start`` ends."""
    if trial_days < 0:
        raise ValueError("trial_days must be 0 or more")
    wall = local_wall_time(start, zone_name)
    return to_instant(wall + timedelta(days=trial_days), zone_name)


def local_date(instant: datetime, zone_name: str) -> date:
    """The customer's calendar date at ``instant``."""
    return local_wall_time(instant, zone_name).date()


def start_of_local_day(day: date, zone_name: str) -> datetime:
    """The first instant of ``day`` in the zone (midnight, or the first time after a gap
    at midnight)."""
    return to_instant(datetime.combine(day, time()), zone_name)


def next_billing_day(*, at: datetime, zone_name: str, day_of_month: int) -> datetime:
    """The start of the first local day ``day_of_month`` (1 to 28, a day every month has)
    at or after ``at``: where the platform billing day anchors a new subscription, so a
    buyer's subscriptions across creators renew at the same instant (ADR 0020).

    Raises ValueError for a day outside 1 to 28."""
    if not 1 <= day_of_month <= 28:
        raise ValueError("the billing day is a day of the month from 1 to 28")
    _require_aware("at", at)
    today = local_date(at, zone_name)
    candidate = start_of_local_day(date(today.year, today.month, day_of_month), zone_name)
    if candidate < at:
        following = add_months(date(today.year, today.month, 1), 1, anchor_day=day_of_month)
        candidate = start_of_local_day(following, zone_name)
    return candidate
