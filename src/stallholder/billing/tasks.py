"""Due work of billing: renewals, invoice charges (first attempts and dunning retries)
and reminders, each idempotent (ADR 0010).

``kinds()`` are the real-time kinds the worker registers; ``kinds(test_clock_id=…)``
the same handlers under a clock's own kind names, which only advancing that clock runs.
"""

from __future__ import annotations

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
from stallholder.ledger.service import platform_fee_policy
from stallholder.payments.gateway import Gateway
from stallholder.settings import Settings


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
        update_payment_url=settings.billing_update_payment_url,
    )


async def renew(context: work.Context[BillingResources], item: work.Claimed) -> None:
    async with context.database.unit_of_work() as session:
        await renewal.renew(
            session,
            subscription_id=item.payload["subscription"],
            period_index=int(item.payload["period"]),
            now=context.clock.now(),
        )


async def charge_invoice(context: work.Context[BillingResources], item: work.Claimed) -> None:
    await consolidation.charge_invoice(
        context.database,
        context.resources.gateway,
        invoice_id=item.payload["invoice"],
        attempt=int(item.payload["attempt"]),
        policy=policy_from(context.resources.settings),
        now=context.clock.now(),
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
    *, test_clock_id: str | None = None, lease: timedelta = timedelta(minutes=5)
) -> list[work.Kind[BillingResources]]:
    """Billing's kinds: real-time, or bound to one test clock (transfers to creators are
    real-time only: they move money now, whatever clock the charge was made on)."""
    transfers: list[work.Kind[BillingResources]] = (
        [work.Kind(name=TRANSFER_KIND, handler=transfer_consolidated, lease=lease)]
        if test_clock_id is None
        else []
    )
    return [
        *transfers,
        work.Kind(
            name=kind_for(RENEW_KIND, test_clock_id=test_clock_id), handler=renew, lease=lease
        ),
        work.Kind(
            name=kind_for(CHARGE_KIND, test_clock_id=test_clock_id),
            handler=charge_invoice,
            concurrency=8,
            lease=lease,
        ),
        work.Kind(
            name=kind_for(REMIND_KIND, test_clock_id=test_clock_id), handler=remind, lease=lease
        ),
    ]
