"""The subscription's state machine, as one pure transition function (docs/billing.md).

::

    incomplete ──first invoice paid──▶ active ◀──────────── paid ─────────┐
        │  └──────trial starts──▶ trialing ──trial ends, paid──▶ active     │
        │                            │                            │        │
        │                            └──payment fails──▶ past_due ◀┘ fails  │
        │                                                   │  └──paid─────┘
        │                                        retries exhausted
        │                                      ▼ (setting)           ▼
        └──────────cancel──────────────▶ canceled                  unpaid ──paid──▶ active
    active | trialing | past_due ──pause──▶ paused ──resume──▶ active
    any but canceled ──cancel──▶ canceled (final)
"""

from __future__ import annotations

from typing import Literal

from stallholder.kit.errors import Conflict

Status = Literal["incomplete", "trialing", "active", "past_due", "unpaid", "paused", "canceled"]
STATUSES: tuple[Status, ...] = (
    "incomplete",
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "paused",
    "canceled",
)
Action = Literal[
    "start_trial",
    "invoice_paid",
    "payment_failed",
    "retries_exhausted",
    "pause",
    "resume",
    "cancel",
]
# After the last retry: cancel the subscription or keep it as unpaid (a platform setting).
ExhaustedBehaviour = Literal["cancel", "mark_unpaid"]

# Statuses in which periods roll over and invoices are made.
BILLABLE: frozenset[Status] = frozenset({"trialing", "active", "past_due", "unpaid"})


class InvalidTransition(Conflict):
    slug = "subscription-invalid-transition"
    title = "The subscription cannot do that in its current status"


_TABLE: dict[tuple[Status, Action], Status] = {
    ("incomplete", "start_trial"): "trialing",
    ("incomplete", "invoice_paid"): "active",
    ("incomplete", "payment_failed"): "incomplete",
    ("trialing", "invoice_paid"): "active",
    ("trialing", "payment_failed"): "past_due",
    ("active", "invoice_paid"): "active",
    ("active", "payment_failed"): "past_due",
    ("past_due", "invoice_paid"): "active",
    ("past_due", "payment_failed"): "past_due",
    ("unpaid", "invoice_paid"): "active",
    ("unpaid", "payment_failed"): "unpaid",
    ("trialing", "pause"): "paused",
    ("active", "pause"): "paused",
    ("past_due", "pause"): "paused",
    ("paused", "resume"): "active",
}


def transition(
    status: Status, action: Action, *, exhausted: ExhaustedBehaviour = "cancel"
) -> Status:
    """The status after ``action``.

    Raises:
        InvalidTransition: ``action`` is not possible in ``status`` (a canceled
            subscription does nothing more; only a paused one resumes …).
    """
    if action == "cancel":
        if status == "canceled":
            raise InvalidTransition("the subscription is canceled already")
        return "canceled"
    if action == "retries_exhausted":
        if status != "past_due":
            raise InvalidTransition(f"a {status} subscription has no retries to exhaust")
        return "canceled" if exhausted == "cancel" else "unpaid"
    following = _TABLE.get((status, action))
    if following is None:
        raise InvalidTransition(
            f"a {status} subscription cannot {action.replace('_', ' ')}", status=status
        )
    return following
