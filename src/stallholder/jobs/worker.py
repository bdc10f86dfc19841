"""The worker: dispatches the outbox and runs due work (``kit.work``) with each domain's
handlers. It sleeps when nothing is due and wakes when work is enqueued (ADR 0008)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import psycopg
from sqlalchemy.engine import make_url

from stallholder.billing import consolidation, renewal
from stallholder.billing import tasks as billing
from stallholder.channels import sync as channel_sync
from stallholder.channels.registry import engine_from_settings
from stallholder.checkout.tasks import (
    OFFER_WAITLIST,
    complete_authenticated_payment,
    expire_sessions_kind,
    settle_checkout_attempt,
)
from stallholder.digital.config import links_from_settings
from stallholder.events.inbox import PRUNE_INBOX
from stallholder.events.tasks import DISPATCH_BATCH, Consumer, dispatch_events, webhook_kind
from stallholder.events.webhooks import queue_deliveries
from stallholder.inventory import tasks as inventory_tasks
from stallholder.kit import work
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database, async_url
from stallholder.kit.idempotency import PRUNE_KEYS
from stallholder.kit.outbound import GuardedTransport, Resolver, ShardedTransport, resolve
from stallholder.kit.rate_limits import PRUNE_RATE_LIMITS
from stallholder.notifications.tasks import SEND_EMAIL, check_sender, queue_emails
from stallholder.notifications.transport import Transport, transport_for
from stallholder.orders import service as orders
from stallholder.orders.tasks import INBOX_KINDS, resolve_stale_refunds
from stallholder.payments import service as payments
from stallholder.payments.gateway import Gateway, SandboxGateway
from stallholder.payments.tasks import Completer, resolve_stale_attempts
from stallholder.settings import Settings
from stallholder.wallets.tasks import AUTO_TOP_UP, settle_top_up_attempt

log = logging.getLogger("stallholder.worker")


def consumers_for(settings: Settings) -> list[Consumer]:
    """Who hears about each event when the outbox is dispatched (webhooks, email, …).
    Receipts carry download links signed as the settings say."""
    return [
        functools.partial(queue_emails, links=links_from_settings(settings)),
        queue_deliveries,
    ]


# After an error the loop itself could not handle (the database is down), wait this long.
ERROR_PAUSE_SECONDS = 5.0
# After a wake-up, wait this long before the pass, so a burst of commits (every sale
# writes events) is handled by one pass rather than one pass each.
COALESCE_SECONDS = 0.05
# Half-done charges or refunds resolved per look at the gateway, and looks per run.
SETTLE_BATCH = 20
SETTLE_LOOKS = 50


@dataclass(frozen=True, slots=True)
class Resources:
    """What handlers may use (each names what it needs with a Protocol)."""

    settings: Settings
    gateway: Gateway
    mail: Transport
    http: httpx.AsyncClient


def _settlement_kinds(settings: Settings) -> list[work.Kind[Resources]]:
    """The sweeps that finish charges and refunds left half done (ADR 0007, ADR 0029):
    every ``settlement_sweep_seconds`` each looks for attempts or refunds still pending
    past their ``resolve_after``, asks the gateway again with the same idempotency key and
    records the outcome. Nothing is enqueued per charge: a sale that settles in its
    request (nearly all of them) leaves the worker nothing to do."""
    completers: dict[str, Completer] = {
        "checkout_session": functools.partial(settle_checkout_attempt, base_url=settings.base_url),
        renewal.PURPOSE: functools.partial(
            renewal.complete_invoice_attempt, policy=billing.policy_from(settings)
        ),
        "wallet_top_up": settle_top_up_attempt,
        consolidation.PURPOSE: functools.partial(
            consolidation.complete_attempt, policy=billing.policy_from(settings)
        ),
    }

    # Each look resolves up to SETTLE_BATCH of whatever is due; a run looks again while a
    # look finds a full batch, up to SETTLE_LOOKS looks (the rest waits for the next run).
    async def settle_attempts(
        context: work.Context[Resources], items: Sequence[work.Claimed]
    ) -> dict[str, BaseException | None]:
        for _ in range(SETTLE_LOOKS):
            due = await resolve_stale_attempts(
                context.database,
                context.clock,
                gateway=context.resources.gateway,
                completers=completers,
                batch=SETTLE_BATCH,
            )
            if due < SETTLE_BATCH:
                break
        return {}

    async def settle_refunds(
        context: work.Context[Resources], items: Sequence[work.Claimed]
    ) -> dict[str, BaseException | None]:
        for _ in range(SETTLE_LOOKS):
            due = await resolve_stale_refunds(
                context.database,
                context.clock,
                gateway=context.resources.gateway,
                batch=SETTLE_BATCH,
            )
            if due < SETTLE_BATCH:
                break
        return {}

    every = timedelta(seconds=settings.settlement_sweep_seconds)
    return [
        work.Kind(name=payments.SETTLE_KIND, batch_handler=settle_attempts, every=every),
        work.Kind(name=orders.SETTLE_KIND, batch_handler=settle_refunds, every=every),
    ]


def kinds_for(
    settings: Settings, gateway: Gateway, *, on_sqlite: bool
) -> list[work.Kind[Resources]]:
    """Every kind this worker runs. The inbox kind of a provider is registered only with
    that provider's gateway (by name), so a worker without it leaves those events to one
    that has it. ``on_sqlite``: the worker's database is SQLite (one writer: renewals in
    one batch at a time), not PostgreSQL (several batches side by side)."""
    kinds: list[work.Kind[Resources]] = [
        SEND_EMAIL,
        webhook_kind(settings),
        expire_sessions_kind(settings),
        OFFER_WAITLIST,
        PRUNE_KEYS,
        PRUNE_RATE_LIMITS,
        PRUNE_INBOX,
        AUTO_TOP_UP,
        *_settlement_kinds(settings),
        *(
            billing.kinds(lease=timedelta(seconds=settings.billing_work_lease_seconds))
            if on_sqlite
            else billing.kinds(
                lease=timedelta(seconds=settings.billing_work_lease_seconds),
                parallel_batches=billing.POSTGRES_PARALLEL_BATCHES,
                batch_size=billing.POSTGRES_BATCH_SIZE,
            )
        ),
        *inventory_tasks.kinds(),
        *channel_sync.kinds(engine_from_settings(settings), settings=settings),
    ]
    inbox_kind = INBOX_KINDS.get(gateway.name)
    if inbox_kind is not None:
        kinds.append(
            inbox_kind(
                {
                    "payment_intent.succeeded": complete_authenticated_payment,
                    "payment_intent.payment_failed": complete_authenticated_payment,
                }
            )
        )
    return kinds


class Worker:
    def __init__(
        self,
        database: Database,
        clock: Clock,
        *,
        settings: Settings | None = None,
        gateway: Gateway | None = None,
        kinds: Iterable[work.Kind[Resources]] | None = None,
        mail: Transport | None = None,
        draw: Callable[[], float] = random.random,
        resolve: Resolver = resolve,
    ) -> None:
        """``settings`` default to the environment's, as ``create_app``'s do. ``gateway``
        is the payment gateway handlers call (and whose inbound events this worker
        handles). ``kinds`` replaces the registered kinds and ``mail`` the transport the
        settings choose (tests); ``draw`` is the uniform random source of the jitter;
        ``resolve`` is the DNS lookup of outbound requests (tests).

        Raises:
            ValueError: the settings are unusable (an invalid SMTP URL or sender), or a
                kind is given twice.
        """
        self.database = database
        self.clock = clock
        self.settings = Settings() if settings is None else settings
        self.gateway = gateway if gateway is not None else SandboxGateway()
        check_sender(self.settings.mail_from)
        self.mail = mail or transport_for(
            smtp_url=self.settings.smtp_url,
            data_dir=self.settings.data_dir,
            timeout=self.settings.smtp_timeout_seconds,
        )
        self.registry: work.Registry[Resources] = work.Registry(
            kinds_for(self.settings, self.gateway, on_sqlite=database.is_sqlite)
            if kinds is None
            else kinds
        )
        # Running every registered kind, this worker is the one to wake for this
        # process's commits (``work.EveryKindHere``).
        self._every_kind = kinds is None
        self.draw = draw
        self.resolve = resolve
        self.consumers = consumers_for(self.settings)
        self._http: httpx.AsyncClient | None = None
        self._stopping = asyncio.Event()
        self._wakeup: work.Wakeup | None = None
        # When the next work comes due, as the last pass found it idle (None: not known).
        self._next_due: tuple[datetime | None] | None = None
        # While ``run`` runs: the kinds with lanes of their own run there, not in passes.
        self._lanes_running = False
        self._lane_wakeups: list[work.Wakeup] = []
        self._has_periodic = False
        # Set once this worker LISTENs for other processes' NOTIFY (PostgreSQL).
        self.listening = asyncio.Event()

    def _client(self) -> httpx.AsyncClient:
        """One pooled client for every outbound call of this worker, with at most
        ``webhook_concurrency`` requests in flight. Every request goes to an address of
        its host that was resolved and checked for it (``GuardedTransport``): a channel
        store whose DNS answer changes after it was connected cannot lead the worker to
        a private address. Webhook deliveries arrive pinned already and are only checked."""
        return httpx.AsyncClient(
            transport=GuardedTransport(
                ShardedTransport(slots=self.settings.webhook_concurrency),
                allow_private=self.settings.allow_private_webhook_targets,
                resolve=self.resolve,
            )
        )

    async def run_once(self) -> int:
        """One pass: dispatch the outbox, then a claimed batch (or ``parallel_batches``)
        of every kind that has due work, the kinds side by side; with a backlog in the
        outbox, the next events are fanned out meanwhile. Returns how much was done (0:
        nothing was due): events dispatched and work items run, a sweep's run included
        (it may have enqueued work, due at once, that the next pass does). The first
        pass first makes sure each periodic kind is scheduled (the sweeps: expiring
        sessions, settling charges, pruning)."""
        if not self._has_periodic:
            async with self.database.unit_of_work() as session:
                if not self._lanes_running:  # this pass runs them; lanes need a wake-up
                    work.without_wake(session)
                await work.ensure_periodic(session, self.registry, now=self.clock.now())
            self._has_periodic = True
        if self._http is not None:
            return await self._pass(self._http)
        async with self._client() as http:
            return await self._pass(http)

    async def _dispatch(self) -> int:
        try:
            async with self.database.unit_of_work() as session:
                work.without_wake(session)
                return await dispatch_events(session, self.clock.now(), consumers=self.consumers)
        except Exception:
            log.exception("dispatching the outbox failed")
            return 0

    def _shared(self) -> list[work.Kind[Resources]]:
        """The kinds the shared pass runs: all of them, but those in lanes of their own
        while ``run`` runs the lanes (``run_once`` alone runs every kind)."""
        return [kind for kind in self.registry if not (kind.lane and self._lanes_running)]

    async def _look(self) -> tuple[int, set[str]]:
        """Dispatch the outbox and see which kinds have work due, in one transaction (the
        work the dispatch enqueued is due in this same pass, so it wakes no one). When
        there is nothing to do, also note when the next work comes due, for the sleep."""
        names = [kind.name for kind in self._shared()]
        try:
            async with self.database.unit_of_work() as session:
                work.without_wake(session)
                now = self.clock.now()
                dispatched = await dispatch_events(session, now, consumers=self.consumers)
                due = await work.due_kinds(session, kinds=names, now=now)
                if not dispatched and not due:
                    self._next_due = (await work.next_due(session, kinds=names),)
                return dispatched, due
        except Exception:
            log.exception("dispatching the outbox failed")
        async with self.database.unit_of_work() as session:
            return 0, await work.due_kinds(session, kinds=names, now=self.clock.now())

    async def _pass(self, http: httpx.AsyncClient) -> int:
        self._next_due = None
        dispatched, due = await self._look()
        context = self._context(http)
        runs = [
            self._run_kind(kind, context)
            for kind in self._shared()
            if kind.name in due
            for _ in range(kind.parallel_batches)
        ]
        if dispatched >= DISPATCH_BATCH:  # a backlog: fan out more while this work runs
            runs.append(self._dispatch())
        return dispatched + sum(await asyncio.gather(*runs))

    def _context(self, http: httpx.AsyncClient) -> work.Context[Resources]:
        return work.Context(
            database=self.database,
            clock=self.clock,
            resources=Resources(
                settings=self.settings, gateway=self.gateway, mail=self.mail, http=http
            ),
            jitter=self.settings.worker_retry_jitter,
            draw=self.draw,
        )

    async def _lane(self, kind: work.Kind[Resources], http: httpx.AsyncClient) -> None:
        """Run one kind in a loop of its own (``Kind.lane``): claim and run a batch while
        any is due, else sleep until its next item is due, work of its kind is enqueued,
        or the poll interval passes."""
        cap = min(self.settings.worker_poll_seconds, work.WAKE_HORIZON.total_seconds())
        with work.Wakeup(kinds=[kind.name]) as wakeup:
            self._lane_wakeups.append(wakeup)
            while not self._stopping.is_set():
                try:
                    if await self._run_kind(kind, self._context(http)):
                        continue
                    async with self.database.unit_of_work() as session:
                        due = await work.next_due(session, kinds=[kind.name])
                    sleep = (
                        cap
                        if due is None
                        else min(cap, max(0.0, (due - self.clock.now()).total_seconds()))
                    )
                except Exception:
                    log.exception("the lane of %s failed", kind.name)
                    sleep = ERROR_PAUSE_SECONDS
                await wakeup.wait(max(COALESCE_SECONDS, sleep))

    async def _run_kind(self, kind: work.Kind[Resources], context: work.Context[Resources]) -> int:
        async with self.database.unit_of_work() as session:
            items = await work.claim(session, kind=kind, now=self.clock.now())
        if not items:
            return 0
        try:
            outcomes = await kind.run(context, items)
        except Exception as error:  # a batch handler that failed as a whole
            log.exception("work of kind %s failed", kind.name)
            outcomes = {item.id: error for item in items}
        for item in items:
            failure = outcomes.get(item.id)
            if failure is not None and not isinstance(failure, work.Retry):
                log.warning("work %s (%s) failed: %r", item.id, kind.name, failure)
        async with self.database.unit_of_work() as session:
            await work.settle(
                session,
                kind=kind,
                outcomes=outcomes,
                items=items,
                now=self.clock.now(),
                jitter=self.settings.worker_retry_jitter,
                draw=self.draw,
            )
        return len(items)

    async def _seconds_until_due(self) -> float:
        if self._next_due is not None:  # the idle pass just now read it
            (due,) = self._next_due
        else:
            async with self.database.unit_of_work() as session:
                due = await work.next_due(session, kinds=[kind.name for kind in self._shared()])
        # Never past the horizon: work due later than that was enqueued without a wake-up.
        cap = min(self.settings.worker_poll_seconds, work.WAKE_HORIZON.total_seconds())
        if due is None:
            return cap
        return min(cap, max(0.0, (due - self.clock.now()).total_seconds()))

    async def run(self) -> None:
        """Run until ``stop``: work while anything is due; otherwise sleep until the next
        item comes due, work is enqueued (in this process, or NOTIFY on PostgreSQL), or
        ``worker_poll_seconds`` (at most ``work.WAKE_HORIZON``) pass."""
        log.info("worker started with %s", ", ".join(self.registry.names))
        every_kind = work.EveryKindHere() if self._every_kind else contextlib.nullcontext()
        with every_kind, work.Wakeup() as wakeup:
            self._wakeup = wakeup
            listener = (
                None
                if self.database.is_sqlite
                else asyncio.create_task(self._listen(wakeup), name="work-listener")
            )
            try:
                async with self._client() as http:
                    self._http = http
                    self._lanes_running = True
                    lanes = [
                        asyncio.create_task(self._lane(kind, http), name=f"lane-{kind.name}")
                        for kind in self.registry
                        if kind.lane
                    ]
                    try:
                        await self._loop(wakeup)
                    finally:
                        for lane in self._lane_wakeups:
                            lane.ring()
                        await asyncio.gather(*lanes, return_exceptions=True)
                        self._lanes_running = False
            finally:
                self._http = None
                if listener is not None:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
        log.info("worker stopped")

    async def _loop(self, wakeup: work.Wakeup) -> None:
        while not self._stopping.is_set():
            try:
                if await self.run_once():
                    continue
                # Nothing was done: never spin, even if something is due but was just
                # claimed by another worker.
                sleep = max(COALESCE_SECONDS, await self._seconds_until_due())
            except Exception:
                log.exception("worker pass failed")
                sleep = ERROR_PAUSE_SECONDS
            if await wakeup.wait(sleep):
                await asyncio.sleep(COALESCE_SECONDS)

    async def _listen(self, wakeup: work.Wakeup) -> None:
        """LISTEN for NOTIFY from other processes' commits; reconnect after errors."""
        url = make_url(async_url(self.database.url)).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                try:
                    await connection.execute(f"LISTEN {work.NOTIFY_CHANNEL}")
                    self.listening.set()
                    wakeup.ring()  # anything enqueued before we listened
                    async with contextlib.aclosing(connection.notifies()) as notifications:
                        async for notification in notifications:
                            self._ring(wakeup, work.read_notification(notification.payload))
                finally:
                    await connection.close()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("listening for work notifications failed; reconnecting")
                await asyncio.sleep(ERROR_PAUSE_SECONDS)

    def _ring(self, wakeup: work.Wakeup, notification: work.Notification) -> None:
        """Wake for another process's commit: the main loop (it dispatches the outbox
        and runs the kinds without lanes), and the lanes of the kinds it names. A
        notification from this process is ignored: its commit rang here already."""
        if notification.from_this_process:
            return
        kinds = notification.kinds
        lanes = {kind.name for kind in self.registry if kind.lane}
        if kinds is None or not kinds or kinds - lanes:  # the outbox, or work of no lane
            wakeup.ring()
        for lane in self._lane_wakeups:
            if kinds is None or lane.kinds is None or lane.kinds & kinds:
                lane.ring()

    def stop(self) -> None:
        self._stopping.set()
        if self._wakeup is not None:
            self._wakeup.ring()
        for lane in self._lane_wakeups:
            lane.ring()
