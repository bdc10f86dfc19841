"""Billing periods on the local calendar (ADR 0009): exact boundaries for month ends, leap
years, daylight saving in both hemispheres and the zones at the ends of the day."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from stallholder.billing import periods
from stallholder.billing.periods import Period, Plan


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    zone_name: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0
) -> datetime:
    wall = datetime(year, month, day, hour, minute)  # noqa: DTZ001 (a local wall time)
    return periods.to_instant(wall, zone_name)


def boundaries(anchor: datetime, zone_name: str, plan: Plan, count: int) -> list[datetime]:
    return [
        periods.boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=n) for n in range(count)
    ]


def test_the_31st_clamps_to_short_months_and_recovers() -> None:
    assert boundaries(utc(2024, 1, 31, 12), "UTC", Plan("month"), 6) == [
        utc(2024, 1, 31, 12),
        utc(2024, 2, 29, 12),  # leap year
        utc(2024, 3, 31, 12),  # back on the 31st: counted from the anchor
        utc(2024, 4, 30, 12),
        utc(2024, 5, 31, 12),
        utc(2024, 6, 30, 12),
    ]
    assert boundaries(utc(2025, 1, 31), "UTC", Plan("month"), 3) == [
        utc(2025, 1, 31),
        utc(2025, 2, 28),
        utc(2025, 3, 31),
    ]


@pytest.mark.parametrize(
    ("day", "february"),
    [(28, 28), (29, 28), (30, 28), (31, 28)],
)
def test_anchors_late_in_the_month_land_on_the_last_day_of_february(
    day: int, february: int
) -> None:
    anchor = utc(2025, 1, day, 8)
    assert periods.boundary(anchor=anchor, zone_name="UTC", plan=Plan("month"), n=1) == utc(
        2025, 2, february, 8
    )
    assert periods.boundary(anchor=anchor, zone_name="UTC", plan=Plan("month"), n=2) == utc(
        2025, 3, day, 8
    )


def test_a_leap_day_yearly_plan_falls_back_to_the_28th_and_returns_in_leap_years() -> None:
    assert boundaries(utc(2024, 2, 29, 6), "UTC", Plan("year"), 5) == [
        utc(2024, 2, 29, 6),
        utc(2025, 2, 28, 6),
        utc(2026, 2, 28, 6),
        utc(2027, 2, 28, 6),
        utc(2028, 2, 29, 6),
    ]


def test_quarterly_and_fortnightly_counts() -> None:
    assert boundaries(utc(2025, 11, 30), "UTC", Plan("month", 3), 4) == [
        utc(2025, 11, 30),
        utc(2026, 2, 28),
        utc(2026, 5, 30),
        utc(2026, 8, 30),
    ]
    assert boundaries(utc(2025, 12, 25, 18), "UTC", Plan("week", 2), 3) == [
        utc(2025, 12, 25, 18),
        utc(2026, 1, 8, 18),
        utc(2026, 1, 22, 18),
    ]


def test_a_monthly_plan_in_berlin_keeps_its_local_time_across_both_changes() -> None:
    anchor = local("Europe/Berlin", 2026, 1, 31, 9, 0)
    assert anchor == utc(2026, 1, 31, 8)
    assert boundaries(anchor, "Europe/Berlin", Plan("month"), 11) == [
        utc(2026, 1, 31, 8),  # 09:00 CET
        utc(2026, 2, 28, 8),
        utc(2026, 3, 31, 7),  # 09:00 CEST (summer time from 29 March)
        utc(2026, 4, 30, 7),
        utc(2026, 5, 31, 7),
        utc(2026, 6, 30, 7),
        utc(2026, 7, 31, 7),
        utc(2026, 8, 31, 7),
        utc(2026, 9, 30, 7),
        utc(2026, 10, 31, 8),  # 09:00 CET again (from 25 October)
        utc(2026, 11, 30, 8),
    ]


def test_a_daily_plan_in_berlin_over_spring_forward_moves_the_missing_time_forward() -> None:
    anchor = local("Europe/Berlin", 2026, 3, 27, 2, 30)
    assert boundaries(anchor, "Europe/Berlin", Plan("day"), 4) == [
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        # 02:30 does not exist on 29 March: it is 03:30 CEST, 01:30 UTC (one hour forward).
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]
    # The period that contains the change is 23 elapsed hours; none is skipped.
    second = periods.period(anchor=anchor, zone_name="Europe/Berlin", plan=Plan("day"), n=2)
    assert (second.end - second.start).total_seconds() == 23 * 3600


def test_a_daily_plan_in_berlin_over_fall_back_takes_the_first_occurrence() -> None:
    anchor = local("Europe/Berlin", 2026, 10, 24, 2, 30)
    assert boundaries(anchor, "Europe/Berlin", Plan("day"), 3) == [
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two 02:30s
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    first = periods.period(anchor=anchor, zone_name="Europe/Berlin", plan=Plan("day"), n=1)
    assert (first.end - first.start).total_seconds() == 25 * 3600


def test_new_york_spring_forward_and_fall_back() -> None:
    anchor = local("America/New_York", 2026, 3, 7, 2, 30)
    assert boundaries(anchor, "America/New_York", Plan("day"), 3) == [
        utc(2026, 3, 7, 7, 30),
        utc(2026, 3, 8, 7, 30),  # 02:30 is skipped on 8 March: 03:30 EDT
        utc(2026, 3, 9, 6, 30),
    ]
    anchor = local("America/New_York", 2026, 10, 31, 1, 30)
    assert boundaries(anchor, "America/New_York", Plan("day"), 3) == [
        utc(2026, 10, 31, 5, 30),
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first of two
        utc(2026, 11, 2, 6, 30),
    ]


def test_auckland_changes_the_other_way_round_the_year() -> None:
    anchor = local("Pacific/Auckland", 2026, 3, 5, 10, 0)
    assert boundaries(anchor, "Pacific/Auckland", Plan("month"), 3) == [
        utc(2026, 3, 4, 21),  # 10:00 NZDT (+13)
        utc(2026, 4, 4, 22),  # 10:00 NZST (+12) from 5 April
        utc(2026, 5, 4, 22),
    ]
    # Spring forward on 27 September 2026: 02:00 → 03:00.
    anchor = local("Pacific/Auckland", 2026, 9, 26, 2, 30)
    assert boundaries(anchor, "Pacific/Auckland", Plan("day"), 3) == [
        utc(2026, 9, 25, 14, 30),
        utc(2026, 9, 26, 14, 30),  # 03:30 NZDT
        utc(2026, 9, 27, 13, 30),
    ]


def test_kiritimati_utc_plus_14_bills_on_its_own_calendar_day() -> None:
    anchor = local("Pacific/Kiritimati", 2026, 1, 31, 9, 0)
    assert anchor == utc(2026, 1, 30, 19)
    assert boundaries(anchor, "Pacific/Kiritimati", Plan("month"), 3) == [
        utc(2026, 1, 30, 19),
        utc(2026, 2, 27, 19),  # 28 February in Kiritimati, still the 27th in UTC
        utc(2026, 3, 30, 19),
    ]


@pytest.mark.parametrize("zone_name", ["Pacific/Niue", "Pacific/Pago_Pago"])
def test_utc_minus_11_bills_on_its_own_calendar_day(zone_name: str) -> None:
    anchor = local(zone_name, 2026, 1, 31, 23, 30)
    assert anchor == utc(2026, 2, 1, 10, 30)
    assert boundaries(anchor, zone_name, Plan("month"), 3) == [
        utc(2026, 2, 1, 10, 30),
        utc(2026, 3, 1, 10, 30),  # 28 February 23:30 local
        utc(2026, 4, 1, 10, 30),  # 31 March 23:30 local
    ]
    assert periods.local_date(utc(2026, 3, 1, 10, 30), zone_name) == date(2026, 2, 28)


def test_the_same_instant_is_a_different_day_in_kiritimati_and_niue() -> None:
    instant = utc(2026, 6, 15, 11)
    assert periods.local_date(instant, "Pacific/Kiritimati") == date(2026, 6, 16)
    assert periods.local_date(instant, "Pacific/Niue") == date(2026, 6, 15)


def test_period_at_finds_the_period_containing_an_instant() -> None:
    anchor = utc(2024, 1, 31, 12)
    plan = Plan("month")
    assert periods.period_at(
        anchor=anchor, zone_name="UTC", plan=plan, instant=utc(2024, 3, 31, 11, 59)
    ) == Period(index=1, start=utc(2024, 2, 29, 12), end=utc(2024, 3, 31, 12))
    assert periods.period_at(
        anchor=anchor, zone_name="UTC", plan=plan, instant=utc(2024, 3, 31, 12)
    ) == Period(index=2, start=utc(2024, 3, 31, 12), end=utc(2024, 4, 30, 12))
    far = periods.period_at(anchor=anchor, zone_name="UTC", plan=plan, instant=utc(2029, 1, 1))
    assert far == Period(index=59, start=utc(2028, 12, 31, 12), end=utc(2029, 1, 31, 12))
    with pytest.raises(ValueError, match="before"):
        periods.period_at(anchor=anchor, zone_name="UTC", plan=plan, instant=utc(2024, 1, 1))


def test_periods_between_lists_the_periods_that_start_in_a_span() -> None:
    anchor = utc(2026, 1, 1)
    found = periods.periods_between(
        anchor=anchor,
        zone_name="UTC",
        plan=Plan("week"),
        start=utc(2026, 1, 8),
        end=utc(2026, 1, 22),
    )
    assert [(found_period.index, found_period.start) for found_period in found] == [
        (1, utc(2026, 1, 8)),
        (2, utc(2026, 1, 15)),
    ]


def test_trials_end_on_the_local_calendar() -> None:
    start = local("Europe/Berlin", 2026, 3, 20, 2, 30)
    # 14 local days later, at the same local time: across the change to summer time.
    assert periods.trial_end(start=start, zone_name="Europe/Berlin", trial_days=14) == local(
        "Europe/Berlin", 2026, 4, 3, 2, 30
    )
    assert periods.trial_end(start=start, zone_name="Europe/Berlin", trial_days=14) == utc(
        2026, 4, 3, 0, 30
    )
    assert periods.trial_end(start=start, zone_name="UTC", trial_days=0) == start


def test_start_of_local_day() -> None:
    assert periods.start_of_local_day(date(2026, 7, 1), "Pacific/Kiritimati") == utc(
        2026, 6, 30, 10
    )
    assert periods.start_of_local_day(date(2026, 7, 1), "Pacific/Pago_Pago") == utc(2026, 7, 1, 11)


def test_invalid_input_is_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        Plan("fortnight")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="interval_count"):
        Plan("month", 13)
    with pytest.raises(ValueError, match="interval_count"):
        Plan("day", 0)
    with pytest.raises(ValueError, match="unknown IANA"):
        periods.boundary(anchor=utc(2026, 1, 1), zone_name="Mars/Olympus", plan=Plan("day"), n=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        periods.local_wall_time(datetime(2026, 1, 1), "UTC")  # noqa: DTZ001
    with pytest.raises(ValueError, match="0 or more"):
        periods.period(anchor=utc(2026, 1, 1), zone_name="UTC", plan=Plan("day"), n=-1)


@pytest.mark.parametrize(
    ("at", "zone_name", "day", "expected"),
    [
        # Later in the month: next month's day, at local midnight.
        (datetime(2026, 3, 10, 12, tzinfo=UTC), "UTC", 1, datetime(2026, 4, 1, tzinfo=UTC)),
        # Exactly the day's start: that instant (nothing to prorate).
        (datetime(2026, 3, 1, tzinfo=UTC), "UTC", 1, datetime(2026, 3, 1, tzinfo=UTC)),
        # A second into the day: next month.
        (datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC), "UTC", 1, datetime(2026, 4, 1, tzinfo=UTC)),
        # Earlier in the month: this month's day.
        (datetime(2026, 3, 10, 12, tzinfo=UTC), "UTC", 15, datetime(2026, 3, 15, tzinfo=UTC)),
        # December rolls into January of the next year.
        (datetime(2026, 12, 20, tzinfo=UTC), "UTC", 1, datetime(2027, 1, 1, tzinfo=UTC)),
        # Auckland (UTC+13 in its summer): 10 Dec 12:00 UTC is 11 Dec local; 1 Jan 00:00
        # NZDT is 31 Dec 11:00 UTC.
        (
            datetime(2026, 12, 10, 12, tzinfo=UTC),
            "Pacific/Auckland",
            1,
            datetime(2026, 12, 31, 11, tzinfo=UTC),
        ),
        # Kiritimati (UTC+14): already 1 April locally at 10:00 UTC on 31 March, so May.
        (
            datetime(2026, 3, 31, 10, 30, tzinfo=UTC),
            "Pacific/Kiritimati",
            1,
            datetime(2026, 4, 30, 10, tzinfo=UTC),
        ),
        # A day whose midnight does not exist (Santiago springs forward at 00:00 on
        # 6 Sep 2026): the first instant after the gap, 01:00 local = 04:00 UTC.
        (
            datetime(2026, 8, 20, tzinfo=UTC),
            "America/Santiago",
            6,
            datetime(2026, 9, 6, 4, tzinfo=UTC),
        ),
    ],
)
def test_the_billing_day_is_the_next_start_of_that_local_day(
    at: datetime, zone_name: str, day: int, expected: datetime
) -> None:
    assert periods.next_billing_day(at=at, zone_name=zone_name, day_of_month=day) == expected


@pytest.mark.parametrize("day", [0, 29, 31])
def test_a_billing_day_every_month_does_not_have_is_refused(day: int) -> None:
    with pytest.raises(ValueError, match="1 to 28"):
        periods.next_billing_day(
            at=datetime(2026, 3, 1, tzinfo=UTC), zone_name="UTC", day_of_month=day
        )
