"""Locations, stock levels and the movement ledger.

Every change of a level's counts is one conditional atomic update whose ``WHERE`` says
what must still be true (``on_hand + delta >= reserved + allocated``), never a read, a
decision and a write (ADR 0012). A change of ``on_hand`` writes a movement with the level's
new ``on_hand`` in the same transaction, so the ledger always sums to ``on_hand``. Rows of
several levels are changed in primary-key order (``lock_levels``, ``in_key_order``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.catalog.models import Variant
from stallholder.events import service as events
from stallholder.inventory import waitlists
from stallholder.inventory.models import IncomingBatch, Location, StockLevel, StockMovement
from stallholder.inventory.quantities import (
    Quantities,
    crossing,
    delta_for,
    in_key_order,
    plan_takes,
)
from stallholder.kit.db import is_unique_violation
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate

MovementKind = Literal["received", "sold", "adjusted", "returned", "damaged", "transferred"]
# What an adjustment may say happened; ``transferred`` is written by transfers only and
# ``sold`` by shipping an allocation (the fulfilment domain, ``docs/inventory.md``).
AdjustmentKind = Literal["received", "adjusted", "returned", "damaged"]


# Rows per statement of a bulk change: far under every database's parameter limit.
_LEVEL_CHUNK = 200


class LocationNotFound(NotFound):
    slug = "location-not-found"
    title = "No such location"


class LocationNameTaken(Conflict):
    slug = "location-name-taken"
    title = "A location with this name exists already"


class SkuNotFound(NotFound):
    slug = "sku-not-found"
    title = "No variant has this SKU"


class StockCommitted(Conflict):
    slug = "stock-committed"
    title = "Those units are promised to buyers"


class InsufficientStock(Conflict):
    slug = "insufficient-stock"
    title = "The location does not have that many free units"


class SameLocation(InvalidRequest):
    slug = "same-location"
    title = "A transfer needs two different locations"


# Locations -----------------------------------------------------------------------------


async def create_location(
    session: AsyncSession, *, creator_id: str, name: str, now: datetime
) -> Location:
    """Raises ``LocationNameTaken`` when the creator has a location of that name."""
    location = Location(id=new_id("loc"), creator_id=creator_id, name=name, created_at=now)
    session.add(location)
    try:
        await session.flush()
    except IntegrityError as error:
        if not is_unique_violation(error, "uq_locations_creator_id_name"):
            raise
        raise LocationNameTaken(
            f"you have a location named {name!r} already; pick another name", name=name
        ) from error
    return location


async def list_locations(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[Location]:
    return await paginate(
        session,
        select(Location).where(Location.creator_id == creator_id),
        id_column=Location.id,
        limit=limit,
        starting_after=starting_after,
    )


async def get_location(session: AsyncSession, *, creator_id: str, location_id: str) -> Location:
    location = await session.get(Location, location_id)
    if location is None or location.creator_id != creator_id:
        raise LocationNotFound(f"no location {location_id!r}")
    return location


# Stock levels ----------------------------------------------------------------------------


async def variant_for_sku(session: AsyncSession, *, creator_id: str, sku: str) -> Variant:
    variant = (
        await session.execute(
            select(Variant).where(Variant.creator_id == creator_id, Variant.sku == sku)
        )
    ).scalar_one_or_none()
    if variant is None:
        raise SkuNotFound(f"none of your variants has the SKU {sku!r}", sku=sku)
    return variant


async def ensure_level(
    session: AsyncSession, *, variant: Variant, location_id: str, now: datetime
) -> int:
    """The id of the variant's stock level at the location, created empty if it has none
    (``INSERT … ON CONFLICT DO NOTHING``, so two first adjustments at once make one)."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(StockLevel)
        .values(
            creator_id=variant.creator_id,
            variant_id=variant.id,
            sku=variant.sku,
            location_id=location_id,
            on_hand=0,
            reserved=0,
            allocated=0,
            safety_stock=0,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["variant_id", "location_id"])
    )
    return (
        await session.execute(
            select(StockLevel.id).where(
                StockLevel.variant_id == variant.id, StockLevel.location_id == location_id
            )
        )
    ).scalar_one()


async def ensure_levels(
    session: AsyncSession, *, wanted: Sequence[tuple[Variant, str]], now: datetime
) -> dict[tuple[str, str], int]:
    """``ensure_level`` for many (variant, location id) pairs in a few statements: the
    level ids by (variant id, location id)."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    pairs = sorted({(variant.id, location_id): variant for variant, location_id in wanted}.items())
    for start in range(0, len(pairs), _LEVEL_CHUNK):
        await session.execute(
            insert(StockLevel)
            .values(
                [
                    {
                        "creator_id": variant.creator_id,
                        "variant_id": variant.id,
                        "sku": variant.sku,
                        "location_id": location_id,
                        "on_hand": 0,
                        "reserved": 0,
                        "allocated": 0,
                        "safety_stock": 0,
                        "updated_at": now,
                    }
                    for (_, location_id), variant in pairs[start : start + _LEVEL_CHUNK]
                ]
            )
            .on_conflict_do_nothing(index_elements=["variant_id", "location_id"])
        )
    ids: dict[tuple[str, str], int] = {}
    variant_ids = sorted({variant_id for (variant_id, _), _ in pairs})
    for start in range(0, len(variant_ids), _LEVEL_CHUNK):
        rows = await session.execute(
            select(StockLevel.id, StockLevel.variant_id, StockLevel.location_id).where(
                StockLevel.variant_id.in_(variant_ids[start : start + _LEVEL_CHUNK])
            )
        )
        for level_id, variant_id, location_id in rows:
            ids[(variant_id, location_id)] = level_id
    return {key: ids[key] for key, _ in pairs}


async def lock_levels(session: AsyncSession, level_ids: Sequence[int]) -> dict[int, StockLevel]:
    """Lock stock levels in primary-key order (every writer of several levels does, so
    none waits on another in a cycle) and return them as they are now. SQLite has one
    writer at a time, so there the order is all it needs."""
    rows = (
        (
            await session.execute(
                select(StockLevel)
                .where(StockLevel.id.in_(sorted(set(level_ids))))
                .order_by(StockLevel.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )
    return {level.id: level for level in rows}


LEVEL_COLUMNS = (
    StockLevel.id,
    StockLevel.creator_id,
    StockLevel.sku,
    StockLevel.location_id,
    StockLevel.on_hand,
    StockLevel.reserved,
    StockLevel.allocated,
    StockLevel.safety_stock,
    StockLevel.low_stock_threshold,
)


@dataclass(frozen=True, slots=True)
class LevelState:
    """A stock level as a statement returned it (``LEVEL_COLUMNS``)."""

    id: int
    creator_id: str
    sku: str
    location_id: str
    quantities: Quantities
    low_stock_threshold: int | None


def quantities_of(level: StockLevel) -> Quantities:
    return Quantities(
        on_hand=level.on_hand,
        reserved=level.reserved,
        allocated=level.allocated,
        safety_stock=level.safety_stock,
    )


def state_of(row: Any) -> LevelState:
    """A row of ``LEVEL_COLUMNS`` (read, or returned by an update)."""
    return LevelState(
        id=row.id,
        creator_id=row.creator_id,
        sku=row.sku,
        location_id=row.location_id,
        quantities=Quantities(
            on_hand=row.on_hand,
            reserved=row.reserved,
            allocated=row.allocated,
            safety_stock=row.safety_stock,
        ),
        low_stock_threshold=row.low_stock_threshold,
    )


async def report_crossing(
    session: AsyncSession, *, level: LevelState, before: int, now: datetime
) -> None:
    """Emit ``inventory.low`` or ``inventory.out_of_stock`` when a change took the level's
    ``available`` from ``before`` across its threshold (``level`` as it is after)."""
    after = level.quantities
    crossed = crossing(
        before=before, after=after.available, low_threshold=level.low_stock_threshold
    )
    if crossed is None:
        return
    await events.emit(
        session,
        creator_id=level.creator_id,
        type=f"inventory.{crossed}",
        now=now,
        data={
            "object": "inventory_level",
            "sku": level.sku,
            "location": level.location_id,
            "on_hand": after.on_hand,
            "reserved": after.reserved,
            "allocated": after.allocated,
            "safety_stock": after.safety_stock,
            "available": after.available,
            "low_stock_threshold": level.low_stock_threshold,
        },
    )


def record_movement(
    session: AsyncSession,
    *,
    level: LevelState,
    variant_id: str,
    kind: MovementKind,
    delta: int,
    reason: str,
    actor: str,
    now: datetime,
    reference: str | None = None,
) -> None:
    """Add the movement-ledger line of a change of ``on_hand`` by ``delta`` that has just
    been applied to ``level`` (its counts are those after the change)."""
    session.add(
        StockMovement(
            id=new_id("mov"),
            creator_id=level.creator_id,
            stock_level_id=level.id,
            variant_id=variant_id,
            sku=level.sku,
            location_id=level.location_id,
            kind=kind,
            quantity=delta,
            on_hand_after=level.quantities.on_hand,
            reason=reason,
            actor=actor,
            reference=reference,
            created_at=now,
        )
    )


async def _change_on_hand(
    session: AsyncSession,
    *,
    level_id: int,
    delta: int,
    kind: MovementKind,
    reason: str,
    actor: str,
    now: datetime,
    reference: str | None = None,
    keep_free: bool = False,
) -> LevelState | None:
    """``on_hand += delta`` on one level if the promised units stay covered (and, with
    ``keep_free``, if the units taken are free: ``available >= -delta``), and the movement
    that records it. None when the condition does not hold: nothing changed."""
    condition = StockLevel.on_hand + delta >= StockLevel.reserved + StockLevel.allocated
    if keep_free:
        condition = (
            StockLevel.on_hand
            - StockLevel.reserved
            - StockLevel.allocated
            - StockLevel.safety_stock
            >= -delta
        )
    row = (
        await session.execute(
            update(StockLevel)
            .where(StockLevel.id == level_id, condition)
            .values(on_hand=StockLevel.on_hand + delta, updated_at=now)
            .returning(*LEVEL_COLUMNS, StockLevel.variant_id)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        return None
    level = state_of(row)
    record_movement(
        session,
        level=level,
        variant_id=row.variant_id,
        kind=kind,
        delta=delta,
        reason=reason,
        actor=actor,
        reference=reference,
        now=now,
    )
    before = level.quantities
    await report_crossing(
        session,
        level=level,
        before=Quantities(
            on_hand=before.on_hand - delta,
            reserved=before.reserved,
            allocated=before.allocated,
            safety_stock=before.safety_stock,
        ).available,
        now=now,
    )
    return level


@dataclass(frozen=True, slots=True)
class LevelView:
    """A level with its location's name, for reading."""

    level: StockLevel
    location_name: str

    @property
    def quantities(self) -> Quantities:
        return quantities_of(self.level)


@dataclass(frozen=True, slots=True)
class IncomingView:
    """A production batch of the SKU not received yet, with its location's name."""

    batch: IncomingBatch
    location_name: str


@dataclass(frozen=True, slots=True)
class SkuStock:
    sku: str
    variant_id: str
    levels: list[LevelView]
    # Batches being made, soonest first (``inventory.batches``); not part of any count.
    incoming: list[IncomingView] = field(default_factory=list)

    @property
    def is_tracked(self) -> bool:
        """Stock is kept for the variant once it has a level anywhere (``docs/inventory.md``)."""
        return bool(self.levels)

    @property
    def total(self) -> Quantities:
        total = Quantities(on_hand=0, reserved=0, allocated=0, safety_stock=0)
        for view in self.levels:
            total = total + view.quantities
        return total

    @property
    def available(self) -> int:
        return sum(view.quantities.available for view in self.levels)


async def stock_for_sku(session: AsyncSession, *, creator_id: str, sku: str) -> SkuStock:
    """The SKU's stock at each location (in the order holds draw from them) and in total.

    Raises:
        SkuNotFound.
    """
    variant = await variant_for_sku(session, creator_id=creator_id, sku=sku)
    rows = await session.execute(
        select(StockLevel, Location.name)
        .join(Location, Location.id == StockLevel.location_id)
        .where(StockLevel.variant_id == variant.id)
        .order_by(StockLevel.location_id)
        .execution_options(populate_existing=True)
    )
    levels = [LevelView(level=level, location_name=name) for level, name in rows]
    incoming = await session.execute(
        select(IncomingBatch, Location.name)
        .join(Location, Location.id == IncomingBatch.location_id)
        .where(IncomingBatch.variant_id == variant.id, IncomingBatch.status == "incoming")
        .order_by(IncomingBatch.expected_on, IncomingBatch.id)
    )
    return SkuStock(
        sku=variant.sku,
        variant_id=variant.id,
        levels=levels,
        incoming=[IncomingView(batch=batch, location_name=name) for batch, name in incoming],
    )


async def list_levels(session: AsyncSession, *, creator_id: str, limit: int) -> list[LevelView]:
    """The creator's stock levels (one per SKU and location), by SKU then location: the
    dashboard's inventory page. At most ``limit``."""
    rows = await session.execute(
        select(StockLevel, Location.name)
        .join(Location, Location.id == StockLevel.location_id)
        .where(StockLevel.creator_id == creator_id)
        .order_by(StockLevel.sku, StockLevel.location_id)
        .limit(limit)
    )
    return [LevelView(level=level, location_name=name) for level, name in rows]


async def adjust(
    session: AsyncSession,
    *,
    creator_id: str,
    sku: str,
    location_id: str,
    delta: int | None,
    set_to: int | None,
    kind: AdjustmentKind,
    reason: str | None,
    actor: str,
    now: datetime,
    safety_stock: int | None = None,
    low_stock_threshold: int | None = None,
    reference: str | None = None,
) -> SkuStock:
    """Change the SKU's ``on_hand`` at a location by ``delta``, or ``set_to`` a count, and
    optionally its ``safety_stock`` and ``low_stock_threshold``. The level is created at
    its first adjustment (from then on the variant is tracked). A count (``set_to``) is
    turned into a delta under the level's lock, so a sale between reading and writing is
    never lost. ``reference`` is kept on the movement (a received batch's id).

    Raises:
        SkuNotFound, LocationNotFound, StockCommitted (``on_hand`` would fall below the
        units held or paid for).
    """
    variant = await variant_for_sku(session, creator_id=creator_id, sku=sku)
    await get_location(session, creator_id=creator_id, location_id=location_id)
    level_id = await ensure_level(session, variant=variant, location_id=location_id, now=now)
    if set_to is not None:
        locked = (await lock_levels(session, [level_id]))[level_id]
        delta = delta_for(on_hand=locked.on_hand, delta=None, set_to=set_to)
    if delta:
        if reason is None:
            raise ValueError("a change of on hand needs its reason")
        changed = await _change_on_hand(
            session,
            level_id=level_id,
            delta=delta,
            kind=kind,
            reason=reason,
            actor=actor,
            now=now,
            reference=reference,
        )
        if changed is None:
            level = (await lock_levels(session, [level_id]))[level_id]
            committed = quantities_of(level).committed
            raise StockCommitted(
                f"{sku} at {location_id} has {level.on_hand} on hand and {committed} of them "
                f"held in checkouts or paid for; on hand cannot go below {committed} "
                f"(the change was {delta:+d})",
                sku=sku,
                on_hand=level.on_hand,
                committed=committed,
            )
    settings: dict[str, Any] = {}
    if safety_stock is not None:
        settings["safety_stock"] = safety_stock
    if low_stock_threshold is not None:
        settings["low_stock_threshold"] = low_stock_threshold
    if settings:
        await session.execute(
            update(StockLevel)
            .where(StockLevel.id == level_id)
            .values(**settings, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    if (delta or 0) > 0 or safety_stock is not None:
        # Units may have come back for a sold-out drop's waitlist.
        await waitlists.units_returned(session, variant_ids=[variant.id], now=now)
    return await stock_for_sku(session, creator_id=creator_id, sku=sku)


async def set_counted(
    session: AsyncSession,
    *,
    level: StockLevel,
    count: int,
    reason: str,
    actor: str,
    now: datetime,
) -> bool:
    """Set a level the caller locked (``lock_levels``, so its ``on_hand`` is current) to a
    counted ``on_hand``: one ``adjusted`` movement, or none when the count is what the
    books say. For many levels at once (an import) without ``adjust``'s look-ups per row.
    Returns whether on hand changed.

    Raises:
        StockCommitted: the count is below the units held or paid for.
    """
    delta = count - level.on_hand
    if not delta:
        return False
    changed = await _change_on_hand(
        session,
        level_id=level.id,
        delta=delta,
        kind="adjusted",
        reason=reason,
        actor=actor,
        now=now,
    )
    if changed is None:
        committed = quantities_of(level).committed
        raise StockCommitted(
            f"{level.sku} at {level.location_id} has {committed} units held in checkouts or "
            f"paid for; on hand cannot be counted as {count}",
            sku=level.sku,
            on_hand=level.on_hand,
            committed=committed,
        )
    return True


async def transfer(
    session: AsyncSession,
    *,
    creator_id: str,
    sku: str,
    from_location_id: str,
    to_location_id: str,
    quantity: int,
    reason: str,
    actor: str,
    now: datetime,
) -> SkuStock:
    """Move ``quantity`` free units of the SKU between two locations: two ``transferred``
    movements with one reference. Only units that are available at the source move
    (never ones held, paid for or kept as safety stock).

    Raises:
        SkuNotFound, LocationNotFound, SameLocation, InsufficientStock.
    """
    if from_location_id == to_location_id:
        raise SameLocation(f"from_location and to_location are both {from_location_id}")
    variant = await variant_for_sku(session, creator_id=creator_id, sku=sku)
    for location_id in (from_location_id, to_location_id):
        await get_location(session, creator_id=creator_id, location_id=location_id)
    source = await ensure_level(session, variant=variant, location_id=from_location_id, now=now)
    target = await ensure_level(session, variant=variant, location_id=to_location_id, now=now)
    reference = new_id("trf")
    # Both rows change in primary-key order.
    for level_id in sorted((source, target)):
        delta = -quantity if level_id == source else quantity
        changed = await _change_on_hand(
            session,
            level_id=level_id,
            delta=delta,
            kind="transferred",
            reason=reason,
            actor=actor,
            now=now,
            reference=reference,
            keep_free=level_id == source,
        )
        if changed is None:
            level = (await lock_levels(session, [source]))[source]
            free = quantities_of(level).available
            raise InsufficientStock(
                f"{sku} has {free} available at {from_location_id}; cannot move {quantity}",
                sku=sku,
                available=free,
            )
    return await stock_for_sku(session, creator_id=creator_id, sku=sku)


async def list_movements(
    session: AsyncSession, *, creator_id: str, sku: str, limit: int, starting_after: str | None
) -> Page[StockMovement]:
    """The SKU's movements at every location, newest first.

    Raises:
        SkuNotFound.
    """
    variant = await variant_for_sku(session, creator_id=creator_id, sku=sku)
    return await paginate(
        session,
        select(StockMovement).where(
            StockMovement.creator_id == creator_id, StockMovement.variant_id == variant.id
        ),
        id_column=StockMovement.id,
        limit=limit,
        starting_after=starting_after,
    )


async def available_by_variant(
    session: AsyncSession, *, variant_ids: Sequence[str]
) -> dict[str, int]:
    """What each tracked variant among ``variant_ids`` has available to sell now, summed
    over its locations (the quantity a hold may take). An untracked variant (no level
    anywhere) is left out: it never runs out."""
    if not variant_ids:
        return {}
    levels = (
        await session.execute(
            select(StockLevel).where(StockLevel.variant_id.in_(sorted(set(variant_ids))))
        )
    ).scalars()
    available: dict[str, int] = {}
    for level in levels:
        available[level.variant_id] = (
            available.get(level.variant_id, 0) + quantities_of(level).available
        )
    return available


async def sell_free(
    session: AsyncSession,
    *,
    variant_id: str,
    quantity: int,
    reason: str,
    actor: str,
    reference: str,
    now: datetime,
) -> dict[int, int] | None:
    """Take ``quantity`` free units of a variant out of stock for an order placed and
    shipped elsewhere (a channel's, ``docs/channels.md``): ``on_hand`` falls on its levels
    by conditional updates (``… WHERE available >= n``), drawn as a hold draws them, the
    levels in primary-key order, each with a ``sold`` movement naming ``reference``.

    Returns the units taken per level id (empty for a variant with no stock levels: it
    is not tracked), or None when too few are free — then nothing changed. A plan that a
    concurrent change spoils (a hold took units from one of its levels) is made again
    once with the levels locked, so an order is never refused while enough are free."""
    for locked in (False, True):
        rows = (
            await session.execute(
                select(*LEVEL_COLUMNS)
                .where(StockLevel.variant_id == variant_id)
                .order_by(StockLevel.location_id, StockLevel.id)
            )
        ).all()
        if not rows:
            return {}
        if locked:
            await lock_levels(session, [row.id for row in rows])
            rows = (
                await session.execute(
                    select(*LEVEL_COLUMNS)
                    .where(StockLevel.variant_id == variant_id)
                    .order_by(StockLevel.location_id, StockLevel.id)
                )
            ).all()
        plan = plan_takes([(row.id, state_of(row).quantities.available) for row in rows], quantity)
        if plan is None:
            return None
        taken: dict[int, int] = {}
        async with session.begin_nested() as savepoint:
            for take in in_key_order(plan):
                level = await _change_on_hand(
                    session,
                    level_id=take.level_id,
                    delta=-take.quantity,
                    kind="sold",
                    reason=reason,
                    actor=actor,
                    reference=reference,
                    now=now,
                    keep_free=True,
                )
                if level is None:
                    await savepoint.rollback()
                    break
                taken[take.level_id] = take.quantity
            else:
                return taken
    return None


async def restock(
    session: AsyncSession,
    *,
    taken: dict[int, int],
    reason: str,
    actor: str,
    reference: str,
    now: datetime,
) -> None:
    """Put back units ``sell_free`` took (the order was cancelled), each level with a
    ``returned`` movement, in key order."""
    for level_id in sorted(taken):
        await _change_on_hand(
            session,
            level_id=level_id,
            delta=taken[level_id],
            kind="returned",
            reason=reason,
            actor=actor,
            reference=reference,
            now=now,
        )
