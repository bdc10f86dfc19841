"""Consolidated charges: a buyer's renewals across creators that fall due on the same
local day are paid by one card charge, split per creator in the ledger (ADR 0019).

When the first attempt of a renewal invoice (``subscription_cycle``) comes due, its job
gathers the buyer's other renewal invoices in the same currency that are open, never
attempted, due by now, on the same local day (the charging customer's zone) and on the
same test clock, locks them in id order, and:

1. pays from the buyer's wallet every one the wallet holds in full (ADR 0016, unchanged);
2. of the rest, takes those that renew on the same saved card as this one (each creator
   holds its own grant of it: ADR 0011) and, with a gateway that pays creators directly,
   whose creator has an account there;
3. with two or more left, records one ``ConsolidatedCharge`` (sequence ``s`` of the
   buyer's day), its parts (each invoice's amount, the platform's fee on it and its part
   of the processor's estimated fee, by ``allocation.allocate``) and one payment attempt
   (purpose ``consolidated_charge``, for the platform) with the gateway key
   ``<buyer>:<day>:<currency>:<s>:attempt:1``; each invoice's attempt 1 is that charge.
   With fewer, each invoice is charged on its own as before.

The gateway is called with no transaction open; the outcome is recorded by a conditional
update and applied to every invoice under their locks: paid, each with an order of its
own for its share (the processor's actual fee split again by ``allocate``), or failed,
each into its own dunning schedule (retries charge invoices one by one). A crash between
the steps is resolved by the invoice's job running again, or by the payments settler,
both re-asking the gateway with the same key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Customer
from stallholder.billing import renewal, wallet_first
from stallholder.billing.allocation import allocate
from stallholder.billing.kinds import TRANSFER_KIND
from stallholder.billing.models import (
    ConsolidatedCharge,
    ConsolidatedChargePart,
    Invoice,
    Subscription,
)
from stallholder.billing.subscriptions import billing_now
from stallholder.kit import work
from stallholder.kit.db import Database, transaction_memo
from stallholder.kit.flush import flush_together
from stallholder.kit.ids import new_id
from stallholder.ledger.fees import fees_before_charge
from stallholder.orders import service as orders
from stallholder.orders.models import Order
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult, Gateway
from stallholder.payments.models import PaymentAttempt

PURPOSE: Final = "consolidated_charge"
log = logging.getLogger("stallholder.billing")


@dataclass(frozen=True, slots=True)
class _NotConsolidated:
    """The invoice is charged on its own (the per-invoice path of ``renewal``)."""


NOT_CONSOLIDATED: Final = _NotConsolidated()


def local_day_bounds(instant: datetime, zone_name: str) -> tuple[str, datetime, datetime]:
    """The local date of ``instant`` in ``zone_name`` (ISO) and its start and end in UTC,
    half-open; a day of a clock change is 23 or 25 hours long."""
    zone = ZoneInfo(zone_name)
    day = instant.astimezone(zone).date()
    start = datetime.combine(day, time(), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
    return day.isoformat(), start, end


def idempotency_key(*, buyer_id: str, day: str, currency: str, sequence: int, attempt: int) -> str:
    """The gateway key of a consolidated charge's attempt: derived from the buyer, the
    charge day and the attempt, never from a random id."""
    return f"{buyer_id}:{day}:{currency}:{sequence}:attempt:{attempt}"


async def _candidate_ids(
    session: AsyncSession,
    *,
    invoice: Invoice,
    buyer_id: str,
    test_clock_id: str | None,
    day_start: datetime,
    day_end: datetime,
    at: datetime,
) -> list[str]:
    """The buyer's renewal invoices that may share this one's charge (this one included),
    read without locks; the caller locks and checks them again."""
    clock = (
        Subscription.test_clock_id.is_(None)
        if test_clock_id is None
        else Subscription.test_clock_id == test_clock_id
    )
    rows = await session.execute(
        select(Invoice.id)
        .join(Customer, Customer.id == Invoice.customer_id)
        .join(Subscription, Subscription.id == Invoice.subscription_id)
        .where(
            Customer.buyer_id == buyer_id,
            Invoice.currency == invoice.currency,
            Invoice.status == "open",
            Invoice.attempt_count == 0,
            Invoice.billing_reason == "subscription_cycle",
            Invoice.consolidated_charge_id.is_(None),
            Invoice.period_start >= day_start,
            Invoice.period_start < day_end,
            Invoice.period_start <= at,
            clock,
        )
        .order_by(Invoice.id)
    )
    return list(rows.scalars())


_GATHERABLE = "billing.gatherable_per_buyer"


async def _read_gatherable(session: AsyncSession, *, invoices: Iterable[Invoice]) -> None:
    """For a batch of charges: how many renewal invoices each of their buyers has that
    may still be gathered, on any day, in any currency, on any clock (a superset of what
    ``_candidate_ids`` finds for one of them), one statement. A buyer with fewer than two
    needs no look for candidates: its invoice is charged on its own. An invoice made by
    another transaction meanwhile is as if made just after the look."""
    buyer_ids: set[str] = set()
    for invoice in invoices:
        customer = await session.get(Customer, invoice.customer_id)  # read ahead: no statement
        if customer is not None:
            buyer_ids.add(customer.buyer_id)
    if not buyer_ids:
        return
    # These conditions are the partial index's (``models.GATHERABLE_SQL``,
    # ``ix_invoices_gatherable_customer``): change both together, or the index goes unused.
    rows = await session.execute(
        select(Customer.buyer_id, func.count(Invoice.id))
        .join(Invoice, Invoice.customer_id == Customer.id)
        .where(
            Customer.buyer_id.in_(sorted(buyer_ids)),
            Invoice.status == "open",
            Invoice.attempt_count == 0,
            Invoice.billing_reason == "subscription_cycle",
            Invoice.consolidated_charge_id.is_(None),
        )
        .group_by(Customer.buyer_id)
    )
    counts: dict[str, int] = dict(rows.all())
    read: dict[str, int] = transaction_memo(session).setdefault(_GATHERABLE, {})
    for buyer_id in buyer_ids:
        read[buyer_id] = counts.get(buyer_id, 0)


async def _may_gather(session: AsyncSession, invoice: Invoice) -> bool:
    """Whether a job may gather the (read ahead) invoice into a consolidated charge, or
    has: its lock is left to the steps, which take a buyer's invoices in id order."""
    if invoice.consolidated_charge_id is not None:
        return True
    if not _is_gatherable(invoice) or invoice.billing_reason != "subscription_cycle":
        return False
    customer = await session.get(Customer, invoice.customer_id)  # read ahead: no statement
    gatherable: dict[str, int] = transaction_memo(session).get(_GATHERABLE, {})
    return customer is None or gatherable.get(customer.buyer_id, 2) >= 2


def _is_gatherable(invoice: Invoice) -> bool:
    return (
        invoice.status == "open"
        and invoice.attempt_count == 0
        and invoice.consolidated_charge_id is None
    )


async def _resume(
    session: AsyncSession, *, invoice: Invoice, policy: renewal.BillingPolicy, now: datetime
) -> payments.GatewayCall | None:
    """An invoice already in a consolidated charge: the call to make again when its
    attempt is still ``processing`` past its ``resolve_after`` (a crash), else apply the
    recorded outcome. Before then the job that made the charge is still calling the
    gateway (the other invoices' jobs come due at the same moment) and, should it die,
    the payments settler takes the attempt over at ``resolve_after``."""
    charge = await session.get(ConsolidatedCharge, invoice.consolidated_charge_id)
    assert charge is not None
    assert charge.payment_attempt_id is not None
    attempt = await payments.get_attempt(session, attempt_id=charge.payment_attempt_id)
    if attempt.status == "processing":
        subscription = await session.get(Subscription, invoice.subscription_id)
        assert subscription is not None
        at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
        if attempt.resolve_after is not None and at < attempt.resolve_after:
            return None
        return payments.gateway_call_for(attempt)
    await _apply(session, charge=charge, attempt=attempt, policy=policy, now=now)
    return None


async def begin(
    session: AsyncSession,
    gateway: Gateway,
    *,
    invoice_id: str,
    policy: renewal.BillingPolicy,
    now: datetime,
) -> payments.GatewayCall | _NotConsolidated | None:
    """Step 1 for attempt 1 of an invoice (module doc): the consolidated charge's gateway
    call, None when there is nothing left to call (paid from the wallet, or an outcome
    applied), or ``NOT_CONSOLIDATED`` when the invoice is to be charged on its own."""
    invoice = await session.get(Invoice, invoice_id)
    if invoice is None or invoice.status != "open":
        return NOT_CONSOLIDATED
    if invoice.consolidated_charge_id is not None:
        return await _resume(session, invoice=invoice, policy=policy, now=now)
    if invoice.billing_reason != "subscription_cycle" or invoice.attempt_count != 0:
        return NOT_CONSOLIDATED
    subscription = await session.get(Subscription, invoice.subscription_id)
    customer = await session.get(Customer, invoice.customer_id)
    assert subscription is not None
    assert customer is not None
    gatherable: dict[str, int] = transaction_memo(session).get(_GATHERABLE, {})
    if gatherable.get(customer.buyer_id, 2) < 2:
        return NOT_CONSOLIDATED
    at = await billing_now(session, test_clock_id=subscription.test_clock_id, now=now)
    day, day_start, day_end = local_day_bounds(invoice.period_start, customer.time_zone)
    ids = await _candidate_ids(
        session,
        invoice=invoice,
        buyer_id=customer.buyer_id,
        test_clock_id=subscription.test_clock_id,
        day_start=day_start,
        day_end=day_end,
        at=at,
    )
    if len(ids) < 2 or invoice_id not in ids:
        return NOT_CONSOLIDATED
    # Locked in id order, as every gathering locks them, then checked again: a charge
    # made meanwhile by another job has taken some of them.
    locked = [
        candidate
        for candidate in (
            await session.execute(
                select(Invoice)
                .where(Invoice.id.in_(ids))
                .order_by(Invoice.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalars()
        if _is_gatherable(candidate)
    ]
    if all(candidate.id != invoice_id for candidate in locked):
        return NOT_CONSOLIDATED
    return await _gather(
        session,
        gateway,
        invoice_id=invoice_id,
        invoices=locked,
        buyer_id=customer.buyer_id,
        day=day,
        policy=policy,
        at=at,
    )


async def _gather(
    session: AsyncSession,
    gateway: Gateway,
    *,
    invoice_id: str,
    invoices: list[Invoice],
    buyer_id: str,
    day: str,
    policy: renewal.BillingPolicy,
    at: datetime,
) -> payments.GatewayCall | _NotConsolidated | None:
    unpaid: list[Invoice] = []
    for candidate in invoices:
        paid = await wallet_first.pay_invoice(session, invoice=candidate, fees=policy.fees, at=at)
        if paid is None:
            unpaid.append(candidate)
            continue
        subscription = await session.get(
            Subscription, candidate.subscription_id, with_for_update=True
        )
        assert subscription is not None
        await renewal.settle_paid(
            session, invoice=candidate, subscription=subscription, amount=paid.split.gross, at=at
        )
    if all(candidate.id != invoice_id for candidate in unpaid):
        return None  # this invoice was paid from the wallet
    methods = {}
    for candidate in unpaid:
        subscription = await session.get(Subscription, candidate.subscription_id)
        assert subscription is not None
        methods[candidate.id] = await renewal.method_for(session, subscription)
    method = methods[invoice_id]
    if method is None:
        return NOT_CONSOLIDATED
    payees = {
        candidate.id: await payments.get_payee(session, gateway, creator_id=candidate.creator_id)
        for candidate in unpaid
    }
    group = [
        candidate
        for candidate in unpaid
        if (found := methods[candidate.id]) is not None
        and found.id == method.id
        and (not gateway.needs_connected_account or payees[candidate.id].connected_account)
    ]
    if len(group) < 2:
        return NOT_CONSOLIDATED
    return await _record(
        session,
        gateway,
        group=group,
        payees=payees,
        first_creator=next(c.creator_id for c in group if c.id == invoice_id),
        buyer_id=buyer_id,
        day=day,
        method_id=method.id,
        method_reference=method.gateway_reference,
        gateway_customer=method.gateway_customer,
        policy=policy,
        at=at,
    )


async def _record(
    session: AsyncSession,
    gateway: Gateway,
    *,
    group: list[Invoice],
    payees: dict[str, payments.Payee],
    first_creator: str,
    buyer_id: str,
    day: str,
    method_id: str,
    method_reference: str,
    gateway_customer: str,
    policy: renewal.BillingPolicy,
    at: datetime,
) -> payments.GatewayCall:
    """The consolidated charge, its parts and its attempt, recorded ``processing``."""
    currency = group[0].currency
    amounts = [candidate.amount_due for candidate in group]
    total = sum(amounts)
    estimate = gateway.estimate_processor_fee(amount=total, currency=currency)
    estimated_shares = allocate(estimate, amounts)
    sequence = (
        1
        + (
            await session.execute(
                select(func.count())
                .select_from(ConsolidatedCharge)
                .where(
                    ConsolidatedCharge.buyer_id == buyer_id,
                    ConsolidatedCharge.currency == currency,
                    ConsolidatedCharge.charge_day == day,
                )
            )
        ).scalar_one()
    )
    charge = ConsolidatedCharge(
        id=new_id("cc"),
        buyer_id=buyer_id,
        currency=currency,
        charge_day=day,
        sequence=sequence,
        amount=total,
        created_at=at,
    )
    session.add(charge)
    platform_fees = 0
    for candidate, estimated in zip(group, estimated_shares, strict=True):
        fees = fees_before_charge(
            candidate.amount_due,
            orders.fee_policy_for(payees[candidate.id].creator, policy.fees, currency=currency),
            estimated_processor_fee=estimated,
        )
        platform_fees += fees.platform_fee
        session.add(
            ConsolidatedChargePart(
                charge_id=charge.id,
                invoice_id=candidate.id,
                creator_id=candidate.creator_id,
                amount=candidate.amount_due,
                platform_fee=fees.platform_fee,
                estimated_processor_fee=fees.estimated_processor_fee,
            )
        )
        candidate.consolidated_charge_id = charge.id
        candidate.attempt_count = 1
        candidate.next_payment_attempt = None
        candidate.updated_at = at
    await session.flush()
    attempt = await payments.begin_attempt(
        session,
        gateway,
        creator_id=first_creator,
        purpose=PURPOSE,
        purpose_id=charge.id,
        amount=total,
        currency=currency,
        payment_method=method_reference,
        platform_fee=platform_fees,
        estimated_processor_fee=estimate,
        resolve_after=at + timedelta(seconds=policy.resolve_after_seconds),
        now=at,
        gateway_customer=gateway_customer,
        saved_payment_method_id=method_id,
        latest_number=0,
        is_for_platform=True,
        idempotency_key=idempotency_key(
            buyer_id=buyer_id, day=day, currency=currency, sequence=sequence, attempt=1
        ),
    )
    charge.payment_attempt_id = attempt.id
    if gateway.needs_connected_account:
        # Separate charges and transfers: each creator is paid its part once the charge
        # has succeeded (a job that finds it still waiting tries again later).
        await work.enqueue(
            session,
            kind=TRANSFER_KIND,
            payload={"charge": charge.id},
            due_at=at,
            now=at,
            dedupe_key=f"{TRANSFER_KIND}:{charge.id}",
            creator_id=first_creator,
        )
    await session.flush()
    return payments.gateway_call_for(attempt)


async def complete_attempt(
    session: AsyncSession,
    call: payments.GatewayCall,
    result: ChargeResult,
    now: datetime,
    *,
    policy: renewal.BillingPolicy,
) -> None:
    """Step 3 (also the settling worker's completer for consolidated charges): record
    the gateway's answer and apply it to every invoice of the charge, under their locks."""
    charge = await session.get(ConsolidatedCharge, call.purpose_id)
    assert charge is not None, call.purpose_id
    await _lock_invoices(session, charge_id=charge.id)
    recorded = await payments.record_outcome(session, call=call, result=result)
    attempt = recorded or await payments.get_attempt(session, attempt_id=call.attempt_id)
    await _apply(session, charge=charge, attempt=attempt, policy=policy, now=now)


async def _lock_invoices(session: AsyncSession, *, charge_id: str) -> list[Invoice]:
    return list(
        (
            await session.execute(
                select(Invoice)
                .where(Invoice.consolidated_charge_id == charge_id)
                .order_by(Invoice.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalars()
    )


async def _apply(
    session: AsyncSession,
    *,
    charge: ConsolidatedCharge,
    attempt: PaymentAttempt,
    policy: renewal.BillingPolicy,
    now: datetime,
) -> None:
    """Apply a recorded outcome to each of the charge's (locked) invoices, once each:
    a success pays each with an order for its part; a failure puts each into dunning."""
    if attempt.status == "processing":
        return
    invoices = {
        invoice.id: invoice for invoice in await _lock_invoices(session, charge_id=charge.id)
    }
    parts = sorted(charge.parts, key=lambda part: part.invoice_id)
    if attempt.status == "succeeded":
        actual = allocate(attempt.processor_fee, [part.amount for part in parts])
        for part, processor_fee in zip(parts, actual, strict=True):
            if part.processor_fee is None:
                part.processor_fee = processor_fee
    for part in parts:
        invoice = invoices.get(part.invoice_id)
        if invoice is None:
            continue
        await renewal.apply_outcome(
            session,
            invoice=invoice,
            attempt=attempt,
            policy=policy,
            now=now,
            share=orders.PaymentShare(
                amount=part.amount,
                platform_fee=part.platform_fee,
                estimated_processor_fee=part.estimated_processor_fee,
                processor_fee=part.processor_fee or 0,
            ),
        )


async def begin_charge(
    session: AsyncSession,
    gateway: Gateway,
    *,
    invoice_id: str,
    attempt: int,
    policy: renewal.BillingPolicy,
    now: datetime,
    flush: bool = True,
) -> payments.GatewayCall | None:
    """Step 1 of attempt ``attempt`` of the invoice's charge, in the caller's transaction:
    the first attempt of a renewal joins a consolidated charge with the buyer's other
    renewals of the day when there are any (module doc); anything else is the invoice's
    own attempt (``renewal``). The gateway call to make, or None. With ``flush=False`` an
    invoice's own attempt is left to the caller's flush (``renewal.begin_invoice_attempt``)."""
    if attempt == 1:
        step = await begin(session, gateway, invoice_id=invoice_id, policy=policy, now=now)
        if not isinstance(step, _NotConsolidated):
            return step
    return await renewal.begin_invoice_attempt(
        session,
        gateway,
        invoice_id=invoice_id,
        number=attempt,
        policy=policy,
        now=now,
        flush=flush,
    )


async def complete_charge(
    session: AsyncSession,
    call: payments.GatewayCall,
    result: ChargeResult,
    now: datetime,
    *,
    policy: renewal.BillingPolicy,
    outcomes: Mapping[str, PaymentAttempt] | None = None,
) -> None:
    """Step 3 for a call ``begin_charge`` returned, in the caller's transaction;
    ``outcomes``: as ``renewal.complete_invoice_attempt``'s (an invoice's own attempt)."""
    if call.purpose == PURPOSE:
        await complete_attempt(session, call, result, now, policy=policy)
    else:
        await renewal.complete_invoice_attempt(
            session, call, result, now, policy=policy, outcomes=outcomes
        )


async def charge_invoice(
    database: Database,
    gateway: Gateway,
    *,
    invoice_id: str,
    attempt: int,
    policy: renewal.BillingPolicy,
    now: datetime,
) -> None:
    """Attempt ``attempt`` of the invoice's charge in three steps (``begin_charge``, the
    gateway with no transaction open, ``complete_charge``). Safe to run any number of
    times, concurrently too."""
    async with database.unit_of_work() as session:
        call = await begin_charge(
            session, gateway, invoice_id=invoice_id, attempt=attempt, policy=policy, now=now
        )
    if call is None:
        return
    result = await payments.call_gateway(gateway, call)
    async with database.unit_of_work() as session:
        await complete_charge(session, call, result, now, policy=policy)


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One claimed charge job: attempt ``attempt`` of invoice ``invoice_id``."""

    key: str
    invoice_id: str
    attempt: int


async def charge_invoices(
    database: Database,
    gateway: Gateway,
    *,
    requests: Sequence[ChargeRequest],
    policy: renewal.BillingPolicy,
    now: datetime,
    concurrency: int,
) -> dict[str, BaseException | None]:
    """Many charge jobs at once, in the same three steps as ``charge_invoice``: every
    step 1 in one transaction, the gateway calls with none open (``concurrency`` at a
    time), every step 3 in one transaction. Each step is idempotent per invoice, so
    exactly-once holds as for one job; what a batch saves is the transactions and the
    reads (``renewal.read_for_charges`` and ``read_for_outcomes`` lock and read the
    batch's rows up front, in id order). A step that fails for the batch as a whole is
    run again job by job, so one bad invoice holds up only itself. Returns each
    request's failure (None: done)."""
    ordered = sorted(requests, key=lambda request: (request.invoice_id, request.attempt))
    calls: dict[str, payments.GatewayCall] = {}
    try:
        async with database.unit_of_work() as session:
            invoices = await renewal.read_for_charges(
                session, gateway, invoice_ids=[request.invoice_id for request in ordered]
            )
            await _read_gatherable(session, invoices=invoices)
            await renewal.lock_for_charges(
                session,
                invoices=[
                    invoice for invoice in invoices if not await _may_gather(session, invoice)
                ],
            )
            for request in ordered:
                call = await begin_charge(
                    session,
                    gateway,
                    invoice_id=request.invoice_id,
                    attempt=request.attempt,
                    policy=policy,
                    now=now,
                    flush=False,
                )
                if call is not None:
                    calls[request.key] = call
            # Every attempt and invoice update of the batch's step 1s: one statement on
            # PostgreSQL (ADR 0030), committed before any gateway call.
            await flush_together(session)
    except Exception:
        log.exception("a batch of %d charges failed to begin; charging one by one", len(ordered))
        return await _one_by_one(database, gateway, ordered, policy=policy, now=now)
    gate = asyncio.Semaphore(max(1, concurrency))
    unique = {call.attempt_id: call for call in calls.values()}

    async def ask(call: payments.GatewayCall) -> ChargeResult | BaseException:
        async with gate:
            try:
                return await payments.call_gateway(gateway, call)
            except Exception as error:
                return error

    answers = dict(
        zip(unique, await asyncio.gather(*(ask(call) for call in unique.values())), strict=True)
    )
    outcomes: dict[str, BaseException | None] = {request.key: None for request in ordered}
    for key, call in calls.items():
        answer = answers[call.attempt_id]
        if isinstance(answer, BaseException):
            outcomes[key] = answer  # the attempt stays processing: retried, or settled
    recorded = [
        (call, answer)
        for call_id, call in unique.items()
        if isinstance(answer := answers[call_id], ChargeResult)
    ]
    try:
        async with database.unit_of_work() as session:
            await renewal.read_for_outcomes(
                session,
                invoice_ids=[call.purpose_id for call, _ in recorded if call.purpose != PURPOSE],
            )
            # The invoices are locked: every invoice attempt's answer recorded at once.
            outcomes_recorded = await payments.record_outcomes(
                session, [(call, result) for call, result in recorded if call.purpose != PURPOSE]
            )
            for call, result in recorded:
                await complete_charge(
                    session, call, result, now, policy=policy, outcomes=outcomes_recorded
                )
            # What they left to flush (the invoices' and subscriptions' updates, the events,
            # the ledger's postings gathered into one): one statement on PostgreSQL (ADR
            # 0030). Nothing in an outcome reads what an earlier one left unflushed without
            # the session's autoflush: the orders and receipt numbers are written as they
            # are made, the postings read no balance.
            await flush_together(session)
    except Exception:
        log.exception("recording a batch of %d outcomes failed; one by one", len(recorded))
        for call, result in recorded:
            try:
                async with database.unit_of_work() as session:
                    await complete_charge(session, call, result, now, policy=policy)
            except Exception as error:
                for key, made in calls.items():
                    if made.attempt_id == call.attempt_id:
                        outcomes[key] = error
    return outcomes


async def _one_by_one(
    database: Database,
    gateway: Gateway,
    requests: Sequence[ChargeRequest],
    *,
    policy: renewal.BillingPolicy,
    now: datetime,
) -> dict[str, BaseException | None]:
    outcomes: dict[str, BaseException | None] = {}
    for request in requests:
        try:
            await charge_invoice(
                database,
                gateway,
                invoice_id=request.invoice_id,
                attempt=request.attempt,
                policy=policy,
                now=now,
            )
        except Exception as error:
            outcomes[request.key] = error
        else:
            outcomes[request.key] = None
    return outcomes


# Transfers (Stripe) ------------------------------------------------------------------------

# How long a transfer job waits for a charge that has no outcome yet.
TRANSFER_WAIT = timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class _Transfer:
    order_id: str
    amount: int
    destination: str
    idempotency_key: str
    metadata: dict[str, str]


async def transfer_parts(
    database: Database, gateway: Gateway, *, charge_id: str, now: datetime
) -> int:
    """Pay each creator its part of a succeeded consolidated charge by a transfer to its
    connected account, keyed ``<charge>:transfer:<invoice>`` (a repeat gets the same
    transfer), each recorded on the invoice's order; returns how many were made now. The
    creator's part is what a destination charge would have paid it: its amount less the
    platform's fee and the processor's estimated fee, as in the ledger, less what refunds
    made before the transfer took back (``orders.plan_transfer``: fixed on the order the
    first time, so a retry asks for the same amount under the same key; a part refunded
    in full gets no transfer). A gateway that pays creators from the ledger (the sandbox)
    makes none.

    Raises:
        work.Retry: the charge has no outcome yet, an invoice has no order yet, or an
            order has a refund pending (the other parts are transferred first).
        GatewayRefused, GatewayUnavailable: a transfer was not made (the job is retried).
    """
    if not gateway.needs_connected_account:
        return 0
    async with database.unit_of_work() as session:
        charge = await session.get(ConsolidatedCharge, charge_id)
        assert charge is not None, charge_id
        assert charge.payment_attempt_id is not None
        attempt = await payments.get_attempt(session, attempt_id=charge.payment_attempt_id)
        if attempt.status == "processing":
            raise work.Retry(f"charge {charge_id} has no outcome yet", delay=TRANSFER_WAIT)
        if attempt.status != "succeeded":
            return 0
        parts = (
            (
                await session.execute(
                    select(ConsolidatedChargePart)
                    .where(ConsolidatedChargePart.charge_id == charge_id)
                    .order_by(ConsolidatedChargePart.invoice_id)
                )
            )
            .scalars()
            .all()
        )
        order_ids = (
            await session.execute(
                select(Invoice.id, Invoice.order_id).where(
                    Invoice.id.in_([part.invoice_id for part in parts])
                )
            )
        ).all()
        order_of = dict(order_ids)
        # The orders locked in id order: a refund begun meanwhile waits, then sees the
        # transfer's amount fixed (and is reversed from it), or was counted in it.
        locked = {
            order.id: order
            for order in (
                await session.execute(
                    select(Order)
                    .where(Order.id.in_([o for o in order_of.values() if o is not None]))
                    .order_by(Order.id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalars()
        }
        transfers = []
        waiting: list[str] = []
        for part in parts:
            order_id = order_of.get(part.invoice_id)
            if order_id is None:
                raise work.Retry(f"invoice {part.invoice_id} is not paid yet", delay=TRANSFER_WAIT)
            order = locked[order_id]
            if order.transfer_reference is not None:
                continue
            amount = await orders.plan_transfer(session, order=order)
            if amount is None:
                waiting.append(order_id)  # a refund of it is pending; its outcome counts
                continue
            if amount == 0:
                continue  # refunded in full before the transfer: nothing to pay
            destination = await payments.connected_account_for(
                session, gateway, creator_id=part.creator_id
            )
            assert destination is not None, part.creator_id  # gathered only with one
            transfers.append(
                _Transfer(
                    order_id=order_id,
                    amount=amount,
                    destination=destination,
                    idempotency_key=f"{charge_id}:transfer:{part.invoice_id}",
                    metadata={"invoice": part.invoice_id, "creator": part.creator_id},
                )
            )
        currency = charge.currency
    for transfer in transfers:
        reference = await gateway.transfer(
            amount=transfer.amount,
            currency=currency,
            destination=transfer.destination,
            transfer_group=charge_id,
            idempotency_key=transfer.idempotency_key,
            metadata=transfer.metadata,
        )
        async with database.unit_of_work() as session:
            await orders.record_transfer(
                session, order_id=transfer.order_id, transfer_reference=reference
            )
    if waiting:
        raise work.Retry(
            f"orders {', '.join(waiting)} have a refund pending; their transfers wait for it",
            delay=TRANSFER_WAIT,
        )
    return len(transfers)
