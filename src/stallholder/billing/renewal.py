"""Renewals and invoice charges, exactly once (ADR 0010).

**Renewing** period ``n`` is one short transaction under the subscription's row lock:
it does nothing unless the subscription's current period is ``n - 1``, so a renewal run
twice (a retried job, two workers, a crash after commit) renews once; the period's
invoice is also unique by ``<subscription>:<n>``. The schedule's pure ``decide`` says
whether the period is invoiced, passes paused or skipped, or ends the subscription.

**Charging** attempt ``k`` of an invoice is the three steps of a charge, never a gateway
call inside a transaction:

1. under the invoice's lock: do nothing if it is no longer open or attempt ``k`` is
   stale; re-ask the gateway about attempt ``k`` if it was recorded before (a crash);
   otherwise record attempt ``k`` as ``processing`` with the gateway idempotency key
   ``<invoice>:attempt:<k>`` — the invoice is unique per (subscription, period), so the
   key is derived from (subscription, period, attempt);
2. call the gateway off-session with no transaction open;
3. under the invoice's lock: record the outcome by a conditional update and apply it to
   the invoice and subscription, once (``apply_outcome`` is idempotent).

Whatever runs twice, the gateway sees one key per attempt and answers the second ask
with the first charge; the invoice is paid once and one order is made from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Customer
from stallholder.billing import (
    discounts,
    dunning,
    lifecycle,
    periods,
    reminders,
    schedule,
    wallet_first,
)
from stallholder.billing.models import Invoice, Subscription
from stallholder.billing.schemas import plan_of
from stallholder.billing.subscriptions import (
    apply_pending_items,
    billing_now,
    charge_work,
    emit,
    emit_invoice,
    new_invoice,
    renewal_work,
    schedule_charge,
)
from stallholder.digital import delivery as digital
from stallholder.kit import work
from stallholder.kit.db import (
    Database,
    hold,
    lock_rows,
    locked_row,
    read_and_hold,
    transaction_memo,
)
from stallholder.kit.flush import flush_together
from stallholder.ledger.fees import FeeSchedule, fees_before_charge
from stallholder.orders import service as orders
from stallholder.payments import methods
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult, Gateway
from stallholder.payments.models import PaymentAttempt, PaymentMethod

log = logging.getLogger("stallholder.billing")
PURPOSE: Literal["invoice"] = "invoice"


@dataclass(frozen=True, slots=True)
class BillingPolicy:
    """The platform's billing settings, passed down from the edge."""

    fees: FeeSchedule
    retry_days: tuple[int, ...]
    after_last_retry: lifecycle.ExhaustedBehaviour
    resolve_after_seconds: int
    update_payment_url: str = ""


# Renewing -----------------------------------------------------------------------------------


async def _lock_subscription(session: AsyncSession, subscription_id: str) -> Subscription | None:
    return await locked_row(session, Subscription, subscription_id)


async def lock_for_renewal(session: AsyncSession, *, subscription_ids: Sequence[str]) -> None:
    """Lock a batch's subscriptions in id order and read them, their items and their
    customers in three statements, so that each ``renew`` of the batch reads nothing
    again (``kit.db.lock_rows``, ``hold``)."""
    subscriptions = await lock_rows(session, Subscription, subscription_ids)
    await read_and_hold(
        session, Customer, [subscription.customer_id for subscription in subscriptions.values()]
    )


async def end_subscription(
    session: AsyncSession, subscription: Subscription, *, at: datetime, churn: str
) -> None:
    """The subscription ends at ``at`` (canceled), with why; its renewals stop."""
    subscription.status = lifecycle.transition(subscription.status, "cancel")  # type: ignore[arg-type]
    subscription.ended_at = at
    subscription.canceled_at = subscription.canceled_at or at
    subscription.churn = subscription.churn or churn
    subscription.updated_at = at
    await emit(session, subscription, "customer.subscription.deleted", now=at)


async def renew(
    session: AsyncSession,
    *,
    subscription_id: str,
    period_index: int,
    now: datetime,
    pending_work: list[work.NewWork] | None = None,
) -> Invoice | None:
    """Roll the subscription into period ``period_index`` (due at its start), in the
    caller's transaction; returns the period's invoice when one was made (the caller
    enqueues nothing more: its charge is scheduled here). Does nothing for a period
    already renewed or a subscription that has ended. With ``pending_work`` the work it
    schedules (the charge, the next renewal, reminders) is appended there for the caller
    to enqueue in the same transaction (a batch: one statement for all), else enqueued
    here."""
    subscription = await _lock_subscription(session, subscription_id)
    if subscription is None or subscription.status == "canceled":
        return None
    if subscription.current_period_index != period_index - 1:
        log.info("subscription %s: period %s renewed already", subscription_id, period_index)
        return None
    customer = await session.get(Customer, subscription.customer_id)
    zone_name = customer.time_zone if customer is not None else subscription.time_zone
    period = periods.period(
        anchor=subscription.billing_anchor,
        zone_name=zone_name,
        plan=plan_of(subscription),
        n=period_index,
    )
    # The boundary is where the previous period ended, whatever the zone does since.
    period = periods.Period(
        index=period.index, start=subscription.current_period_end, end=period.end
    )
    decision = schedule.decide(
        period,
        schedule.Changes(
            pauses=[schedule.Pause(start=subscription.paused_at)] if subscription.paused_at else [],
            skipped=frozenset({subscription.skip_period_index})
            if subscription.skip_period_index is not None
            else frozenset(),
            cancel_at=subscription.cancel_at,
        ),
    )
    if decision == "end":
        await end_subscription(session, subscription, at=period.start, churn="voluntary")
        return None
    was_trialing = subscription.status == "trialing"
    subscription.current_period_index = period.index
    subscription.current_period_start = period.start
    subscription.current_period_end = period.end
    subscription.updated_at = now
    if decision == "skipped":
        subscription.skip_period_index = None
    invoice: Invoice | None = None
    await apply_pending_items(session, subscription, period_start=period.start)
    scheduled: list[work.NewWork] = []
    if decision == "invoice":
        invoice = new_invoice(
            subscription,
            period=period,
            billing_reason="subscription_create" if was_trialing else "subscription_cycle",
            now=period.start,
        )
        discounts.apply_discount(subscription, invoice)
        session.add(invoice)
        await emit_invoice(session, invoice, "invoice.created", now=now)
        scheduled.append(
            charge_work(
                invoice, test_clock_id=subscription.test_clock_id, attempt=1, due_at=period.start
            )
        )
    await emit(session, subscription, "customer.subscription.updated", now=now)
    scheduled.append(renewal_work(subscription))
    scheduled.extend(reminders.reminder_work(subscription))
    if pending_work is None:
        await work.enqueue_many(session, scheduled, now=now)
    else:
        pending_work.extend(scheduled)
    return invoice


# Charging ---------------------------------------------------------------------------------


async def _lock_invoice(session: AsyncSession, invoice_id: str) -> Invoice | None:
    return await locked_row(session, Invoice, invoice_id)


async def read_for_charges(
    session: AsyncSession, gateway: Gateway, *, invoice_ids: Sequence[str]
) -> list[Invoice]:
    """Step 1 of a batch of charges, read ahead: the invoices (with their lines), their
    subscriptions (with items), customers, payees, payment methods and whether their
    buyers have wallets, one statement each, so that each invoice's step reads none of
    them again. Read without locks: the caller locks those it may (``lock_for_charges``).
    Returns the invoices found, in id order."""
    wanted = sorted(set(invoice_ids))
    invoices = (
        (await session.execute(select(Invoice).where(Invoice.id.in_(wanted)).order_by(Invoice.id)))
        .scalars()
        .all()
    )
    hold(session, invoices)
    await _hold_owners(session, invoices)
    await payments.read_payees(
        session, gateway, creator_ids=[invoice.creator_id for invoice in invoices]
    )
    await methods.read_charge_targets(
        session, customer_ids=[invoice.customer_id for invoice in invoices]
    )
    await wallet_first.read_wallets(session, invoices=invoices)
    return list(invoices)


async def lock_for_charges(session: AsyncSession, *, invoices: Sequence[Invoice]) -> None:
    """Lock these invoices of a batch up front, in id order, read afresh, and read their
    attempts (made and settled only under the invoice's lock), two statements and the
    lines'; each one's step then locks and reads nothing more. Only invoices no other
    job gathers into a consolidated charge: gathering locks a buyer's invoices in id
    order and must not find one of them held by a batch that waits for another."""
    locked = await lock_rows(session, Invoice, [invoice.id for invoice in invoices])
    await _read_attempts(session, invoice_ids=sorted(locked))


async def read_for_outcomes(session: AsyncSession, *, invoice_ids: Sequence[str]) -> None:
    """Step 3 of a batch of charges, read ahead: lock the invoices, then their
    subscriptions, each in id order (the order one invoice's step takes them in), and
    read their customers and which of their products have license key pools, one
    statement each."""
    invoices = await lock_rows(session, Invoice, invoice_ids)
    await lock_rows(
        session, Subscription, [invoice.subscription_id for invoice in invoices.values()]
    )
    await _hold_owners(session, invoices.values(), subscriptions=False)
    await digital.read_key_pools(
        session,
        product_ids=[line.product_id for invoice in invoices.values() for line in invoice.lines],
    )


async def _hold_owners(
    session: AsyncSession, invoices: Iterable[Invoice], *, subscriptions: bool = True
) -> None:
    listed = list(invoices)
    if subscriptions:
        await read_and_hold(session, Subscription, [invoice.subscription_id for invoice in listed])
    await read_and_hold(session, Customer, [invoice.customer_id for invoice in listed])


_ATTEMPTS = "billing.invoice_attempts"


async def _attempt(session: AsyncSession, *, invoice_id: str, number: int) -> PaymentAttempt | None:
    read: dict[str, dict[int, PaymentAttempt]] = transaction_memo(session).get(_ATTEMPTS, {})
    if invoice_id in read:
        return read[invoice_id].get(number)
    return (
        await session.execute(
            select(PaymentAttempt).where(
                PaymentAttempt.purpose == PURPOSE,
                PaymentAttempt.purpose_id == invoice_id,
                PaymentAttempt.attempt_number == number,
            )
        )
    ).scalar_one_or_none()


async def _read_attempts(session: AsyncSession, *, invoice_ids: Sequence[str]) -> None:
    """The (locked) invoices' attempts, one statement, for the rest of this transaction:
    an invoice's attempts are made and settled only under its lock, and the ones made
    in this transaction are added (``_remember_attempt``)."""
    if not invoice_ids:
        return
    read: dict[str, dict[int, PaymentAttempt]] = transaction_memo(session).setdefault(_ATTEMPTS, {})
    for invoice_id in invoice_ids:
        read.setdefault(invoice_id, {})
    for attempt in (
        await session.execute(
            select(PaymentAttempt).where(
                PaymentAttempt.purpose == PURPOSE, PaymentAttempt.purpose_id.in_(invoice_ids)
            )
        )
    ).scalars():
        read[attempt.purpose_id][attempt.attempt_number] = attempt


def _remember_attempt(session: AsyncSession, attempt: PaymentAttempt) -> None:
    read: dict[str, dict[int, PaymentAttempt]] = transaction_memo(session).get(_ATTEMPTS, {})
    if attempt.purpose_id in read:
        read[attempt.purpose_id][attempt.attempt_number] = attempt


async def method_for(session: AsyncSession, subscription: Subscription) -> PaymentMethod | None:
    """The subscription's payment method while it is attached and granted to the
    customer, or else the customer's default; None when there is neither."""
    if subscription.default_payment_method_id is not None:
        try:
            return await methods.charge_target(
                session,
                creator_id=subscription.creator_id,
                customer_id=subscription.customer_id,
                payment_method_id=subscription.default_payment_method_id,
            )
        except (methods.PaymentMethodNotFound, methods.PaymentMethodNotGranted):
            pass
    try:
        return await methods.charge_target(
            session,
            creator_id=subscription.creator_id,
            customer_id=subscription.customer_id,
            payment_method_id=None,
        )
    except methods.NoDefaultPaymentMethod:
        return None


async def _begin(
    session: AsyncSession,
    gateway: Gateway,
    *,
    invoice_id: str,
    number: int,
    policy: BillingPolicy,
    now: datetime,
    flush: bool = True,
) -> payments.GatewayCall | None:
    """Step 1, under the invoice's lock: the gateway call attempt ``number`` stands for,
    or None when there is nothing to do (paid, void, a stale attempt, an outcome already
    applied). With ``flush=False`` the new attempt and the invoice's update are left to
    the caller's flush (a charge batch writes all its step 1s in one ``flush_together``);
    it must flush before the commit, and before any statement that reads them without
    the session's autoflush."""
    invoice = await _lock_invoice(session, invoice_id)
    if invoice is None or invoice.status != "open":
        return None
    existing = await _attempt(session, invoice_id=invoice_id, number=number)
    if existing is not None:
        if existing.status == "processing":
            return payments.gateway_call_for(existing)
        # Recorded, but perhaps not applied (the settling worker recorded it).
        await apply_outcome(session, invoice=invoice, attempt=existing, policy=policy, now=now)
        return None
    if invoice.attempt_count != number - 1:
        return None  # a stale retry: a later attempt was made already
    subscription = await session.get(Subscription, invoice.subscription_id)
    assert subscription is not None
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    # The buyer's wallet first, when it holds the whole amount (ADR 0016).
    paid = await wallet_first.pay_invoice(session, invoice=invoice, fees=policy.fees, at=at)
    if paid is not None:
        locked = await locked_row(session, Subscription, subscription.id)
        assert locked is not None
        await settle_paid(
            session, invoice=invoice, subscription=locked, amount=paid.split.gross, at=at
        )
        return None
    method = await method_for(session, subscription)
    if method is None:
        invoice.attempt_count = number
        invoice.updated_at = at
        await _failed(
            session,
            invoice=invoice,
            subscription=subscription,
            message="There is no payment method to charge.",
            policy=policy,
            at=at,
        )
        return None
    payee = await payments.get_payee(session, gateway, creator_id=invoice.creator_id)
    fees = fees_before_charge(
        invoice.amount_due,
        orders.fee_policy_for(payee.creator, policy.fees, currency=invoice.currency),
        estimated_processor_fee=gateway.estimate_processor_fee(
            amount=invoice.amount_due, currency=invoice.currency
        ),
    )
    attempt = await payments.begin_attempt(
        session,
        gateway,
        creator_id=invoice.creator_id,
        purpose=PURPOSE,
        purpose_id=invoice.id,
        amount=invoice.amount_due,
        currency=invoice.currency,
        payment_method=method.gateway_reference,
        platform_fee=fees.platform_fee,
        estimated_processor_fee=fees.estimated_processor_fee,
        resolve_after=at + timedelta(seconds=policy.resolve_after_seconds),
        now=at,
        gateway_customer=method.gateway_customer,
        saved_payment_method_id=method.id,
        payee=payee,
        latest_number=number - 1,
        flush=False,
    )
    _remember_attempt(session, attempt)
    invoice.attempt_count = number
    invoice.next_payment_attempt = None
    invoice.updated_at = at
    if flush:
        # The attempt and the invoice's update: one statement on PostgreSQL (ADR 0030).
        await flush_together(session)
    return payments.gateway_call_for(attempt)


async def begin_invoice_attempt(
    session: AsyncSession,
    gateway: Gateway,
    *,
    invoice_id: str,
    number: int,
    policy: BillingPolicy,
    now: datetime,
    flush: bool = True,
) -> payments.GatewayCall | None:
    """Step 1 of attempt ``number`` in the caller's transaction (module doc): the gateway
    call to make, or None when there is nothing to call. ``flush``: as ``_begin``'s."""
    return await _begin(
        session,
        gateway,
        invoice_id=invoice_id,
        number=number,
        policy=policy,
        now=now,
        flush=flush,
    )


async def charge_invoice(
    database: Database,
    gateway: Gateway,
    *,
    invoice_id: str,
    attempt: int,
    policy: BillingPolicy,
    now: datetime,
) -> None:
    """Make attempt ``attempt`` of the invoice's charge, in three steps (module doc).
    Safe to run any number of times, concurrently too."""
    async with database.unit_of_work() as session:
        call = await _begin(
            session, gateway, invoice_id=invoice_id, number=attempt, policy=policy, now=now
        )
    if call is None:
        return
    result = await payments.call_gateway(gateway, call)
    async with database.unit_of_work() as session:
        await complete_invoice_attempt(session, call, result, now, policy=policy)


async def complete_invoice_attempt(
    session: AsyncSession,
    call: payments.GatewayCall,
    result: ChargeResult,
    now: datetime,
    *,
    policy: BillingPolicy,
    outcomes: Mapping[str, PaymentAttempt] | None = None,
) -> None:
    """Step 3 (also the settling worker's completer for invoices): record the gateway's
    answer and apply it to the invoice, under the invoice's lock. A caller that locked
    the invoice and recorded the answers of many attempts at once
    (``payments.record_outcomes``) passes what that recorded as ``outcomes``: the
    attempt is then applied only if it is among them."""
    invoice = await _lock_invoice(session, call.purpose_id)
    recorded = (
        await payments.record_outcome(session, call=call, result=result)
        if outcomes is None
        else outcomes.get(call.attempt_id)
    )
    attempt = recorded or await payments.get_attempt(session, attempt_id=call.attempt_id)
    if invoice is not None:
        await apply_outcome(session, invoice=invoice, attempt=attempt, policy=policy, now=now)


async def apply_outcome(
    session: AsyncSession,
    *,
    invoice: Invoice,
    attempt: PaymentAttempt,
    policy: BillingPolicy,
    now: datetime,
    share: orders.PaymentShare | None = None,
) -> None:
    """Apply a recorded attempt to its (locked) invoice, once: only the invoice's latest
    attempt, only while the invoice is open and not yet told of this attempt's failure.
    ``share`` is the invoice's part of a charge that paid several (ADR 0019)."""
    if invoice.status != "open" or attempt.status == "processing":
        return
    if attempt.attempt_number != invoice.attempt_count:
        return
    subscription = await locked_row(session, Subscription, invoice.subscription_id)
    assert subscription is not None
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    if attempt.status == "succeeded":
        await _paid(
            session,
            invoice=invoice,
            subscription=subscription,
            attempt=attempt,
            at=at,
            share=share,
        )
        return
    if invoice.next_payment_attempt is not None or invoice.last_failure == _failure_key(attempt):
        return  # this failure was handled already
    await _failed(
        session,
        invoice=invoice,
        subscription=subscription,
        message=attempt.failure_message or attempt.decline_code or "The payment failed.",
        policy=policy,
        at=at,
        failure_key=_failure_key(attempt),
    )


def _failure_key(attempt: PaymentAttempt) -> str:
    return f"attempt {attempt.attempt_number}: {attempt.failure_message or attempt.decline_code}"[
        :500
    ]


async def _paid(
    session: AsyncSession,
    *,
    invoice: Invoice,
    subscription: Subscription,
    attempt: PaymentAttempt,
    at: datetime,
    share: orders.PaymentShare | None = None,
) -> None:
    customer = await session.get(Customer, invoice.customer_id)
    assert customer is not None
    order = await orders.create_paid_order(
        session,
        creator_id=invoice.creator_id,
        customer_id=invoice.customer_id,
        customer_email=customer.email,
        attempt=attempt,
        lines=[
            orders.LineSpec(
                price_id=line.price_id,
                product_id=line.product_id,
                variant_id=line.variant_id,
                sku=line.sku,
                description=line.description,
                quantity=line.quantity,
                unit_amount=line.unit_amount,
            )
            for line in invoice.lines
        ],
        now=at,
        invoice_id=invoice.id,
        share=share,
        # Sent with the transaction's next flush_together (a charge batch's, after its
        # outcomes, gathers their postings into one write) or its commit: nothing billing
        # does before then reads the ledger (ADR 0030).
        post_with_flush=True,
    )
    invoice.payment_attempt_id = attempt.id
    invoice.order_id = order.id
    await settle_paid(
        session, invoice=invoice, subscription=subscription, amount=order.amount_total, at=at
    )


async def settle_paid(
    session: AsyncSession,
    *,
    invoice: Invoice,
    subscription: Subscription,
    amount: int,
    at: datetime,
) -> None:
    """The invoice is paid in full (by a charge or from the wallet): say so, and bring a
    subscription that waited for it back to active."""
    invoice.status = "paid"
    invoice.amount_paid = amount
    invoice.paid_at = at
    invoice.next_payment_attempt = None
    invoice.updated_at = at
    await emit_invoice(session, invoice, "invoice.paid", now=at)
    if subscription.status in ("incomplete", "trialing", "past_due", "unpaid"):
        subscription.status = lifecycle.transition(subscription.status, "invoice_paid")  # type: ignore[arg-type]
        subscription.updated_at = at
        await emit(session, subscription, "customer.subscription.updated", now=at)


async def _failed(
    session: AsyncSession,
    *,
    invoice: Invoice,
    subscription: Subscription,
    message: str,
    policy: BillingPolicy,
    at: datetime,
    failure_key: str | None = None,
) -> None:
    """A failed attempt: retry on the dunning schedule, or, after the last retry,
    cancel the subscription or mark it unpaid (the platform's setting)."""
    invoice.last_failure = failure_key or f"attempt {invoice.attempt_count}: {message}"[:500]
    retry_at = dunning.next_attempt_at(
        first_attempt_at=invoice.created_at,
        failed_attempts=invoice.attempt_count,
        retry_days=policy.retry_days,
    )
    invoice.next_payment_attempt = retry_at
    invoice.updated_at = at
    await emit_invoice(session, invoice, "invoice.payment_failed", now=at)
    status_before = subscription.status
    if subscription.status not in ("paused", "canceled"):
        subscription.status = lifecycle.transition(subscription.status, "payment_failed")  # type: ignore[arg-type]
    if retry_at is not None:
        await schedule_charge(
            session,
            invoice,
            test_clock_id=subscription.test_clock_id,
            attempt=invoice.attempt_count + 1,
            due_at=retry_at,
            now=at,
        )
    elif subscription.status in ("past_due", "incomplete"):
        if policy.after_last_retry == "cancel" or subscription.status == "incomplete":
            invoice.status = "uncollectible"
            subscription.cancellation_reason = subscription.cancellation_reason or (
                "payment failed after every retry"
            )
            await end_subscription(session, subscription, at=at, churn="involuntary")
        else:
            subscription.status = lifecycle.transition(
                "past_due", "retries_exhausted", exhausted="mark_unpaid"
            )
            subscription.churn = "involuntary"
    if subscription.status != status_before and subscription.status != "canceled":
        subscription.updated_at = at
        await emit(session, subscription, "customer.subscription.updated", now=at)
    await reminders.payment_failed_email(
        session,
        invoice=invoice,
        subscription=subscription,
        message=message,
        update_url_template=policy.update_payment_url,
        at=at,
    )
