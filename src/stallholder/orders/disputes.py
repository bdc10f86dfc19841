"""Disputes (chargebacks) of orders' payments, kept in step with the gateway.

A sync applies the dispute's *current* state as the gateway reports it, never an event's
copy of it, so deliveries in any order converge on the same result. The ledger follows
the money: while a dispute holds the funds the creator's balance is debited by the
disputed amount, and a won dispute gives it back. Each sync moves the ledger by the
difference between what the status implies and what was moved before, so repeating a
sync moves nothing.

This use case lives in ``orders`` because it joins payments (the attempt the dispute
names) to the ledger, and ``payments`` may not import ``ledger``.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service as events
from stallholder.kit.ids import new_id
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.orders.schemas import dispute_payload
from stallholder.payments.gateway import DisputeSnapshot
from stallholder.payments.models import Dispute, PaymentAttempt

log = logging.getLogger("stallholder.orders.disputes")

# Statuses in which the disputed funds are withdrawn from the platform (Stripe's
# dispute lifecycle): inquiries (warning_*) and prevented disputes hold nothing, a won
# dispute has had its funds reinstated.
FUNDS_WITHDRAWN_STATUSES = frozenset(
    {"needs_response", "under_review", "lost", "appeal_needs_response", "appeal_under_review"}
)


def withdrawn_for(status: str, amount: int) -> int:
    """What a dispute in ``status`` holds back from the creator."""
    return amount if status in FUNDS_WITHDRAWN_STATUSES else 0


async def _order_paid_by(
    session: AsyncSession, *, gateway: str, payment_reference: str
) -> Order | None:
    attempt_id = (
        select(PaymentAttempt.id)
        .where(
            PaymentAttempt.gateway == gateway,
            PaymentAttempt.gateway_reference == payment_reference,
            PaymentAttempt.status == "succeeded",
        )
        .scalar_subquery()
    )
    orders = (
        (await session.execute(select(Order).where(Order.payment_attempt_id == attempt_id)))
        .scalars()
        .all()
    )
    if len(orders) > 1:
        # A consolidated charge paid several creators' orders (ADR 0019); which of them a
        # dispute of the whole charge takes back from is not decided yet.
        log.warning(
            "dispute of %s: the payment paid %d orders (a consolidated charge); not synced",
            payment_reference,
            len(orders),
        )
        return None
    return orders[0] if orders else None


async def sync_dispute(
    session: AsyncSession,
    *,
    gateway: str,
    snapshot: DisputeSnapshot,
    fetched_at: datetime,
    now: datetime,
) -> Dispute | None:
    """Bring our copy of a dispute, and the ledger, to ``snapshot``.

    ``fetched_at`` is when the snapshot was read: a snapshot read before the one applied
    last is older and changes nothing. The dispute row is locked, so two workers syncing
    one dispute take turns. Returns None when no order of ours was paid with the disputed
    payment.
    """
    dispute = (
        await session.execute(
            select(Dispute).where(Dispute.external_id == snapshot.external_id).with_for_update()
        )
    ).scalar_one_or_none()
    if dispute is not None and dispute.synced_at > fetched_at:
        return dispute
    is_new = dispute is None
    if dispute is None:
        order = (
            None
            if snapshot.payment_reference is None
            else await _order_paid_by(
                session, gateway=gateway, payment_reference=snapshot.payment_reference
            )
        )
        if order is None:
            return None
        dispute = Dispute(
            id=new_id("dp"),
            creator_id=order.creator_id,
            order_id=order.id,
            gateway=gateway,
            external_id=snapshot.external_id,
            amount=snapshot.amount,
            currency=snapshot.currency,
            reason=snapshot.reason,
            status=snapshot.status,
            amount_withdrawn=0,
            synced_at=fetched_at,
            created_at=now,
            updated_at=now,
        )
        session.add(dispute)
        await session.flush()
        is_changed = True
    else:
        is_changed = (dispute.status, dispute.amount, dispute.reason) != (
            snapshot.status,
            snapshot.amount,
            snapshot.reason,
        )
        dispute.status, dispute.amount, dispute.reason = (
            snapshot.status,
            snapshot.amount,
            snapshot.reason,
        )
        dispute.synced_at = fetched_at
        if is_changed:
            dispute.updated_at = now
    withdrawn = withdrawn_for(dispute.status, dispute.amount)
    difference = withdrawn - dispute.amount_withdrawn
    if difference:
        order = await session.get(Order, dispute.order_id)
        assert order is not None
        await ledger.post(
            session,
            creator_id=dispute.creator_id,
            kind="dispute" if difference > 0 else "dispute_reversal",
            reference_id=dispute.id,
            currency=dispute.currency,
            lines=ledger.dispute_lines(dispute.creator_id, difference),
            description=f"Dispute {dispute.id} ({dispute.status}) of order {order.receipt_number}",
            now=now,
        )
        dispute.amount_withdrawn = withdrawn
    await session.flush()
    if is_new or is_changed:
        await events.emit(
            session,
            creator_id=dispute.creator_id,
            type="dispute.created" if is_new else "dispute.updated",
            now=now,
            data=dispute_payload(dispute),
        )
    return dispute
