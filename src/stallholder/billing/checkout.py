"""Subscribing through a checkout session (docs/billing.md, "Subscribe through checkout").

A session of recurring prices has ``mode: "subscription"`` and shows its renewal terms.
Confirming it, with the buyer's explicit consent, runs in steps with no transaction open
while the gateway is called (ADR 0007):

1. (unit of work, session locked) check it is open and consented to; find or create the
   customer for the buyer's email and put it on the session.
2. Save the payment method to the customer's buyer with a grant for this creator
   (``payments.methods``; its gateway key is derived from the session, so a retry saves
   the same method).
3. (unit of work, session locked) create the subscription with the consent record (the
   session's ``renewal_terms`` word for word, the time, IP and user agent) and put it on
   the session. A confirm that finds the session's subscription already there creates
   none: the lock makes this once per session, whatever the retries and races.
4. Charge the first invoice, attempt 1 (``renewal.charge_invoice``: its idempotency key is
   derived from the invoice and the attempt, so it is charged once however often this
   runs), unless a trial starts.
5. (unit of work, session locked) complete the session when the subscription is active
   or trialing; otherwise report the charge's failure, as the one-time confirm does.

The checkout API reaches this through the ``SubscriptionConfirmer`` port
(``checkout.service``), because billing sits above checkout.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.billing import periods, renewal, subscriptions
from stallholder.billing.models import Invoice, Subscription
from stallholder.billing.periods import Plan
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession
from stallholder.kit.db import Database
from stallholder.kit.errors import ValidationFailed
from stallholder.payments import methods
from stallholder.payments import service as payments
from stallholder.payments.gateway import Gateway


class ConsentRequired(ValidationFailed):
    slug = "consent-required"
    title = "The buyer must agree to the renewal terms"


def _consent_required(session_id: str) -> ConsentRequired:
    message = (
        "send consent: true once the buyer has read and agreed to the session's "
        "renewal_terms (checkout session "
        f"{session_id} subscribes and renews automatically)"
    )
    return ConsentRequired(
        f"consent: {message}", errors=[{"loc": "consent", "msg": message, "type": "consent"}]
    )


def confirmer(policy: renewal.BillingPolicy) -> checkout.SubscriptionConfirmer:
    """The ``SubscriptionConfirmer`` the app gives the checkout API, with the platform's
    billing policy (fees, retries)."""

    async def confirm(
        database: Database,
        gateway: Gateway,
        *,
        creator_id: str,
        session_id: str,
        payment_method: str,
        client_secret: str | None,
        customer_email: str | None,
        consent: bool,
        ip_address: str | None,
        user_agent: str | None,
        base_url: str,
        now: datetime,
    ) -> checkout.ConfirmOutcome:
        return await confirm_subscription_session(
            database,
            gateway,
            creator_id=creator_id,
            session_id=session_id,
            payment_method=payment_method,
            client_secret=client_secret,
            customer_email=customer_email,
            consent=consent,
            ip_address=ip_address,
            user_agent=user_agent,
            policy=policy,
            base_url=base_url,
            now=now,
        )

    return confirm


def quoter(billing_day: int) -> checkout.SubscriptionQuoter | None:
    """The ``SubscriptionQuoter`` the app gives the checkout API and pages: where the
    platform billing day (ADR 0020; 0 is off: None) puts a subscription begun now, by the
    same rule as ``subscriptions.create_subscription``."""
    if not billing_day:
        return None

    def quote(
        *,
        plan: tuple[str, int],
        trial_days: int,
        has_delivery_calendar: bool,
        lines: Sequence[tuple[int, int]],
        zone_name: str,
        now: datetime,
    ) -> checkout.FirstCharge | None:
        interval, count = plan
        found = subscriptions.quote_billing_day(
            billing_day=billing_day,
            plan=Plan(interval, count),  # type: ignore[arg-type]
            trial_days=trial_days,
            has_delivery_calendar=has_delivery_calendar,
            lines=lines,
            zone_name=zone_name,
            at=now,
        )
        if found is None:
            return None
        return checkout.FirstCharge(
            anchor=found.anchor,
            day=periods.local_date(found.anchor, zone_name),
            amount=found.amount,
        )

    return quote


async def confirm_subscription_session(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    session_id: str,
    payment_method: str,
    client_secret: str | None,
    customer_email: str | None,
    consent: bool,
    ip_address: str | None,
    user_agent: str | None,
    policy: renewal.BillingPolicy,
    base_url: str,
    now: datetime,
) -> checkout.ConfirmOutcome:
    """Subscribe the buyer of a subscription-mode session (module doc). Idempotent: a
    complete session comes back unchanged, and a retry never subscribes or charges twice.

    Raises:
        SessionNotFound, SessionExpired, ConsentRequired, EmailRequired,
        CardNumberRejected, InvalidPaymentMethod, PaymentMethodDeclined, GatewayUnavailable,
        InvalidSubscriptionItems (a price was archived since the session opened),
        BillingDayChanged (the billing day the terms promise is not the buyer's: another
        time zone, or the day has begun).
    """
    payments.check_payment_method(payment_method)
    async with database.unit_of_work() as starting:
        current = await _locked(starting, creator_id, session_id, client_secret)
        if current.status == "complete":
            return checkout.ConfirmOutcome(current)
        if checkout.effective_status(current, now) == "expired":
            raise checkout.SessionExpired(
                f"checkout session {session_id} expired at {current.expires_at.isoformat()}; "
                "open a new one"
            )
        if consent is not True:
            raise _consent_required(session_id)
        if customer_email is not None and current.customer_id is None:
            current.customer_email = customer_email
        email = current.customer_email
        if not email:
            raise checkout.EmailRequired(
                "this session has no customer; send customer_email with the confirm "
                "so the buyer gets their receipts and renewal reminders"
            )
        if current.customer_id is None:
            customer = await accounts.customer_for_email(
                starting, creator_id=creator_id, email=email, now=now
            )
            current.customer_id = customer.id
        customer_id = current.customer_id
        subscription_id = current.subscription_id
        terms = current.renewal_terms
        promised_anchor = current.billing_anchor
        items = [
            subscriptions.ItemRequest(item.price_id, item.quantity) for item in current.line_items
        ]
    assert terms is not None, session_id
    invoice_id: str | None = None
    if subscription_id is None:
        saved = await methods.save_payment_method(
            database,
            gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            token=payment_method,
            now=now,
            request_key=f"checkout:{session_id}",
        )
        async with database.unit_of_work() as creating:
            current = await _locked(creating, creator_id, session_id, client_secret)
            subscription_id = current.subscription_id
            if subscription_id is None:
                created = await subscriptions.create_subscription(
                    creating,
                    creator_id=creator_id,
                    customer_id=customer_id,
                    items=items,
                    default_payment_method_id=saved.method.id,
                    metadata={"checkout_session": session_id},
                    consent=subscriptions.ConsentRequest(
                        terms=terms, ip_address=ip_address, user_agent=user_agent
                    ),
                    now=now,
                    promised_anchor=promised_anchor,
                )
                subscription_id = created.subscription.id
                current.subscription_id = subscription_id
                invoice_id = created.invoice.id if created.invoice is not None else None
    if invoice_id is None:
        async with database.unit_of_work() as reading:
            unpaid = await subscriptions.open_invoice(reading, subscription_id=subscription_id)
            if unpaid is not None and unpaid.attempt_count == 0:
                invoice_id = unpaid.id
    if invoice_id is not None:
        await renewal.charge_invoice(
            database, gateway, invoice_id=invoice_id, attempt=1, policy=policy, now=now
        )
    async with database.unit_of_work() as finishing:
        current = await _locked(finishing, creator_id, session_id, client_secret)
        if current.status == "complete":
            return checkout.ConfirmOutcome(current)
        subscription = await finishing.get(Subscription, subscription_id)
        assert subscription is not None, subscription_id
        await finishing.refresh(subscription)
        if subscription.status in ("active", "trialing"):
            first = await _first_invoice_paid(finishing, subscription_id)
            await checkout.complete_subscription(
                finishing,
                checkout=current,
                subscription_id=subscription_id,
                paid=first,
                base_url=base_url,
                now=now,
            )
            return checkout.ConfirmOutcome(current)
        unpaid = await subscriptions.open_invoice(finishing, subscription_id=subscription_id)
        latest = (
            None
            if unpaid is None
            else await payments.latest_attempt(finishing, purpose="invoice", purpose_id=unpaid.id)
        )
        if latest is not None and latest.status == "processing":
            return checkout.ConfirmOutcome(current, error=payments.in_progress_error(latest))
        if latest is not None and latest.status == "failed":
            current.last_error_code = latest.decline_code
            current.last_error_message = latest.failure_message
            return checkout.ConfirmOutcome(current, error=payments.failure_error(latest))
        return checkout.ConfirmOutcome(current)


async def _locked(
    session: AsyncSession, creator_id: str, session_id: str, client_secret: str | None
) -> CheckoutSession:
    return await checkout.get_session(
        session,
        creator_id=creator_id,
        session_id=session_id,
        client_secret=client_secret,
        for_update=True,
    )


async def _first_invoice_paid(session: AsyncSession, subscription_id: str) -> bool:
    return (
        await session.execute(
            select(Invoice.id).where(
                Invoice.subscription_id == subscription_id, Invoice.status == "paid"
            )
        )
    ).first() is not None
