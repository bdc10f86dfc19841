from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt

from stallholder.digital.schemas import DeliverablesOut, DownloadOut, IssuedKeyOut
from stallholder.kit.money import Money
from stallholder.kit.schemas import Input
from stallholder.orders.models import Order, Refund
from stallholder.payments.models import Dispute


class RefundCreate(Input):
    order: str = Field(min_length=1, max_length=40)
    amount: StrictInt | None = Field(default=None, gt=0, le=99_999_999_999)
    reason: Literal["requested_by_customer", "duplicate", "fraudulent", "other"] | None = None
    restock: bool = Field(
        default=False,
        description="Put the order's units back on sale when the refund succeeds (every "
        "unit the order still has allocated).",
    )


class RefundOut(BaseModel):
    object: Literal["refund"] = "refund"
    id: str
    order: str
    amount: int
    currency: str
    reason: str | None
    restock: bool
    status: str
    created: datetime


class OrderLineOut(BaseModel):
    price: str
    product: str
    variant: str
    sku: str
    description: str
    quantity: int
    unit_amount: int
    amount_total: int


class ReceiptOut(BaseModel):
    number: str
    merchant: str
    issued: datetime
    amount_paid: str
    lines: list[str]


class ShippingAddressOut(BaseModel):
    name: str
    line1: str
    line2: str | None
    city: str | None
    postal_code: str | None
    state: str | None
    country: str


class OrderShippingOut(BaseModel):
    """Where the order ships and its shipping line."""

    address: ShippingAddressOut
    rate: str | None
    display_name: str | None
    amount: int


class OrderOut(BaseModel):
    object: Literal["order"] = "order"
    id: str
    status: str
    customer: str
    customer_email: str
    checkout_session: str | None
    invoice: str | None = None
    currency: str
    amount_subtotal: int
    amount_shipping: int = 0
    amount_total: int
    amount_refunded: int
    platform_fee: int
    processor_fee: int
    line_items: list[OrderLineOut]
    shipping: OrderShippingOut | None = None
    refunds: list[RefundOut]
    receipt: ReceiptOut
    created: datetime


class OrderDetailOut(OrderOut):
    """One order as ``GET /v1/orders/{id}`` shows it: with what it delivers. Each read
    signs fresh download links, valid for ``STALLHOLDER_DOWNLOAD_LINK_TTL_SECONDS``."""

    downloads: list[DownloadOut]
    license_keys: list[IssuedKeyOut]
    license_keys_missing: int


def order_detail_out(order: OrderOut, found: DeliverablesOut) -> OrderDetailOut:
    return OrderDetailOut(**order.model_dump(), **found.model_dump())


def refund_out(refund: Refund) -> RefundOut:
    return RefundOut(
        id=refund.id,
        order=refund.order_id,
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        restock=refund.restock,
        status=refund.status,
        created=refund.created_at,
    )


def order_out(order: Order, *, merchant: str) -> OrderOut:
    """The order as the API and event payloads show it."""
    return OrderOut(
        id=order.id,
        status=order.status,
        customer=order.customer_id,
        customer_email=order.customer_email,
        checkout_session=order.checkout_session_id,
        invoice=order.invoice_id,
        currency=order.currency,
        amount_subtotal=order.amount_subtotal,
        amount_shipping=order.amount_shipping,
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
        shipping=None
        if order.shipping_address is None
        else OrderShippingOut(
            address=ShippingAddressOut.model_validate(order.shipping_address),
            rate=order.shipping_rate_id,
            display_name=order.shipping_rate_name,
            amount=order.amount_shipping,
        ),
        refunds=[refund_out(refund) for refund in order.refunds],
        receipt=ReceiptOut(
            number=order.receipt_number,
            merchant=merchant,
            issued=order.created_at,
            amount_paid=Money(order.amount_total, order.currency).format(),
            lines=[
                f"{li.quantity} × {li.description} @ "
                f"{Money(li.unit_amount, order.currency).format()}"
                for li in order.line_items
            ]
            + (
                [
                    f"Shipping ({order.shipping_rate_name or 'no charge'}): "
                    f"{Money(order.amount_shipping, order.currency).format()}"
                ]
                if order.shipping_address is not None
                else []
            ),
        ),
        created=order.created_at,
    )


def dispute_payload(dispute: Dispute) -> dict[str, Any]:
    """A dispute as event payloads show it."""
    return {
        "id": dispute.id,
        "object": "dispute",
        "order": dispute.order_id,
        "amount": dispute.amount,
        "currency": dispute.currency,
        "reason": dispute.reason,
        "status": dispute.status,
        "amount_withdrawn": dispute.amount_withdrawn,
        "fee": dispute.fee,
        "fee_withdrawn": dispute.fee_withdrawn,
        "gateway": dispute.gateway,
        "gateway_reference": dispute.external_id,
        "created": dispute.created_at.isoformat().replace("+00:00", "Z"),
        "updated": dispute.updated_at.isoformat().replace("+00:00", "Z"),
    }
