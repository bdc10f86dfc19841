"""Due work of the checkout domain: expiring each session at its time, and completing
a payment the buyer authenticated with Stripe."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout import service, waitlist_offers
from stallholder.inventory import waitlists
from stallholder.kit.work import Claimed, Context, Kind
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult
from stallholder.payments.models import PaymentAttempt
from stallholder.payments.service import GatewayCall
from stallholder.settings import Settings


class CheckoutResources(Protocol):
    @property
    def settings(self) -> Settings: ...


async def expire_session(context: Context[CheckoutResources], item: Claimed) -> None:
    """The handler of ``checkout.expire_session``, enqueued for each session at its
    ``expires_at`` (the session id is the dedupe key): an open session becomes
    ``expired`` and ``checkout.session.expired`` is emitted; anything else is left."""
    async with context.database.unit_of_work() as session:
        await service.expire_session(
            session,
            session_id=str(item.payload["session_id"]),
            base_url=context.resources.settings.base_url,
            now=context.clock.now(),
        )


EXPIRE_SESSION: Kind[CheckoutResources] = Kind(
    name=service.EXPIRE_KIND, handler=expire_session, batch_size=50
)


async def offer_waitlist(context: Context[CheckoutResources], item: Claimed) -> None:
    """The handler of ``inventory.waitlist_offer``: units of a drop came back; open a
    session holding one for each buyer waiting, in signup order, while there are units.
    Running it again offers only what is still free."""
    async with context.database.unit_of_work() as session:
        await waitlist_offers.offer_units(
            session,
            drop_id=str(item.payload["drop_id"]),
            base_url=context.resources.settings.base_url,
            now=context.clock.now(),
        )


OFFER_WAITLIST: Kind[CheckoutResources] = Kind(
    name=waitlists.OFFER_KIND, handler=offer_waitlist, batch_size=10
)


async def settle_checkout_attempt(
    session: AsyncSession,
    call: GatewayCall,
    result: ChargeResult,
    now: datetime,
    *,
    base_url: str,
) -> str:
    """The worker's step 3 for a checkout session's attempt (``payments.tasks``): record
    the gateway's answer and complete the sale, exactly as the buyer's confirm would."""
    outcome = await service.finish_confirm(
        session, call=call, result=result, base_url=base_url, now=now
    )
    checkout = outcome.session
    return f"session {checkout.id} is {checkout.status} ({checkout.payment_status})"


async def complete_authenticated_payment(
    session: AsyncSession, payment_reference: str, now: datetime
) -> str:
    """``payment_intent.succeeded`` / ``payment_failed`` from Stripe: the buyer finished
    3-D Secure and may never come back to confirm, so the worker does it. The charge
    waiting for the buyer is handed to the attempt resolver (due now), which re-reads it
    from the gateway with no transaction open and completes the sale as a confirm would;
    whichever of it and the buyer's confirm records the outcome first completes the sale,
    and the other finds it complete. Returns a note for the inbox row."""
    attempt = (
        await session.execute(
            select(PaymentAttempt)
            .where(PaymentAttempt.gateway_reference == payment_reference)
            .order_by(PaymentAttempt.attempt_number.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if attempt is None:
        return f"ignored: no payment attempt with {payment_reference}"
    if not await payments.mark_for_resolution(session, attempt_id=attempt.id, now=now):
        return f"nothing to do: the attempt is already {attempt.status}"
    return f"payment attempt {attempt.id} ({attempt.purpose} {attempt.purpose_id}) is re-read now"
