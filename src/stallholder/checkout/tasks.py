"""Due work of the checkout domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout import service
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult
from stallholder.payments.models import PaymentAttempt
from stallholder.payments.service import GatewayCall


async def expire_sessions(session: AsyncSession, now: datetime) -> int:
    """Sweep: open sessions past ``expires_at`` become ``expired``."""
    return await service.expire_due_sessions(session, now=now)


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
