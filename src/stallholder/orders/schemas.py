from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictInt

from stallholder.kit.schemas import Input


class RefundCreate(Input):
    order: str = Field(min_length=1, max_length=40)
    amount: StrictInt | None = Field(default=None, gt=0, le=99_999_999_999)
    reason: Literal["requested_by_customer", "duplicate", "fraudulent", "other"] | None = None


class RefundOut(BaseModel):
    object: Literal["refund"] = "refund"
    id: str
    order: str
    amount: int
    currency: str
    reason: str | None
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


class OrderOut(BaseModel):
    object: Literal["order"] = "order"
    id: str
    status: str
    customer: str
    customer_email: str
    checkout_session: str
    currency: str
    amount_subtotal: int
    amount_total: int
    amount_refunded: int
    platform_fee: int
    processor_fee: int
    line_items: list[OrderLineOut]
    refunds: list[RefundOut]
    receipt: ReceiptOut
    created: datetime
