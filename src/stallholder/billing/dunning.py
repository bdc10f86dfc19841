"""When a failed invoice is tried again (docs/billing.md). Pure.

Retries are counted in days after the invoice's first attempt: with the default
``(1, 3, 5, 7)`` an invoice first tried on the 1st is retried on the 2nd, 4th, 6th and
8th (five attempts in all); after the fifth failure there is no next attempt and the
subscription is canceled or marked unpaid. An extra attempt (a new payment method tried
at once) uses up the next slot, so a buyer who fixes the card early is never charged
more often than the schedule allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta


def next_attempt_at(
    *, first_attempt_at: datetime, failed_attempts: int, retry_days: Sequence[int]
) -> datetime | None:
    """When to try again after ``failed_attempts`` failures (1 or more), or None when
    the retries are used up."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts counts from 1")
    if failed_attempts > len(retry_days):
        return None
    return first_attempt_at + timedelta(days=retry_days[failed_attempts - 1])
