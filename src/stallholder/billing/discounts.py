"""A retention discount applied to a period's invoice. Pure.

The discount is taken off each line's unit amount (rounded down, so the buyer never pays
more than the percentage says and the lines still sum to what is charged); the order made
from the paid invoice therefore shows the same discounted lines. ``percent_off`` is 1–100.
"""

from __future__ import annotations

from stallholder.billing.models import Invoice, Subscription


def discounted(unit_amount: int, percent_off: int) -> int:
    """``unit_amount`` less ``percent_off`` % of it, the discount rounded down:
    ``discounted(300, 50) == 150``, ``discounted(299, 50) == 150``."""
    if not 1 <= percent_off <= 100:
        raise ValueError("percent_off is 1 to 100")
    return unit_amount - unit_amount * percent_off // 100


def discounted_total(subscription: Subscription) -> int:
    """What the next invoice costs with the subscription's discount (if it has any left)."""
    percent = subscription.discount_percent_off
    if percent is None or subscription.discount_cycles_remaining <= 0:
        return sum(item.unit_amount * item.quantity for item in subscription.items)
    return sum(discounted(item.unit_amount, percent) * item.quantity for item in subscription.items)


def apply_discount(subscription: Subscription, invoice: Invoice) -> None:
    """Take the subscription's retention discount off a new period invoice and count one
    cycle of it used; nothing when none is left."""
    percent = subscription.discount_percent_off
    if percent is None or subscription.discount_cycles_remaining <= 0:
        return
    for line in invoice.lines:
        line.unit_amount = discounted(line.unit_amount, percent)
        line.amount = line.unit_amount * line.quantity
        line.description = f"{line.description} ({percent}% off)"[:300]
    invoice.amount_due = sum(line.amount for line in invoice.lines)
    subscription.discount_cycles_remaining -= 1
    if subscription.discount_cycles_remaining == 0:
        subscription.discount_percent_off = None
