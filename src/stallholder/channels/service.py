"""Channels: connecting one, mapping its listings to our variants by SKU, importing its
orders into the stock ledger, and what the sync log says (``docs/channels.md``).

Nothing here calls a channel: the calls are made by ``channels.sync`` (handlers, with no
transaction open) and by the connect route before its unit of work writes anything."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.catalog import service as catalog
from stallholder.catalog.models import Variant
from stallholder.channels.buffers import Rules, shown
from stallholder.channels.connectors import ChannelOrder, Listing
from stallholder.channels.models import Channel, ChannelListing, SyncLogEntry
from stallholder.channels.models import ChannelOrder as OrderRow
from stallholder.events import service as events
from stallholder.inventory import stock
from stallholder.inventory.models import StockLevel
from stallholder.inventory.quantities import Quantities
from stallholder.kit.errors import Conflict, DomainError, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate

ACTIVE, PAUSED, DISCONNECTED = "active", "paused", "disconnected"
MATCHED, UNMATCHED, CONFLICT = "matched", "unmatched", "conflict"


class ChannelDisconnected(Conflict):
    slug = "channel-disconnected"
    title = "The channel is disconnected"


class ListingsNotImportable(Conflict):
    slug = "listings-not-importable"
    title = "Some listings cannot be imported; nothing was"


class ChannelNotFound(NotFound):
    slug = "channel-not-found"
    title = "No such channel"


def rules_of(channel: Channel) -> Rules:
    return Rules(
        buffer_units=channel.buffer_units,
        buffer_percent=channel.buffer_percent,
        zero_below=channel.zero_below,
        max_shown=channel.max_shown,
    )


async def get_channel(
    session: AsyncSession, *, creator_id: str, channel_id: str, for_update: bool = False
) -> Channel:
    """``for_update``: under the channel's row lock."""
    channel = await session.get(Channel, channel_id, with_for_update=for_update)
    if channel is None or channel.creator_id != creator_id:
        raise ChannelNotFound(f"you have no channel {channel_id!r}", channel=channel_id)
    return channel


async def list_channels(session: AsyncSession, *, creator_id: str) -> list[Channel]:
    return list(
        (
            await session.execute(
                select(Channel).where(Channel.creator_id == creator_id).order_by(Channel.id)
            )
        ).scalars()
    )


# Listings ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MappingSummary:
    matched: int
    unmatched: int
    conflict: int


def _insert(session: AsyncSession) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def map_listings(
    session: AsyncSession, *, channel: Channel, listings: Sequence[Listing], now: datetime
) -> MappingSummary:
    """Store what the channel sells and map each listing to our variant with its SKU.

    A listing is ``matched`` when exactly one of the channel's listings has its SKU and
    one of the creator's variants has it too; ``unmatched`` when none of our variants
    has it (import it as a product, or give it a SKU we use); ``conflict`` when it has no
    SKU or another listing of the channel has the same one (we would not know which to
    write). Listings seen before keep what we last pushed. A listing missing from the
    read is kept: the channel may only hide it (Etsy lists active listings only, and a
    listing we took to 0 is inactive there); a push to one that is truly gone finds it
    ``missing`` and removes it."""
    counts = Counter(listing.sku for listing in listings if listing.sku)
    skus = sorted(counts)
    variants: dict[str, str] = {}
    for start in range(0, len(skus), 500):
        rows = await session.execute(
            select(Variant.sku, Variant.id).where(
                Variant.creator_id == channel.creator_id, Variant.sku.in_(skus[start : start + 500])
            )
        )
        variants.update({row.sku: row.id for row in rows})
    rows_out = []
    for listing in listings:
        if not listing.sku or counts[listing.sku] > 1:
            status, variant_id = CONFLICT, None
        elif listing.sku in variants:
            status, variant_id = MATCHED, variants[listing.sku]
        else:
            status, variant_id = UNMATCHED, None
        rows_out.append(
            {
                "channel_id": channel.id,
                "creator_id": channel.creator_id,
                "external_id": listing.ref.external_id,
                "extra": dict(listing.ref.extra),
                "sku": listing.sku,
                "title": listing.title[:300],
                "price": listing.price,
                "currency": listing.currency,
                "variant_id": variant_id,
                "status": status,
                "channel_quantity": listing.quantity,
                "writes": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    insert = _insert(session)
    for start in range(0, len(rows_out), 200):
        statement = insert(ChannelListing).values(rows_out[start : start + 200])
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=["channel_id", "external_id"],
                set_={
                    "extra": statement.excluded.extra,
                    "sku": statement.excluded.sku,
                    "title": statement.excluded.title,
                    "price": statement.excluded.price,
                    "currency": statement.excluded.currency,
                    "variant_id": statement.excluded.variant_id,
                    "status": statement.excluded.status,
                    "channel_quantity": statement.excluded.channel_quantity,
                    "updated_at": statement.excluded.updated_at,
                },
            )
        )
    statuses = Counter(row["status"] for row in rows_out)
    return MappingSummary(
        matched=statuses[MATCHED], unmatched=statuses[UNMATCHED], conflict=statuses[CONFLICT]
    )


async def listing_counts(session: AsyncSession, *, channel_id: str) -> MappingSummary:
    rows = dict(
        (
            await session.execute(
                select(ChannelListing.status, func.count())
                .where(ChannelListing.channel_id == channel_id)
                .group_by(ChannelListing.status)
            )
        ).all()
    )
    return MappingSummary(
        matched=rows.get(MATCHED, 0),
        unmatched=rows.get(UNMATCHED, 0),
        conflict=rows.get(CONFLICT, 0),
    )


async def list_listings(
    session: AsyncSession,
    *,
    channel_id: str,
    status: str | None,
    limit: int,
    starting_after: int | None,
) -> tuple[list[ChannelListing], bool]:
    statement = select(ChannelListing).where(ChannelListing.channel_id == channel_id)
    if status is not None:
        statement = statement.where(ChannelListing.status == status)
    if starting_after is not None:
        statement = statement.where(ChannelListing.id > starting_after)
    rows = list(
        (await session.execute(statement.order_by(ChannelListing.id).limit(limit + 1))).scalars()
    )
    return rows[:limit], len(rows) > limit


# Stock as channels see it --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VariantStock:
    available: int
    # When the variant's stock last changed (the latest of its levels).
    changed_at: datetime


async def stock_of(session: AsyncSession, variant_ids: Sequence[str]) -> dict[str, VariantStock]:
    """``available`` of each tracked variant (summed over its locations) and when it last
    changed; untracked variants (no stock levels) are absent."""
    found: dict[str, VariantStock] = {}
    ids = sorted(set(variant_ids))
    for start in range(0, len(ids), 500):
        rows = await session.execute(
            select(
                StockLevel.variant_id,
                StockLevel.on_hand,
                StockLevel.reserved,
                StockLevel.allocated,
                StockLevel.safety_stock,
                StockLevel.updated_at,
            ).where(StockLevel.variant_id.in_(ids[start : start + 500]))
        )
        for row in rows:
            free = Quantities(
                on_hand=row.on_hand,
                reserved=row.reserved,
                allocated=row.allocated,
                safety_stock=row.safety_stock,
            ).available
            before = found.get(row.variant_id)
            if before is None:
                found[row.variant_id] = VariantStock(available=free, changed_at=row.updated_at)
            else:
                found[row.variant_id] = VariantStock(
                    available=before.available + free,
                    changed_at=max(before.changed_at, row.updated_at),
                )
    return found


def shown_for(channel: Channel, stock_now: VariantStock) -> int:
    return shown(stock_now.available, rules_of(channel))


# Orders from channels ------------------------------------------------------------------


async def _variant_for_line(
    session: AsyncSession, *, channel: Channel, sku: str | None, external_id: str | None
) -> tuple[str | None, str | None]:
    """The variant a line sells (by the listing it names, else by SKU) and its SKU."""
    if external_id is not None:
        row = (
            await session.execute(
                select(ChannelListing.variant_id, ChannelListing.sku).where(
                    ChannelListing.channel_id == channel.id,
                    ChannelListing.external_id == external_id,
                    ChannelListing.status == MATCHED,
                )
            )
        ).one_or_none()
        if row is not None:
            return row.variant_id, row.sku
    if sku:
        variant_id = (
            await session.execute(
                select(Variant.id).where(
                    Variant.creator_id == channel.creator_id, Variant.sku == sku
                )
            )
        ).scalar_one_or_none()
        return variant_id, sku
    return None, sku


async def import_order(
    session: AsyncSession, *, channel: Channel, order: ChannelOrder, now: datetime
) -> OrderRow | None:
    """Record an order placed on the channel, once (by its id on the channel), and take
    its units out of stock: the channel ships it, so each line is a ``sold`` movement in
    the stock ledger naming the channel order, by conditional updates (``… WHERE
    available >= n``). A line whose units are no longer free is ``oversold``: the order is
    flagged and ``channel.oversold`` emitted with the channel, SKU and quantity — never
    dropped. A cancelled order already recorded puts its units back (``returned``
    movements). Returns the new or changed row (None: nothing new).

    What the channel itself now shows is left to the next push, which writes
    ``shown(available)`` whole (on Shopify against the count we last knew, so a sale we
    have not heard of is never written over)."""
    existing = (
        await session.execute(
            select(OrderRow)
            .where(OrderRow.channel_id == channel.id, OrderRow.external_id == order.external_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if existing is not None:
        if order.cancelled and existing.status != "cancelled":
            await _cancel(session, channel=channel, row=existing, now=now)
            return existing
        return None
    row_id = new_id("cho")
    label = f"{channel.name}: order {order.name or order.external_id}"[:500]
    lines: list[dict[str, Any]] = []
    oversold: list[dict[str, Any]] = []
    for line in order.lines:
        variant_id, sku = await _variant_for_line(
            session, channel=channel, sku=line.sku, external_id=line.external_id
        )
        entry: dict[str, Any] = {"sku": sku, "quantity": line.quantity, "levels": {}}
        if order.cancelled:
            entry["outcome"] = "cancelled"
        elif variant_id is None:
            entry["outcome"] = "unmatched"
        else:
            taken = await stock.sell_free(
                session,
                variant_id=variant_id,
                quantity=line.quantity,
                reason=label,
                actor=f"channel:{channel.id}",
                reference=row_id,
                now=now,
            )
            if taken is None:
                entry["outcome"] = "oversold"
                oversold.append(entry)
            else:
                entry["outcome"] = "sold" if taken else "untracked"
                entry["levels"] = {str(level_id): n for level_id, n in taken.items()}
        lines.append(entry)
    status = "cancelled" if order.cancelled else ("oversold" if oversold else "sold")
    row = OrderRow(
        id=row_id,
        channel_id=channel.id,
        creator_id=channel.creator_id,
        external_id=order.external_id,
        name=order.name,
        status=status,
        lines=lines,
        placed_at=order.created_at,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    for entry in oversold:
        await events.emit(
            session,
            creator_id=channel.creator_id,
            type="channel.oversold",
            now=now,
            data={
                "object": "channel_order",
                "id": row.id,
                "channel": channel.id,
                "channel_kind": channel.kind,
                "channel_name": channel.name,
                "order": order.external_id,
                "order_name": order.name,
                "sku": entry["sku"],
                "quantity": entry["quantity"],
            },
        )
    _log_order(session, channel=channel, row=row, now=now)
    return row


def _log_order(session: AsyncSession, *, channel: Channel, row: OrderRow, now: datetime) -> None:
    """One sync-log row per line of an order recorded or cancelled."""
    for entry in row.lines:
        session.add(
            SyncLogEntry(
                channel_id=channel.id,
                creator_id=channel.creator_id,
                sku=entry["sku"],
                external_id=row.external_id,
                kind="order",
                outcome={"sold": "ok", "untracked": "ok"}.get(entry["outcome"], entry["outcome"]),
                detail=f"order {row.name or row.external_id}: {entry['quantity']} × "
                f"{entry['sku']} {entry['outcome']}"[:500],
                created_at=now,
            )
        )


async def _cancel(session: AsyncSession, *, channel: Channel, row: OrderRow, now: datetime) -> None:
    for entry in row.lines:
        if entry.get("outcome") == "sold":
            await stock.restock(
                session,
                taken={int(level_id): int(n) for level_id, n in entry["levels"].items()},
                reason=f"{channel.name}: order {row.name or row.external_id} cancelled"[:500],
                actor=f"channel:{channel.id}",
                reference=row.id,
                now=now,
            )
    row.lines = [{**entry, "outcome": "cancelled"} for entry in row.lines]
    row.status, row.updated_at = "cancelled", now
    _log_order(session, channel=channel, row=row, now=now)


async def list_orders(
    session: AsyncSession,
    *,
    channel_id: str,
    status: str | None,
    limit: int,
    starting_after: str | None = None,
) -> Page[OrderRow]:
    """Newest first; ``starting_after`` is the last order id seen.

    Raises:
        InvalidCursor: ``starting_after`` is not an order of this list.
    """
    statement = select(OrderRow).where(OrderRow.channel_id == channel_id)
    if status is not None:
        statement = statement.where(OrderRow.status == status)
    page: Page[OrderRow] = await paginate(
        session, statement, id_column=OrderRow.id, limit=limit, starting_after=starting_after
    )
    return page


# The sync log --------------------------------------------------------------------------


async def list_sync_log(
    session: AsyncSession,
    *,
    channel_id: str,
    sku: str | None,
    limit: int,
    starting_after: int | None,
) -> tuple[list[SyncLogEntry], bool]:
    """Newest first."""
    statement = select(SyncLogEntry).where(SyncLogEntry.channel_id == channel_id)
    if sku is not None:
        statement = statement.where(SyncLogEntry.sku == sku)
    if starting_after is not None:
        statement = statement.where(SyncLogEntry.id < starting_after)
    rows = list(
        (
            await session.execute(statement.order_by(SyncLogEntry.id.desc()).limit(limit + 1))
        ).scalars()
    )
    return rows[:limit], len(rows) > limit


async def pause(session: AsyncSession, *, channel: Channel, reason: str, now: datetime) -> None:
    """Stop syncing the channel and tell the creator (``channel.paused``, emailed). Only
    an active channel is paused: one paused already keeps its reason, and a disconnected
    one stays disconnected."""
    if channel.status != ACTIVE:
        return
    channel.status, channel.paused_reason, channel.updated_at = PAUSED, reason[:500], now
    await events.emit(
        session,
        creator_id=channel.creator_id,
        type="channel.paused",
        now=now,
        data={
            "object": "channel",
            "id": channel.id,
            "kind": channel.kind,
            "name": channel.name,
            "url": channel.url,
            "paused_reason": channel.paused_reason,
        },
    )


async def behind(session: AsyncSession, *, channel: Channel) -> list[int]:
    """The matched listings of the channel that show other than ``shown(available)``."""
    rows = (
        await session.execute(
            select(
                ChannelListing.id, ChannelListing.variant_id, ChannelListing.channel_quantity
            ).where(ChannelListing.channel_id == channel.id, ChannelListing.status == MATCHED)
        )
    ).all()
    stock_now = await stock_of(session, [row.variant_id for row in rows if row.variant_id])
    rules = rules_of(channel)
    return [
        row.id
        for row in rows
        if (found := stock_now.get(row.variant_id or "")) is not None
        and shown(found.available, rules) != row.channel_quantity
    ]


@dataclass(frozen=True, slots=True)
class ImportSummary:
    products: int
    variants: int


async def import_listings(
    session: AsyncSession, *, channel: Channel, now: datetime
) -> ImportSummary:
    """A published physical product for each unmatched listing (its SKU, its title, a
    one-time price when the channel shows one), and the listing matched to it. All or
    nothing: when a listing cannot become a product (one of the creator's variants took
    its SKU since the listings were mapped, or the channel's title or price is not one a
    product may have), nothing is imported (the caller's unit of work rolls back) and the
    error names every such listing, its SKU and why.

    Raises:
        ListingsNotImportable: what each refused listing needs.
    """
    rows = list(
        (
            await session.execute(
                select(ChannelListing)
                .where(
                    ChannelListing.channel_id == channel.id,
                    ChannelListing.status == UNMATCHED,
                    ChannelListing.sku.is_not(None),
                )
                .order_by(ChannelListing.id)
            )
        ).scalars()
    )
    refused: list[tuple[ChannelListing, DomainError]] = []
    for listing in rows:
        assert listing.sku is not None
        try:
            async with session.begin_nested():
                product = await catalog.create_product(
                    session,
                    creator_id=channel.creator_id,
                    kind="physical",
                    name=listing.title[:200],
                    description=f"Imported from {channel.name}.",
                    status="published",
                    variants=[catalog.VariantSpec(sku=listing.sku, name=listing.title[:200])],
                    now=now,
                )
                if listing.price is not None and listing.currency:
                    await catalog.create_price(
                        session,
                        creator_id=channel.creator_id,
                        product_id=product.id,
                        spec=catalog.PriceSpec(
                            currency=listing.currency, unit_amount=listing.price
                        ),
                        now=now,
                    )
        except DomainError as error:
            refused.append((listing, error))
            continue
        listing.variant_id = product.variants[0].id
        listing.status, listing.updated_at = MATCHED, now
    if refused:
        named = "; ".join(f"{row.id} ({row.sku}): {error.detail}" for row, error in refused)
        hint = (
            f" (a taken SKU: POST /v1/channels/{channel.id}/reconcile matches the listing to "
            "that variant; then import again)"
            if any(isinstance(error, catalog.SkuTaken) for _, error in refused)
            else ""
        )
        raise ListingsNotImportable(
            f"nothing was imported: {len(refused)} of {len(rows)} listing(s) cannot become "
            f"products: {named}{hint}",
            listings=[
                {"listing": row.id, "sku": row.sku, "problem": error.slug, "detail": error.detail}
                for row, error in refused
            ],
        )
    return ImportSummary(products=len(rows), variants=len(rows))


async def disconnect(
    session: AsyncSession,
    *,
    channel: Channel,
    sealed_nothing: str,
    webhooks_removed: bool,
    detail: str,
    now: datetime,
) -> None:
    """Stop syncing the channel for good: its credentials are forgotten (``sealed_nothing``
    is an empty object sealed with the channel key), its listings removed, and what became
    of its webhooks logged (``kind: "disconnect"``, ``detail``): removed from the channel
    (the caller did so first), or, when they could not be, kept in ``channel.webhooks``
    (the channel may still send them; they are refused, as they no longer verify). Its
    orders and sync log stay; connecting the same shop again brings it back with new
    credentials and webhooks."""
    channel.status, channel.paused_reason = DISCONNECTED, None
    channel.credentials, channel.rate_state = sealed_nothing, {}
    if webhooks_removed:
        channel.webhooks = []
    channel.next_poll_at = channel.next_reconcile_at = None
    channel.updated_at = now
    await session.execute(delete(ChannelListing).where(ChannelListing.channel_id == channel.id))
    session.add(
        SyncLogEntry(
            channel_id=channel.id,
            creator_id=channel.creator_id,
            kind="disconnect",
            outcome="ok" if webhooks_removed else "error",
            detail=detail[:500],
            created_at=now,
        )
    )


def resume(channel: Channel, *, now: datetime) -> None:
    """Raises ChannelDisconnected: a disconnected channel has no credentials to resume
    with."""
    if channel.status == DISCONNECTED:
        raise ChannelDisconnected(
            f"channel {channel.id} is disconnected; connect the shop again with POST /v1/channels",
            channel=channel.id,
        )
    channel.status, channel.paused_reason, channel.updated_at = ACTIVE, None, now
