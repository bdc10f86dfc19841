"""The sync engine (ADR 0026): a sweep finds stock that changed and queues one push per
listing; pushes write each channel in batches with its own concurrency control; pulls
and webhooks bring the channels' orders into the ledger; reconciliation reads every
channel and repairs drift. Every handler calls out with no transaction open.

Work kinds (``kit.work``):

- ``channels.sweep`` (periodic, every ``channel_sweep_seconds``): reads the levels
  changed since the last sweep (with ``OVERLAP`` to spare for transactions that commit
  late), and for every active, matched listing whose channel shows something other than
  ``shown(available)`` enqueues ``channels.push`` with the listing (on Etsy, the Etsy
  listing: ``_push_work``) as its dedupe key: a change before the push runs adds nothing,
  and the push reads ``available`` when it runs, so the latest value wins. It also
  queues the polls and reconciliations that are due.
- ``channels.push``: a claimed batch is split by channel; the channels are written side
  by side, so one that is slow or rate limited holds up only its own items.
- ``channels.pull``: new orders of one channel, every ``channel_poll_seconds`` (Etsy
  sends no order webhooks; WooCommerce sends ``order.created`` before payment; any
  webhook can be lost) and at once after a write refused as stale.
- ``channels.reconcile``: one channel's orders and quantities read and compared.
- ``inbox.channel``: a verified webhook delivery (an order, or a quantity the channel
  reports), handled once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import httpx
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.channels import service
from stallholder.channels.buffers import Rules, shown
from stallholder.channels.connectors import (
    KINDS,
    ChannelOrder,
    ChannelRefused,
    Connector,
    InventoryChanged,
    ListingRef,
    OrderLine,
    OrdersPage,
    RateLimited,
    StockUpdate,
    Tokens,
    Unauthorized,
    WebhookDelivery,
)
from stallholder.channels.credentials import Vault
from stallholder.channels.models import Channel, ChannelListing, SweepMark, SyncLogEntry
from stallholder.events import inbox
from stallholder.inventory.models import StockLevel
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.work import (
    Backoff,
    Claimed,
    Context,
    GiveUp,
    Kind,
    NewWork,
    Retry,
    enqueue_many,
)
from stallholder.settings import Settings

log = logging.getLogger("stallholder.channels")

SWEEP_KIND = "channels.sweep"
PUSH_KIND = "channels.push"  # one kind per channel kind: channels.push.shopify, …
PULL_KIND = "channels.pull"
RECONCILE_KIND = "channels.reconcile"
INBOX_SOURCE = "channel"
# How far back each sweep looks again: a transaction that changed stock at time t but
# committed after the previous sweep ran is found by the next one.
OVERLAP = timedelta(seconds=30)
# A stale write (refused by compare-and-set) is tried again after the channel's orders
# were pulled.
STALE_RETRY = timedelta(seconds=1)
# A token that expires within this is refreshed before it is used.
REFRESH_AHEAD = timedelta(minutes=5)
# How long a refresh may take before another handler may claim it; and how long a handler
# waits for another's refresh. The claim is kept in the channel's rate state.
REFRESH_WAIT = timedelta(seconds=30)
REFRESHING = "refreshing_until"
# Pages of orders one pull reads at most (the rest on the next pull).
PULL_PAGES = 10
_CHUNK = 500

T = TypeVar("T")


class ChannelResources(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def http(self) -> httpx.AsyncClient: ...


class ConnectorFactory(Protocol):
    """Builds a channel's connector (``channels.registry.connector_for``)."""

    def __call__(
        self,
        kind: str,
        credentials: Mapping[str, Any],
        rate_state: dict[str, Any],
        http: httpx.AsyncClient,
        settings: Settings,
        *,
        max_wait: float = ...,
    ) -> Connector: ...


# Refreshes a channel's OAuth tokens: (kind, credentials, http, settings).
Refresher = Callable[
    [str, Mapping[str, Any], httpx.AsyncClient, Settings], Awaitable[Tokens | None]
]


@dataclass(frozen=True, slots=True)
class Engine:
    """What the handlers need besides the worker's resources: how to build a connector
    and refresh tokens, and the key the credentials are sealed with."""

    connect: ConnectorFactory
    refresh: Refresher
    vault: Vault


@dataclass(slots=True)
class ChannelState:
    """A channel as a handler needs it, read in a short unit of work."""

    id: str
    creator_id: str
    kind: str
    name: str
    status: str
    rules: Rules
    credentials: dict[str, Any]
    rate_state: dict[str, Any] = field(default_factory=dict)
    orders_cursor: str | None = None


# The sweep ---------------------------------------------------------------------------


async def sweep(session: AsyncSession, *, settings: Settings, now: datetime) -> int:
    """Queue a push for every listing whose channel is behind; queue due polls and
    reconciliations. Returns the pushes queued."""
    mark = (
        await session.execute(select(SweepMark).where(SweepMark.id == 1).with_for_update())
    ).scalar_one_or_none()
    since = None if mark is None else mark.swept_to - OVERLAP
    if mark is None:
        session.add(SweepMark(id=1, swept_to=now))
    else:
        mark.swept_to = now
    channels = {
        channel.id: channel
        for channel in (
            await session.execute(select(Channel).where(Channel.status == service.ACTIVE))
        ).scalars()
    }
    if not channels:
        return 0
    creators = sorted({channel.creator_id for channel in channels.values()})
    changed = select(StockLevel.variant_id).where(StockLevel.creator_id.in_(creators))
    if since is not None:
        changed = changed.where(StockLevel.updated_at >= since)
    variant_ids = sorted(set((await session.execute(changed)).scalars()))
    work: list[NewWork] = []
    if variant_ids:
        stock_now = await service.stock_of(session, variant_ids)
        for start in range(0, len(variant_ids), _CHUNK):
            rows = await session.execute(
                select(
                    ChannelListing.id,
                    ChannelListing.channel_id,
                    ChannelListing.external_id,
                    ChannelListing.variant_id,
                    ChannelListing.channel_quantity,
                    ChannelListing.pushed_quantity,
                ).where(
                    ChannelListing.channel_id.in_(list(channels)),
                    ChannelListing.status == service.MATCHED,
                    ChannelListing.variant_id.in_(variant_ids[start : start + _CHUNK]),
                )
            )
            for row in rows:
                found = stock_now.get(row.variant_id)
                if found is None:
                    continue
                channel = channels[row.channel_id]
                target = shown(found.available, service.rules_of(channel))
                if row.channel_quantity != target or row.pushed_quantity is None:
                    work.append(_push_work(channel, row.id, row.external_id, now))
    for channel in channels.values():
        if channel.next_poll_at is not None and channel.next_poll_at <= now:
            work.append(_channel_work(PULL_KIND, channel, now))
            channel.next_poll_at = now + timedelta(seconds=settings.channel_poll_seconds)
        if channel.next_reconcile_at is not None and channel.next_reconcile_at <= now:
            work.append(_channel_work(RECONCILE_KIND, channel, now))
            channel.next_reconcile_at = now + timedelta(seconds=settings.channel_reconcile_seconds)
    work = _one_per_key(work)
    await enqueue_many(session, work, now=now)
    return sum(1 for item in work if item.kind.startswith(PUSH_KIND))


def push_kind_name(channel_kind: str) -> str:
    """Pushes of each kind of channel have a kind (and a lane) of their own, so Etsy's
    pace (ten requests a second) never holds up a Shopify push."""
    return f"{PUSH_KIND}.{channel_kind}"


def etsy_listing_of(external_id: str) -> str:
    """The Etsy listing a product belongs to (its external id is ``"<listing id>:…"``)."""
    return external_id.partition(":")[0]


def _push_work(channel: Channel, listing_id: int, external_id: str, now: datetime) -> NewWork:
    """One push, coalesced by its dedupe key (unique among live work items): per listing
    row, or on Etsy per Etsy listing. An Etsy write is a read-modify-write of the whole
    listing with no compare-and-set, so two pushes of products of one listing running at
    once (two workers) could each write back the other's product as it was read: one
    live item per Etsy listing, covering all its products (``push_channel``), means they
    never run at once."""
    payload: dict[str, Any] = {"channel_id": channel.id, "listing_id": listing_id}
    dedupe_key = f"{PUSH_KIND}:{listing_id}"
    if channel.kind == "etsy":
        payload["etsy_listing_id"] = etsy_listing_of(external_id)
        dedupe_key = f"{PUSH_KIND}:{channel.id}:etsy:{payload['etsy_listing_id']}"
    return NewWork(
        kind=push_kind_name(channel.kind),
        payload=payload,
        due_at=now,
        dedupe_key=dedupe_key,
        creator_id=channel.creator_id,
    )


def _one_per_key(work: list[NewWork]) -> list[NewWork]:
    """The first item of each dedupe key (several products of one Etsy listing)."""
    seen: set[str] = set()
    kept = []
    for item in work:
        if item.dedupe_key is not None:
            if item.dedupe_key in seen:
                continue
            seen.add(item.dedupe_key)
        kept.append(item)
    return kept


def _channel_work(kind: str, channel: Channel, now: datetime, *, reason: str = "") -> NewWork:
    return NewWork(
        kind=kind,
        payload={"channel_id": channel.id},
        due_at=now,
        dedupe_key=f"{kind}:{channel.id}{reason}",
        creator_id=channel.creator_id,
    )


async def queue_push(
    session: AsyncSession, *, channel: Channel, listing_ids: Sequence[int], now: datetime
) -> None:
    if not listing_ids:
        return
    rows = await session.execute(
        select(ChannelListing.id, ChannelListing.external_id).where(
            ChannelListing.id.in_(sorted(listing_ids))
        )
    )
    external_ids = {row.id: row.external_id for row in rows}
    work = [
        _push_work(channel, listing_id, external_ids[listing_id], now)
        for listing_id in listing_ids
        if listing_id in external_ids
    ]
    await enqueue_many(session, _one_per_key(work), now=now)


async def queue_for_channel(
    session: AsyncSession, *, kind: str, channel: Channel, now: datetime, reason: str = ""
) -> None:
    """Queue one channel's pull or reconciliation. Work of the same kind and ``reason``
    already waiting or running makes this a no-op; a ``reason`` of its own queues one
    more even while another runs (a pull already under way may have read the channel's
    orders before the sale a stale write revealed)."""
    await enqueue_many(session, [_channel_work(kind, channel, now, reason=reason)], now=now)


# Reading a channel and calling it ------------------------------------------------------


async def _state(database: Database, engine: Engine, channel_id: str) -> ChannelState | None:
    async with database.unit_of_work() as session:
        channel = await session.get(Channel, channel_id)
        if channel is None:
            return None
        return ChannelState(
            id=channel.id,
            creator_id=channel.creator_id,
            kind=channel.kind,
            name=channel.name,
            status=channel.status,
            rules=service.rules_of(channel),
            credentials=engine.vault.open(channel.credentials),
            rate_state=dict(channel.rate_state or {}),
            orders_cursor=channel.orders_cursor,
        )


def _expires_soon(credentials: Mapping[str, Any], now: datetime) -> bool:
    expires = credentials.get("expires_at")
    if not expires:
        return False
    return datetime.fromisoformat(str(expires)) - REFRESH_AHEAD <= now


async def fresh_credentials(
    context: Context[ChannelResources], engine: Engine, state: ChannelState
) -> None:
    """Refresh the channel's token when it expires soon, with no transaction open while
    the token endpoint is called.

    Refresh tokens rotate on use (Shopify, Etsy), so only one handler may refresh: it
    claims the refresh in a short unit of work (``refreshing_until`` in the channel's
    rate state, under its row lock), calls the token endpoint, and commits the new tokens
    before anyone uses them. Another handler that finds the refresh claimed waits for the
    new tokens (at most ``REFRESH_WAIT``), then reads them."""
    if not _expires_soon(state.credentials, context.clock.now()):
        return
    deadline = asyncio.get_running_loop().time() + REFRESH_WAIT.total_seconds()
    while True:
        async with context.database.unit_of_work() as session:
            channel = (
                await session.execute(
                    select(Channel).where(Channel.id == state.id).with_for_update()
                )
            ).scalar_one()
            credentials = engine.vault.open(channel.credentials)
            now = context.clock.now()
            if not _expires_soon(credentials, now):
                state.credentials = credentials  # refreshed by another handler
                return
            claimed = channel.rate_state.get(REFRESHING)
            mine = claimed is None or datetime.fromisoformat(str(claimed)) <= now
            if mine:
                channel.rate_state = {
                    **channel.rate_state,
                    REFRESHING: (now + REFRESH_WAIT).isoformat(),
                }
        if mine:
            break
        if asyncio.get_running_loop().time() > deadline:
            raise Retry("another worker is refreshing the channel's token", delay=REFRESH_WAIT)
        await asyncio.sleep(0.2)
    tokens: Tokens | None = None
    try:
        tokens = await engine.refresh(
            state.kind, credentials, context.resources.http, context.resources.settings
        )
    finally:
        async with context.database.unit_of_work() as session:
            channel = (
                await session.execute(
                    select(Channel).where(Channel.id == state.id).with_for_update()
                )
            ).scalar_one()
            channel.rate_state = {k: v for k, v in channel.rate_state.items() if k != REFRESHING}
            if tokens is not None:
                credentials["access_token"] = tokens.access_token
                if tokens.refresh_token:
                    credentials["refresh_token"] = tokens.refresh_token
                credentials["expires_at"] = (
                    tokens.expires_at.isoformat() if tokens.expires_at else None
                )
                channel.credentials = engine.vault.seal(credentials)
                channel.updated_at = context.clock.now()
    state.credentials = credentials


async def _call(
    context: Context[ChannelResources],
    engine: Engine,
    state: ChannelState,
    call: Callable[[Connector], Awaitable[T]],
) -> T | None:
    """Run ``call`` with the channel's connector and keep its limiter state. A refusal
    of our credentials pauses the channel and returns None; a spent rate limit raises
    ``Retry`` at the time the channel names; a refusal retrying cannot fix raises
    ``GiveUp``; a network error or 5xx (``ChannelUnavailable``) raises for the kind's
    backoff."""
    try:
        await fresh_credentials(context, engine, state)
        connector = engine.connect(
            state.kind,
            state.credentials,
            state.rate_state,
            context.resources.http,
            context.resources.settings,
        )
        try:
            return await call(connector)
        finally:
            state.rate_state = dict(connector.rate_state)
            await _save_rate_state(context.database, state)
    except Unauthorized as error:
        await _pause(context, state, reason=f"the channel refused our credentials ({error})")
        return None
    except ChannelRefused as error:
        # Retrying cannot fix it (a malformed request, a listing deleted meanwhile).
        raise GiveUp(f"{state.kind} refused the request: {error}") from error
    except RateLimited as error:
        raise Retry(
            f"{state.kind} rate limit: {error}",
            delay=timedelta(seconds=max(0.2, error.retry_after)),
        ) from error


async def _save_rate_state(database: Database, state: ChannelState) -> None:
    """Keep the connector's limiter state, merged into the stored one under the row lock:
    another handler of the same channel may have saved since this one read it (an
    object-valued entry, such as Etsy's listings it deactivated, is merged key by key)."""
    async with database.unit_of_work() as session:
        stored = (
            await session.execute(
                select(Channel.rate_state).where(Channel.id == state.id).with_for_update()
            )
        ).scalar_one_or_none()
        merged = dict(stored or {})
        for key, value in state.rate_state.items():
            if key == REFRESHING:
                continue  # the refresh claim is fresh_credentials' alone
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        await session.execute(
            update(Channel)
            .where(Channel.id == state.id)
            .values(rate_state=merged)
            .execution_options(synchronize_session=False)
        )


async def _pause(context: Context[ChannelResources], state: ChannelState, *, reason: str) -> None:
    async with context.database.unit_of_work() as session:
        await pause_channel(session, channel_id=state.id, reason=reason, now=context.clock.now())


async def pause_channel(
    session: AsyncSession, *, channel_id: str, reason: str, now: datetime
) -> bool:
    """Pause an active channel whose credentials no longer work (refused by a call, or the
    app uninstalled): ``channel.paused``, the creator emailed, a sync-log row. Under the
    channel's row lock: two handlers refused at once (a push and a pull) pause it once.
    Returns whether it was paused now."""
    channel = (
        await session.execute(
            select(Channel)
            .where(Channel.id == channel_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if channel is None or channel.status != service.ACTIVE:
        return False
    await service.pause(session, channel=channel, reason=reason, now=now)
    session.add(
        SyncLogEntry(
            channel_id=channel.id,
            creator_id=channel.creator_id,
            kind="push",
            outcome="paused",
            detail=reason[:500],
            created_at=now,
        )
    )
    log.warning("channel %s paused: %s", channel.id, reason)
    return True


# Pushes --------------------------------------------------------------------------------


def _write_key(listing: ChannelListing, quantity: int) -> str:
    """The idempotency key of a listing's next write: the same write (a retry after a
    lost reply) has the same key, any other write another."""
    raw = f"{listing.id}:{listing.writes + 1}:{listing.channel_quantity}:{quantity}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


async def push_channel(
    context: Context[ChannelResources],
    engine: Engine,
    channel_id: str,
    items: Sequence[Claimed],
) -> dict[str, BaseException | None]:
    """Write the quantities of one channel's claimed listings, in one call to the
    connector (which batches as its API allows). An item of an Etsy listing
    (``etsy_listing_id``) covers every matched product of that listing."""
    done: dict[str, BaseException | None] = {item.id: None for item in items}
    state = await _state(context.database, engine, channel_id)
    if state is None or state.status != service.ACTIVE:
        return done  # a paused channel is pushed in full when it is resumed
    # The item each listing row is written for.
    by_listing = {int(item.payload["listing_id"]): item for item in items}
    by_etsy_listing = {
        str(item.payload["etsy_listing_id"]): item
        for item in items
        if item.payload.get("etsy_listing_id") is not None
    }
    chosen = [ChannelListing.id.in_(sorted(by_listing))] + [
        ChannelListing.external_id.startswith(f"{etsy_listing}:", autoescape=True)
        for etsy_listing in sorted(by_etsy_listing)
    ]
    async with context.database.unit_of_work() as session:
        listings = list(
            (
                await session.execute(
                    select(ChannelListing)
                    .where(
                        ChannelListing.channel_id == channel_id,
                        ChannelListing.status == service.MATCHED,
                        or_(*chosen),
                    )
                    .order_by(ChannelListing.id)
                )
            ).scalars()
        )
        for listing in listings:
            if listing.id not in by_listing:
                by_listing[listing.id] = by_etsy_listing[etsy_listing_of(listing.external_id)]
        stock_now = await service.stock_of(
            session, [listing.variant_id for listing in listings if listing.variant_id]
        )
        now = context.clock.now()
        updates: list[tuple[ChannelListing, StockUpdate, datetime]] = []
        for listing in listings:
            found = stock_now.get(listing.variant_id or "")
            if found is None:
                continue
            target = shown(found.available, state.rules)
            if listing.channel_quantity == target:
                if listing.pushed_quantity != target:
                    listing.pushed_quantity, listing.updated_at = target, now
                continue
            update_ = StockUpdate(
                ref=_ref(listing),
                quantity=target,
                expected=listing.channel_quantity,
                key=_write_key(listing, target),
            )
            updates.append((listing, update_, found.changed_at))
        await session.flush()
        session.expunge_all()
    if not updates:
        return done
    results = await _call(context, engine, state, lambda c: c.push([u for _, u, _ in updates]))
    if results is None:
        return done
    now = context.clock.now()
    stale = False
    written = {listing.id for listing, _, _ in updates}
    async with context.database.unit_of_work() as session:
        # Stock that changed while the channel was being written: its sweep found this
        # listing's push still running (one live push per listing, or per Etsy listing),
        # so write it again. That holds for a product of the item's Etsy listing that was
        # in step when read and not written, too.
        stock_after = await service.stock_of(
            session, [listing.variant_id for listing in listings if listing.variant_id]
        )
        for listing in listings:
            found_after = stock_after.get(listing.variant_id or "")
            if (
                listing.id not in written
                and found_after is not None
                and shown(found_after.available, state.rules) != listing.channel_quantity
            ):
                done[by_listing[listing.id].id] = Retry(
                    "the stock changed while the channel was written", at=now, fresh=True
                )
        for (listing, sent, changed_at), result in zip(updates, results, strict=True):
            found_after = stock_after.get(listing.variant_id or "")
            if (
                result.outcome == "ok"
                and found_after is not None
                and shown(found_after.available, state.rules) != sent.quantity
            ):
                done[by_listing[listing.id].id] = Retry(
                    "the stock changed while the channel was written", at=now, fresh=True
                )
            values: dict[str, Any] = {"updated_at": now, "writes": ChannelListing.writes + 1}
            latency = None
            if result.outcome == "ok":
                values |= {
                    "channel_quantity": sent.quantity,
                    "pushed_quantity": sent.quantity,
                    "pushed_at": now,
                }
                latency = max(0, int((now - changed_at).total_seconds() * 1000))
            elif result.outcome == "stale":
                values["channel_quantity"] = result.channel_quantity
                done[by_listing[listing.id].id] = Retry(
                    f"the channel's quantity changed to {result.channel_quantity}",
                    delay=STALE_RETRY,
                )
                stale = True
            if result.outcome == "missing":
                await session.execute(delete(ChannelListing).where(ChannelListing.id == listing.id))
            else:
                await session.execute(
                    update(ChannelListing)
                    .where(ChannelListing.id == listing.id)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
            session.add(
                SyncLogEntry(
                    channel_id=state.id,
                    creator_id=state.creator_id,
                    sku=listing.sku,
                    external_id=listing.external_id,
                    kind="push",
                    pushed=sent.quantity,
                    channel_value=result.channel_quantity,
                    latency_ms=latency,
                    outcome=result.outcome,
                    detail=result.error[:500] if result.error else None,
                    created_at=now,
                )
            )
        if stale:
            # A sale on the channel we have not heard of: look for it before writing again.
            channel = await session.get(Channel, state.id)
            if channel is not None:
                await queue_for_channel(
                    session, kind=PULL_KIND, channel=channel, now=now, reason=":stale"
                )
    return done


def _ref(listing: ChannelListing) -> ListingRef:
    return ListingRef(external_id=listing.external_id, extra=dict(listing.extra or {}))


# Items one push batch takes, per kind of channel: about what the channel's rate limit
# lets through in a second or two, so a batch settles (and a change made meanwhile is
# pushed again) soon. Etsy: a read and a write per listing at 10 requests a second.
PUSH_BATCH = {"shopify": 250, "etsy": 10, "woocommerce": 200}


def push_kind(engine: Engine, channel_kind: str) -> Kind[ChannelResources]:
    async def push(
        context: Context[ChannelResources], items: Sequence[Claimed]
    ) -> dict[str, BaseException | None]:
        by_channel: dict[str, list[Claimed]] = defaultdict(list)
        for item in items:
            by_channel[str(item.payload["channel_id"])].append(item)

        async def one(channel_id: str, claimed: list[Claimed]) -> dict[str, BaseException | None]:
            try:
                return await push_channel(context, engine, channel_id, claimed)
            except Exception as error:  # this channel's items only
                return {item.id: error for item in claimed}

        outcomes: dict[str, BaseException | None] = {}
        for part in await asyncio.gather(*(one(c, i) for c, i in by_channel.items())):
            outcomes.update(part)
        return outcomes

    return Kind(
        name=push_kind_name(channel_kind),
        batch_handler=push,
        batch_size=PUSH_BATCH.get(channel_kind, 100),
        lane=True,
        retry=Backoff(base=timedelta(seconds=1), cap=timedelta(minutes=5)),
        # A listing whose stock keeps changing is retried at once after each write, its
        # attempts starting over (``Retry(fresh=True)``): a failure after a hundred
        # re-runs backs off a second, not the cap.
        max_attempts=1_000,
        lease=timedelta(minutes=2),
    )


# Orders in ------------------------------------------------------------------------------


async def pull_channel(context: Context[ChannelResources], engine: Engine, channel_id: str) -> int:
    """Import the channel's orders since its cursor (at most ``PULL_PAGES`` pages).
    Returns the orders read."""
    state = await _state(context.database, engine, channel_id)
    if state is None or state.status != service.ACTIVE:
        return 0
    read = 0
    for _ in range(PULL_PAGES):
        page = await _call(context, engine, state, _orders_since(state.orders_cursor))
        if page is None:
            return read
        read += len(page.orders)
        async with context.database.unit_of_work() as session:
            channel = (
                await session.execute(
                    select(Channel).where(Channel.id == state.id).with_for_update()
                )
            ).scalar_one()
            for order in page.orders:
                await import_channel_order(
                    session, channel=channel, order=order, now=context.clock.now()
                )
            if page.cursor is not None:
                channel.orders_cursor = state.orders_cursor = page.cursor
        if not page.more:
            break
    return read


async def import_channel_order(
    session: AsyncSession, *, channel: Channel, order: ChannelOrder, now: datetime
) -> None:
    """An order a pull or a webhook brings (new, or seen again cancelled: its units come
    back), through ``service.import_order``. An order placed before the channel was
    connected is skipped, its cancellation too: its units were counted already. (Whole
    seconds: channels give order times to the second.)"""
    if order.created_at < channel.created_at.replace(microsecond=0):
        return
    await service.import_order(session, channel=channel, order=order, now=now)


def _orders_since(cursor: str | None) -> Callable[[Connector], Awaitable[OrdersPage]]:
    async def call(connector: Connector) -> OrdersPage:
        return await connector.orders_since(cursor)

    return call


def channel_kind(
    name: str,
    run: Callable[[Context[ChannelResources], Engine, str], Awaitable[Any]],
    engine: Engine,
) -> Kind[ChannelResources]:
    async def handler(context: Context[ChannelResources], item: Claimed) -> None:
        await run(context, engine, str(item.payload["channel_id"]))

    return Kind(
        name=name,
        handler=handler,
        batch_size=20,
        concurrency=20,
        lane=True,
        retry=Backoff(base=timedelta(seconds=2), cap=timedelta(minutes=10)),
        max_attempts=30,
    )


async def handle_delivery(
    session: AsyncSession, *, channel: Channel, delivery: WebhookDelivery, now: datetime
) -> None:
    """A verified webhook from the channel: import its order (a cancelled one puts its
    units back), note the quantity the channel reports (and push ours back if it differs:
    our ledger is the truth), or pause the channel when the app was uninstalled (as a call
    refused with ``Unauthorized`` does)."""
    if delivery.uninstalled:
        await pause_channel(
            session,
            channel_id=channel.id,
            reason="the app was uninstalled from the shop (app/uninstalled)",
            now=now,
        )
        return
    if delivery.order is not None:
        await import_channel_order(session, channel=channel, order=delivery.order, now=now)
    changed = [c for c in delivery.inventory if c.quantity is not None]
    if not changed:
        return
    listings = list(
        (
            await session.execute(
                select(ChannelListing).where(
                    ChannelListing.channel_id == channel.id,
                    ChannelListing.external_id.in_([c.external_id for c in changed]),
                )
            )
        ).scalars()
    )
    reported = {c.external_id: c.quantity for c in changed}
    stock_now = await service.stock_of(
        session, [listing.variant_id for listing in listings if listing.variant_id]
    )
    # A reported quantity is only a reason to push: deliveries come late and out of order
    # (an echo of our own earlier write), so it never replaces what we know. The push
    # writes shown(available) whole (on Shopify against the count we know: a stale
    # refusal reads the channel's real count).
    behind = [
        listing.id
        for listing in listings
        if listing.status == service.MATCHED
        and (found := stock_now.get(listing.variant_id or "")) is not None
        and shown(found.available, service.rules_of(channel)) != reported[listing.external_id]
    ]
    if behind and channel.status == service.ACTIVE:
        await queue_push(session, channel=channel, listing_ids=behind, now=now)


def delivery_payload(channel_id: str, delivery: WebhookDelivery) -> dict[str, Any]:
    """A delivery as the inbox stores it (JSON)."""
    order = delivery.order
    return {
        "channel_id": channel_id,
        "topic": delivery.topic,
        "uninstalled": delivery.uninstalled,
        "order": None
        if order is None
        else {
            "external_id": order.external_id,
            "name": order.name,
            "created_at": order.created_at.isoformat(),
            "cancelled": order.cancelled,
            "lines": [
                {"sku": line.sku, "quantity": line.quantity, "external_id": line.external_id}
                for line in order.lines
            ],
        },
        "inventory": [
            {"external_id": c.external_id, "quantity": c.quantity} for c in delivery.inventory
        ],
    }


def delivery_from(payload: Mapping[str, Any], delivery_id: str) -> WebhookDelivery:
    order = payload.get("order")
    return WebhookDelivery(
        delivery_id=delivery_id,
        topic=str(payload.get("topic")),
        uninstalled=bool(payload.get("uninstalled")),
        order=None
        if not order
        else ChannelOrder(
            external_id=str(order["external_id"]),
            name=order.get("name"),
            created_at=datetime.fromisoformat(str(order["created_at"])),
            cancelled=bool(order.get("cancelled")),
            lines=tuple(
                OrderLine(
                    sku=line.get("sku"),
                    quantity=int(line["quantity"]),
                    external_id=line.get("external_id"),
                )
                for line in order["lines"]
            ),
        ),
        inventory=tuple(
            InventoryChanged(external_id=str(c["external_id"]), quantity=c.get("quantity"))
            for c in payload.get("inventory", [])
        ),
    )


async def record_delivery(
    session: AsyncSession, *, channel_id: str, delivery: WebhookDelivery, now: datetime
) -> bool:
    """Store a verified delivery in the inbox (once per delivery id) for the worker."""
    return await inbox.record(
        session,
        source=INBOX_SOURCE,
        external_id=f"{channel_id}:{delivery.delivery_id}",
        type=delivery.topic,
        payload=delivery_payload(channel_id, delivery),
        now=now,
    )


async def handle_inbox_event(context: Context[Any], item: Claimed) -> None:
    event_id = int(item.payload["inbox_event_id"])
    async with context.database.unit_of_work() as session:
        event = await inbox.lock(session, event_id=event_id)
        if event is None or event.processed_at is not None:
            return
        channel = await session.get(Channel, str(event.payload["channel_id"]))
        if channel is not None:
            await handle_delivery(
                session,
                channel=channel,
                delivery=delivery_from(event.payload, event.external_id),
                now=context.clock.now(),
            )
        inbox.mark_processed(event, now=context.clock.now())


# Reconciliation -------------------------------------------------------------------------


async def reconcile_channel(
    context: Context[ChannelResources], engine: Engine, channel_id: str
) -> int:
    """Import orders the channel has that we missed, read every listing, map new ones,
    and compare each matched listing with ``shown(available)``: a difference is drift,
    logged per SKU and pushed. Returns how many listings drifted."""
    await pull_channel(context, engine, channel_id)
    state = await _state(context.database, engine, channel_id)
    if state is None or state.status != service.ACTIVE:
        return 0
    started = context.clock.now()
    listings = await _call(context, engine, state, lambda c: c.listings())
    if listings is None:
        return 0
    now = context.clock.now()
    async with context.database.unit_of_work() as session:
        channel = (
            await session.execute(select(Channel).where(Channel.id == state.id).with_for_update())
        ).scalar_one()
        before = {
            row.external_id: row.pushed_quantity
            for row in (
                await session.execute(
                    select(ChannelListing.external_id, ChannelListing.pushed_quantity).where(
                        ChannelListing.channel_id == channel.id
                    )
                )
            )
        }
        await service.map_listings(session, channel=channel, listings=listings, now=now)
        rows = list(
            (
                await session.execute(
                    select(ChannelListing).where(
                        ChannelListing.channel_id == channel.id,
                        ChannelListing.status == service.MATCHED,
                    )
                )
            ).scalars()
        )
        stock_now = await service.stock_of(session, [r.variant_id for r in rows if r.variant_id])
        drifted: list[int] = []
        in_step = 0
        for row in rows:
            found = stock_now.get(row.variant_id or "")
            if found is None:
                continue
            target = shown(found.available, state.rules)
            if row.channel_quantity == target:
                in_step += 1
                continue
            drifted.append(row.id)
            session.add(
                SyncLogEntry(
                    channel_id=channel.id,
                    creator_id=channel.creator_id,
                    sku=row.sku,
                    external_id=row.external_id,
                    kind="reconcile",
                    pushed=before.get(row.external_id),
                    channel_value=row.channel_quantity,
                    outcome="drift",
                    detail=f"the channel shows {row.channel_quantity}, it should show {target}",
                    created_at=now,
                )
            )
        session.add(
            SyncLogEntry(
                channel_id=channel.id,
                creator_id=channel.creator_id,
                kind="reconcile",
                latency_ms=int((now - started).total_seconds() * 1000),
                outcome="ok" if not drifted else "drift",
                detail=f"{in_step} listings in step, {len(drifted)} drifted (repairs queued)",
                created_at=now,
            )
        )
        await queue_push(session, channel=channel, listing_ids=drifted, now=now)
    return len(drifted)


async def reconcile_now(database: Database, clock: Clock, *, channel_id: str) -> None:
    """Queue a reconciliation of the channel at once (the API's "sync now")."""
    async with database.unit_of_work() as session:
        channel = await session.get(Channel, channel_id)
        if channel is not None:
            await queue_for_channel(session, kind=RECONCILE_KIND, channel=channel, now=clock.now())


PRUNE_KIND = "channels.prune_sync_log"


async def prune_sync_log(session: AsyncSession, *, before: datetime) -> int:
    """Delete the sync log's rows older than ``before``; returns how many."""
    result = await session.execute(
        delete(SyncLogEntry)
        .where(SyncLogEntry.created_at < before)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def kinds(engine: Engine, *, settings: Settings) -> list[Kind[ChannelResources]]:
    async def run_prune(context: Context[ChannelResources], item: Claimed) -> None:
        keep = timedelta(days=context.resources.settings.channel_sync_log_days)
        async with context.database.unit_of_work() as session:
            await prune_sync_log(session, before=context.clock.now() - keep)

    async def run_sweep(context: Context[ChannelResources], item: Claimed) -> None:
        async with context.database.unit_of_work() as session:
            await sweep(session, settings=context.resources.settings, now=context.clock.now())

    return [
        Kind(
            name=SWEEP_KIND,
            handler=run_sweep,
            every=timedelta(seconds=settings.channel_sweep_seconds),
            lane=True,
            retry=Backoff(base=timedelta(seconds=1), cap=timedelta(seconds=30)),
            max_attempts=1_000_000,
        ),
        *(push_kind(engine, kind) for kind in KINDS),
        channel_kind(PULL_KIND, pull_channel, engine),
        channel_kind(RECONCILE_KIND, reconcile_channel, engine),
        Kind(name=PRUNE_KIND, handler=run_prune, every=timedelta(hours=1)),
        Kind(
            name=inbox.kind_for(INBOX_SOURCE),
            handler=handle_inbox_event,
            retry=inbox.RETRY,
            max_attempts=inbox.MAX_ATTEMPTS,
            batch_size=50,
        ),
    ]
