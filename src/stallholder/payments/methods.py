"""Payment methods saved to customers, and off-session charges on them.

Saving and detaching call the gateway, so each runs in steps with no transaction open
during the call (ADR 0007): read in a unit of work of its own, call the gateway, record
on the caller's session (or a unit of work of its own). Off-session charges are the three
steps of ``payments.service`` on a saved method: renewals, invoices, wallet top-ups.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Customer
from stallholder.kit.db import Database, session_or_unit_of_work
from stallholder.kit.errors import InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.payments.gateway import Gateway
from stallholder.payments.models import PaymentAttempt, PaymentMethod
from stallholder.payments.service import (
    Purpose,
    begin_attempt,
    call_gateway,
    check_payment_method,
    gateway_call_for,
    get_attempt,
    record_outcome,
)


class PaymentMethodNotFound(NotFound):
    slug = "payment-method-not-found"
    title = "No such payment method"


class NoDefaultPaymentMethod(InvalidRequest):
    slug = "no-default-payment-method"
    title = "The customer has no default payment method"


async def _gateway_customer(
    session: AsyncSession, gateway: Gateway, *, customer_id: str
) -> str | None:
    """The gateway's customer that this customer's methods are saved to, if any yet."""
    return (
        await session.execute(
            select(PaymentMethod.gateway_customer)
            .where(PaymentMethod.customer_id == customer_id, PaymentMethod.gateway == gateway.name)
            .order_by(PaymentMethod.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()


async def _lock_customer(session: AsyncSession, *, customer_id: str) -> None:
    """Serialise changes to a customer's default payment method (``FOR UPDATE``)."""
    await session.execute(select(Customer.id).where(Customer.id == customer_id).with_for_update())


async def save_payment_method(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    token: str,
    now: datetime,
    session: AsyncSession | None = None,
    request_key: str | None = None,
) -> PaymentMethod:
    """Save ``token`` to the customer for later off-session charges. The first method a
    customer saves becomes its default. Three steps, none holding a transaction across the
    gateway call; the last runs on ``session`` when given. With ``request_key`` (the
    client's Idempotency-Key, caller-scoped and hashed) the gateway call carries a key
    derived from it, so a retry after a crash between the gateway's answer and our record
    gets the same saved method back instead of attaching a second one.

    Raises:
        CustomerNotFound, CardNumberRejected, InvalidPaymentMethod, PaymentMethodDeclined,
        GatewayUnavailable.
    """
    check_payment_method(token)
    method_id = new_id("pm")
    async with database.unit_of_work() as reading:
        customer = await accounts.get_customer(
            reading, creator_id=creator_id, customer_id=customer_id
        )
        email = customer.email
        existing = await _gateway_customer(reading, gateway, customer_id=customer_id)
    saved = await gateway.save_payment_method(
        customer_reference=existing,
        email=email,
        payment_method=token,
        idempotency_key=f"{creator_id}:pm:{request_key}" if request_key else f"{method_id}:save",
    )
    async with session_or_unit_of_work(database, session) as writing:
        await _lock_customer(writing, customer_id=customer_id)
        has_default = (
            await writing.execute(
                select(PaymentMethod.id).where(
                    PaymentMethod.customer_id == customer_id, PaymentMethod.is_default
                )
            )
        ).first() is not None
        method = PaymentMethod(
            id=method_id,
            creator_id=creator_id,
            customer_id=customer_id,
            gateway=gateway.name,
            gateway_customer=saved.customer_reference,
            gateway_reference=saved.payment_method,
            type="card",
            is_default=not has_default,
            created_at=now,
        )
        writing.add(method)
        await writing.flush()
        return method


async def get_payment_method(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str
) -> PaymentMethod:
    """An attached method of the creator's customer.

    Raises:
        CustomerNotFound: another creator's customer, or none.
        PaymentMethodNotFound: not this customer's, or detached.
    """
    await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    method = await session.get(PaymentMethod, payment_method_id)
    if method is None or method.customer_id != customer_id or method.detached_at is not None:
        raise PaymentMethodNotFound(
            f"customer {customer_id} has no payment method {payment_method_id!r}"
        )
    return method


async def list_payment_methods(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    limit: int,
    starting_after: str | None,
) -> Page[PaymentMethod]:
    """The customer's attached methods, newest first. Raises CustomerNotFound."""
    await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    return await paginate(
        session,
        select(PaymentMethod).where(
            PaymentMethod.customer_id == customer_id, PaymentMethod.detached_at.is_(None)
        ),
        id_column=PaymentMethod.id,
        limit=limit,
        starting_after=starting_after,
    )


async def detach_payment_method(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    payment_method_id: str,
    now: datetime,
    session: AsyncSession | None = None,
) -> PaymentMethod:
    """Detach a saved method at the gateway, then here: it can no longer be charged and
    stops being the default.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, GatewayRefused, GatewayUnavailable.
    """
    async with database.unit_of_work() as reading:
        method = await get_payment_method(
            reading,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
        reference = method.gateway_reference
    await gateway.detach_payment_method(payment_method=reference)
    async with session_or_unit_of_work(database, session) as writing:
        await writing.execute(
            update(PaymentMethod)
            .where(PaymentMethod.id == payment_method_id, PaymentMethod.detached_at.is_(None))
            .values(detached_at=now, is_default=False)
            .execution_options(synchronize_session=False)
        )
        detached = await writing.get(PaymentMethod, payment_method_id, populate_existing=True)
        assert detached is not None
        return detached


async def set_default_payment_method(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str
) -> PaymentMethod:
    """Make an attached method the customer's default (off-session charges use it when
    none is named).

    Raises:
        CustomerNotFound, PaymentMethodNotFound.
    """
    method = await get_payment_method(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
    )
    await _lock_customer(session, customer_id=customer_id)
    # Clear the old default first: at most one default per customer is a unique index.
    await session.execute(
        update(PaymentMethod)
        .where(
            PaymentMethod.customer_id == customer_id,
            PaymentMethod.is_default,
            PaymentMethod.id != method.id,
        )
        .values(is_default=False)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    method.is_default = True
    await session.flush()
    return method


async def _charge_target(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str | None
) -> PaymentMethod:
    if payment_method_id is not None:
        return await get_payment_method(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
    await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    method = (
        await session.execute(
            select(PaymentMethod).where(
                PaymentMethod.customer_id == customer_id,
                PaymentMethod.is_default,
                PaymentMethod.detached_at.is_(None),
            )
        )
    ).scalar_one_or_none()
    if method is None:
        raise NoDefaultPaymentMethod(
            f"customer {customer_id} has no default payment method; save one with "
            f"POST /v1/customers/{customer_id}/payment_methods or name one"
        )
    return method


async def charge_saved_method(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    payment_method_id: str | None,
    purpose: Purpose,
    purpose_id: str,
    amount: int,
    currency: str,
    platform_fee: int,
    estimated_processor_fee: int,
    resolve_after: datetime,
    now: datetime,
    session: AsyncSession | None = None,
) -> PaymentAttempt:
    """Charge a customer's saved method (its default when ``payment_method_id`` is None)
    off-session, without the buyer: renewals, invoices, wallet top-ups. The three steps of
    a charge; the outcome is recorded on ``session`` when given. A method that would need
    the buyer to authenticate fails with ``authentication_required``. Two charges of one
    purpose at once cannot both record attempt ``n`` (a unique constraint refuses the
    second); the purpose's owner (an invoice, later) serialises them under its own lock.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, NoDefaultPaymentMethod, CreatorNotConnected.
    """
    async with database.unit_of_work() as starting:
        method = await _charge_target(
            starting,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
        attempt = await begin_attempt(
            starting,
            gateway,
            creator_id=creator_id,
            purpose=purpose,
            purpose_id=purpose_id,
            amount=amount,
            currency=currency,
            payment_method=method.gateway_reference,
            platform_fee=platform_fee,
            estimated_processor_fee=estimated_processor_fee,
            resolve_after=resolve_after,
            now=now,
            gateway_customer=method.gateway_customer,
            saved_payment_method_id=method.id,
        )
        call = gateway_call_for(attempt)
    result = await call_gateway(gateway, call)
    async with session_or_unit_of_work(database, session) as recording:
        recorded = await record_outcome(recording, call=call, result=result)
        if recorded is None:  # the worker resolved it first
            return await get_attempt(recording, attempt_id=call.attempt_id)
        return recorded
