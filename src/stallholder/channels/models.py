from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base, SerialPK


class Channel(Base):
    """A marketplace a creator also sells on, connected with its credentials (encrypted,
    ``channels.credentials``) and the rules of what it is shown (``channels.buffers``).

    ``status``: ``active`` (kept in step), ``paused`` (by the creator, or because the
    channel refused our credentials: ``paused_reason`` says which; nothing is sent until
    it is resumed)."""

    __tablename__ = "channels"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    # Where the channel is (a shop's URL; Etsy's API base), shown to the creator.
    url: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(16))
    paused_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    credentials: Mapped[str] = mapped_column(Text)  # Fernet token of a JSON object
    buffer_units: Mapped[int] = mapped_column(default=0)
    buffer_percent: Mapped[int] = mapped_column(default=0)
    max_shown: Mapped[int | None] = mapped_column(default=None)
    zero_below: Mapped[int | None] = mapped_column(default=None)
    # The rate limiter's state, from the channel's last replies (``Connector.rate_state``).
    rate_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Where the next look at the channel's orders starts (``Connector.orders_since``).
    orders_cursor: Mapped[str | None] = mapped_column(String(100), default=None)
    next_poll_at: Mapped[datetime | None] = mapped_column(default=None)
    next_reconcile_at: Mapped[datetime | None] = mapped_column(default=None)
    webhooks: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ChannelListing(Base):
    """One sellable unit on a channel (a product or a variation), mapped to our variant
    by SKU. ``status``: ``matched`` (one variant of the creator has its SKU), ``unmatched``
    (none has), ``conflict`` (more than one listing of the channel claims the SKU, or it
    has none: such listings are never written).

    ``channel_quantity`` is what the channel showed when we last read or wrote it;
    ``pushed_quantity`` what we last wrote (None: never)."""

    __tablename__ = "channel_listings"
    __table_args__ = (
        UniqueConstraint("channel_id", "external_id"),
        Index("ix_channel_listings_variant", "variant_id"),
    )

    id: Mapped[SerialPK]
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id"), index=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    external_id: Mapped[str] = mapped_column(String(200))
    extra: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    sku: Mapped[str | None] = mapped_column(String(64), default=None)
    title: Mapped[str] = mapped_column(String(300))
    price: Mapped[int | None] = mapped_column(default=None)
    currency: Mapped[str | None] = mapped_column(String(3), default=None)
    variant_id: Mapped[str | None] = mapped_column(ForeignKey("variants.id"), default=None)
    status: Mapped[str] = mapped_column(String(16))
    channel_quantity: Mapped[int | None] = mapped_column(default=None)
    pushed_quantity: Mapped[int | None] = mapped_column(default=None)
    pushed_at: Mapped[datetime | None] = mapped_column(default=None)
    # Counts this listing's writes: part of each write's idempotency key.
    writes: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ChannelOrder(Base):
    """An order placed on a channel, imported once (by the channel's order id) and sold
    from our stock (``sold`` movements naming it). ``status``: ``sold`` (every line's
    units were free), ``oversold`` (at least one line found too few: ``lines`` says which;
    shown to the creator and emitted as ``channel.oversold``), ``cancelled`` (cancelled on
    the channel: its units are back, ``returned`` movements)."""

    __tablename__ = "channel_orders"
    __table_args__ = (UniqueConstraint("channel_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id"), index=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(100), default=None)
    status: Mapped[str] = mapped_column(String(16))
    # [{sku, quantity, outcome: sold | oversold | unmatched | untracked | cancelled,
    #   levels: {level id: units taken}}]
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    placed_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SyncLogEntry(Base):
    """What one push, read or comparison found for one listing (``GET
    /v1/channels/{id}/sync_log``). ``latency_ms``: from the stock change to the channel
    showing it (pushes), or None."""

    __tablename__ = "channel_sync_log"
    __table_args__ = (Index("ix_channel_sync_log_channel", "channel_id", "id"),)

    id: Mapped[SerialPK]
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id"))
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    sku: Mapped[str | None] = mapped_column(String(64), default=None)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None)
    # push | reconcile | order
    kind: Mapped[str] = mapped_column(String(16))
    pushed: Mapped[int | None] = mapped_column(default=None)
    channel_value: Mapped[int | None] = mapped_column(default=None)
    latency_ms: Mapped[int | None] = mapped_column(default=None)
    # ok | stale | missing | error | drift | paused; for orders the line's outcome
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime]


class SweepMark(Base):
    """How far the sweep for changed stock has looked (one row)."""

    __tablename__ = "channel_sweep_marks"

    id: Mapped[int] = mapped_column(primary_key=True)
    swept_to: Mapped[datetime]
