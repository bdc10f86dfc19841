"""Proration of a plan change inside a period. Pure, integers only.

A change at ``at`` inside the period ``[start, end)`` credits the unused part of what was
paid for the old items and charges the unused part at the new items' amount, each by the
elapsed seconds (as Stripe prorates): ``amount × remaining / length``, rounded down, so
the credit never exceeds what was paid and the charge never exceeds the new amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from stallholder.kit.money import prorate


@dataclass(frozen=True, slots=True)
class Proration:
    """What a change at ``at`` costs: ``charge`` for the rest of the period at the new
    amount, less ``credit`` for the rest of it at the old amount."""

    at: datetime
    period_start: datetime
    period_end: datetime
    remaining_seconds: int
    period_seconds: int
    credit: int
    charge: int

    @property
    def amount_due(self) -> int:
        """Positive: the buyer pays this now; negative: a credit to the next invoice."""
        return self.charge - self.credit


def _seconds(start: datetime, end: datetime) -> int:
    delta = end - start
    return delta.days * 86400 + delta.seconds


def prorate_change(
    *, period_start: datetime, period_end: datetime, at: datetime, old_amount: int, new_amount: int
) -> Proration:
    """The proration of changing from ``old_amount`` to ``new_amount`` (per period, minor
    units) at ``at``. A change at the very start credits and charges whole periods; one at
    the end (or after) nothing. Whole seconds count: a fraction of a second is not time
    the buyer used.

    Raises ValueError for a negative amount, an empty period or ``at`` before the start.
    """
    if old_amount < 0 or new_amount < 0:
        raise ValueError("amounts must be 0 or more")
    length = _seconds(period_start, period_end)
    if length <= 0:
        raise ValueError("the period must be longer than a second")
    if at < period_start:
        raise ValueError("a change cannot be prorated before its period starts")
    remaining = max(0, min(length, _seconds(at, period_end)))
    return Proration(
        at=at,
        period_start=period_start,
        period_end=period_end,
        remaining_seconds=remaining,
        period_seconds=length,
        credit=prorate(remaining, length, old_amount),
        charge=prorate(remaining, length, new_amount),
    )


def prorated_refund(
    *, period_start: datetime, period_end: datetime, at: datetime, amount_paid: int
) -> int:
    """What to refund of ``amount_paid`` for a period cancelled at ``at``: the unused
    part, rounded down (the buyer is never refunded more than was paid)."""
    return prorate_change(
        period_start=period_start,
        period_end=period_end,
        at=max(at, period_start),
        old_amount=amount_paid,
        new_amount=0,
    ).credit
