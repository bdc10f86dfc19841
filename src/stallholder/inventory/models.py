from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base, SerialPK


class Location(Base):
    """Where stock is kept: a workshop, a fulfilment partner. Holds draw from a creator's
    locations in the order they were created (their ids sort that way)."""

    __tablename__ = "locations"
    __table_args__ = (UniqueConstraint("creator_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class StockLevel(Base):
    """One variant's stock at one location. Its counts change only by conditional atomic
    updates (``inventory.stock``, ADR 0012); ``on_hand`` is always the sum of the level's
    movements."""

    __tablename__ = "stock_levels"
    __table_args__ = (
        UniqueConstraint("variant_id", "location_id"),
        Index("ix_stock_levels_creator_sku", "creator_id", "sku"),
        CheckConstraint(
            "reserved >= 0 AND allocated >= 0 AND safety_stock >= 0 "
            "AND on_hand >= reserved + allocated",
            name="quantities",
        ),
    )

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"))
    sku: Mapped[str] = mapped_column(String(64))
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"), index=True)
    on_hand: Mapped[int] = mapped_column(default=0)
    # Held by open checkout sessions.
    reserved: Mapped[int] = mapped_column(default=0)
    # Paid for, not shipped yet.
    allocated: Mapped[int] = mapped_column(default=0)
    # Kept back from sale (a buffer for breakage and miscounts).
    safety_stock: Mapped[int] = mapped_column(default=0)
    # ``inventory.low`` is emitted when ``available`` falls to this or below (None: never).
    low_stock_threshold: Mapped[int | None] = mapped_column(default=None)
    updated_at: Mapped[datetime]


class StockMovement(Base):
    """An append-only line of the movement ledger: a change of one level's ``on_hand``."""

    __tablename__ = "stock_movements"
    __table_args__ = (Index("ix_stock_movements_creator_sku", "creator_id", "sku", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    stock_level_id: Mapped[int] = mapped_column(ForeignKey("stock_levels.id"), index=True)
    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"))
    sku: Mapped[str] = mapped_column(String(64))
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    # received | sold | adjusted | returned | damaged | transferred
    kind: Mapped[str] = mapped_column(String(16))
    # The signed change of on_hand, and on_hand after it.
    quantity: Mapped[int]
    on_hand_after: Mapped[int]
    reason: Mapped[str] = mapped_column(String(500))
    # Who made it: ``secret_key`` (the creator's API), ``system``.
    actor: Mapped[str] = mapped_column(String(80))
    # What it belongs to, when anything: a transfer's id.
    reference: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime]


class StockReservation(Base):
    """Units of one stock level promised to one checkout session: ``held`` while the
    session is open, ``allocated`` once paid (with the order), ``released`` when the
    session expired or was cancelled, ``shipped`` once the order's parcel left (a ``sold``
    movement), ``restocked`` when a refund returned them before shipping and ``returned``
    after (a ``returned`` movement). Each change of status is a conditional update on the
    status, so the level's counts move exactly once."""

    __tablename__ = "stock_reservations"
    __table_args__ = (
        UniqueConstraint("checkout_session_id", "stock_level_id"),
        CheckConstraint("quantity > 0", name="positive"),
    )

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    checkout_session_id: Mapped[str] = mapped_column(ForeignKey("checkout_sessions.id"))
    stock_level_id: Mapped[int] = mapped_column(ForeignKey("stock_levels.id"), index=True)
    sku: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int]
    # held | allocated | released | shipped | restocked | returned
    status: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Drop(Base):
    """A release window for a few prices: each sells at most its quantity, only in
    ``[opens_at, closes_at)``, with a short hold and an optional limit per buyer
    (``inventory.drops``, ``docs/inventory.md``)."""

    __tablename__ = "drops"
    __table_args__ = (CheckConstraint("opens_at < closes_at", name="window"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(16))  # first_come | raffle
    opens_at: Mapped[datetime]
    closes_at: Mapped[datetime]
    per_customer_limit: Mapped[int | None] = mapped_column(default=None)
    reservation_minutes: Mapped[int]
    # Raffles (``inventory.raffles``): the seed committed to at creation (its SHA-256 is
    # public, the seed only once drawn), when the draw ran, and how long a winner has to buy.
    seed: Mapped[str | None] = mapped_column(String(64), default=None)
    seed_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    drawn_at: Mapped[datetime | None] = mapped_column(default=None)
    claim_minutes: Mapped[int] = mapped_column(default=60, server_default="60")
    # Waitlists (``inventory.waitlists``): how long a unit offered to a waitlisted buyer
    # is held for them before it passes to the next.
    waitlist_hold_minutes: Mapped[int] = mapped_column(default=15, server_default="15")
    # The last state announced by a ``drop.*`` event (``open``, ``sold_out``, ``closed``;
    # None before opening): each announcement is a conditional update of it, so each is
    # emitted once however often the work runs (``inventory.drop_events``).
    announced: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[datetime]


class DropItem(Base):
    """A price in a drop, and how many of its units are held by open checkouts and sold.
    ``held`` and ``sold`` change only by conditional atomic updates."""

    __tablename__ = "drop_items"
    __table_args__ = (
        UniqueConstraint("price_id"),
        CheckConstraint("held >= 0 AND sold >= 0 AND held + sold <= quantity", name="counts"),
    )

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    drop_id: Mapped[str] = mapped_column(ForeignKey("drops.id"), index=True)
    price_id: Mapped[str] = mapped_column(ForeignKey("prices.id"))
    position: Mapped[int]
    quantity: Mapped[int]
    held: Mapped[int] = mapped_column(default=0)
    sold: Mapped[int] = mapped_column(default=0)


class DropBuyer(Base):
    """The units one buyer (``drop_rules.buyer_key``) holds in open checkouts of a drop
    or has bought in it: the per-customer limit is a conditional update of this row."""

    __tablename__ = "drop_buyers"
    __table_args__ = (
        UniqueConstraint("drop_id", "buyer_key"),
        CheckConstraint("units >= 0", name="units"),
    )

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    drop_id: Mapped[str] = mapped_column(ForeignKey("drops.id"))
    buyer_key: Mapped[str] = mapped_column(String(320))
    units: Mapped[int] = mapped_column(default=0)


class DropClaim(Base):
    """Units of a drop item a checkout session holds (``held``), bought (``sold``) or gave
    back when it expired (``released``)."""

    __tablename__ = "drop_claims"
    __table_args__ = (
        UniqueConstraint("checkout_session_id", "drop_item_id"),
        CheckConstraint("quantity > 0", name="positive"),
    )

    id: Mapped[SerialPK]
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    drop_id: Mapped[str] = mapped_column(ForeignKey("drops.id"), index=True)
    drop_item_id: Mapped[int] = mapped_column(ForeignKey("drop_items.id"))
    checkout_session_id: Mapped[str] = mapped_column(ForeignKey("checkout_sessions.id"))
    buyer_key: Mapped[str] = mapped_column(String(320))
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(String(16))  # held | sold | released
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IncomingBatch(Base):
    """Pieces being made: one SKU of a maker's production batch (a kiln firing, a print
    run), expected at a location on a date. Imported from the production-batch template
    (``inventory.imports``); ``incoming`` until received, when its units become on-hand
    stock with a ``received`` movement (``inventory.batches``)."""

    __tablename__ = "incoming_batches"
    __table_args__ = (
        UniqueConstraint("creator_id", "batch_ref", "variant_id"),
        Index("ix_incoming_batches_variant_status", "variant_id", "status"),
        CheckConstraint("quantity > 0", name="positive"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    # The maker's own name for the batch (the template's ``batch_id``).
    batch_ref: Mapped[str] = mapped_column(String(64))
    variant_id: Mapped[str] = mapped_column(ForeignKey("variants.id"))
    sku: Mapped[str] = mapped_column(String(64))
    location_id: Mapped[str] = mapped_column(ForeignKey("locations.id"))
    quantity: Mapped[int]
    expected_on: Mapped[date]
    status: Mapped[str] = mapped_column(String(16))  # incoming | received
    # How many pieces arrived (a firing can yield fewer than planned); set when received.
    received_quantity: Mapped[int | None] = mapped_column(default=None)
    received_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class DropEntry(Base):
    """One buyer's entry in a raffle drop (one per normalised email). ``rank`` is its
    place in the draw order (1 first) once drawn. Status: ``entered`` → ``offered`` (may
    buy one unit until ``offer_expires_at``) → ``claimed`` (a checkout session holds or
    bought the unit) | ``passed`` (did not buy in time; the unit went to the next entrant)."""

    __tablename__ = "drop_entries"
    __table_args__ = (
        UniqueConstraint("drop_id", "buyer_key"),
        Index("ix_drop_entries_drop_status_rank", "drop_id", "status", "rank"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    drop_id: Mapped[str] = mapped_column(ForeignKey("drops.id"))
    buyer_key: Mapped[str] = mapped_column(String(320))
    email: Mapped[str] = mapped_column(String(320))
    # SHA-256 of "<drop id>\n<buyer key>": how the entry is published (raffle_draw).
    entrant: Mapped[str] = mapped_column(String(64))
    rank: Mapped[int | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16))
    offer_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    checkout_session_id: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WaitlistEntry(Base):
    """One buyer waiting for a sold-out drop (one per normalised email), optionally for
    one of its prices. Served in signup order (``id`` sorts in creation order). Status:
    ``waiting`` → ``offered`` (a checkout session holds one unit for the buyer until
    ``offer_expires_at``) → ``claimed`` (the buyer paid for it) | ``passed`` (the offer
    ran out unpaid; the unit went to the next buyer)."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        UniqueConstraint("drop_id", "buyer_key"),
        Index("ix_waitlist_entries_drop_status", "drop_id", "status", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"))
    drop_id: Mapped[str] = mapped_column(ForeignKey("drops.id"))
    # Only this price of the drop, or any (None).
    price_id: Mapped[str | None] = mapped_column(String(40), default=None)
    buyer_key: Mapped[str] = mapped_column(String(320))
    email: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16))
    offer_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # The session that holds the offered unit (the offer's link opens it).
    checkout_session_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
