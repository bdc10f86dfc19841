"""Delivery expectations of a recurring price: when each cycle is charged, when changes
for it close (the cut-off) and when it ships or is released. Pure, on the customer's
local calendar (``periods``).

A price's ``DeliveryCalendar`` says, in local days:

- ``charge_day``: for monthly and yearly plans, the day of the month every subscriber is
  charged on (clamped to short months, like any anchor day); None charges on the day
  each subscription started (its own anchor);
- ``ship_days_after_charge``: the ship (or release) date is the charge date plus this;
- ``cutoff_days_before_ship``: changes (skip, pause, cancel, a new address) for a cycle
  close at the start of the local day this many days before its ship date;
- ``signup_after_cutoff``: a buyer who subscribes after the current cycle's cut-off gets
  ``this_cycle`` (charged now for it) or ``next_cycle`` (nothing now; the first charge
  is the next cycle's charge date).

Each cycle is a billing period; its charge is at the period's start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal

from stallholder.billing import periods
from stallholder.billing.periods import Plan

SignupAfterCutoff = Literal["this_cycle", "next_cycle"]


@dataclass(frozen=True, slots=True)
class DeliveryCalendar:
    ship_days_after_charge: int = 0
    cutoff_days_before_ship: int = 0
    charge_day: int | None = None
    signup_after_cutoff: SignupAfterCutoff = "next_cycle"

    def __post_init__(self) -> None:
        if not 0 <= self.ship_days_after_charge <= 366:
            raise ValueError("ship_days_after_charge must be 0 to 366")
        if not 0 <= self.cutoff_days_before_ship <= 366:
            raise ValueError("cutoff_days_before_ship must be 0 to 366")
        if self.charge_day is not None and not 1 <= self.charge_day <= 31:
            raise ValueError("charge_day must be a day of the month, 1 to 31")


@dataclass(frozen=True, slots=True)
class Cycle:
    """One cycle as the buyer sees it: charged ``amount`` at ``charge_at``, changes close
    at ``cutoff_at``, ships or is released on ``ships_on`` (a local date)."""

    index: int
    charge_at: datetime
    amount: int
    cutoff_at: datetime
    ships_on: date


@dataclass(frozen=True, slots=True)
class Joining:
    """Where a new subscription starts on its price's calendar: periods are counted from
    ``anchor`` and its first is period ``first_index``; ``is_charged_now`` says whether
    the buyer pays at signup for that period (it is under way: this cycle) or first pays
    when it starts (the next cycle)."""

    anchor: datetime
    first_index: int
    is_charged_now: bool


def ships_on(calendar: DeliveryCalendar, *, charge_at: datetime, zone_name: str) -> date:
    return periods.local_date(charge_at, zone_name) + timedelta(
        days=calendar.ship_days_after_charge
    )


def cutoff_at(calendar: DeliveryCalendar, *, charge_at: datetime, zone_name: str) -> datetime:
    day = ships_on(calendar, charge_at=charge_at, zone_name=zone_name) - timedelta(
        days=calendar.cutoff_days_before_ship
    )
    return periods.start_of_local_day(day, zone_name)


def _reference_anchor(charge_day: int, *, at: datetime, zone_name: str) -> datetime:
    """Local midnight of the latest date on or before ``at``'s local date whose day of the
    month *is* ``charge_day`` (not clamped): counting from it, every cycle falls on that
    day, clamped only in shorter months (31 Jan → 28 Feb → 31 Mar)."""
    today = periods.local_date(at, zone_name)
    months_back = 0
    while True:
        candidate = periods.add_months(today, -months_back, anchor_day=charge_day)
        if candidate.day == charge_day and candidate <= today:
            return periods.to_instant(datetime.combine(candidate, time()), zone_name)
        months_back += 1


def join(
    calendar: DeliveryCalendar | None, plan: Plan, *, signup_at: datetime, zone_name: str
) -> Joining:
    """Where a subscription begun at ``signup_at`` joins the price's calendar.

    Without a calendar, without a ``charge_day`` or on a plan that is not monthly, the
    subscription anchors at signup and pays now for period 0. With a ``charge_day`` the
    cycle that contains the signup started on the latest charge day; before its cut-off
    (or with ``this_cycle``) the buyer joins that cycle and pays now, after it (with
    ``next_cycle``) the buyer joins the next cycle and first pays when it starts."""
    if calendar is None or calendar.charge_day is None or plan.interval != "month":
        return Joining(anchor=signup_at, first_index=0, is_charged_now=True)
    anchor = _reference_anchor(calendar.charge_day, at=signup_at, zone_name=zone_name)
    current = periods.period_at(anchor=anchor, zone_name=zone_name, plan=plan, instant=signup_at)
    cutoff = cutoff_at(calendar, charge_at=current.start, zone_name=zone_name)
    if signup_at < cutoff or calendar.signup_after_cutoff == "this_cycle":
        return Joining(anchor=anchor, first_index=current.index, is_charged_now=True)
    return Joining(anchor=anchor, first_index=current.index + 1, is_charged_now=False)


def cycle(
    calendar: DeliveryCalendar | None,
    plan: Plan,
    *,
    anchor: datetime,
    zone_name: str,
    n: int,
    amount: int,
) -> Cycle:
    """Cycle ``n`` of a subscription anchored at ``anchor`` (period ``n``)."""
    calendar = calendar or DeliveryCalendar()
    start = periods.boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=n)
    return Cycle(
        index=n,
        charge_at=start,
        amount=amount,
        cutoff_at=cutoff_at(calendar, charge_at=start, zone_name=zone_name),
        ships_on=ships_on(calendar, charge_at=start, zone_name=zone_name),
    )


def current_and_next(
    calendar: DeliveryCalendar | None,
    plan: Plan,
    *,
    anchor: datetime,
    zone_name: str,
    at: datetime,
    amount: int,
    next_amount: int | None = None,
    first_index: int = 0,
) -> tuple[Cycle, Cycle]:
    """The cycle under way at ``at`` (``first_index`` when the first has not begun yet)
    and the one after it; ``next_amount`` when the next cycle costs something else
    (skipped: 0; a price change)."""
    first = periods.boundary(anchor=anchor, zone_name=zone_name, plan=plan, n=first_index)
    index = (
        first_index
        if at < first
        else periods.period_at(anchor=anchor, zone_name=zone_name, plan=plan, instant=at).index
    )
    current = cycle(calendar, plan, anchor=anchor, zone_name=zone_name, n=index, amount=amount)
    following = cycle(
        calendar,
        plan,
        anchor=anchor,
        zone_name=zone_name,
        n=index + 1,
        amount=amount if next_amount is None else next_amount,
    )
    return current, following


@dataclass(frozen=True, slots=True)
class Signup:
    """What subscribing at ``signup_at`` means on a price's calendar: where the
    subscription joins it, the trial's end (if any), and its first two cycles, the
    first paid at signup when ``joining.is_charged_now`` and otherwise at its start."""

    joining: Joining
    trial_end: datetime | None
    first: Cycle
    following: Cycle


def signup(
    calendar: DeliveryCalendar | None,
    plan: Plan,
    *,
    signup_at: datetime,
    zone_name: str,
    trial_days: int,
    amount: int,
) -> Signup:
    """Where a subscription begun at ``signup_at`` starts: after a trial, billing anchors
    at the trial's end and nothing is charged now; otherwise as ``join`` says. The same
    answer a new subscription is created with and a store page shows before it."""
    if trial_days > 0:
        trial_end: datetime | None = periods.trial_end(
            start=signup_at, zone_name=zone_name, trial_days=trial_days
        )
        assert trial_end is not None
        joining = Joining(anchor=trial_end, first_index=0, is_charged_now=False)
    else:
        trial_end = None
        joining = join(calendar, plan, signup_at=signup_at, zone_name=zone_name)
    first, following = (
        cycle(
            calendar,
            plan,
            anchor=joining.anchor,
            zone_name=zone_name,
            n=joining.first_index + step,
            amount=amount,
        )
        for step in (0, 1)
    )
    return Signup(joining=joining, trial_end=trial_end, first=first, following=following)
