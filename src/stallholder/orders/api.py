"""HTTP routes for orders and refunds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.accounts.models import Creator
from stallholder.kit.http import NowDep, SessionDep
from stallholder.kit.money import Money
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut
from stallholder.orders import service
from stallholder.orders.models import Order, Refund
from stallholder.orders.schemas import OrderLineOut, OrderOut, ReceiptOut, RefundCreate, RefundOut

router = APIRouter(prefix="/v1", tags=["orders"])


def refund_out(refund: Refund) -> RefundOut:
    return RefundOut(
        id=refund.id,
        order=refund.order_id,
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        status=refund.status,
        created=refund.created_at,
    )


async def order_out(session: SessionDep, order: Order) -> OrderOut:
    creator = await session.get(Creator, order.creator_id)
    assert creator is not None
    return OrderOut(
        id=order.id,
        status=order.status,
        customer=order.customer_id,
        customer_email=order.customer_email,
        checkout_session=order.checkout_session_id,
        currency=order.currency,
        amount_subtotal=order.amount_subtotal,
        amount_total=order.amount_total,
        amount_refunded=order.amount_refunded,
        platform_fee=order.platform_fee,
        processor_fee=order.processor_fee,
        line_items=[
            OrderLineOut(
                price=li.price_id,
                product=li.product_id,
                variant=li.variant_id,
                sku=li.sku,
                description=li.description,
                quantity=li.quantity,
                unit_amount=li.unit_amount,
                amount_total=li.amount_total,
            )
            for li in order.line_items
        ],
        refunds=[refund_out(refund) for refund in order.refunds],
        receipt=ReceiptOut(
            number=order.receipt_number,
            merchant=creator.display_name,
            issued=order.created_at,
            amount_paid=Money(order.amount_total, order.currency).format(),
            lines=[
                f"{li.quantity} × {li.description} @ "
                f"{Money(li.unit_amount, order.currency).format()}"
                for li in order.line_items
            ],
        ),
        created=order.created_at,
    )


@router.get("/orders/{order_id}", response_model=OrderOut)
async def get_order(order_id: str, creator_id: SecretCreatorDep, session: SessionDep) -> OrderOut:
    return await order_out(
        session, await service.get_order(session, creator_id=creator_id, order_id=order_id)
    )


@router.get("/orders", response_model=ListOut)
async def list_orders(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await service.list_orders(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[await order_out(session, o) for o in page.data], has_more=page.has_more)


@router.post("/refunds", status_code=201, response_model=RefundOut)
async def create_refund(
    body: RefundCreate,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> RefundOut:
    """Refund an order in full (no ``amount``) or in part. Never more than was captured."""
    refund = await service.create_refund(
        session,
        request.app.state.gateway,
        creator_id=creator_id,
        order_id=body.order,
        amount=body.amount,
        reason=body.reason,
        now=now,
    )
    return refund_out(refund)
