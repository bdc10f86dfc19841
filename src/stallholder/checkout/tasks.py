"""Due work of the checkout domain: the sweep that expires sessions past their time,
offering a drop's returned units to its waitlist, and completing a payment the buyer
authenticated with Stripe."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
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

log = logging.getLogger("stallholder.checkout.tasks")


class CheckoutResources(Protocol):
    @property
    def settings(self) -> Settings: ...


# Sessions read per look, and looks per run of the sweep (the rest waits for the next).
EXPIRE_BATCH = 50
EXPIRE_LOOKS = 20


async def expire_sessions(
    context: Context[CheckoutResources], items: Sequence[Claimed]
) -> dict[str, BaseException | None]:
    """The sweep ``checkout.expire_sessions``, every ``checkout_expiry_sweep_seconds``:
    each open session past its ``expires_at`` becomes ``expired``, gives back the stock it
    holds and emits ``checkout.session.expired``, one unit of work per session (one that
    fails is logged and left for the next run; the others go on). A session that a
    confirm completed meanwhile is left alone (``service.expire_session`` re-reads it
    under its lock)."""
    settings = context.resources.settings
    for _ in range(EXPIRE_LOOKS):
        async with context.database.read() as session:
            due = await service.sessions_to_expire(
                session, now=context.clock.now(), limit=EXPIRE_BATCH
            )
        failed = 0
        for session_id in due:
            try:
                async with context.database.unit_of_work() as session:
                    await service.expire_session(
                        session,
                        session_id=session_id,
                        base_url=settings.base_url,
                        now=context.clock.now(),
                    )
            except Exception:
                failed += 1
                log.exception("checkout session %s could not be expired", session_id)
        if len(due) < EXPIRE_BATCH or failed == len(due):
            break
    return {}


def expire_sessions_kind(settings: Settings) -> Kind[CheckoutResources]:
    return Kind(
        name=service.EXPIRE_KIND,
        batch_handler=expire_sessions,
        every=timedelta(seconds=settings.checkout_expiry_sweep_seconds),
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
