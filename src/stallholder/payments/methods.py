"""Payment methods the buyer saved, the creators they are granted to, and off-session
charges on them (ADR 0011: payment methods belong to the buyer; a creator charges one only
with the buyer's grant).

Saving and detaching call the gateway, so each runs in steps with no transaction open
during the call (ADR 0007): read in a unit of work of its own, call the gateway, record
on the caller's session (or a unit of work of its own). Off-session charges are the three
steps of ``payments.service`` on a saved method: renewals, invoices, wallet top-ups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Buyer, Customer
from stallholder.kit.db import Database, hold, session_or_unit_of_work, transaction_memo
from stallholder.kit.errors import DomainError, Forbidden, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.payments.gateway import CardSetup, Gateway, GatewayRefused, SavedPaymentMethod
from stallholder.payments.models import PaymentAttempt, PaymentMethod, PaymentMethodGrant
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


class CardSetupNotFound(NotFound):
    slug = "card-setup-not-found"
    title = "No such card setup for this customer"


class CardSetupNotConfirmed(DomainError):
    status = 402
    slug = "card-setup-not-confirmed"
    title = "The card was not confirmed, so it was not saved"


class PaymentMethodNotGranted(Forbidden):
    slug = "payment-method-not-granted"
    title = "The buyer has not let this creator use that payment method"


@dataclass(frozen=True, slots=True)
class CustomerPaymentMethod:
    """A buyer's saved method as one creator's customer sees it: whether this creator may
    charge it off-session (``is_granted``) and whether it is this customer's default."""

    method: PaymentMethod
    customer_id: str
    is_granted: bool
    is_default: bool


async def _buyer_gateway_customer(
    session: AsyncSession, gateway: Gateway, *, buyer_id: str
) -> str | None:
    """The gateway's customer that the buyer's methods are saved to, if any yet: one per
    buyer, whichever creator the buyer saved a method with."""
    return (
        await session.execute(
            select(PaymentMethod.gateway_customer)
            .where(PaymentMethod.buyer_id == buyer_id, PaymentMethod.gateway == gateway.name)
            .order_by(PaymentMethod.id)
            .limit(1)
        )
    ).scalar_one_or_none()


async def _lock_buyer(session: AsyncSession, *, buyer_id: str) -> None:
    """Serialise saving methods to one buyer (``FOR UPDATE``), so two creators saving the
    same card at once find one method, not two. Taken before a customer's lock."""
    await session.execute(select(Buyer.id).where(Buyer.id == buyer_id).with_for_update())


async def _lock_customer(session: AsyncSession, *, customer_id: str) -> None:
    """Serialise changes to a customer's grants and default (``FOR UPDATE``)."""
    await session.execute(select(Customer.id).where(Customer.id == customer_id).with_for_update())


async def _grant(
    session: AsyncSession, *, customer_id: str, payment_method_id: str
) -> PaymentMethodGrant | None:
    return await session.get(PaymentMethodGrant, (customer_id, payment_method_id))


async def _has_default(session: AsyncSession, *, customer_id: str) -> bool:
    return (
        await session.execute(
            select(PaymentMethodGrant.payment_method_id).where(
                PaymentMethodGrant.customer_id == customer_id, PaymentMethodGrant.is_default
            )
        )
    ).first() is not None


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
) -> CustomerPaymentMethod:
    """Save ``token`` to the customer's buyer for later off-session charges, and grant
    this creator its use. The buyer has one gateway customer for all creators; a method
    the buyer already saved (the same gateway method, through any creator) is not saved
    twice: this creator gets a grant to it. The first method a customer is granted becomes
    its default. Three steps, none holding a transaction across the gateway call; the last
    runs on ``session`` when given. With ``request_key`` (the client's Idempotency-Key,
    caller-scoped and hashed) the gateway call carries a key derived from it, so a retry
    after a crash between the gateway's answer and our record gets the same saved method
    back instead of attaching a second one.

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
        email, buyer_id = customer.email, customer.buyer_id
        existing = await _buyer_gateway_customer(reading, gateway, buyer_id=buyer_id)
    saved = await gateway.save_payment_method(
        customer_reference=existing,
        email=email,
        payment_method=token,
        idempotency_key=f"{creator_id}:pm:{request_key}" if request_key else f"{method_id}:save",
    )
    async with session_or_unit_of_work(database, session) as writing:
        return await _record_saved(
            writing,
            gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            buyer_id=buyer_id,
            saved=saved,
            method_id=method_id,
            now=now,
        )


async def _record_saved(
    writing: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    buyer_id: str,
    saved: SavedPaymentMethod,
    method_id: str,
    now: datetime,
) -> CustomerPaymentMethod:
    """Record a method the gateway keeps for the buyer (once per buyer) and grant it to
    this customer (its default when it has none)."""
    await _lock_buyer(writing, buyer_id=buyer_id)
    await _lock_customer(writing, customer_id=customer_id)
    method = (
        await writing.execute(
            select(PaymentMethod)
            .where(
                PaymentMethod.buyer_id == buyer_id,
                PaymentMethod.gateway == gateway.name,
                PaymentMethod.gateway_reference == saved.payment_method,
                PaymentMethod.detached_at.is_(None),
            )
            .order_by(PaymentMethod.id)
            .limit(1)
        )
    ).scalar_one_or_none()
    if method is None:
        method = PaymentMethod(
            id=method_id,
            creator_id=creator_id,
            customer_id=customer_id,
            buyer_id=buyer_id,
            gateway=gateway.name,
            gateway_customer=saved.customer_reference,
            gateway_reference=saved.payment_method,
            type="card",
            created_at=now,
        )
        writing.add(method)
        await writing.flush()
    grant = await _grant(writing, customer_id=customer_id, payment_method_id=method.id)
    if grant is None:
        grant = PaymentMethodGrant(
            customer_id=customer_id,
            payment_method_id=method.id,
            creator_id=creator_id,
            is_default=not await _has_default(writing, customer_id=customer_id),
            created_at=now,
        )
        writing.add(grant)
        await writing.flush()
    return CustomerPaymentMethod(
        method=method, customer_id=customer_id, is_granted=True, is_default=grant.is_default
    )


async def begin_card_setup(
    database: Database, gateway: Gateway, *, creator_id: str, customer_id: str, token: str
) -> CardSetup:
    """Begin saving ``token`` with the buyer present, so their bank can ask them to
    authenticate the card once (Stripe: a SetupIntent for off-session use on the buyer's
    gateway customer). The setup carries whose it is (creator, customer, buyer) for
    ``finish_card_setup``. The gateway call's idempotency key is derived from the customer
    and the token, so a second submit of the same card gets the same setup back.

    ``requires_action``: the buyer's browser confirms the setup with its ``action_secret``
    (Stripe.js), then ``finish_card_setup`` saves it. ``succeeded`` (the sandbox asks for no
    authentication): ``finish_card_setup`` saves it at once.

    Raises:
        CustomerNotFound, CardNumberRejected, InvalidPaymentMethod, PaymentMethodDeclined,
        GatewayUnavailable.
    """
    check_payment_method(token)
    async with database.unit_of_work() as reading:
        customer = await accounts.get_customer(
            reading, creator_id=creator_id, customer_id=customer_id
        )
        email, buyer_id = customer.email, customer.buyer_id
        existing = await _buyer_gateway_customer(reading, gateway, buyer_id=buyer_id)
    return await gateway.create_card_setup(
        customer_reference=existing,
        email=email,
        payment_method=token,
        metadata={"creator": creator_id, "customer": customer_id, "buyer": buyer_id},
        idempotency_key=f"{creator_id}:setup:{customer_id}:{token}",
    )


async def finish_card_setup(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    reference: str,
    now: datetime,
    session: AsyncSession | None = None,
) -> CustomerPaymentMethod:
    """Save the payment method of a card setup that succeeded, as ``save_payment_method``
    records one (the gateway attached it to the buyer's customer already). The setup is
    read from the gateway, never taken from the browser, and must be this customer's (its
    creator, customer and buyer, and the buyer's gateway customer once there is one).
    Three steps, none holding a transaction across the gateway call; the last runs on
    ``session`` when given.

    Raises:
        CustomerNotFound, GatewayUnavailable.
        CardSetupNotFound: the gateway knows no such setup, or it is someone else's.
        CardSetupNotConfirmed: the setup has not succeeded (authentication failed or was
            abandoned, or the card was declined): nothing is saved.
    """
    method_id = new_id("pm")
    async with database.unit_of_work() as reading:
        customer = await accounts.get_customer(
            reading, creator_id=creator_id, customer_id=customer_id
        )
        buyer_id = customer.buyer_id
        existing = await _buyer_gateway_customer(reading, gateway, buyer_id=buyer_id)
    not_found = CardSetupNotFound(
        f"customer {customer_id} has no card setup {reference!r}; nothing was saved. "
        "Add the card again",
        setup=reference,
    )
    try:
        setup = await gateway.retrieve_card_setup(reference=reference)
    except GatewayRefused as error:
        raise not_found from error
    owner = (setup.metadata.get("creator"), setup.metadata.get("customer"))
    if (
        owner != (creator_id, customer_id)
        or setup.metadata.get("buyer") != buyer_id
        or (existing is not None and setup.customer_reference != existing)
    ):
        raise not_found
    if (
        setup.status != "succeeded"
        or setup.payment_method is None
        or setup.customer_reference is None
    ):
        raise CardSetupNotConfirmed(
            "Your bank did not confirm this card, so it was not saved. Try again, or use "
            "another card.",
            setup=reference,
            decline_code=setup.decline_code or "setup_not_confirmed",
        )
    saved = SavedPaymentMethod(
        customer_reference=setup.customer_reference, payment_method=setup.payment_method
    )
    async with session_or_unit_of_work(database, session) as writing:
        return await _record_saved(
            writing,
            gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            buyer_id=buyer_id,
            saved=saved,
            method_id=method_id,
            now=now,
        )


async def _attached_method(
    session: AsyncSession, *, customer: Customer, payment_method_id: str
) -> PaymentMethod:
    method = await session.get(PaymentMethod, payment_method_id)
    if method is None or method.buyer_id != customer.buyer_id or method.detached_at is not None:
        raise PaymentMethodNotFound(
            f"customer {customer.id} has no payment method {payment_method_id!r}"
        )
    return method


async def get_payment_method(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str
) -> CustomerPaymentMethod:
    """An attached method of the buyer behind the creator's customer, whichever creator
    it was saved with.

    Raises:
        CustomerNotFound: another creator's customer, or none.
        PaymentMethodNotFound: not this customer's buyer's, or detached.
    """
    customer = await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    method = await _attached_method(session, customer=customer, payment_method_id=payment_method_id)
    grant = await _grant(session, customer_id=customer_id, payment_method_id=method.id)
    return CustomerPaymentMethod(
        method=method,
        customer_id=customer_id,
        is_granted=grant is not None,
        is_default=grant is not None and grant.is_default,
    )


async def _views(
    session: AsyncSession, *, customer_id: str, methods: list[PaymentMethod]
) -> list[CustomerPaymentMethod]:
    grants = {
        grant.payment_method_id: grant
        for grant in (
            await session.execute(
                select(PaymentMethodGrant).where(
                    PaymentMethodGrant.customer_id == customer_id,
                    PaymentMethodGrant.payment_method_id.in_([m.id for m in methods]),
                )
            )
        ).scalars()
    }
    return [
        CustomerPaymentMethod(
            method=method,
            customer_id=customer_id,
            is_granted=method.id in grants,
            is_default=method.id in grants and grants[method.id].is_default,
        )
        for method in methods
    ]


async def list_payment_methods(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    limit: int,
    starting_after: str | None,
) -> Page[CustomerPaymentMethod]:
    """The attached methods of the customer's buyer, newest first, each saying whether
    this creator may charge it. Raises CustomerNotFound."""
    customer = await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    page = await paginate(
        session,
        select(PaymentMethod).where(
            PaymentMethod.buyer_id == customer.buyer_id, PaymentMethod.detached_at.is_(None)
        ),
        id_column=PaymentMethod.id,
        limit=limit,
        starting_after=starting_after,
    )
    return Page(
        data=await _views(session, customer_id=customer_id, methods=list(page.data)),
        has_more=page.has_more,
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
) -> CustomerPaymentMethod:
    """Withdraw this creator's use of a saved method (its grant, and its default). The
    method is the buyer's: only when no creator holds a grant any more is it detached at
    the gateway, then here, and can no longer be charged by anyone.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, GatewayRefused, GatewayUnavailable.
        PaymentMethodNotGranted: the buyer saved it with other creators only; this one
            may see it but not remove it.
    """
    async with database.unit_of_work() as reading:
        view = await get_payment_method(
            reading,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
        if not view.is_granted:
            raise PaymentMethodNotGranted(
                f"payment method {payment_method_id} was saved by the buyer with another "
                "creator; only the buyer, or a creator it was saved with, can remove it",
                payment_method=payment_method_id,
            )
        reference = view.method.gateway_reference
        others = (
            await reading.execute(
                select(func.count())
                .select_from(PaymentMethodGrant)
                .where(
                    PaymentMethodGrant.payment_method_id == payment_method_id,
                    PaymentMethodGrant.customer_id != customer_id,
                )
            )
        ).scalar_one()
    if others == 0:
        await gateway.detach_payment_method(payment_method=reference)
    async with session_or_unit_of_work(database, session) as writing:
        await _lock_customer(writing, customer_id=customer_id)
        await writing.execute(
            delete(PaymentMethodGrant).where(
                PaymentMethodGrant.customer_id == customer_id,
                PaymentMethodGrant.payment_method_id == payment_method_id,
            )
        )
        if others == 0:
            # Detached at the gateway: no grant made meanwhile can charge it any more.
            await writing.execute(
                delete(PaymentMethodGrant).where(
                    PaymentMethodGrant.payment_method_id == payment_method_id
                )
            )
            await writing.execute(
                update(PaymentMethod)
                .where(PaymentMethod.id == payment_method_id, PaymentMethod.detached_at.is_(None))
                .values(detached_at=now)
                .execution_options(synchronize_session=False)
            )
        method = await writing.get(PaymentMethod, payment_method_id, populate_existing=True)
        assert method is not None
        return CustomerPaymentMethod(
            method=method, customer_id=customer_id, is_granted=False, is_default=False
        )


async def set_default_payment_method(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str
) -> CustomerPaymentMethod:
    """Make a granted method the customer's default (this creator's off-session charges
    use it when none is named). The default is per customer: each creator the buyer
    supports keeps its own.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, PaymentMethodNotGranted.
    """
    view = await get_payment_method(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=payment_method_id,
    )
    if not view.is_granted:
        raise _not_granted(payment_method_id, customer_id=customer_id)
    await _lock_customer(session, customer_id=customer_id)
    # Clear the old default first: at most one default per customer is a unique index.
    await session.execute(
        update(PaymentMethodGrant)
        .where(
            PaymentMethodGrant.customer_id == customer_id,
            PaymentMethodGrant.is_default,
            PaymentMethodGrant.payment_method_id != payment_method_id,
        )
        .values(is_default=False)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(PaymentMethodGrant)
        .where(
            PaymentMethodGrant.customer_id == customer_id,
            PaymentMethodGrant.payment_method_id == payment_method_id,
        )
        .values(is_default=True)
        .execution_options(synchronize_session=False)
    )
    return CustomerPaymentMethod(
        method=view.method, customer_id=customer_id, is_granted=True, is_default=True
    )


def _not_granted(payment_method_id: str, *, customer_id: str) -> PaymentMethodNotGranted:
    return PaymentMethodNotGranted(
        f"payment method {payment_method_id} was saved by the buyer with another creator; "
        f"to charge it, the buyer saves it with you: POST /v1/customers/{customer_id}/"
        "payment_methods with the same payment method",
        payment_method=payment_method_id,
    )


_DEFAULTS = "payments.default_methods"


async def read_charge_targets(session: AsyncSession, *, customer_ids: Iterable[str]) -> None:
    """For a batch of charges: read these customers' grants and the methods they name,
    two statements, for the rest of this transaction, so that ``charge_target`` reads
    none of them again (the customers themselves the caller reads)."""
    wanted = sorted(set(customer_ids))
    if not wanted:
        return
    grants = list(
        (
            await session.execute(
                select(PaymentMethodGrant).where(PaymentMethodGrant.customer_id.in_(wanted))
            )
        ).scalars()
    )
    method_ids = sorted({grant.payment_method_id for grant in grants})
    found = {
        method.id: method
        for method in (
            await session.execute(select(PaymentMethod).where(PaymentMethod.id.in_(method_ids)))
        ).scalars()
    }
    hold(session, [*grants, *found.values()])
    defaults: dict[str, list[PaymentMethod]] = {customer_id: [] for customer_id in wanted}
    for grant in grants:
        method = found.get(grant.payment_method_id)
        if grant.is_default and method is not None and method.detached_at is None:
            defaults[grant.customer_id].append(method)
    read: dict[str, PaymentMethod | None] = transaction_memo(session).setdefault(_DEFAULTS, {})
    for customer_id, methods in defaults.items():
        if len(methods) <= 1:  # more than one default is for the query to refuse
            read[customer_id] = methods[0] if methods else None


async def charge_target(
    session: AsyncSession, *, creator_id: str, customer_id: str, payment_method_id: str | None
) -> PaymentMethod:
    """The method to charge off-session for this creator: the named one, which must be
    granted to this customer, or the customer's default.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, PaymentMethodNotGranted,
        NoDefaultPaymentMethod.
    """
    if payment_method_id is not None:
        view = await get_payment_method(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
        if not view.is_granted:
            raise _not_granted(payment_method_id, customer_id=customer_id)
        return view.method
    await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    read: dict[str, PaymentMethod | None] = transaction_memo(session).get(_DEFAULTS, {})
    if customer_id in read:
        method = read[customer_id]
    else:
        method = (
            await session.execute(
                select(PaymentMethod)
                .join(PaymentMethodGrant, PaymentMethodGrant.payment_method_id == PaymentMethod.id)
                .where(
                    PaymentMethodGrant.customer_id == customer_id,
                    PaymentMethodGrant.is_default,
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
    """Charge a saved method granted to the customer (its default when
    ``payment_method_id`` is None) off-session, without the buyer: renewals, invoices,
    wallet top-ups. The three steps of
    a charge; the outcome is recorded on ``session`` when given. A method that would need
    the buyer to authenticate fails with ``authentication_required``. Two charges of one
    purpose at once cannot both record attempt ``n`` (a unique constraint refuses the
    second); the purpose's owner (an invoice, later) serialises them under its own lock.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, NoDefaultPaymentMethod, CreatorNotConnected.
    """
    async with database.unit_of_work() as starting:
        method = await charge_target(
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
            is_for_platform=purpose == "wallet_top_up",
        )
        call = gateway_call_for(attempt)
    result = await call_gateway(gateway, call)
    async with session_or_unit_of_work(database, session) as recording:
        recorded = await record_outcome(recording, call=call, result=result)
        if recorded is None:  # the worker resolved it first
            return await get_attempt(recording, attempt_id=call.attempt_id)
        return recorded
