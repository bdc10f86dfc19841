"""Proration, the delivery calendar and the subscription state machine: pure, exact."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from stallholder.billing import delivery, dunning, lifecycle, periods, proration, schedule
from stallholder.billing.delivery import Cycle, DeliveryCalendar
from stallholder.billing.periods import Plan


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    zone_name: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0
) -> datetime:
    wall = datetime(year, month, day, hour, minute)  # noqa: DTZ001 (a local wall time)
    return periods.to_instant(wall, zone_name)


# Proration ------------------------------------------------------------------------------


def test_an_upgrade_halfway_through_charges_half_the_difference() -> None:
    change = proration.prorate_change(
        period_start=utc(2026, 4, 1),
        period_end=utc(2026, 5, 1),
        at=utc(2026, 4, 16),
        old_amount=300,
        new_amount=900,
    )
    assert (change.remaining_seconds, change.period_seconds) == (15 * 86400, 30 * 86400)
    assert (change.credit, change.charge, change.amount_due) == (150, 450, 300)


def test_proration_rounds_down_each_side() -> None:
    change = proration.prorate_change(
        period_start=utc(2026, 2, 1),
        period_end=utc(2026, 3, 1),
        at=utc(2026, 2, 20),
        old_amount=1000,
        new_amount=301,
    )
    # 9 of 28 days remain: 1000 × 9/28 = 321.43 → 321; 301 × 9/28 = 96.75 → 96.
    assert (change.credit, change.charge, change.amount_due) == (321, 96, -225)


def test_proration_at_the_edges() -> None:
    whole = proration.prorate_change(
        period_start=utc(2026, 1, 1),
        period_end=utc(2026, 2, 1),
        at=utc(2026, 1, 1),
        old_amount=300,
        new_amount=500,
    )
    assert (whole.credit, whole.charge) == (300, 500)
    after = proration.prorate_change(
        period_start=utc(2026, 1, 1),
        period_end=utc(2026, 2, 1),
        at=utc(2026, 3, 1),
        old_amount=300,
        new_amount=500,
    )
    assert (after.credit, after.charge) == (0, 0)
    with pytest.raises(ValueError, match="before its period"):
        proration.prorate_change(
            period_start=utc(2026, 1, 1),
            period_end=utc(2026, 2, 1),
            at=utc(2025, 12, 1),
            old_amount=300,
            new_amount=500,
        )
    with pytest.raises(ValueError, match="0 or more"):
        proration.prorate_change(
            period_start=utc(2026, 1, 1),
            period_end=utc(2026, 2, 1),
            at=utc(2026, 1, 1),
            old_amount=-1,
            new_amount=500,
        )


def test_a_prorated_refund_is_the_unused_part() -> None:
    assert (
        proration.prorated_refund(
            period_start=utc(2026, 6, 1),
            period_end=utc(2026, 7, 1),
            at=utc(2026, 6, 4),
            amount_paid=300,
        )
        == 270
    )
    assert (
        proration.prorated_refund(
            period_start=utc(2026, 6, 1),
            period_end=utc(2026, 7, 1),
            at=utc(2026, 5, 4),
            amount_paid=300,
        )
        == 300
    )


# The delivery calendar -------------------------------------------------------------------

BOX = DeliveryCalendar(
    charge_day=1,
    ship_days_after_charge=14,
    cutoff_days_before_ship=5,
    signup_after_cutoff="next_cycle",
)


def test_cycles_show_charge_cutoff_and_ship_dates_in_the_buyers_zone() -> None:
    anchor = local("Europe/Berlin", 2026, 3, 1, 0, 0)
    current, following = delivery.current_and_next(
        BOX,
        Plan("month"),
        anchor=anchor,
        zone_name="Europe/Berlin",
        at=utc(2026, 3, 20),
        amount=3000,
    )
    assert current == Cycle(
        index=0,
        charge_at=utc(2026, 2, 28, 23),
        amount=3000,
        cutoff_at=utc(2026, 3, 9, 23),
        ships_on=date(2026, 3, 15),
    )
    assert following == Cycle(
        index=1,
        charge_at=utc(2026, 3, 31, 22),
        amount=3000,  # CEST from 29 March
        cutoff_at=utc(2026, 4, 9, 22),
        ships_on=date(2026, 4, 15),
    )


def test_a_skipped_next_cycle_shows_no_amount() -> None:
    _, following = delivery.current_and_next(
        None,
        Plan("week"),
        anchor=utc(2026, 1, 5, 9),
        zone_name="UTC",
        at=utc(2026, 1, 6),
        amount=500,
        next_amount=0,
    )
    assert following == Cycle(
        index=1,
        charge_at=utc(2026, 1, 12, 9),
        amount=0,
        cutoff_at=utc(2026, 1, 12),
        ships_on=date(2026, 1, 12),
    )


def test_before_the_first_cycle_begins_the_current_cycle_is_the_first() -> None:
    current, _ = delivery.current_and_next(
        BOX,
        Plan("month"),
        anchor=utc(2026, 5, 1),
        zone_name="UTC",
        at=utc(2026, 4, 20),
        amount=3000,
    )
    assert (current.index, current.charge_at) == (0, utc(2026, 5, 1))


def test_signup_before_the_cutoff_joins_this_cycle_and_pays_now() -> None:
    joining = delivery.join(BOX, Plan("month"), signup_at=utc(2026, 3, 5, 12), zone_name="UTC")
    assert joining == delivery.Joining(anchor=utc(2026, 3, 1), first_index=0, is_charged_now=True)


def test_signup_after_the_cutoff_joins_the_next_cycle_or_this_one_as_the_price_says() -> None:
    late = utc(2026, 3, 12, 12)  # cut-off was 10 March 00:00 (ships on the 15th, 5 days)
    assert delivery.join(BOX, Plan("month"), signup_at=late, zone_name="UTC") == (
        delivery.Joining(anchor=utc(2026, 3, 1), first_index=1, is_charged_now=False)
    )
    generous = DeliveryCalendar(
        charge_day=1,
        ship_days_after_charge=14,
        cutoff_days_before_ship=5,
        signup_after_cutoff="this_cycle",
    )
    assert delivery.join(generous, Plan("month"), signup_at=late, zone_name="UTC") == (
        delivery.Joining(anchor=utc(2026, 3, 1), first_index=0, is_charged_now=True)
    )


def test_a_charge_day_of_31_clamps_and_a_signup_on_the_31st_is_in_that_cycle() -> None:
    calendar = DeliveryCalendar(charge_day=31, ship_days_after_charge=3)
    # The cycle under way began on 28 February (31 clamped); its cut-off (3 March) has
    # passed, so the buyer's first cycle is the next, on the 31st again.
    joining = delivery.join(calendar, Plan("month"), signup_at=utc(2026, 3, 15), zone_name="UTC")
    assert joining == delivery.Joining(anchor=utc(2026, 1, 31), first_index=2, is_charged_now=False)
    assert periods.boundary(anchor=joining.anchor, zone_name="UTC", plan=Plan("month"), n=2) == (
        utc(2026, 3, 31)
    )
    joining = delivery.join(calendar, Plan("month"), signup_at=utc(2026, 3, 31, 8), zone_name="UTC")
    assert joining == delivery.Joining(anchor=utc(2026, 3, 31), first_index=0, is_charged_now=True)


def test_without_a_charge_day_a_subscription_anchors_at_signup() -> None:
    signup = utc(2026, 3, 12, 12)
    assert delivery.join(None, Plan("month"), signup_at=signup, zone_name="UTC") == (
        delivery.Joining(anchor=signup, first_index=0, is_charged_now=True)
    )
    weekly = delivery.join(BOX, Plan("week"), signup_at=signup, zone_name="UTC")
    assert weekly.anchor == signup


def test_a_calendar_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="charge_day"):
        DeliveryCalendar(charge_day=32)
    with pytest.raises(ValueError, match="ship_days"):
        DeliveryCalendar(ship_days_after_charge=-1)


# The state machine -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("incomplete", "invoice_paid", "active"),
        ("incomplete", "start_trial", "trialing"),
        ("trialing", "invoice_paid", "active"),
        ("trialing", "payment_failed", "past_due"),
        ("active", "payment_failed", "past_due"),
        ("past_due", "invoice_paid", "active"),
        ("past_due", "payment_failed", "past_due"),
        ("unpaid", "invoice_paid", "active"),
        ("active", "pause", "paused"),
        ("paused", "resume", "active"),
        ("active", "cancel", "canceled"),
        ("paused", "cancel", "canceled"),
        ("unpaid", "cancel", "canceled"),
    ],
)
def test_transitions(
    status: lifecycle.Status, action: lifecycle.Action, expected: lifecycle.Status
) -> None:
    assert lifecycle.transition(status, action) == expected


def test_exhausted_retries_cancel_or_mark_unpaid_as_set() -> None:
    assert lifecycle.transition("past_due", "retries_exhausted", exhausted="cancel") == "canceled"
    assert lifecycle.transition("past_due", "retries_exhausted", exhausted="mark_unpaid") == (
        "unpaid"
    )


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("canceled", "cancel"),
        ("canceled", "invoice_paid"),
        ("canceled", "resume"),
        ("active", "resume"),
        ("paused", "pause"),
        ("active", "retries_exhausted"),
        ("incomplete", "pause"),
    ],
)
def test_impossible_transitions_are_refused(
    status: lifecycle.Status, action: lifecycle.Action
) -> None:
    with pytest.raises(lifecycle.InvalidTransition):
        lifecycle.transition(status, action)


# The schedule's decision ----------------------------------------------------------------


def test_a_year_of_a_monthly_plan_with_a_trial_a_pause_a_skip_and_a_cancellation() -> None:
    terms = schedule.Terms(
        plan=Plan("month"), zone_name="UTC", start=utc(2026, 1, 17), amount=300, trial_days=14
    )
    assert terms.anchor == utc(2026, 1, 31)
    changes = schedule.Changes(
        pauses=[schedule.Pause(start=utc(2026, 3, 15), end=utc(2026, 5, 10))],
        skipped=frozenset({6}),
        cancel_at=utc(2026, 10, 31),
    )
    due = schedule.due_invoices(terms, changes, until=utc(2027, 6, 1))
    assert [(invoice.period.index, invoice.period.start) for invoice in due] == [
        (0, utc(2026, 1, 31)),
        (1, utc(2026, 2, 28)),
        # 31 March and 30 April fall in the pause.
        (4, utc(2026, 5, 31)),
        (5, utc(2026, 6, 30)),
        # 31 July is skipped.
        (7, utc(2026, 8, 31)),
        (8, utc(2026, 9, 30)),
        # canceled at the end of the period that ends on 31 October.
    ]
    assert {invoice.amount for invoice in due} == {300}


# Dunning ---------------------------------------------------------------------------------


def test_retries_follow_the_schedule_from_the_first_attempt_then_stop() -> None:
    first = utc(2026, 5, 1, 12)
    assert [
        dunning.next_attempt_at(first_attempt_at=first, failed_attempts=n, retry_days=(1, 3, 5, 7))
        for n in range(1, 6)
    ] == [utc(2026, 5, 2, 12), utc(2026, 5, 4, 12), utc(2026, 5, 6, 12), utc(2026, 5, 8, 12), None]
    with pytest.raises(ValueError, match="from 1"):
        dunning.next_attempt_at(first_attempt_at=first, failed_attempts=0, retry_days=(1,))
    assert dunning.next_attempt_at(first_attempt_at=first, failed_attempts=1, retry_days=()) is None
