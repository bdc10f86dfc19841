"""Holds on stock for checkout sessions: held → allocated → shipped, or held → released;
a refund with restock turns allocated into restocked and shipped into returned.

A checkout session with tracked items holds their units from the moment it is created
(``hold``); expiring or cancelling it gives them back (``release``); paying for it turns
the hold into an allocation (``allocate``); a refund with ``restock`` returns the
allocation, or takes shipped units back (``restock``); shipping the order turns the
allocation into a ``sold`` movement (``ship``). Each step is a conditional update of the
reservations' status (only the caller that moves a reservation moves its units) followed
by atomic updates of the stock levels in primary-key order (ADR 0012, ``docs/inventory.md``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Exists, Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from stallholder.catalog.models import Variant
from stallholder.inventory.models import StockLevel, StockReservation
from stallholder.inventory.quantities import (
    Quantities,
    Take,
    in_key_order,
    plan_takes,
    total_available,
)
from stallholder.inventory.stock import (
    LEVEL_COLUMNS,
    MovementKind,
    record_movement,
    report_crossing,
    state_of,
)
from stallholder.kit.db import defer_until_commit
from stallholder.kit.errors import Conflict


class OutOfStock(Conflict):
    slug = "out-of-stock"
    title = "Not enough stock"


@dataclass(frozen=True, slots=True)
class Want:
    """``quantity`` units of a variant for a checkout session."""

    variant_id: str
    sku: str
    quantity: int


def _out_of_stock(sku: str, *, wanted: int, left: int) -> OutOfStock:
    return OutOfStock(
        f"{sku} has {left} left; {wanted} asked for. Lower the quantity to at most {left}"
        if left
        else f"{sku} is sold out ({wanted} asked for)",
        sku=sku,
        available=left,
        requested=wanted,
    )


async def _levels_of(session: AsyncSession, variant_ids: Sequence[str]) -> list[Row[Any]]:
    """The variants' stock levels in the order holds draw from locations (their creation
    order, which their ids sort in), read without a lock: the plan made from them is
    checked by each conditional update."""
    return list(
        await session.execute(
            select(*LEVEL_COLUMNS, StockLevel.variant_id)
            .where(StockLevel.variant_id.in_(sorted(set(variant_ids))))
            .order_by(StockLevel.variant_id, StockLevel.location_id)
        )
    )


async def _available_now(session: AsyncSession, *, variant_id: str) -> int:
    rows = await session.execute(select(*LEVEL_COLUMNS).where(StockLevel.variant_id == variant_id))
    return total_available([state_of(row).quantities for row in rows])


def is_tracked(product_id: ColumnElement[str] | InstrumentedAttribute[str]) -> Exists:
    """Whether any variant of the product has stock somewhere (so a session for it holds
    units), as an ``EXISTS`` to read with the price in one statement."""
    return (
        select(StockLevel.id)
        .join(Variant, Variant.id == StockLevel.variant_id)
        .where(Variant.product_id == product_id)
        .correlate_except(StockLevel, Variant)
        .exists()
    )


async def hold(
    session: AsyncSession,
    *,
    creator_id: str,
    checkout_session_id: str,
    wants: Sequence[Want],
    now: datetime,
    at_commit: bool = False,
) -> int:
    """Hold the units of every tracked variant in ``wants`` for the session; untracked
    variants (no stock level anywhere) are not held. Returns the number of units held.

    The reservations are written first; then each level's ``reserved`` grows by one
    conditional update (``… WHERE available >= n``), the levels in primary-key order, last
    so their rows stay locked for as little of the transaction as possible. The first
    update that finds too little raises, and the caller's unit of work rolls back the
    holds made before it. With ``at_commit`` the updates are deferred to the unit of
    work's commit (``kit.db.defer_until_commit``, ADR 0024), which then raises their
    errors, and the reservations are left to the session's flush (the commit's at the
    latest, which runs before the deferred updates).

    Raises:
        OutOfStock: naming the SKU and what it has left.
    """
    wanted: dict[str, int] = defaultdict(int)
    skus: dict[str, str] = {}
    for want in wants:
        wanted[want.variant_id] += want.quantity
        skus[want.variant_id] = want.sku
    levels = await _levels_of(session, list(wanted))
    by_variant: dict[str, list[Row[Any]]] = defaultdict(list)
    for level in levels:
        by_variant[level.variant_id].append(level)
    takes: list[Take] = []
    sku_of_level: dict[int, str] = {}
    variant_of_level: dict[int, str] = {}
    for variant_id, rows in by_variant.items():
        plan = plan_takes(
            [(row.id, state_of(row).quantities.available) for row in rows], wanted[variant_id]
        )
        if plan is None:
            left = total_available([state_of(row).quantities for row in rows])
            raise _out_of_stock(skus[variant_id], wanted=wanted[variant_id], left=left)
        takes += plan
        for row in rows:
            sku_of_level[row.id] = row.sku
            variant_of_level[row.id] = variant_id
    if not takes:
        return 0
    # The reservations first, the conditional updates of the (hot) levels last: a level's
    # row stays locked for as little of the transaction as possible. A failed update
    # raises, and the rollback takes the reservations back too.
    session.add_all(
        StockReservation(
            creator_id=creator_id,
            checkout_session_id=checkout_session_id,
            stock_level_id=take.level_id,
            sku=sku_of_level[take.level_id],
            quantity=take.quantity,
            status="held",
            created_at=now,
            updated_at=now,
        )
        for take in in_key_order(takes)
    )
    if not at_commit:
        await session.flush()

    async def take_all(last: AsyncSession) -> None:
        for take in in_key_order(takes):
            await _take(
                last,
                take=take,
                sku=sku_of_level[take.level_id],
                variant_id=variant_of_level[take.level_id],
                wanted=wanted[variant_of_level[take.level_id]],
                now=now,
            )

    if at_commit:
        defer_until_commit(session, take_all)
    else:
        await take_all(session)
    return sum(take.quantity for take in takes)


async def _take(
    session: AsyncSession, *, take: Take, sku: str, variant_id: str, wanted: int, now: datetime
) -> None:
    n = take.quantity
    row = (
        await session.execute(
            update(StockLevel)
            .where(
                StockLevel.id == take.level_id,
                StockLevel.on_hand
                - StockLevel.reserved
                - StockLevel.allocated
                - StockLevel.safety_stock
                >= n,
            )
            .values(reserved=StockLevel.reserved + n, updated_at=now)
            .returning(*LEVEL_COLUMNS)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        # A concurrent buyer took them since the plan was made.
        left = await _available_now(session, variant_id=variant_id)
        raise _out_of_stock(sku, wanted=wanted, left=left)
    level = state_of(row)
    after = level.quantities
    before = Quantities(
        on_hand=after.on_hand,
        reserved=after.reserved - n,
        allocated=after.allocated,
        safety_stock=after.safety_stock,
    )
    await report_crossing(session, level=level, before=before.available, now=now)


async def _move(
    session: AsyncSession,
    moved: Sequence[Row[Any]],
    *,
    reserved: int,
    allocated: int,
    now: datetime,
) -> int:
    """Apply the counts of the reservations just moved to their levels, in primary-key
    order: per unit, ``reserved`` and ``allocated`` change by the given signs."""
    per_level: dict[int, int] = defaultdict(int)
    for row in moved:
        per_level[row.stock_level_id] += row.quantity
    for level_id in sorted(per_level):
        n = per_level[level_id]
        await session.execute(
            update(StockLevel)
            .where(StockLevel.id == level_id)
            .values(
                reserved=StockLevel.reserved + reserved * n,
                allocated=StockLevel.allocated + allocated * n,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    return sum(per_level.values())


async def _set_status(
    session: AsyncSession,
    *,
    where: Sequence[Any],
    from_status: str,
    to_status: str,
    now: datetime,
    order_id: str | None = None,
) -> list[Row[Any]]:
    values: dict[str, Any] = {"status": to_status, "updated_at": now}
    if order_id is not None:
        values["order_id"] = order_id
    return list(
        await session.execute(
            update(StockReservation)
            .where(*where, StockReservation.status == from_status)
            .values(**values)
            .returning(
                StockReservation.stock_level_id, StockReservation.quantity, StockReservation.sku
            )
            .execution_options(synchronize_session=False)
        )
    )


async def release(session: AsyncSession, *, checkout_session_id: str, now: datetime) -> int:
    """Give back the session's held units (it expired or was cancelled). Returns how many;
    0 when nothing was held (or it was released already)."""
    moved = await _set_status(
        session,
        where=[StockReservation.checkout_session_id == checkout_session_id],
        from_status="held",
        to_status="released",
        now=now,
    )
    return await _move(session, moved, reserved=-1, allocated=0, now=now)


async def allocate(
    session: AsyncSession, *, checkout_session_id: str, order_id: str, now: datetime
) -> int:
    """The session was paid: its held units become the order's allocation. Returns how
    many units."""
    moved = await _set_status(
        session,
        where=[StockReservation.checkout_session_id == checkout_session_id],
        from_status="held",
        to_status="allocated",
        now=now,
        order_id=order_id,
    )
    return await _move(session, moved, reserved=-1, allocated=+1, now=now)


async def restock(session: AsyncSession, *, order_id: str, refund_id: str, now: datetime) -> int:
    """A refund returns the order's units to sale. Units not shipped yet leave the
    allocation at once; shipped units come back with a ``returned`` movement (``on_hand``
    rises; its reference is the refund), as a restock on a refund of fulfilled items does on
    Shopify. Returns how many; 0 when the order holds none (untracked items, or restocked
    already)."""
    unshipped = await _set_status(
        session,
        where=[StockReservation.order_id == order_id],
        from_status="allocated",
        to_status="restocked",
        now=now,
    )
    count = await _move(session, unshipped, reserved=0, allocated=-1, now=now)
    returned = await _set_status(
        session,
        where=[StockReservation.order_id == order_id],
        from_status="shipped",
        to_status="returned",
        now=now,
    )
    moved = await _change_on_hand_of(
        session,
        returned,
        sign=+1,
        kind="returned",
        reason="refund with restock",
        actor="system",
        reference=refund_id,
        now=now,
    )
    return count + sum(moved.values())


async def ship(
    session: AsyncSession, *, order_id: str, shipment_id: str, actor: str, now: datetime
) -> dict[str, int]:
    """The order's allocated units left the shelf: each level's ``on_hand`` and
    ``allocated`` fall together, with a ``sold`` movement whose reference is the shipment.
    Returns the units per SKU; empty when nothing was allocated (untracked items, or
    shipped or restocked already)."""
    moved = await _set_status(
        session,
        where=[StockReservation.order_id == order_id],
        from_status="allocated",
        to_status="shipped",
        now=now,
    )
    return await _change_on_hand_of(
        session,
        moved,
        sign=-1,
        kind="sold",
        reason="shipped",
        actor=actor,
        reference=shipment_id,
        now=now,
    )


async def _change_on_hand_of(
    session: AsyncSession,
    moved: Sequence[Row[Any]],
    *,
    sign: int,
    kind: MovementKind,
    reason: str,
    actor: str,
    reference: str,
    now: datetime,
) -> dict[str, int]:
    """``on_hand`` of the reservations just moved changes by ``sign`` per unit, in
    primary-key order, with one movement per level. Shipping (``sign`` −1) takes the units
    from the allocation as well; a return (+1) puts them on the shelf, free."""
    per_level: dict[int, int] = defaultdict(int)
    per_sku: dict[str, int] = defaultdict(int)
    for reservation in moved:
        per_level[reservation.stock_level_id] += reservation.quantity
        per_sku[reservation.sku] += reservation.quantity
    for level_id in sorted(per_level):
        delta = sign * per_level[level_id]
        values: dict[str, Any] = {"on_hand": StockLevel.on_hand + delta, "updated_at": now}
        if sign < 0:
            values["allocated"] = StockLevel.allocated + delta
        row = (
            await session.execute(
                update(StockLevel)
                .where(StockLevel.id == level_id)
                .values(**values)
                .returning(*LEVEL_COLUMNS, StockLevel.variant_id)
                .execution_options(synchronize_session=False)
            )
        ).one()
        record_movement(
            session,
            level=state_of(row),
            variant_id=row.variant_id,
            kind=kind,
            delta=delta,
            reason=reason,
            actor=actor,
            reference=reference,
            now=now,
        )
    return dict(per_sku)
