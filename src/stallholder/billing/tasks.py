"""Due work of billing: renewals, invoice charges (first attempts and dunning retries)
and reminders, each idempotent (ADR 0010).

``kinds()`` are the real-time kinds the worker registers; ``kinds(test_clock_id=…)``
the same handlers under a clock's own kind names, which only advancing that clock runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Protocol

from stallholder.billing import consolidation, reminders, renewal
from stallholder.billing.kinds import (
    CHARGE_KIND,
    REMIND_KIND,
    RENEW_KIND,
    TRANSFER_KIND,
    kind_for,
)
from stallholder.kit import work
from stallholder.kit.flush import flush_together
from stallholder.ledger.service import platform_fee_policy
from stallholder.payments.gateway import Gateway
from stallholder.settings import Settings

log = logging.getLogger("stallholder.billing")
# Renewals and charges claimed (and written) per transaction; gateway calls of a batch at
# once on PostgreSQL.
BATCH_SIZE = 100
CHARGE_CONCURRENCY = 8
# On PostgreSQL each batch waits mostly on round trips to the server, so a worker runs
# smaller batches side by side; on SQLite one (a single writer: parallel batches queue).
POSTGRES_PARALLEL_BATCHES = 8
POSTGRES_BATCH_SIZE = 25


class BillingResources(Protocol):
    """What billing's handlers need from the worker."""

    @property
    def settings(self) -> Settings: ...

    @property
    def gateway(self) -> Gateway: ...


def policy_from(settings: Settings) -> renewal.BillingPolicy:
    return renewal.BillingPolicy(
        fees=platform_fee_policy(settings),
        retry_days=tuple(settings.billing_retry_days),
        after_last_retry=settings.billing_after_last_retry,
        resolve_after_seconds=settings.payment_resolve_after_seconds,
        # By default the buyer portal's payment-update page (docs/portal.md).
        update_payment_url=settings.billing_update_payment_url
        or f"{settings.base_url}/portal/subscriptions/{{subscription}}/payment-method",
    )


async def renew(
    context: work.Context[BillingResources], items: Sequence[work.Claimed]
) -> dict[str, BaseException | None]:
    """A claimed batch of renewals in one transaction (each is idempotent under its
    subscription's lock, ADR 0010), subscriptions locked in id order and read with their
    items and customers up front, the work they schedule enqueued in one statement. Should the batch
    fail as a whole, each renewal is run again in a transaction of its own, so one bad
    subscription holds up only itself."""
    ordered = sorted(items, key=lambda item: (item.payload["subscription"], item.id))
    now = context.clock.now()
    try:
        async with context.database.unit_of_work() as session:
            await renewal.lock_for_renewal(
                session, subscription_ids=[item.payload["subscription"] for item in ordered]
            )
            scheduled: list[work.NewWork] = []
            for item in ordered:
                await renewal.renew(
                    session,
                    subscription_id=item.payload["subscription"],
                    period_index=int(item.payload["period"]),
                    now=now,
                    pending_work=scheduled,
                )
            # The batch's invoices, lines, subscriptions' updates and events: one
            # statement on PostgreSQL (ADR 0030), one per table through the ORM on SQLite.
            await flush_together(session)
            await work.enqueue_many(session, scheduled, now=now)
        return {}
    except Exception:
        log.exception("a batch of %d renewals failed; renewing one by one", len(ordered))
    outcomes: dict[str, BaseException | None] = {}
    for item in ordered:
        try:
            async with context.database.unit_of_work() as session:
                await renewal.renew(
                    session,
                    subscription_id=item.payload["subscription"],
                    period_index=int(item.payload["period"]),
                    now=now,
                )
        except Exception as error:
            outcomes[item.id] = error
    return outcomes


async def charge_invoice(
    context: work.Context[BillingResources], items: Sequence[work.Claimed]
) -> dict[str, BaseException | None]:
    """A claimed batch of invoice charges (``consolidation.charge_invoices``): their
    gateway calls side by side on PostgreSQL, one at a time on SQLite (one writer: the
    sandbox records each charge in a transaction of its own)."""
    return await consolidation.charge_invoices(
        context.database,
        context.resources.gateway,
        requests=[
            consolidation.ChargeRequest(
                key=item.id,
                invoice_id=item.payload["invoice"],
                attempt=int(item.payload["attempt"]),
            )
            for item in items
        ],
        policy=policy_from(context.resources.settings),
        now=context.clock.now(),
        concurrency=1 if context.database.is_sqlite else CHARGE_CONCURRENCY,
    )


async def transfer_consolidated(
    context: work.Context[BillingResources], item: work.Claimed
) -> None:
    await consolidation.transfer_parts(
        context.database,
        context.resources.gateway,
        charge_id=item.payload["charge"],
        now=context.clock.now(),
    )


async def remind(context: work.Context[BillingResources], item: work.Claimed) -> None:
    async with context.database.unit_of_work() as session:
        await reminders.send_reminder(
            session,
            subscription_id=item.payload["subscription"],
            key=item.payload["key"],
            reminder=item.payload["reminder"],
            now=context.clock.now(),
        )


def kinds(
    *,
    test_clock_id: str | None = None,
    lease: timedelta = timedelta(minutes=5),
    parallel_batches: int = 1,
    batch_size: int = BATCH_SIZE,
) -> list[work.Kind[BillingResources]]:
    """Billing's kinds: real-time, or bound to one test clock (transfers to creators are
    real-time only: they move money now, whatever clock the charge was made on). With
    ``parallel_batches`` a worker runs that many batches of renewals and of charges at
    once, each claimed on its own (PostgreSQL: ``SKIP LOCKED`` keeps them apart)."""
    transfers: list[work.Kind[BillingResources]] = (
        [work.Kind(name=TRANSFER_KIND, handler=transfer_consolidated, lease=lease)]
        if test_clock_id is None
        else []
    )
    return [
        *transfers,
        work.Kind(
            name=kind_for(RENEW_KIND, test_clock_id=test_clock_id),
            batch_handler=renew,
            batch_size=batch_size,
            parallel_batches=parallel_batches,
            lease=lease,
        ),
        work.Kind(
            name=kind_for(CHARGE_KIND, test_clock_id=test_clock_id),
            batch_handler=charge_invoice,
            batch_size=batch_size,
            parallel_batches=parallel_batches,
            lease=lease,
        ),
        work.Kind(
            name=kind_for(REMIND_KIND, test_clock_id=test_clock_id), handler=remind, lease=lease
        ),
    ]
