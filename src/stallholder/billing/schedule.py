"""What happens at each period boundary of a subscription. Pure (ADR 0009).

The renewal engine asks ``decide`` when a period starts; ``due_invoices`` replays a
whole subscription (used by tests, previews and the property suite) with the same
decision, so both agree by construction.

At the start of period ``n``:

- the subscription was canceled at or before it → ``end`` (no invoice; cancellation at
  period end takes effect exactly at a boundary);
- it is paused at that instant → ``paused`` (the period passes with no invoice, as
  Stripe's paused collection voids it; the calendar keeps its anchor);
- ``n`` was skipped → ``skipped`` (no invoice, no delivery);
- otherwise → ``invoice`` for the period's amount.

A trial is a free span before period 0 (billing anchors at its end), never an invoice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from stallholder.billing import periods
from stallholder.billing.periods import Period, Plan

Decision = Literal["invoice", "paused", "skipped", "end"]


@dataclass(frozen=True, slots=True)
class Pause:
    """Paused from ``start`` until ``end`` (None: still paused), half-open."""

    start: datetime
    end: datetime | None = None

    def covers(self, instant: datetime) -> bool:
        return self.start <= instant and (self.end is None or instant < self.end)


@dataclass(frozen=True, slots=True)
class Terms:
    """A subscription's billing terms: its plan, the customer's zone, when it started,
    its trial and the amount of each period."""

    plan: Plan
    zone_name: str
    start: datetime
    amount: int
    trial_days: int = 0
    # A price's delivery calendar may count periods from an earlier charge day, the first
    # billed being ``first_index`` (``delivery.join``).
    billing_anchor: datetime | None = None
    first_index: int = 0

    @property
    def anchor(self) -> datetime:
        """Where periods are counted from: the calendar's, the trial's end, or the start."""
        if self.billing_anchor is not None:
            return self.billing_anchor
        if self.trial_days == 0:
            return self.start
        return periods.trial_end(
            start=self.start, zone_name=self.zone_name, trial_days=self.trial_days
        )


@dataclass(frozen=True, slots=True)
class Changes:
    pauses: Sequence[Pause] = ()
    skipped: frozenset[int] = field(default_factory=frozenset)
    cancel_at: datetime | None = None


def decide(period: Period, changes: Changes) -> Decision:
    if changes.cancel_at is not None and changes.cancel_at <= period.start:
        return "end"
    if any(pause.covers(period.start) for pause in changes.pauses):
        return "paused"
    if period.index in changes.skipped:
        return "skipped"
    return "invoice"


@dataclass(frozen=True, slots=True)
class DueInvoice:
    period: Period
    amount: int


def due_invoices(terms: Terms, changes: Changes, *, until: datetime) -> list[DueInvoice]:
    """Every invoice due for periods that start before ``until``, in order."""
    found: list[DueInvoice] = []
    first = periods.boundary(
        anchor=terms.anchor, zone_name=terms.zone_name, plan=terms.plan, n=terms.first_index
    )
    for candidate in periods.periods_between(
        anchor=terms.anchor, zone_name=terms.zone_name, plan=terms.plan, start=first, end=until
    ):
        decision = decide(candidate, changes)
        if decision == "end":
            break
        if decision == "invoice":
            found.append(DueInvoice(period=candidate, amount=terms.amount))
    return found
