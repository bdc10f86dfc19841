"""Revenue, MRR and active subscribers over time: pure functions over plain facts.

Definitions (docs/dashboard.md):

- **MRR** at an instant, per currency: for every subscription that is *earning* then
  (started, its trial over, not paused, not ended), the sum of its items'
  ``unit_amount × quantity`` normalised to one month: an amount billed every
  ``n`` intervals earns ``amount × periods per year / 12`` a month, with 12 months, 52
  weeks or 365 days a year. The sum is exact (fractions) and rounded half up to a minor
  unit once per currency, so 3 × $10 a year is $2.50, not 3 × $0.83.
- **Active subscribers** at an instant: subscriptions neither ended nor paused then
  (a trial counts: the subscriber is in; it earns nothing yet).
- **Net revenue** in a month: the totals of the orders paid in it minus the refunds that
  succeeded in it, per currency.

Months are calendar months in UTC, half-open ``[start, next start)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

# Billing periods in a year, by interval (a year is 12 months, 52 weeks or 365 days).
PERIODS_PER_YEAR = {"day": 365, "week": 52, "month": 12, "year": 1}
# A month's figure is taken at its last instant (the next month's start minus this).
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class SubscriptionFacts:
    """What MRR needs of one subscription (its current items: plan history is not kept)."""

    customer_id: str
    currency: str
    interval: str
    interval_count: int
    # (unit_amount in minor units, quantity) of each item
    items: tuple[tuple[int, int], ...]
    started_at: datetime
    trial_end: datetime | None = None
    paused_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Sale:
    """An amount of money that moved at ``at``: an order's total, or a refund."""

    amount: int
    currency: str
    at: datetime


def monthly_amount(amount: int, *, interval: str, interval_count: int) -> Fraction:
    """``amount`` billed every ``interval_count`` ``interval``s, as an exact monthly
    amount in minor units (2000 a year → 500/3 a month).

    Raises:
        ValueError: an unknown interval or a count below 1.
    """
    if interval not in PERIODS_PER_YEAR:
        raise ValueError(f"unknown interval {interval!r}")
    if interval_count < 1:
        raise ValueError("interval_count must be at least 1")
    return Fraction(amount * PERIODS_PER_YEAR[interval], 12 * interval_count)


def round_half_up(value: Fraction) -> int:
    """The nearest integer, halves away from zero (what a reader rounds to)."""
    magnitude = (abs(value.numerator) * 2 + value.denominator) // (2 * value.denominator)
    return magnitude if value >= 0 else -magnitude


def _is_live(facts: SubscriptionFacts, at: datetime) -> bool:
    return (
        facts.started_at <= at
        and (facts.ended_at is None or facts.ended_at > at)
        and (facts.paused_at is None or facts.paused_at > at)
    )


def is_earning(facts: SubscriptionFacts, at: datetime) -> bool:
    """Whether the subscription counts toward MRR at ``at``."""
    return _is_live(facts, at) and (facts.trial_end is None or facts.trial_end <= at)


def mrr_at(subscriptions: Sequence[SubscriptionFacts], at: datetime) -> dict[str, int]:
    """MRR at ``at`` per currency, in minor units (currencies with none are left out)."""
    totals: dict[str, Fraction] = {}
    for facts in subscriptions:
        if not is_earning(facts, at):
            continue
        billed = sum(unit_amount * quantity for unit_amount, quantity in facts.items)
        monthly = monthly_amount(
            billed, interval=facts.interval, interval_count=facts.interval_count
        )
        totals[facts.currency] = totals.get(facts.currency, Fraction(0)) + monthly
    return {currency: round_half_up(total) for currency, total in sorted(totals.items())}


def active_subscribers_at(subscriptions: Sequence[SubscriptionFacts], at: datetime) -> int:
    """Subscriptions live at ``at`` (trials included)."""
    return sum(1 for facts in subscriptions if _is_live(facts, at))


def month_start(at: datetime) -> datetime:
    """The first instant of ``at``'s calendar month in UTC."""
    utc = at.astimezone(UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def last_months(now: datetime, count: int) -> list[datetime]:
    """The starts of the last ``count`` calendar months, the current one last."""
    current = month_start(now)
    return [add_months(current, offset) for offset in range(1 - count, 1)]


@dataclass(frozen=True, slots=True)
class MonthPoint:
    """One month of a series: ``month`` is its first instant; ``value`` in minor units
    (or a count)."""

    month: datetime
    value: int


def net_revenue_by_month(
    orders: Sequence[Sale], refunds: Sequence[Sale], *, currency: str, months: Sequence[datetime]
) -> list[MonthPoint]:
    """Net revenue in ``currency`` in each month of ``months`` (consecutive starts)."""
    sums = dict.fromkeys(months, 0)
    for sale, sign in [(order, 1) for order in orders] + [(refund, -1) for refund in refunds]:
        if sale.currency != currency:
            continue
        key = month_start(sale.at)
        if key in sums:
            sums[key] += sign * sale.amount
    return [MonthPoint(month=month, value=sums[month]) for month in months]


def mrr_by_month(
    subscriptions: Sequence[SubscriptionFacts],
    *,
    currency: str,
    months: Sequence[datetime],
    now: datetime,
) -> list[MonthPoint]:
    """MRR in ``currency`` at the end of each month (now, for the month under way)."""
    points = []
    for month in months:
        at = min(add_months(month, 1) - _TICK, now)
        points.append(MonthPoint(month=month, value=mrr_at(subscriptions, at).get(currency, 0)))
    return points


def active_subscribers_by_month(
    subscriptions: Sequence[SubscriptionFacts], *, months: Sequence[datetime], now: datetime
) -> list[MonthPoint]:
    """Active subscribers at the end of each month (now, for the month under way)."""
    return [
        MonthPoint(
            month=month,
            value=active_subscribers_at(subscriptions, min(add_months(month, 1) - _TICK, now)),
        )
        for month in months
    ]
