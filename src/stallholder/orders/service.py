"""Orders created from completed checkouts, and refunds that reverse them exactly."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Creator
from stallholder.events import service as events
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeePolicy, payment_split, refund_split
from stallholder.orders.models import Order, OrderLineItem, Refund
from stallholder.orders.schemas import order_out, refund_out
from stallholder.payments import service as payments
from stallholder.payments.gateway import Gateway
from stallholder.payments.models import PaymentAttempt


class OrderNotFound(NotFound):
    slug = "order-not-found"
    title = "No such order"


class RefundTooLarge(InvalidRequest):
    slug = "refund-exceeds-remaining"
    title = "The refund is larger than what remains to refund"


class OrderFullyRefunded(Conflict):
    slug = "order-already-refunded"
    title = "The order is already fully refunded"


@dataclass(frozen=True, slots=True)
class LineSpec:
    price_id: str
    product_id: str
    variant_id: str
    sku: str
    description: str
    quantity: int
    unit_amount: int

    @property
    def amount_total(self) -> int:
        return self.unit_amount * self.quantity


def fee_policy_for(creator: Creator, default: FeePolicy) -> FeePolicy:
    """The platform default, overridden per creator where the creator has its own terms."""
    return FeePolicy(
        bps=default.bps if creator.platform_fee_bps is None else creator.platform_fee_bps,
        fixed=default.fixed if creator.platform_fee_fixed is None else creator.platform_fee_fixed,
    )


async def _next_receipt_number(session: AsyncSession, creator: Creator) -> str:
    counter = (
        await session.execute(
            update(Creator)
            .where(Creator.id == creator.id)
            .values(receipt_counter=Creator.receipt_counter + 1)
            .returning(Creator.receipt_counter)
        )
    ).scalar_one()
    return f"{creator.slug.upper()}-{counter:06d}"


async def create_paid_order(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    customer_email: str,
    checkout_session_id: str,
    attempt: PaymentAttempt,
    lines: Sequence[LineSpec],
    now: datetime,
) -> Order:
    """The order for a successful payment, with the payment posted to the ledger.

    The split is the one fixed before charging (``attempt.platform_fee`` and the processor
    fee the creator bears), so the creator's share is what the gateway paid the creator.
    When the processor's actual fee differs from that estimate, the platform absorbs the
    difference in a transaction of its own.
    """
    creator = await session.get(Creator, creator_id)
    assert creator is not None
    subtotal = sum(line.amount_total for line in lines)
    if subtotal != attempt.amount:
        raise ValueError(f"order lines total {subtotal} but the payment captured {attempt.amount}")
    split = payment_split(
        attempt.amount,
        platform_fee=attempt.platform_fee,
        processor_fee=attempt.estimated_processor_fee,
    )
    order = Order(
        id=new_id("ord"),
        creator_id=creator_id,
        customer_id=customer_id,
        customer_email=customer_email,
        checkout_session_id=checkout_session_id,
        payment_attempt_id=attempt.id,
        status="paid",
        currency=attempt.currency,
        amount_subtotal=subtotal,
        amount_total=attempt.amount,
        amount_refunded=0,
        platform_fee=split.platform_fee,
        processor_fee=split.processor_fee,
        receipt_number=await _next_receipt_number(session, creator),
        created_at=now,
        updated_at=now,
        line_items=[
            OrderLineItem(
                price_id=line.price_id,
                product_id=line.product_id,
                variant_id=line.variant_id,
                sku=line.sku,
                description=line.description,
                quantity=line.quantity,
                unit_amount=line.unit_amount,
                amount_total=line.amount_total,
            )
            for line in lines
        ],
        refunds=[],
    )
    session.add(order)
    await session.flush()
    await ledger.post(
        session,
        creator_id=creator_id,
        kind="payment",
        reference_id=order.id,
        currency=order.currency,
        lines=ledger.payment_lines(creator_id, split),
        description=f"Payment for order {order.receipt_number}",
        now=now,
    )
    if attempt.processor_fee != attempt.estimated_processor_fee:
        await ledger.post(
            session,
            creator_id=creator_id,
            kind="processor_fee_adjustment",
            reference_id=order.id,
            currency=order.currency,
            lines=ledger.processor_fee_adjustment_lines(
                attempt.processor_fee - attempt.estimated_processor_fee
            ),
            description=f"Processor fee of order {order.receipt_number}: "
            f"{attempt.processor_fee} charged, {attempt.estimated_processor_fee} expected",
            now=now,
        )
    await events.emit(
        session,
        creator_id=creator_id,
        type="order.paid",
        now=now,
        data=order_out(order, merchant=creator.display_name).model_dump(mode="json"),
    )
    return order


async def get_order(
    session: AsyncSession, *, creator_id: str, order_id: str, for_update: bool = False
) -> Order:
    statement = select(Order).where(Order.id == order_id, Order.creator_id == creator_id)
    if for_update:
        statement = statement.with_for_update()
    order = (await session.execute(statement)).scalar_one_or_none()
    if order is None:
        raise OrderNotFound(f"no order {order_id!r}")
    return order


async def list_orders(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[Order]:
    return await paginate(
        session,
        select(Order).where(Order.creator_id == creator_id),
        id_column=Order.id,
        limit=limit,
        starting_after=starting_after,
    )


async def list_refunds(
    session: AsyncSession,
    *,
    creator_id: str,
    order_id: str | None,
    limit: int,
    starting_after: str | None,
) -> Page[Refund]:
    """The creator's refunds, newest first; with ``order_id``, that order's only.

    Raises:
        OrderNotFound: ``order_id`` is not one of the creator's orders.
    """
    statement = select(Refund).where(Refund.creator_id == creator_id)
    if order_id is not None:
        await get_order(session, creator_id=creator_id, order_id=order_id)
        statement = statement.where(Refund.order_id == order_id)
    return await paginate(
        session, statement, id_column=Refund.id, limit=limit, starting_after=starting_after
    )


async def create_refund(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    order_id: str,
    amount: int | None,
    reason: str | None,
    now: datetime,
) -> Refund:
    """Refund all that remains, or ``amount`` of it, and reverse the ledger in proportion.

    The order row is locked, so concurrent refunds cannot together exceed the capture.

    Raises:
        OrderNotFound, OrderFullyRefunded, RefundTooLarge.
    """
    order = await get_order(session, creator_id=creator_id, order_id=order_id, for_update=True)
    remaining = order.amount_total - order.amount_refunded
    if remaining == 0:
        raise OrderFullyRefunded(f"order {order_id} has been refunded in full already")
    amount = remaining if amount is None else amount
    if amount > remaining:
        raise RefundTooLarge(
            f"amount {amount} exceeds the {remaining} {order.currency} that remains "
            f"refundable on order {order_id}",
            remaining=remaining,
        )
    attempt = await session.get(PaymentAttempt, order.payment_attempt_id)
    assert attempt is not None
    assert attempt.gateway_reference is not None
    refund_number = (
        1
        + (
            await session.execute(
                select(func.count()).select_from(Refund).where(Refund.order_id == order.id)
            )
        ).scalar_one()
    )
    result = await payments.refund(
        gateway,
        charge_reference=attempt.gateway_reference,
        amount=amount,
        currency=order.currency,
        idempotency_key=f"{order.id}:refund:{refund_number}",
    )
    original = payment_split(
        order.amount_total, platform_fee=order.platform_fee, processor_fee=order.processor_fee
    )
    split = refund_split(original, refunded_before=order.amount_refunded, amount=amount)
    refund = Refund(
        id=new_id("re"),
        creator_id=creator_id,
        order_id=order.id,
        amount=amount,
        currency=order.currency,
        reason=reason,
        status="succeeded",
        gateway_reference=result.reference,
        platform_fee_reversed=split.platform_fee,
        processor_fee_reversed=split.processor_fee,
        created_at=now,
    )
    session.add(refund)
    order.amount_refunded += amount
    order.status = (
        "refunded" if order.amount_refunded == order.amount_total else "partially_refunded"
    )
    order.updated_at = now
    order.refunds.append(refund)
    await session.flush()
    await ledger.post(
        session,
        creator_id=creator_id,
        kind="refund",
        reference_id=refund.id,
        currency=order.currency,
        lines=ledger.refund_lines(creator_id, split),
        description=f"Refund {refund.id} of order {order.receipt_number}",
        now=now,
    )
    await events.emit(
        session,
        creator_id=creator_id,
        type="refund.created",
        now=now,
        data=refund_out(refund).model_dump(mode="json"),
    )
    return refund
