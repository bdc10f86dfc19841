"""Applying a spreadsheet import, all rows or none, and receiving production batches.

The file is read and checked by ``spreadsheets`` (pure); here the rows meet the database:
each SKU and location must exist, and a count may not fall below the units held in
checkouts or paid for. Every such problem of every row is collected first and raised at
once as ``InvalidSpreadsheet`` (422, ``rows.<n>.<column>``) before anything is changed,
and the caller's unit of work rolls back whatever a later failure leaves behind, so an
import changes everything or nothing (``docs/spreadsheets.md``).

Stock counts set on-hand through ``stock.set_counted`` (an ``adjusted`` movement whose
reason is ``import <file name>``); production batches become ``IncomingBatch`` rows, shown as
``incoming`` on the SKU until ``receive_batch`` turns one into stock (a ``received``
movement referencing the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.catalog.models import Variant
from stallholder.inventory import stock
from stallholder.inventory.models import IncomingBatch, Location
from stallholder.kit.errors import Conflict, NotFound
from stallholder.kit.ids import new_id
from stallholder.spreadsheets.inventory import ProductionBatch, StockCount, TemplateKind
from stallholder.spreadsheets.sheets import InvalidSpreadsheet, SheetError, SheetResult

# Called once per row applied (a CLI's progress bar); the caller knows the total.
Advance = Callable[[], None]
# Keeps SQL parameter lists short on every database.
_CHUNK = 500
_REASON_LENGTH = 500
Row = TypeVar("Row", StockCount, ProductionBatch)


class BatchNotFound(NotFound):
    slug = "batch-not-found"
    title = "No such production batch"


class BatchAlreadyReceived(Conflict):
    slug = "batch-already-received"
    title = "This production batch was received already"


@dataclass(frozen=True, slots=True)
class ImportSummary:
    """What an applied import did. Stock counts: ``changed`` levels and ``unchanged`` ones
    (the count was what the books said). Batches: ``created`` and ``updated`` (a batch id
    and SKU imported before and not received yet takes the file's quantity, date and
    location)."""

    kind: TemplateKind
    file_name: str
    rows: int
    changed: int = 0
    unchanged: int = 0
    created: int = 0
    updated: int = 0


def import_reason(file_name: str, note: str | None = None) -> str:
    """The reason kept on an imported count's movement."""
    reason = f"import {file_name}" + (f": {note}" if note else "")
    return reason[:_REASON_LENGTH]


async def _variants_by_sku(
    session: AsyncSession, *, creator_id: str, skus: set[str]
) -> dict[str, Variant]:
    """The creator's variants by lower-cased SKU. People type SKUs in any case; an exact
    match wins over one differing only in case."""
    found: dict[str, Variant] = {}
    lowered = sorted({sku.lower() for sku in skus})
    for start in range(0, len(lowered), _CHUNK):
        rows = await session.execute(
            select(Variant).where(
                Variant.creator_id == creator_id,
                func.lower(Variant.sku).in_(lowered[start : start + _CHUNK]),
            )
        )
        for variant in rows.scalars():
            key = variant.sku.lower()
            if key not in found or variant.sku in skus:
                found[key] = variant
    return found


async def _locations(session: AsyncSession, *, creator_id: str) -> dict[str, Location]:
    """The creator's locations by id and by lower-cased name."""
    rows = await session.execute(select(Location).where(Location.creator_id == creator_id))
    by_key: dict[str, Location] = {}
    for location in rows.scalars():
        by_key[location.id] = location
        by_key[location.name.lower()] = location
    return by_key


@dataclass(frozen=True, slots=True)
class _Resolved:
    variant: Variant
    location: Location


async def _resolve(
    session: AsyncSession,
    *,
    creator_id: str,
    rows: Sequence[tuple[int, str, str]],
    errors: list[SheetError],
) -> dict[int, _Resolved]:
    """Each row's (number, SKU, location) resolved; a problem in ``errors`` for each
    unknown SKU or location."""
    variants = await _variants_by_sku(
        session, creator_id=creator_id, skus={sku for _, sku, _ in rows}
    )
    locations = await _locations(session, creator_id=creator_id)
    resolved: dict[int, _Resolved] = {}
    for number, sku, location_key in rows:
        variant = variants.get(sku.lower())
        location = locations.get(location_key) or locations.get(location_key.lower())
        if variant is None:
            errors.append(SheetError(number, "sku", f"none of your variants has the SKU {sku!r}"))
        if location is None:
            errors.append(
                SheetError(number, "location", f"you have no location named {location_key!r}")
            )
        if variant is not None and location is not None:
            resolved[number] = _Resolved(variant, location)
    return resolved


def _refuse(errors: list[SheetError]) -> None:
    if errors:
        raise InvalidSpreadsheet.from_errors(sorted(errors))


def _numbered(sheet: SheetResult[Row]) -> list[tuple[int, Row]]:
    if not sheet.is_valid:
        raise InvalidSpreadsheet.from_errors(sheet.errors)
    return list(zip(sheet.row_numbers, sheet.rows, strict=True))


async def apply_stock_counts(
    session: AsyncSession,
    *,
    creator_id: str,
    sheet: SheetResult[StockCount],
    file_name: str,
    actor: str,
    now: datetime,
    advance: Advance | None = None,
) -> ImportSummary:
    """Set each row's SKU at its location to the counted ``on_hand``.

    Every level the file names is locked first, in primary-key order (as every writer of
    several levels does), so no sale slips between the check and the change.

    Raises:
        InvalidSpreadsheet: the sheet had problems, or rows name an unknown SKU or
            location, or count fewer than the units held in checkouts or paid for; every
            such row and column is listed and nothing is changed.
    """
    numbered = _numbered(sheet)
    errors: list[SheetError] = []
    resolved = await _resolve(
        session,
        creator_id=creator_id,
        rows=[(number, row.sku, row.location) for number, row in numbered],
        errors=errors,
    )
    # Levels made here for a file that is then refused go with the rolled-back unit of work.
    by_pair = await stock.ensure_levels(
        session,
        wanted=[(target.variant, target.location.id) for target in resolved.values()],
        now=now,
    )
    level_ids = {
        number: by_pair[(target.variant.id, target.location.id)]
        for number, target in resolved.items()
    }
    levels = await stock.lock_levels(session, list(level_ids.values()))
    for number, row in numbered:
        if number not in level_ids:
            continue
        committed = stock.quantities_of(levels[level_ids[number]]).committed
        if row.on_hand < committed:
            errors.append(
                SheetError(
                    number,
                    "on_hand",
                    f"{committed} of {row.sku} at {row.location} are held in checkouts or "
                    f"paid for; the count cannot be below {committed}",
                )
            )
    _refuse(errors)
    changed = 0
    for number, row in numbered:
        if await stock.set_counted(
            session,
            level=levels[level_ids[number]],
            count=row.on_hand,
            reason=import_reason(file_name, row.note),
            actor=actor,
            now=now,
        ):
            changed += 1
        if advance is not None:
            advance()
    return ImportSummary(
        kind=TemplateKind.STOCK_COUNTS,
        file_name=file_name,
        rows=len(numbered),
        changed=changed,
        unchanged=len(numbered) - changed,
    )


async def apply_production_batches(
    session: AsyncSession,
    *,
    creator_id: str,
    sheet: SheetResult[ProductionBatch],
    file_name: str,
    now: datetime,
    advance: Advance | None = None,
) -> ImportSummary:
    """Record each row as an incoming batch of its SKU; a batch id and SKU imported
    before and not yet received is updated to the file's quantity, date and location.

    Raises:
        InvalidSpreadsheet: the sheet had problems, or rows name an unknown SKU or
            location, or a batch that was received already; nothing is changed.
    """
    numbered = _numbered(sheet)
    errors: list[SheetError] = []
    resolved = await _resolve(
        session,
        creator_id=creator_id,
        rows=[(number, row.sku, row.location) for number, row in numbered],
        errors=errors,
    )
    refs = sorted({row.batch_id for _, row in numbered})
    existing: dict[tuple[str, str], IncomingBatch] = {}
    for start in range(0, len(refs), _CHUNK):
        rows = await session.execute(
            select(IncomingBatch)
            .where(
                IncomingBatch.creator_id == creator_id,
                IncomingBatch.batch_ref.in_(refs[start : start + _CHUNK]),
            )
            .with_for_update()
        )
        for batch in rows.scalars():
            existing[(batch.batch_ref, batch.variant_id)] = batch
    for number, row in numbered:
        target = resolved.get(number)
        before = existing.get((row.batch_id, target.variant.id)) if target else None
        if before is not None and before.status != "incoming":
            errors.append(
                SheetError(
                    number,
                    "batch_id",
                    f"batch {row.batch_id} of {row.sku} was received already; "
                    "give a new batch its own id",
                )
            )
    _refuse(errors)
    created = updated = 0
    for number, row in numbered:
        target = resolved[number]
        before = existing.get((row.batch_id, target.variant.id))
        if before is None:
            session.add(
                IncomingBatch(
                    id=new_id("bat"),
                    creator_id=creator_id,
                    batch_ref=row.batch_id,
                    variant_id=target.variant.id,
                    sku=target.variant.sku,
                    location_id=target.location.id,
                    quantity=row.quantity,
                    expected_on=row.expected_ready_date,
                    status="incoming",
                    created_at=now,
                    updated_at=now,
                )
            )
            created += 1
        else:
            before.quantity = row.quantity
            before.expected_on = row.expected_ready_date
            before.location_id = target.location.id
            before.updated_at = now
            updated += 1
        if advance is not None:
            advance()
    await session.flush()
    return ImportSummary(
        kind=TemplateKind.PRODUCTION_BATCHES,
        file_name=file_name,
        rows=len(numbered),
        created=created,
        updated=updated,
    )


async def get_batch(session: AsyncSession, *, creator_id: str, batch_id: str) -> IncomingBatch:
    batch = await session.get(IncomingBatch, batch_id)
    if batch is None or batch.creator_id != creator_id:
        raise BatchNotFound(f"no production batch {batch_id!r}")
    return batch


async def receive_batch(
    session: AsyncSession,
    *,
    creator_id: str,
    batch_id: str,
    quantity: int | None,
    actor: str,
    now: datetime,
) -> IncomingBatch:
    """The batch's pieces arrived: ``quantity`` of them (the batch's planned quantity when
    None; a firing can yield fewer) are added to on-hand at its location with a
    ``received`` movement referencing the batch, and it leaves ``incoming``. The status
    changes by a conditional update, so a batch is received once however often this runs.

    Raises:
        BatchNotFound, BatchAlreadyReceived.
    """
    batch = await get_batch(session, creator_id=creator_id, batch_id=batch_id)
    received = batch.quantity if quantity is None else quantity
    claimed = (
        await session.execute(
            update(IncomingBatch)
            .where(IncomingBatch.id == batch_id, IncomingBatch.status == "incoming")
            .values(status="received", received_quantity=received, received_at=now, updated_at=now)
            .returning(IncomingBatch.id)
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if claimed is None:
        raise BatchAlreadyReceived(
            f"batch {batch.batch_ref} of {batch.sku} was received already", batch=batch_id
        )
    variant = await session.get(Variant, batch.variant_id)
    assert variant is not None
    if received:
        await stock.adjust(
            session,
            creator_id=creator_id,
            sku=variant.sku,
            location_id=batch.location_id,
            delta=received,
            set_to=None,
            kind="received",
            reason=f"batch {batch.batch_ref} received",
            actor=actor,
            now=now,
            reference=batch.id,
        )
    await session.refresh(batch)
    return batch
