"""The worker loop: periodic sweeps and due jobs, each in its own unit of work."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout.tasks import (
    complete_authenticated_payment,
    expire_sessions,
    settle_checkout_attempt,
)
from stallholder.events.tasks import (
    Consumer,
    WebhookSettings,
    deliver_webhooks,
    dispatch_events,
)
from stallholder.events.webhooks import DisablePolicy, queue_deliveries_for_event
from stallholder.jobs import queue
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.idempotency import prune_expired_keys
from stallholder.notifications.tasks import email_runner, queue_emails_for_event
from stallholder.notifications.transport import transport_for
from stallholder.orders.tasks import process_stripe_events, resolve_stale_refunds
from stallholder.payments.gateway import Gateway
from stallholder.payments.stripe_gateway import StripeGateway
from stallholder.payments.tasks import resolve_stale_attempts
from stallholder.settings import Settings

log = logging.getLogger("stallholder.worker")

Sweep = Callable[[AsyncSession, datetime], Awaitable[int]]
# Work with outside effects (HTTP, SMTP): a runner claims rows in one short transaction,
# does the outside call with no transaction open, and records the outcome in another.
Runner = Callable[[Database, Clock], Awaitable[int]]
Handler = Callable[[AsyncSession, dict[str, Any], datetime], Awaitable[None]]

# Who hears about each event when the outbox is dispatched (webhooks, email, …).
CONSUMERS: list[Consumer] = [queue_emails_for_event, queue_deliveries_for_event]


async def _dispatch(session: AsyncSession, now: datetime) -> int:
    return await dispatch_events(session, now, consumers=CONSUMERS)


SWEEPS: dict[str, Sweep] = {
    "checkout.expire_sessions": expire_sessions,
    "events.dispatch": _dispatch,
    "kit.prune_idempotency_keys": prune_expired_keys,
}
RUNNERS: dict[str, Runner] = {}


def _email_runner(settings: Settings) -> Runner:
    transport = transport_for(
        smtp_url=settings.smtp_url,
        data_dir=settings.data_dir,
        timeout=settings.smtp_timeout_seconds,
    )
    return email_runner(transport=transport, sender=settings.mail_from)


def _webhook_runner(settings: Settings) -> Runner:
    return functools.partial(
        deliver_webhooks,
        settings=WebhookSettings(
            allow_private=settings.allow_private_webhook_targets,
            timeout_seconds=settings.webhook_timeout_seconds,
            lease=timedelta(seconds=settings.webhook_lease_seconds),
            policy=DisablePolicy(
                after_failures=settings.webhook_disable_after_failures,
                after=timedelta(seconds=settings.webhook_disable_after_seconds),
            ),
        ),
    )


# Runners that need configuration (an SMTP server, …), built from each worker's settings.
CONFIGURED_RUNNERS: dict[str, Callable[[Settings], Runner]] = {
    "notifications.send_emails": _email_runner,
    "events.deliver_webhooks": _webhook_runner,
}


def _gateway_runners(gateway: Gateway | None, settings: Settings) -> dict[str, Runner]:
    """Runners that call the payment gateway: Stripe's events are handled with the live
    gateway, which re-reads each event's object; then charges and refunds a crash left
    half done are resolved by asking the gateway again with the same idempotency key."""
    if gateway is None:
        return {}
    runners: dict[str, Runner] = {}
    if isinstance(gateway, StripeGateway):
        handlers = {
            "payment_intent.succeeded": complete_authenticated_payment,
            "payment_intent.payment_failed": complete_authenticated_payment,
        }
        runners["orders.stripe_events"] = functools.partial(
            process_stripe_events, gateway=gateway, handlers=handlers
        )
    runners["payments.resolve_stale_attempts"] = functools.partial(
        resolve_stale_attempts,
        gateway=gateway,
        completers={
            "checkout_session": functools.partial(
                settle_checkout_attempt, base_url=settings.base_url
            )
        },
    )
    runners["orders.resolve_stale_refunds"] = functools.partial(
        resolve_stale_refunds, gateway=gateway
    )
    return runners


HANDLERS: dict[str, Handler] = {}


class Worker:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        *,
        batch_size: int = 20,
        handlers: dict[str, Handler] | None = None,
        settings: Settings | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        """``settings`` default to the environment's, as ``create_app``'s do. ``gateway``
        is the payment gateway whose inbound events this worker handles (Stripe's); a worker
        without one leaves them to a worker that has it.

        Raises:
            ValueError: the settings are unusable (an invalid SMTP URL or sender).
        """
        self.database = database
        self.clock = clock
        self.batch_size = batch_size
        self.handlers = HANDLERS if handlers is None else handlers
        settings = Settings() if settings is None else settings
        self.runners: dict[str, Runner] = {
            **RUNNERS,
            **{name: build(settings) for name, build in CONFIGURED_RUNNERS.items()},
            **_gateway_runners(gateway, settings),
        }
        self._stopping = asyncio.Event()

    async def run_once(self) -> int:
        """One pass: every sweep, then the due jobs. Returns how much work was done."""
        done = 0
        for name, sweep in SWEEPS.items():
            try:
                async with self.database.unit_of_work() as session:
                    done += await sweep(session, self.clock.now())
            except Exception:
                log.exception("sweep %s failed", name)
        for name, runner in self.runners.items():
            try:
                done += await runner(self.database, self.clock)
            except Exception:
                log.exception("runner %s failed", name)
        async with self.database.unit_of_work() as session:
            jobs = await queue.claim(session, now=self.clock.now(), limit=self.batch_size)
        for job in jobs:
            done += 1
            handler = self.handlers.get(job.kind)
            try:
                if handler is None:
                    raise LookupError(f"no handler for job kind {job.kind!r}")
                async with self.database.unit_of_work() as session:
                    await handler(session, job.payload, self.clock.now())
                    await queue.mark_done(session, job_id=job.id, now=self.clock.now())
            except Exception as error:
                log.exception("job %s (%s) failed", job.id, job.kind)
                async with self.database.unit_of_work() as session:
                    await queue.mark_failed(
                        session, job=job, error=repr(error), now=self.clock.now()
                    )
        return done

    async def run(self, *, poll_seconds: float) -> None:
        log.info("worker started")
        while not self._stopping.is_set():
            did = await self.run_once()
            if not did:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=poll_seconds)
        log.info("worker stopped")

    def stop(self) -> None:
        self._stopping.set()
