from __future__ import annotations

from datetime import date, datetime
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, Field, StrictInt, field_validator, model_validator

from stallholder.inventory import raffle_draw
from stallholder.inventory.drops import DropView
from stallholder.inventory.imports import ImportSummary
from stallholder.inventory.models import (
    DropEntry,
    IncomingBatch,
    Location,
    StockMovement,
    WaitlistEntry,
)
from stallholder.inventory.raffles import DrawView
from stallholder.inventory.stock import AdjustmentKind, SkuStock
from stallholder.kit.schemas import Email, Input, omittable, refuse_null
from stallholder.spreadsheets.inventory import TemplateKind

# A count or change of stock: far above any small-batch run, far below BIGINT.
MAX_UNITS = 1_000_000_000
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
Sku = Field(min_length=1, max_length=64, pattern=SKU_PATTERN)
LocationId = Field(min_length=1, max_length=40)


class LocationCreate(Input):
    name: str = Field(min_length=1, max_length=200)


class LocationOut(BaseModel):
    object: Literal["location"] = "location"
    id: str
    name: str
    created: datetime


def location_out(location: Location) -> LocationOut:
    return LocationOut(id=location.id, name=location.name, created=location.created_at)


class AdjustmentCreate(Input):
    sku: str = Sku
    location: str = LocationId
    delta: StrictInt | None = Field(default=None, ge=-MAX_UNITS, le=MAX_UNITS)
    set_to: StrictInt | None = Field(default=None, alias="set", ge=0, le=MAX_UNITS)
    kind: AdjustmentKind = Field(
        default="adjusted",
        description="What happened: received (new stock), returned (a buyer sent goods "
        "back), damaged (broken or lost), adjusted (a correction or a count).",
    )
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="Why on hand changed (kept on the movement); needed with delta or set.",
    )
    safety_stock: StrictInt | None = Field(default=None, ge=0, le=MAX_UNITS)
    low_stock_threshold: StrictInt | None = Field(default=None, ge=0, le=MAX_UNITS)

    @model_validator(mode="after")
    def _one_change(self) -> Self:
        if self.delta is not None and self.set_to is not None:
            raise ValueError("send delta (a change) or set (a count), not both")
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        if (
            self.delta is None
            and self.set_to is None
            and self.safety_stock is None
            and self.low_stock_threshold is None
        ):
            raise ValueError("send delta or set (or safety_stock / low_stock_threshold)")
        if (self.delta is not None or self.set_to is not None) and self.reason is None:
            raise ValueError("say why on hand changes: send a reason with delta or set")
        return self


class TransferCreate(Input):
    sku: str = Sku
    from_location: str = LocationId
    to_location: str = LocationId
    quantity: StrictInt = Field(ge=1, le=MAX_UNITS)
    reason: str = Field(default="transfer", min_length=1, max_length=500)


class InventoryLevelOut(BaseModel):
    location: str
    location_name: str
    on_hand: int
    reserved: int
    allocated: int
    safety_stock: int
    available: int
    low_stock_threshold: int | None


class IncomingOut(BaseModel):
    """A production batch of the SKU not received yet (``POST
    /v1/inventory/batches/{id}/receive`` turns it into stock)."""

    id: str
    batch: str
    quantity: int
    expected_on: date
    location: str
    location_name: str


class InventoryOut(BaseModel):
    object: Literal["inventory"] = "inventory"
    sku: str
    variant: str
    tracked: bool
    on_hand: int
    reserved: int
    allocated: int
    safety_stock: int
    available: int
    locations: list[InventoryLevelOut]
    incoming: list[IncomingOut]


def inventory_out(stock: SkuStock) -> InventoryOut:
    total = stock.total
    return InventoryOut(
        sku=stock.sku,
        variant=stock.variant_id,
        tracked=stock.is_tracked,
        on_hand=total.on_hand,
        reserved=total.reserved,
        allocated=total.allocated,
        safety_stock=total.safety_stock,
        available=stock.available,
        locations=[
            InventoryLevelOut(
                location=view.level.location_id,
                location_name=view.location_name,
                on_hand=view.level.on_hand,
                reserved=view.level.reserved,
                allocated=view.level.allocated,
                safety_stock=view.level.safety_stock,
                available=view.quantities.available,
                low_stock_threshold=view.level.low_stock_threshold,
            )
            for view in stock.levels
        ],
        incoming=[
            IncomingOut(
                id=view.batch.id,
                batch=view.batch.batch_ref,
                quantity=view.batch.quantity,
                expected_on=view.batch.expected_on,
                location=view.batch.location_id,
                location_name=view.location_name,
            )
            for view in stock.incoming
        ],
    )


class ImportOut(BaseModel):
    """What an applied import did: stock counts ``changed`` / ``unchanged``; production
    batches ``created`` / ``updated``."""

    object: Literal["inventory_import"] = "inventory_import"
    kind: TemplateKind
    file_name: str
    rows: int
    changed: int
    unchanged: int
    created: int
    updated: int


def import_out(summary: ImportSummary) -> ImportOut:
    return ImportOut(
        kind=summary.kind,
        file_name=summary.file_name,
        rows=summary.rows,
        changed=summary.changed,
        unchanged=summary.unchanged,
        created=summary.created,
        updated=summary.updated,
    )


class BatchReceive(Input):
    quantity: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_UNITS,
        description="How many pieces arrived; the batch's quantity when left out.",
    )


class BatchOut(BaseModel):
    object: Literal["inventory_batch"] = "inventory_batch"
    id: str
    batch: str
    sku: str
    quantity: int
    expected_on: date
    location: str
    status: Literal["incoming", "received"]
    received_quantity: int | None
    received_at: datetime | None


def batch_out(batch: IncomingBatch) -> BatchOut:
    return BatchOut(
        id=batch.id,
        batch=batch.batch_ref,
        sku=batch.sku,
        quantity=batch.quantity,
        expected_on=batch.expected_on,
        location=batch.location_id,
        status="received" if batch.status == "received" else "incoming",
        received_quantity=batch.received_quantity,
        received_at=batch.received_at,
    )


class MovementOut(BaseModel):
    object: Literal["inventory_movement"] = "inventory_movement"
    id: str
    sku: str
    location: str
    kind: str
    quantity: int
    on_hand_after: int
    reason: str
    actor: str
    reference: str | None
    created: datetime


def movement_out(movement: StockMovement) -> MovementOut:
    return MovementOut(
        id=movement.id,
        sku=movement.sku,
        location=movement.location_id,
        kind=movement.kind,
        quantity=movement.quantity,
        on_hand_after=movement.on_hand_after,
        reason=movement.reason,
        actor=movement.actor,
        reference=movement.reference,
        created=movement.created_at,
    )


class DropItemIn(Input):
    price: str = Field(min_length=1, max_length=40)
    quantity: StrictInt = Field(ge=1, le=1_000_000)


class DropCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    opens_at: AwareDatetime
    closes_at: AwareDatetime
    mode: Literal["first_come", "raffle"] = Field(
        default="first_come",
        description="first_come: units go to buyers in the order they open checkout "
        "sessions. raffle: buyers enter during the window; at closes_at a public draw "
        "offers one unit each to as many entrants as there are units (docs/raffles.md).",
    )
    claim_minutes: StrictInt = Field(
        default=60,
        ge=5,
        le=10_080,
        description="raffle: how long a winner has to open a checkout session for their unit",
    )
    per_customer_limit: StrictInt | None = Field(default=None, ge=1, le=1_000)
    reservation_minutes: StrictInt = Field(default=10, ge=1, le=60)
    waitlist_hold_minutes: StrictInt = Field(
        default=15,
        ge=1,
        le=1_440,
        description="first_come: how long a unit offered to a waitlisted buyer is held "
        "for them (docs/inventory.md#waitlists)",
    )
    items: list[DropItemIn] = Field(min_length=1, max_length=20)


class DropUpdate(Input):
    """Only the fields sent change (``per_customer_limit: null`` removes the limit; the
    others may be left out but not sent as null). ``items`` changes quantities of prices
    already in the drop; prices not listed keep theirs."""

    name: str | None = omittable(min_length=1, max_length=200)
    opens_at: AwareDatetime | None = omittable()
    closes_at: AwareDatetime | None = omittable()
    per_customer_limit: StrictInt | None = Field(default=None, ge=1, le=1_000)
    reservation_minutes: StrictInt | None = omittable(ge=1, le=60)
    waitlist_hold_minutes: StrictInt | None = omittable(ge=1, le=1_440)
    claim_minutes: StrictInt | None = omittable(ge=5, le=10_080)
    items: list[DropItemIn] | None = omittable(min_length=1, max_length=20)

    _not_null = field_validator(
        "name",
        "opens_at",
        "closes_at",
        "reservation_minutes",
        "waitlist_hold_minutes",
        "claim_minutes",
        "items",
    )(refuse_null)


class DropItemOut(BaseModel):
    price: str
    quantity: int
    held: int
    sold: int
    remaining: int


class DropOut(BaseModel):
    object: Literal["drop"] = "drop"
    id: str
    name: str
    status: Literal["scheduled", "open", "sold_out", "closed"]
    mode: str
    opens_at: datetime
    closes_at: datetime
    per_customer_limit: int | None
    reservation_minutes: int
    waitlist_hold_minutes: int
    remaining: int
    items: list[DropItemOut]
    # Raffles: the SHA-256 of the committed seed, when the draw ran, a winner's window.
    seed_hash: str | None
    drawn_at: datetime | None
    claim_minutes: int
    created: datetime


class EntryCreate(Input):
    email: Email


class EntryOut(BaseModel):
    object: Literal["drop_entry"] = "drop_entry"
    id: str
    drop: str
    entrant: str = Field(description="how the entry is published in the draw")
    status: Literal["entered", "offered", "claimed", "passed"]
    rank: int | None
    offer_expires_at: datetime | None
    created: datetime


class WaitlistCreate(Input):
    email: Email
    price: str | None = Field(
        default=None,
        min_length=1,
        max_length=40,
        description="wait for this price of the drop only (default: any of its prices)",
    )


class WaitlistEntryOut(BaseModel):
    object: Literal["waitlist_entry"] = "waitlist_entry"
    id: str
    drop: str
    email: str
    price: str | None
    status: Literal["waiting", "offered", "claimed", "passed"]
    offer_expires_at: datetime | None
    checkout_session: str | None = Field(
        description="the session holding the unit offered (its hosted page is the link "
        "emailed to the buyer)"
    )
    created: datetime


def waitlist_entry_out(entry: WaitlistEntry) -> WaitlistEntryOut:
    return WaitlistEntryOut(
        id=entry.id,
        drop=entry.drop_id,
        email=entry.email,
        price=entry.price_id,
        status=entry.status,
        offer_expires_at=entry.offer_expires_at,
        checkout_session=entry.checkout_session_id,
        created=entry.created_at,
    )


class DrawOut(BaseModel):
    object: Literal["raffle_draw"] = "raffle_draw"
    drop: str
    algorithm: str
    seed_hash: str
    seed: str | None = Field(description="revealed once drawn")
    drawn_at: datetime | None
    units: int
    entrants: list[str] = Field(description="every entry's pseudonym, ascending")
    winners: list[str] = Field(description="offered a unit at the draw, in draw order")
    offered: list[str] = Field(
        description="everyone offered a unit so far (winners and those units passed to)"
    )


def entry_out(entry: DropEntry) -> EntryOut:
    return EntryOut(
        id=entry.id,
        drop=entry.drop_id,
        entrant=entry.entrant,
        status=entry.status,
        rank=entry.rank,
        offer_expires_at=entry.offer_expires_at,
        created=entry.created_at,
    )


def draw_out(view: DrawView) -> DrawOut:
    drop = view.drop
    assert drop.seed_hash is not None
    return DrawOut(
        drop=drop.id,
        algorithm=raffle_draw.ALGORITHM,
        seed_hash=drop.seed_hash,
        seed=drop.seed if drop.drawn_at is not None else None,
        drawn_at=drop.drawn_at,
        units=view.units,
        entrants=view.entrants,
        winners=view.winners,
        offered=view.offered,
    )


def drop_out(view: DropView, *, now: datetime) -> DropOut:
    drop = view.drop
    return DropOut(
        id=drop.id,
        name=drop.name,
        status=view.state(now),
        mode=drop.mode,
        opens_at=drop.opens_at,
        closes_at=drop.closes_at,
        per_customer_limit=drop.per_customer_limit,
        reservation_minutes=drop.reservation_minutes,
        waitlist_hold_minutes=drop.waitlist_hold_minutes,
        remaining=view.remaining,
        items=[
            DropItemOut(
                price=item.price_id,
                quantity=item.quantity,
                held=item.held,
                sold=item.sold,
                remaining=item.quantity - item.held - item.sold,
            )
            for item in view.items
        ],
        seed_hash=drop.seed_hash,
        drawn_at=drop.drawn_at,
        claim_minutes=drop.claim_minutes,
        created=drop.created_at,
    )
