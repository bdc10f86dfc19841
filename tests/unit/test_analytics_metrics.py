"""MRR, active subscribers and net revenue over time (analytics/metrics.py): exact values."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

import pytest

from stallholder.analytics.metrics import (
    MonthPoint,
    Sale,
    SubscriptionFacts,
    active_subscribers_at,
    active_subscribers_by_month,
    last_months,
    monthly_amount,
    mrr_at,
    mrr_by_month,
    net_revenue_by_month,
    round_half_up,
)

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)
NOW = datetime(2026, 3, 15, 9, 30, tzinfo=UTC)


def _sub(
    *,
    amount: int = 500,
    quantity: int = 1,
    interval: str = "month",
    count: int = 1,
    currency: str = "usd",
    started_at: datetime = JAN,
    **extra: datetime | None,
) -> SubscriptionFacts:
    return SubscriptionFacts(
        customer_id="cus_1",
        currency=currency,
        interval=interval,
        interval_count=count,
        items=((amount, quantity),),
        started_at=started_at,
        **extra,
    )


@pytest.mark.parametrize(
    ("amount", "interval", "count", "expected"),
    [
        (500, "month", 1, Fraction(500)),
        (1500, "month", 3, Fraction(500)),
        (6000, "year", 1, Fraction(500)),
        (1000, "year", 1, Fraction(2500, 30)),
        (100, "week", 1, Fraction(5200, 12)),
        (200, "week", 2, Fraction(5200, 12)),
        (10, "day", 1, Fraction(3650, 12)),
    ],
)
def test_a_plan_normalised_to_a_month(
    amount: int, interval: str, count: int, expected: Fraction
) -> None:
    assert monthly_amount(amount, interval=interval, interval_count=count) == expected


def test_unknown_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown interval 'fortnight'"):
        monthly_amount(100, interval="fortnight", interval_count=1)
    with pytest.raises(ValueError, match="at least 1"):
        monthly_amount(100, interval="month", interval_count=0)


def test_rounding_is_half_up_and_once_per_currency() -> None:
    assert [round_half_up(Fraction(n, 2)) for n in (1, 3, 5, -1, -3)] == [1, 2, 3, -1, -2]
    # Three $10-a-year plans are $2.50 a month, not 3 × $0.83 = $2.49.
    yearly = [_sub(amount=1000, interval="year") for _ in range(3)]
    assert mrr_at(yearly, NOW) == {"usd": 250}
    assert mrr_at(yearly[:1], NOW) == {"usd": 83}


def test_mrr_counts_earning_subscriptions_with_quantities_per_currency() -> None:
    subscriptions = [
        _sub(amount=500, quantity=3),  # 1500 a month
        _sub(amount=12000, interval="year", currency="eur"),  # 1000 a month
        _sub(amount=900, trial_end=datetime(2026, 3, 20, tzinfo=UTC)),  # still in its trial
        _sub(amount=700, paused_at=FEB),  # paused
        _sub(amount=300, ended_at=datetime(2026, 3, 10, tzinfo=UTC)),  # ended
        _sub(amount=200, started_at=datetime(2026, 3, 16, tzinfo=UTC)),  # not started yet
        _sub(amount=400, trial_end=datetime(2026, 3, 1, tzinfo=UTC)),  # trial over
    ]
    assert mrr_at(subscriptions, NOW) == {"eur": 1000, "usd": 1900}
    # Trials count as subscribers; paused, ended and future ones do not.
    assert active_subscribers_at(subscriptions, NOW) == 4
    assert mrr_at([], NOW) == {}


def test_the_last_months_end_with_the_current_one() -> None:
    assert last_months(NOW, 3) == [JAN, FEB, MAR]
    assert last_months(datetime(2026, 1, 31, 23, 59, tzinfo=UTC), 2) == [
        datetime(2025, 12, 1, tzinfo=UTC),
        JAN,
    ]
    assert len(last_months(NOW, 12)) == 12
    assert last_months(NOW, 12)[0] == datetime(2025, 4, 1, tzinfo=UTC)


def test_mrr_and_subscribers_at_each_months_end() -> None:
    subscriptions = [
        _sub(amount=500, started_at=datetime(2026, 1, 10, tzinfo=UTC)),
        _sub(amount=1000, started_at=datetime(2026, 2, 5, tzinfo=UTC), ended_at=MAR),
        _sub(amount=300, started_at=datetime(2026, 3, 15, 9, 0, tzinfo=UTC)),
        _sub(amount=9999, started_at=datetime(2026, 3, 20, tzinfo=UTC)),  # after now
    ]
    months = [JAN, FEB, MAR]
    assert mrr_by_month(subscriptions, currency="usd", months=months, now=NOW) == [
        MonthPoint(JAN, 500),
        MonthPoint(FEB, 1500),
        MonthPoint(MAR, 800),
    ]
    assert mrr_by_month(subscriptions, currency="eur", months=months, now=NOW) == [
        MonthPoint(JAN, 0),
        MonthPoint(FEB, 0),
        MonthPoint(MAR, 0),
    ]
    assert active_subscribers_by_month(subscriptions, months=months, now=NOW) == [
        MonthPoint(JAN, 1),
        MonthPoint(FEB, 2),
        MonthPoint(MAR, 2),
    ]


def test_net_revenue_is_orders_minus_refunds_in_each_month() -> None:
    orders = [
        Sale(1250, "usd", datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)),
        Sale(500, "usd", FEB),
        Sale(700, "eur", FEB),
        Sale(999, "usd", datetime(2025, 12, 31, tzinfo=UTC)),  # before the window
    ]
    refunds = [Sale(250, "usd", FEB), Sale(1250, "usd", MAR)]
    assert net_revenue_by_month(orders, refunds, currency="usd", months=[JAN, FEB, MAR]) == [
        MonthPoint(JAN, 1250),
        MonthPoint(FEB, 250),
        MonthPoint(MAR, -1250),
    ]
    assert net_revenue_by_month(orders, refunds, currency="eur", months=[JAN, FEB, MAR]) == [
        MonthPoint(JAN, 0),
        MonthPoint(FEB, 700),
        MonthPoint(MAR, 0),
    ]
