from __future__ import annotations

from datetime import datetime

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
    session expired or was cancelled, ``restocked`` when a refund returned them. Each
    change of status is a conditional update on the status, so the level's counts move
    exactly once."""

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
    status: Mapped[str] = mapped_column(String(16))  # held | allocated | released | restocked
    order_id: Mapped[str | None] = mapped_column(String(40), default=None, index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
