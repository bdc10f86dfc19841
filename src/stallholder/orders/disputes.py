"""Disputes (chargebacks) of orders' payments, kept in step with the gateway.

A sync applies the dispute's *current* state as the gateway reports it, never an event's
copy of it, so deliveries in any order converge on the same result. The ledger follows
the money: while a dispute holds the funds the creator's balance is debited by the
disputed amount, and a won dispute gives it back; the processor's dispute fee, while the
gateway reports it taken, is the creator's too. Each sync moves the ledger by the
difference between what the state implies and what was moved before, so repeating a
sync moves nothing.

A payment that paid several orders (a consolidated charge, ADR 0019) is disputed as a
whole. Each of its orders bears the part of the disputed amount, and of the fee, that it
was paid of the charge (largest remainder, ``kit.allocation.allocate``, so the parts add
up exactly): the dispute is one row per order, each the creator's own, synced and posted
to that creator's ledger as a dispute of a single-order payment is.

This use case lives in ``orders`` because it joins payments (the attempt the dispute
names) to the ledger, and ``payments`` may not import ``ledger``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.events import service as events
from stallholder.kit.allocation import allocate
from stallholder.kit.ids import new_id
from stallholder.ledger import service as ledger
from stallholder.orders.models import Order
from stallholder.orders.schemas import dispute_payload
from stallholder.payments.gateway import DisputeSnapshot
from stallholder.payments.models import Dispute, PaymentAttempt

# Statuses in which the disputed funds are withdrawn from the platform (Stripe's
# dispute lifecycle): inquiries (warning_*) and prevented disputes hold nothing, a won
# dispute has had its funds reinstated.
FUNDS_WITHDRAWN_STATUSES = frozenset(
    {"needs_response", "under_review", "lost", "appeal_needs_response", "appeal_under_review"}
)


def withdrawn_for(status: str, amount: int) -> int:
    """What a dispute in ``status`` holds back from the creator."""
    return amount if status in FUNDS_WITHDRAWN_STATUSES else 0


async def _orders_paid_by(
    session: AsyncSession, *, gateway: str, payment_reference: str
) -> list[Order]:
    """The orders the payment paid, in id order: one, or a consolidated charge's several."""
    attempt_id = (
        select(PaymentAttempt.id)
        .where(
            PaymentAttempt.gateway == gateway,
            PaymentAttempt.gateway_reference == payment_reference,
            PaymentAttempt.status == "succeeded",
        )
        .scalar_subquery()
    )
    return list(
        (
            await session.execute(
                select(Order).where(Order.payment_attempt_id == attempt_id).order_by(Order.id)
            )
        ).scalars()
    )


def _shares(total: int, orders: Sequence[tuple[str, int]]) -> dict[str, int]:
    """``total`` split over the orders ((id, amount paid from the charge) each)."""
    return dict(
        zip(
            [order_id for order_id, _ in orders],
            allocate(total, [paid for _, paid in orders]),
            strict=True,
        )
    )


async def sync_dispute(
    session: AsyncSession,
    *,
    gateway: str,
    snapshot: DisputeSnapshot,
    fetched_at: datetime,
    now: datetime,
) -> list[Dispute]:
    """Bring our copy of a dispute, and the ledger, to ``snapshot``: its rows, one per
    order the disputed payment paid (module doc).

    ``fetched_at`` is when the snapshot was read: a snapshot read before the one applied
    last is older and changes nothing. The dispute's rows are locked (id order), so two
    workers syncing one dispute take turns. Returns no rows when no order of ours was paid
    with the disputed payment.
    """
    rows = list(
        (
            await session.execute(
                select(Dispute)
                .where(Dispute.external_id == snapshot.external_id)
                .order_by(Dispute.id)
                .with_for_update()
            )
        ).scalars()
    )
    if rows and rows[0].synced_at > fetched_at:
        return rows
    is_new = not rows
    if is_new:
        orders = (
            []
            if snapshot.payment_reference is None
            else await _orders_paid_by(
                session, gateway=gateway, payment_reference=snapshot.payment_reference
            )
        )
        if not orders:
            return []
        weights = [(order.id, order.amount_total) for order in orders]
        rows = [
            Dispute(
                id=new_id("dp"),
                creator_id=order.creator_id,
                order_id=order.id,
                gateway=gateway,
                external_id=snapshot.external_id,
                amount=0,
                currency=snapshot.currency,
                reason=snapshot.reason,
                status=snapshot.status,
                amount_withdrawn=0,
                fee=0,
                fee_withdrawn=0,
                synced_at=fetched_at,
                created_at=now,
                updated_at=now,
            )
            for order in orders
        ]
        session.add_all(rows)
        await session.flush()
    else:
        paid = dict(
            (
                await session.execute(
                    select(Order.id, Order.amount_total).where(
                        Order.id.in_([row.order_id for row in rows])
                    )
                )
            ).all()
        )
        weights = [(row.order_id, paid[row.order_id]) for row in sorted(rows, key=_by_order)]
    amounts = _shares(snapshot.amount, weights)
    fees = _shares(snapshot.fee, weights)
    for row in rows:
        await _apply(
            session,
            dispute=row,
            snapshot=snapshot,
            amount=amounts[row.order_id],
            fee=fees[row.order_id],
            is_new=is_new,
            fetched_at=fetched_at,
            now=now,
        )
    return rows


def _by_order(dispute: Dispute) -> str:
    return dispute.order_id


async def _apply(
    session: AsyncSession,
    *,
    dispute: Dispute,
    snapshot: DisputeSnapshot,
    amount: int,
    fee: int,
    is_new: bool,
    fetched_at: datetime,
    now: datetime,
) -> None:
    """One order's row of the dispute to the snapshot (its ``amount`` and ``fee`` parts);
    the creator's ledger by the difference; its event."""
    state = (snapshot.status, amount, fee, snapshot.reason)
    is_changed = is_new or (dispute.status, dispute.amount, dispute.fee, dispute.reason) != state
    dispute.status, dispute.amount, dispute.fee, dispute.reason = state
    dispute.synced_at = fetched_at
    if is_changed:
        dispute.updated_at = now
    withdrawn = withdrawn_for(dispute.status, dispute.amount)
    difference = withdrawn - dispute.amount_withdrawn
    fee_difference = dispute.fee - dispute.fee_withdrawn
    if difference or fee_difference:
        order = await session.get(Order, dispute.order_id)
        assert order is not None
        await ledger.post(
            session,
            creator_id=dispute.creator_id,
            kind="dispute" if difference + fee_difference > 0 else "dispute_reversal",
            reference_id=dispute.id,
            currency=dispute.currency,
            lines=ledger.dispute_lines(dispute.creator_id, difference, fee=fee_difference),
            description=f"Dispute {dispute.id} ({dispute.status}) of order {order.receipt_number}",
            now=now,
        )
        dispute.amount_withdrawn = withdrawn
        dispute.fee_withdrawn = dispute.fee
    await session.flush()
    if is_changed:
        await events.emit(
            session,
            creator_id=dispute.creator_id,
            type="dispute.created" if is_new else "dispute.updated",
            now=now,
            data=dispute_payload(dispute),
        )
