"""Orders created from paid checkout sessions or invoices, and refunds that reverse them
exactly.

A refund runs in three steps, like a charge (ADR 0007): ``begin_refund`` records it
``pending`` under the order's lock (pending refunds count against what remains, so
concurrent refunds never exceed the capture); the gateway is called with no transaction
open; ``finish_refund`` records the outcome and, on success, reverses the ledger. A
refund a crash left ``pending`` is finished by the worker (``orders.tasks``) with the
same idempotency key.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, TextClause, bindparam, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached

from stallholder.accounts.models import Creator
from stallholder.digital import delivery as digital
from stallholder.events import service as events
from stallholder.inventory import drops, reservations
from stallholder.kit.db import Database, is_unique_violation, session_or_unit_of_work
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import (
    FeePolicy,
    FeeSchedule,
    creator_share_left,
    payment_split,
    refund_split,
)
from stallholder.orders.models import Order, OrderLineItem, Refund
from stallholder.orders.schemas import order_out, refund_out
from stallholder.payments import service as payments
from stallholder.payments.gateway import Gateway, GatewayRefused, RefundResult, TransferReversal
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


@dataclass(frozen=True, slots=True)
class ShippingSpec:
    """The shipping line of an order: where it goes, the rate chosen and its price."""

    address: dict[str, Any]
    rate_id: str | None
    rate_name: str | None
    amount: int


@dataclass(frozen=True, slots=True)
class PaymentShare:
    """The part of one charge that pays one order. A consolidated charge pays several
    creators' invoices (ADR 0019): each order takes its amount, the platform's fee on it,
    and its part of the processor's fee, estimated before charging and actual after."""

    amount: int
    platform_fee: int
    estimated_processor_fee: int
    processor_fee: int

    @classmethod
    def whole(cls, attempt: PaymentAttempt) -> PaymentShare:
        """All of a charge that pays one order."""
        return cls(
            amount=attempt.amount,
            platform_fee=attempt.platform_fee,
            estimated_processor_fee=attempt.estimated_processor_fee,
            processor_fee=attempt.processor_fee,
        )


def fee_policy_for(creator: Creator, default: FeeSchedule, *, currency: str) -> FeePolicy:
    """The fee on a charge in ``currency``: the platform default, overridden where the
    creator has its own terms (basis points, or a fixed part in that currency)."""
    schedule = default.overridden(
        bps=creator.platform_fee_bps, fixed=creator.platform_fee_fixed_amounts
    )
    return schedule.for_currency(currency)


@dataclass(frozen=True, slots=True)
class _Receipt:
    number: str
    merchant: str


_NEXT_RECEIPT = (
    update(Creator)
    .where(Creator.id == bindparam("creator_id"))
    .values(receipt_counter=Creator.receipt_counter + 1)
    .returning(Creator.receipt_counter, Creator.slug, Creator.display_name)
)


async def _next_receipt(session: AsyncSession, *, creator_id: str) -> _Receipt:
    """The creator's next receipt number (an atomic increment) and the merchant name the
    receipt shows, read by the same statement."""
    row = (await session.execute(_NEXT_RECEIPT, {"creator_id": creator_id})).one()
    return _Receipt(
        number=f"{row.slug.upper()}-{row.receipt_counter:06d}", merchant=row.display_name
    )


# The receipt number as ``_next_receipt`` formats it (``SLUG-000042``: at least six digits).
_RECEIPT_NUMBER_SQL = (
    "upper(slug) || '-' || "
    "lpad(receipt_counter::text, greatest(6, length(receipt_counter::text)), '0')"
)
# Every column of the two tables (the receipt number is made by the statement; a line's
# id by its sequence, its creator and order are the order's), so a column added to the
# models is written here too; ``_place`` insists each is set on the objects.
_ORDER_COLUMNS = tuple(
    column.name for column in Order.__table__.columns if column.name != "receipt_number"
)
_LINE_COLUMNS = tuple(
    column.name
    for column in OrderLineItem.__table__.columns
    if column.name not in ("id", "creator_id", "order_id")
)


@functools.cache
def _placing(lines: int) -> TextClause:
    """PostgreSQL: the receipt number, the order and its lines in one statement. The
    creator's counter is moved by a data-modifying CTE (it runs exactly once), the order
    takes its number from it, and the lines' insert returns their ids with what tells
    them apart (lines alike in all of it are interchangeable) and the number and the
    merchant's name; the lines' foreign key to the order is checked at the end of the
    statement, when both exist."""
    order_values = ", ".join(f":o_{column}" for column in _ORDER_COLUMNS)
    line_values = ", ".join(
        "(:creator_id, :o_id, " + ", ".join(f":l{n}_{column}" for column in _LINE_COLUMNS) + ")"
        for n in range(lines)
    )
    return text(  # only bind parameters' names go into the text, numbered by ``lines``
        "WITH receipt AS (UPDATE creators SET receipt_counter = receipt_counter + 1 "  # noqa: S608
        "WHERE id = :creator_id RETURNING receipt_counter, slug, display_name), "
        f"numbered AS (SELECT {_RECEIPT_NUMBER_SQL} AS receipt_number, display_name FROM receipt), "
        f"placed AS (INSERT INTO orders ({', '.join(_ORDER_COLUMNS)}, receipt_number) "
        f"VALUES ({order_values}, (SELECT receipt_number FROM numbered))) "
        f"INSERT INTO order_line_items (creator_id, order_id, {', '.join(_LINE_COLUMNS)}) "
        f"VALUES {line_values} RETURNING id, {', '.join(_LINE_COLUMNS)}, "
        "(SELECT receipt_number FROM numbered) AS receipt_number, "
        "(SELECT display_name FROM numbered) AS merchant"
    ).bindparams(bindparam("o_shipping_address", type_=JSON(none_as_null=True)))


def _set(row: Order | OrderLineItem, column: str) -> Any:
    """A column's value as set on a new object: no ORM default applies to this write, and
    what is not set would be left unloaded after the hand-over."""
    if column not in row.__dict__:
        raise ValueError(f"{type(row).__name__}.{column} must be set to place an order")
    return row.__dict__[column]


def _line_key(line: Any) -> tuple[Any, ...]:
    return tuple(getattr(line, column) for column in _LINE_COLUMNS)


async def _place(session: AsyncSession, order: Order) -> _Receipt:
    """PostgreSQL: write ``order`` (transient, with its lines and no receipt number yet)
    in one statement (``_placing``), then give the session the rows as written, as if
    loaded: the order, its lines with their ids, and its number."""
    values: dict[str, Any] = {"creator_id": order.creator_id}
    values |= {f"o_{column}": _set(order, column) for column in _ORDER_COLUMNS}
    for n, line in enumerate(order.line_items):
        values |= {f"l{n}_{column}": _set(line, column) for column in _LINE_COLUMNS}
    # Nothing the session has yet to write bears on this one (the order refers only to
    # rows written before): it is left to the caller's flush, which may write a charge
    # batch's outcomes in one statement, rather than the ORM's autoflush here.
    with session.sync_session.no_autoflush:
        rows = (await session.execute(_placing(len(order.line_items)), values)).all()
    ids: dict[tuple[Any, ...], list[int]] = {}
    for row in rows:
        ids.setdefault(_line_key(row), []).append(row.id)
    for line in order.line_items:
        line.id = ids[_line_key(line)].pop()
        line.order_id = order.id
        make_transient_to_detached(line)
    order.receipt_number = rows[0].receipt_number
    make_transient_to_detached(order)
    session.add(order)
    return _Receipt(number=rows[0].receipt_number, merchant=rows[0].merchant)


async def create_paid_order(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    customer_email: str,
    attempt: PaymentAttempt,
    lines: Sequence[LineSpec],
    now: datetime,
    checkout_session_id: str | None = None,
    invoice_id: str | None = None,
    shipping: ShippingSpec | None = None,
    share: PaymentShare | None = None,
    post_with_flush: bool = False,
) -> Order:
    """The order for a successful payment, with the payment posted to the ledger. It was
    sold through a checkout session or an invoice: exactly one of the two is given.
    ``post_with_flush``: the posting is sent with the unit of work's next
    ``kit.flush.flush_together`` (``ledger.post``).

    ``shipping`` is the parcel's address and shipping line; the payment covers the lines
    and the shipping, and all of it is the creator's revenue, fees on the whole (ADR 0014).

    The split is the one fixed before charging (``attempt.platform_fee`` and the processor
    fee the creator bears), so the creator's share is what the gateway paid the creator.
    When the processor's actual fee differs from that estimate, the platform absorbs the
    difference in a transaction of its own. ``share`` is the part of the charge that pays
    this order when the charge paid several (a consolidated charge); by default all of it.
    """
    if (checkout_session_id is None) == (invoice_id is None):
        raise ValueError("an order comes from one checkout session or one invoice")
    paid = share or PaymentShare.whole(attempt)
    subtotal = sum(line.amount_total for line in lines)
    amount_shipping = 0 if shipping is None else shipping.amount
    if subtotal + amount_shipping != paid.amount:
        raise ValueError(
            f"order lines total {subtotal} and shipping {amount_shipping} but the payment "
            f"captured {paid.amount}"
        )
    split = payment_split(
        paid.amount,
        platform_fee=paid.platform_fee,
        processor_fee=paid.estimated_processor_fee,
    )
    on_postgres = bool(lines) and session.get_bind().dialect.name == "postgresql"
    receipt = None if on_postgres else await _next_receipt(session, creator_id=creator_id)
    order = Order(
        id=new_id("ord"),
        creator_id=creator_id,
        customer_id=customer_id,
        customer_email=customer_email,
        checkout_session_id=checkout_session_id,
        invoice_id=invoice_id,
        payment_attempt_id=attempt.id,
        status="paid",
        currency=attempt.currency,
        amount_subtotal=subtotal,
        amount_shipping=amount_shipping,
        shipping_address=None if shipping is None else shipping.address,
        shipping_rate_id=None if shipping is None else shipping.rate_id,
        shipping_rate_name=None if shipping is None else shipping.rate_name,
        amount_total=paid.amount,
        amount_refunded=0,
        platform_fee=split.platform_fee,
        processor_fee=split.processor_fee,
        receipt_number=None if receipt is None else receipt.number,
        transfer_reference=None,
        transfer_amount=None,
        created_at=now,
        updated_at=now,
        line_items=[
            OrderLineItem(
                creator_id=creator_id,
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
    if receipt is None:
        receipt = await _place(session, order)
    else:
        session.add(order)
        await session.flush()
    # Keys from the products' pools, one per unit, in the transaction that records the
    # sale (docs/digital-delivery.md).
    await digital.issue_license_keys(
        session,
        creator_id=creator_id,
        order_id=order.id,
        lines=[
            digital.OrderedLine(line_id=li.id, product_id=li.product_id, quantity=li.quantity)
            for li in order.line_items
        ],
        now=now,
    )
    await ledger.post(
        session,
        creator_id=creator_id,
        kind="payment",
        reference_id=order.id,
        currency=order.currency,
        lines=ledger.payment_lines(creator_id, split),
        description=f"Payment for order {order.receipt_number}"
        + (f" (shipping {amount_shipping} included)" if amount_shipping else ""),
        now=now,
        with_flush=post_with_flush,
    )
    if paid.processor_fee != paid.estimated_processor_fee:
        await ledger.post(
            session,
            creator_id=creator_id,
            kind="processor_fee_adjustment",
            reference_id=order.id,
            currency=order.currency,
            lines=ledger.processor_fee_adjustment_lines(
                paid.processor_fee - paid.estimated_processor_fee
            ),
            description=f"Processor fee of order {order.receipt_number}: "
            f"{paid.processor_fee} charged, {paid.estimated_processor_fee} expected",
            now=now,
            with_flush=post_with_flush,
        )
    await events.emit(
        session,
        creator_id=creator_id,
        type="order.paid",
        now=now,
        data=order_out(order, merchant=receipt.merchant).model_dump(mode="json"),
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


async def orders_of_customers(
    session: AsyncSession, *, customer_ids: Sequence[str], limit: int = 100
) -> list[Order]:
    """The newest orders of these customers (one buyer's, across creators: the buyer
    portal), newest first."""
    if not customer_ids:
        return []
    return list(
        (
            await session.execute(
                select(Order)
                .where(Order.customer_id.in_(sorted(set(customer_ids))))
                .order_by(Order.created_at.desc(), Order.id.desc())
                .limit(limit)
            )
        ).scalars()
    )


async def order_of_customers(
    session: AsyncSession, *, customer_ids: Sequence[str], order_id: str
) -> Order:
    """One order of these customers. Raises ``OrderNotFound`` for anyone else's."""
    order = await session.get(Order, order_id)
    if order is None or order.customer_id not in customer_ids:
        raise OrderNotFound(f"you have no order {order_id!r}")
    return order


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


@dataclass(frozen=True, slots=True)
class RefundCall:
    """What the gateway call of a pending refund needs, copied out of the rows."""

    refund_id: str
    order_id: str
    charge_reference: str
    amount: int
    currency: str
    idempotency_key: str
    # The transfer that paid the creator and the part of this refund to take back from
    # it, when the charge was a platform charge (a consolidated charge with Stripe).
    transfer_reversal: TransferReversal | None = None
    # The charge was the platform's (it paid no creator directly): a refund of it carries
    # no destination-charge flags, and reverses a transfer only once there is one.
    is_platform_charge: bool = False


async def begin_refund(
    session: AsyncSession,
    *,
    creator_id: str,
    order_id: str,
    amount: int | None,
    reason: str | None,
    resolve_after: datetime,
    now: datetime,
    request_key: str | None = None,
    restock: bool = False,
) -> RefundCall:
    """Step 1: record a ``pending`` refund of all that remains, or ``amount`` of it.

    The order row is locked and pending refunds count against what remains, so
    concurrent refunds cannot together exceed the capture. The gateway key is
    ``<order>:refund:<n>``.

    Raises:
        OrderNotFound, OrderFullyRefunded, RefundTooLarge, PaymentInProgress (the
        creator's transfer for the order is being made: its amount is fixed and it has no
        reference to reverse from yet).
    """
    order = await get_order(session, creator_id=creator_id, order_id=order_id, for_update=True)
    if order.transfer_reference is None and order.transfer_amount:
        raise payments.PaymentInProgress(
            f"the transfer that pays the creator for order {order_id} is being made; retry "
            "the refund shortly (it will then be taken back from that transfer)"
        )
    pending = (
        await session.execute(
            select(func.coalesce(func.sum(Refund.amount), 0)).where(
                Refund.order_id == order.id, Refund.status == "pending"
            )
        )
    ).scalar_one()
    remaining = order.amount_total - order.amount_refunded - int(pending)
    if order.amount_refunded == order.amount_total:
        raise OrderFullyRefunded(f"order {order_id} has been refunded in full already")
    amount = remaining if amount is None else amount
    if amount > remaining or amount < 1:
        raise RefundTooLarge(
            f"amount {amount} exceeds the {remaining} {order.currency} that remains "
            f"refundable on order {order_id}"
            + (f" ({pending} is being refunded now)" if pending else ""),
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
    transfer_reversal_amount = None
    if order.transfer_reference is not None:
        # The creator's part of this refund, as the ledger will reverse it (cumulative,
        # counting refunds still pending as made first).
        original = payment_split(
            order.amount_total, platform_fee=order.platform_fee, processor_fee=order.processor_fee
        )
        reversed_split = refund_split(
            original, refunded_before=order.amount_refunded + int(pending), amount=amount
        )
        transfer_reversal_amount = (
            reversed_split.gross - reversed_split.platform_fee - reversed_split.processor_fee
        )
    refund = Refund(
        id=new_id("re"),
        creator_id=creator_id,
        order_id=order.id,
        amount=amount,
        currency=order.currency,
        reason=reason,
        restock=restock,
        transfer_reversal_amount=transfer_reversal_amount,
        status="pending",
        idempotency_key=f"{order.id}:refund:{refund_number}",
        request_key=request_key,
        resolve_after=resolve_after,
        platform_fee_reversed=0,
        processor_fee_reversed=0,
        created_at=now,
    )
    session.add(refund)
    try:
        await session.flush()
    except IntegrityError as error:
        # Two requests under one Idempotency-Key at once (a retry took over a request
        # that was still running): the first begun refund is the one; this one waits.
        if not is_unique_violation(error, "uq_refunds_request_key"):
            raise
        raise payments.PaymentInProgress(
            "a refund under this Idempotency-Key is being made; retry shortly"
        ) from error
    return _refund_call(
        refund,
        charge_reference=attempt.gateway_reference,
        transfer_reference=order.transfer_reference,
        is_platform_charge=_is_platform_charge(attempt.connected_account),
    )


# The sweep that settles refunds a crash left ``pending`` past their ``resolve_after``
# (a periodic kind: ``orders.tasks``, ADR 0029).
SETTLE_KIND = "orders.settle_refunds"


def _is_platform_charge(connected_account: str | None) -> bool:
    """Whether a charge paid no creator directly (with Stripe: a consolidated charge; the
    sandbox, which pays creators from the ledger, ignores it)."""
    return connected_account is None


async def _refund_for_request(
    session: AsyncSession, *, creator_id: str, request_key: str | None
) -> tuple[Refund, str, str | None, bool] | None:
    """The refund begun under ``request_key``, with its charge's gateway reference and the
    order's transfer, if the creator was paid by one."""
    if request_key is None:
        return None
    row = (
        await session.execute(
            select(
                Refund,
                PaymentAttempt.gateway_reference,
                Order.transfer_reference,
                PaymentAttempt.connected_account,
            )
            .join(Order, Order.id == Refund.order_id)
            .join(PaymentAttempt, PaymentAttempt.id == Order.payment_attempt_id)
            .where(Refund.creator_id == creator_id, Refund.request_key == request_key)
        )
    ).one_or_none()
    if row is None:
        return None
    refund, reference, transfer, connected_account = row
    assert reference is not None
    return refund, reference, transfer, _is_platform_charge(connected_account)


def _refund_call(
    refund: Refund,
    *,
    charge_reference: str,
    transfer_reference: str | None,
    is_platform_charge: bool,
) -> RefundCall:
    assert refund.idempotency_key is not None
    return RefundCall(
        refund_id=refund.id,
        order_id=refund.order_id,
        charge_reference=charge_reference,
        amount=refund.amount,
        currency=refund.currency,
        idempotency_key=refund.idempotency_key,
        transfer_reversal=TransferReversal(
            transfer_reference=transfer_reference, amount=refund.transfer_reversal_amount
        )
        if transfer_reference is not None and refund.transfer_reversal_amount
        else None,
        is_platform_charge=is_platform_charge,
    )


async def refund_calls_due(session: AsyncSession, *, now: datetime, limit: int) -> list[RefundCall]:
    """Pending refunds past their ``resolve_after``: a crash left them half done."""
    rows = await session.execute(
        select(
            Refund,
            PaymentAttempt.gateway_reference,
            Order.transfer_reference,
            PaymentAttempt.connected_account,
        )
        .join(Order, Order.id == Refund.order_id)
        .join(PaymentAttempt, PaymentAttempt.id == Order.payment_attempt_id)
        .where(Refund.status == "pending", Refund.resolve_after <= now)
        .order_by(Refund.resolve_after, Refund.id)
        .limit(limit)
    )
    return [
        _refund_call(
            refund,
            charge_reference=reference,
            transfer_reference=transfer,
            is_platform_charge=_is_platform_charge(connected_account),
        )
        for refund, reference, transfer, connected_account in rows
        if reference is not None
    ]


async def finish_refund(
    session: AsyncSession,
    *,
    call: RefundCall,
    result: RefundResult | GatewayRefused,
    now: datetime,
) -> Refund:
    """Step 3: record the gateway's answer under the order's lock. On success the order's
    refunded amount grows and the ledger reverses the payment in proportion; a refusal
    marks the refund ``failed``. Idempotent: a refund that is no longer pending is
    returned as it is."""
    order = (
        await session.execute(select(Order).where(Order.id == call.order_id).with_for_update())
    ).scalar_one()
    refund = await session.get(Refund, call.refund_id, populate_existing=True)
    assert refund is not None
    if refund.status != "pending":
        return refund
    refund.resolve_after = None
    if isinstance(result, GatewayRefused):
        refund.status = "failed"
        refund.failure_message = result.detail[:500]
        await session.flush()
        return refund
    original = payment_split(
        order.amount_total, platform_fee=order.platform_fee, processor_fee=order.processor_fee
    )
    split = refund_split(original, refunded_before=order.amount_refunded, amount=refund.amount)
    refund.status = "succeeded"
    refund.gateway_reference = result.reference
    refund.platform_fee_reversed = split.platform_fee
    refund.processor_fee_reversed = split.processor_fee
    order.amount_refunded += refund.amount
    order.status = (
        "refunded" if order.amount_refunded == order.amount_total else "partially_refunded"
    )
    order.updated_at = now
    await session.flush()
    await ledger.post(
        session,
        creator_id=order.creator_id,
        kind="refund",
        reference_id=refund.id,
        currency=order.currency,
        lines=ledger.refund_lines(order.creator_id, split),
        description=f"Refund {refund.id} of order {order.receipt_number}",
        now=now,
    )
    if refund.restock:
        if order.checkout_session_id is not None:
            await drops.restock(session, checkout_session_id=order.checkout_session_id, now=now)
        await reservations.restock(session, order_id=order.id, refund_id=refund.id, now=now)
    if order.status == "refunded":
        # A refunded order is owed no more license keys (docs/digital-delivery.md).
        await digital.forget_owed_keys(session, order_id=order.id)
    await events.emit(
        session,
        creator_id=order.creator_id,
        type="refund.created",
        now=now,
        data=refund_out(refund).model_dump(mode="json"),
    )
    return refund


async def postpone_refund(session: AsyncSession, *, refund_id: str, until: datetime) -> None:
    """A pending refund whose gateway call failed comes due again at ``until`` (the
    settlement sweep takes it then)."""
    await session.execute(
        update(Refund)
        .where(Refund.id == refund_id, Refund.status == "pending")
        .values(resolve_after=until)
    )


async def call_refund(gateway: Gateway, call: RefundCall) -> RefundResult | GatewayRefused:
    """Step 2, with no transaction open. A refusal is returned (it is recorded); a gateway
    that cannot be reached raises GatewayUnavailable and the refund stays pending."""
    try:
        return await payments.refund(
            gateway,
            charge_reference=call.charge_reference,
            amount=call.amount,
            currency=call.currency,
            idempotency_key=call.idempotency_key,
            transfer_reversal=call.transfer_reversal,
            is_platform_charge=call.is_platform_charge,
        )
    except GatewayRefused as refused:
        return refused


async def create_refund(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    order_id: str,
    amount: int | None,
    reason: str | None,
    resolve_after: datetime,
    now: datetime,
    session: AsyncSession | None = None,
    request_key: str | None = None,
    restock: bool = False,
) -> Refund:
    """Refund all that remains, or ``amount`` of it, and reverse the ledger in proportion.
    The three steps; the outcome is recorded on ``session`` when given (the request's
    unit of work commits it). With ``request_key`` (the client's Idempotency-Key) a refund
    already begun under that key is carried on, or returned if it is settled, so a retry
    after a crash between the steps never refunds twice. A refund the gateway refuses
    comes back ``failed`` (the caller reports it); one the gateway could not be reached
    for stays ``pending`` and the worker finishes it after ``resolve_after``. With
    ``restock`` the order's allocated units go back on sale when the refund succeeds.

    Raises:
        OrderNotFound, OrderFullyRefunded, RefundTooLarge, GatewayUnavailable.
    """
    async with database.unit_of_work() as starting:
        earlier = await _refund_for_request(
            starting, creator_id=creator_id, request_key=request_key
        )
        if earlier is not None and earlier[0].status != "pending":
            return earlier[0]
        if earlier is not None:
            call = _refund_call(
                earlier[0],
                charge_reference=earlier[1],
                transfer_reference=earlier[2],
                is_platform_charge=earlier[3],
            )
        else:
            call = await begin_refund(
                starting,
                creator_id=creator_id,
                order_id=order_id,
                amount=amount,
                reason=reason,
                resolve_after=resolve_after,
                now=now,
                request_key=request_key,
                restock=restock,
            )
    result = await call_refund(gateway, call)
    async with session_or_unit_of_work(database, session) as finishing:
        return await finish_refund(finishing, call=call, result=result, now=now)


async def plan_transfer(session: AsyncSession, *, order: Order) -> int | None:
    """The amount of the transfer that pays the creator for ``order`` (paid by a platform
    charge, ADR 0019), fixed the first time it is asked for: the ledger's creator share
    less what the refunds made before it reversed, 0 when nothing is left (fully
    refunded: no transfer). None, fixing nothing, while a refund of the order is pending:
    its outcome decides the amount. The caller holds the order's lock (``begin_refund``
    takes it too, so a refund is either counted here or reversed from the transfer)."""
    if order.transfer_amount is not None:
        return order.transfer_amount
    pending = await session.execute(
        select(Refund.id).where(Refund.order_id == order.id, Refund.status == "pending").limit(1)
    )
    if pending.first() is not None:
        return None
    payment = payment_split(
        order.amount_total, platform_fee=order.platform_fee, processor_fee=order.processor_fee
    )
    order.transfer_amount = creator_share_left(payment, refunded=order.amount_refunded)
    await session.flush()
    return order.transfer_amount


async def record_transfer(session: AsyncSession, *, order_id: str, transfer_reference: str) -> bool:
    """The creator was paid its share of the order by ``transfer_reference`` (a platform
    charge, ADR 0019); False when a transfer was recorded for it already."""
    changed = await session.execute(
        update(Order)
        .where(Order.id == order_id, Order.transfer_reference.is_(None))
        .values(transfer_reference=transfer_reference)
        .returning(Order.id)
        .execution_options(synchronize_session=False)
    )
    return changed.scalar_one_or_none() is not None
