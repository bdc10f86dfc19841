"""HTTP routes for orders and refunds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.accounts.models import Creator
from stallholder.digital.api import LinksDep
from stallholder.digital.schemas import deliverables_out
from stallholder.kit.http import (
    NowDep,
    RequestKeyDep,
    SessionDep,
    SettingsDep,
    problem_response,
)
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut
from stallholder.orders import downloads, service
from stallholder.orders.models import Order
from stallholder.orders.schemas import (
    OrderDetailOut,
    OrderOut,
    RefundCreate,
    RefundOut,
    order_detail_out,
    order_out,
    refund_out,
)
from stallholder.payments.gateway import GatewayRefused

router = APIRouter(prefix="/v1", tags=["orders"])


async def _order_out(session: SessionDep, order: Order) -> OrderOut:
    creator = await session.get(Creator, order.creator_id)
    assert creator is not None
    return order_out(order, merchant=creator.display_name)


@router.get("/orders/{order_id}", response_model=OrderDetailOut)
async def get_order(
    order_id: str, creator_id: SecretCreatorDep, session: SessionDep, links: LinksDep, now: NowDep
) -> OrderDetailOut:
    """The order, with what it delivers: a download link to each file of its products
    (signed now, expiring; with the order's download count of it) and its license keys."""
    order = await service.get_order(session, creator_id=creator_id, order_id=order_id)
    found = await downloads.for_order(session, order=order, links=links, now=now)
    return order_detail_out(await _order_out(session, order), deliverables_out(found))


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
    return ListOut(data=[await _order_out(session, o) for o in page.data], has_more=page.has_more)


@router.get(
    "/refunds",
    response_model=ListOut,
    responses={404: {"description": "`order-not-found`: no such order, or not yours"}},
)
async def list_refunds(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    order: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The creator's refunds, newest first; ``order`` lists one order's refunds."""
    page = await service.list_refunds(
        session,
        creator_id=creator_id,
        order_id=order,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(data=[refund_out(r) for r in page.data], has_more=page.has_more)


@router.post("/refunds", status_code=201, response_model=RefundOut)
async def create_refund(
    body: RefundCreate,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    request_key: RequestKeyDep,
) -> Any:
    """Refund an order in full (no ``amount``) or in part. Never more than was captured:
    refunds still waiting for the gateway count against what remains. No transaction is
    open while the gateway is called. ``restock: true`` puts the order's units back on
    sale when the refund succeeds."""
    refund = await service.create_refund(
        request.app.state.database,
        request.app.state.gateway,
        creator_id=creator_id,
        order_id=body.order,
        amount=body.amount,
        reason=body.reason,
        resolve_after=now + settings.payment_resolve_after(),
        now=now,
        session=session,
        request_key=request_key,
        restock=body.restock,
    )
    if refund.status == "failed":
        # Returned, not raised: the unit of work commits the refund as failed.
        return problem_response(
            GatewayRefused(
                refund.failure_message or "the payment gateway refused the refund",
                refund=refund.id,
            ),
            instance="/v1/refunds",
        )
    return refund_out(refund)
