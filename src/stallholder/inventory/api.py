"""HTTP routes for locations and stock."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import ColumnElement

from stallholder.accounts.auth import AnyCreatorDep, SecretCreatorDep
from stallholder.inventory import drops, imports, raffles, stock, waitlists
from stallholder.inventory.drop_rules import buyer_key
from stallholder.inventory.reservations import OutOfStock
from stallholder.inventory.schemas import (
    AdjustmentCreate,
    BatchOut,
    BatchReceive,
    DrawOut,
    DropCreate,
    DropOut,
    DropUpdate,
    EntryCreate,
    EntryOut,
    ImportOut,
    InventoryOut,
    LocationCreate,
    LocationOut,
    TransferCreate,
    WaitlistCreate,
    WaitlistEntryOut,
    batch_out,
    draw_out,
    drop_out,
    entry_out,
    import_out,
    inventory_out,
    location_out,
    movement_out,
    waitlist_entry_out,
)
from stallholder.kit.http import NowDep, SessionDep, client_ip, rate_limiter_of, settings_of
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.rate_limits import Limit, RateLimited
from stallholder.kit.schemas import ListOut
from stallholder.spreadsheets.inventory import (
    TemplateKind,
    parse_production_batches,
    parse_stock_counts,
    template_file,
)
from stallholder.spreadsheets.sheets import (
    XLSX_MEDIA_TYPE,
    FileFormat,
    InvalidSpreadsheet,
    detect_format,
)

router = APIRouter(prefix="/v1", tags=["inventory"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
# Who a movement made through the API is recorded as.
API_ACTOR = "secret_key"


@documents(
    OutOfStock,
    drops.DropNotOpen,
    drops.DropClosed,
    drops.DropLimitReached,
    drops.DropBuyerEmailRequired,
    raffles.RaffleNotDrawn,
    raffles.NoRaffleOffer,
    raffles.RaffleOneUnit,
)
async def holds_stock() -> None:
    """Documents the problems of a route that holds stock (creating a checkout session):
    409 ``out-of-stock`` names the SKU and what it has left; a drop's price adds the
    drop's window and per-customer limit."""


@documents(RateLimited)
async def rate_limited() -> None:
    """Documents the 429 ``rate-limited`` of a route limited per IP and per buyer."""


async def admit_to_drop(
    request: Request,
    *,
    email: str | None,
    customer_id: str | None = None,
    now: datetime,
    only_if: ColumnElement[bool] | None = None,
) -> None:
    """Count one drop request (a raffle entry, a waitlist signup, a checkout session for
    a drop's price) against the limits per client IP and per buyer (normalised email, or
    the customer id when there is no email): one statement, committed on its own
    (docs/inventory.md#rate-limits).

    Raises:
        RateLimited: 429 with ``Retry-After``.
    """
    settings = settings_of(request)
    limits = [
        Limit(
            key=f"ip:{client_ip(request)}",
            limit=settings.drop_rate_limit_per_ip,
            what="from this address",
        )
    ]
    buyer = buyer_key(email) if email else (f"customer:{customer_id}" if customer_id else None)
    if buyer is not None:
        limits.append(
            Limit(
                key=f"buyer:{buyer}",
                limit=settings.drop_rate_limit_per_buyer,
                what="for this buyer",
            )
        )
    await rate_limiter_of(request).hit(limits, now=now, only_if=only_if)


@documents(stock.SkuNotFound, stock.LocationNotFound)
async def names_stock() -> None:
    """Documents the problems of a route that names a SKU and a location."""


@documents(stock.StockCommitted)
async def adjusts_stock() -> None:
    """Documents the problems of an adjustment."""


@documents(stock.SameLocation, stock.InsufficientStock)
async def transfers_stock() -> None:
    """Documents the problems of a transfer."""


@documents(stock.LocationNameTaken)
async def names_a_location() -> None:
    """Documents the 409 of a location whose name is taken."""


@router.post(
    "/locations",
    status_code=201,
    response_model=LocationOut,
    dependencies=[Depends(names_a_location)],
)
async def create_location(
    body: LocationCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> LocationOut:
    """A place stock is kept (a workshop, a fulfilment partner). Holds draw from your
    locations in the order you created them."""
    location = await stock.create_location(session, creator_id=creator_id, name=body.name, now=now)
    return location_out(location)


@router.get("/locations", response_model=ListOut)
async def list_locations(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await stock.list_locations(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[location_out(loc) for loc in page.data], has_more=page.has_more)


@router.get("/inventory/{sku}", response_model=InventoryOut, dependencies=[Depends(names_stock)])
async def get_inventory(
    sku: str, creator_id: SecretCreatorDep, session: SessionDep
) -> InventoryOut:
    """The SKU's stock at each location and in total. ``tracked`` is false until the
    variant has stock somewhere: an untracked variant is sold without limit."""
    return inventory_out(await stock.stock_for_sku(session, creator_id=creator_id, sku=sku))


@router.post(
    "/inventory/adjustments",
    response_model=InventoryOut,
    dependencies=[Depends(names_stock), Depends(adjusts_stock)],
)
async def adjust_inventory(
    body: AdjustmentCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> InventoryOut:
    """Change on-hand stock by ``delta`` or ``set`` it to a count, with a ``reason``; and
    optionally the ``safety_stock`` kept back from sale and the ``low_stock_threshold``
    of ``inventory.low``. On hand never goes below the units held in checkouts or paid
    for (409 ``stock-committed``)."""
    return inventory_out(
        await stock.adjust(
            session,
            creator_id=creator_id,
            sku=body.sku,
            location_id=body.location,
            delta=body.delta,
            set_to=body.set_to,
            kind=body.kind,
            reason=body.reason,
            actor=API_ACTOR,
            now=now,
            safety_stock=body.safety_stock,
            low_stock_threshold=body.low_stock_threshold,
        )
    )


@router.post(
    "/inventory/transfers",
    response_model=InventoryOut,
    dependencies=[Depends(names_stock), Depends(transfers_stock)],
)
async def transfer_inventory(
    body: TransferCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> InventoryOut:
    """Move available units between two of your locations."""
    return inventory_out(
        await stock.transfer(
            session,
            creator_id=creator_id,
            sku=body.sku,
            from_location_id=body.from_location,
            to_location_id=body.to_location,
            quantity=body.quantity,
            reason=body.reason,
            actor=API_ACTOR,
            now=now,
        )
    )


@router.get(
    "/inventory/{sku}/movements", response_model=ListOut, dependencies=[Depends(names_stock)]
)
async def list_movements(
    sku: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The SKU's movement ledger, newest first: every change of on-hand stock with its
    kind, reason, who made it and the on-hand count after it."""
    page = await stock.list_movements(
        session, creator_id=creator_id, sku=sku, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[movement_out(m) for m in page.data], has_more=page.has_more)


@documents(drops.InvalidDropItem, drops.PriceInAnotherDrop)
async def creates_a_drop() -> None:
    """Documents the problems of creating a drop."""


@router.post(
    "/drops", status_code=201, response_model=DropOut, dependencies=[Depends(creates_a_drop)]
)
async def create_drop(
    body: DropCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> DropOut:
    """Release a few one-time prices in a window ``[opens_at, closes_at)``: each sells at
    most its ``quantity``, first come first served; a checkout session holds its units for
    ``reservation_minutes``; ``per_customer_limit`` counts a buyer's open sessions and
    orders by normalised email. Outside the window the prices cannot be bought."""
    view = await drops.create_drop(
        session,
        creator_id=creator_id,
        name=body.name,
        mode=body.mode,
        opens_at=body.opens_at,
        closes_at=body.closes_at,
        per_customer_limit=body.per_customer_limit,
        reservation_minutes=body.reservation_minutes,
        claim_minutes=body.claim_minutes,
        waitlist_hold_minutes=body.waitlist_hold_minutes,
        items=[drops.ItemSpec(price_id=item.price, quantity=item.quantity) for item in body.items],
        now=now,
    )
    return drop_out(view, now=now)


@router.get("/drops/{drop_id}", response_model=DropOut)
async def get_drop(
    drop_id: str, creator_id: AnyCreatorDep, session: SessionDep, now: NowDep
) -> DropOut:
    """The drop's state (``scheduled`` → ``open`` → ``sold_out`` | ``closed``) and what is
    left (secret or publishable key)."""
    return drop_out(await drops.get_drop(session, creator_id=creator_id, drop_id=drop_id), now=now)


@router.get("/drops", response_model=ListOut)
async def list_drops(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The creator's drops, newest first, each with its state and what is left."""
    page = await drops.list_drops_page(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[drop_out(view, now=now) for view in page.data], has_more=page.has_more)


@documents(
    drops.DropNotFound,
    drops.DropNotEditable,
    drops.DropQuantityBelowTaken,
    drops.InvalidDropItem,
)
async def updates_a_drop() -> None:
    """Documents the problems of changing a drop."""


@router.post("/drops/{drop_id}", response_model=DropOut, dependencies=[Depends(updates_a_drop)])
async def update_drop(
    drop_id: str, body: DropUpdate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> DropOut:
    """Change a drop; only the fields sent change. ``name``, ``per_customer_limit``
    (``null``: none), ``reservation_minutes``, ``waitlist_hold_minutes`` and
    ``claim_minutes`` any time (they apply from now on); ``opens_at`` until the drop opens
    (``now`` or later); ``closes_at`` until it closes (a raffle: until its draw), to a
    time after now and after ``opens_at``; ``items: [{price, quantity}]`` the quantity of
    a price already in the drop, any time, never below its held and sold units (a 409
    ``drop-quantity-below-taken`` says how many), a raffle's only before its draw. Units
    added to a sold-out drop go to its waitlist first. Emits ``drop.updated``."""
    changes = body.model_dump(exclude_unset=True)
    if "items" in changes:
        changes["items"] = [
            drops.ItemSpec(price_id=item.price, quantity=item.quantity) for item in body.items or []
        ]
    view = await drops.update_drop(
        session, creator_id=creator_id, drop_id=drop_id, changes=changes, now=now
    )
    return drop_out(view, now=now)


@documents(raffles.DrawNotFound, raffles.DropNotARaffle, raffles.EntriesNotOpen)
async def enters_a_raffle() -> None:
    """Documents the problems of entering a raffle."""


@documents(raffles.DrawNotFound, raffles.DropNotARaffle)
async def reads_a_draw() -> None:
    """Documents the problems of reading a raffle's draw."""


@router.post(
    "/drops/{drop_id}/entries",
    status_code=201,
    response_model=EntryOut,
    dependencies=[Depends(enters_a_raffle), Depends(rate_limited)],
)
async def enter_raffle(
    request: Request,
    drop_id: str,
    body: EntryCreate,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> EntryOut:
    """Enter a raffle drop during its window (secret or publishable key). One entry per
    person by normalised email: entering again returns the same entry. At ``closes_at``
    the draw offers one unit each to as many entrants as there are units. Limited per
    IP and per buyer (429 ``rate-limited`` with ``Retry-After``)."""
    await admit_to_drop(request, email=body.email, now=now)
    entry = await raffles.enter(
        session, creator_id=creator_id, drop_id=drop_id, email=body.email, now=now
    )
    return entry_out(entry)


@router.get("/drops/{drop_id}/draw", response_model=DrawOut, dependencies=[Depends(reads_a_draw)])
async def get_draw(drop_id: str, creator_id: AnyCreatorDep, session: SessionDep) -> DrawOut:
    """The raffle's public record: the seed's SHA-256 from creation on, every entrant's
    pseudonym, and once drawn the seed, the winners and everyone units passed to. Anyone
    can repeat the draw from it (docs/raffles.md)."""
    return draw_out(await raffles.get_draw(session, creator_id=creator_id, drop_id=drop_id))


@documents(
    waitlists.WaitlistDropNotFound,
    waitlists.WaitlistNotAvailable,
    waitlists.WaitlistClosed,
    waitlists.DropNotSoldOut,
    waitlists.PriceNotInDrop,
)
async def joins_a_waitlist() -> None:
    """Documents the problems of signing up to a drop's waitlist."""


@documents(waitlists.WaitlistDropNotFound)
async def reads_a_waitlist() -> None:
    """Documents the problems of reading a drop's waitlist."""


@router.post(
    "/drops/{drop_id}/waitlist",
    status_code=201,
    response_model=WaitlistEntryOut,
    dependencies=[Depends(joins_a_waitlist), Depends(rate_limited)],
)
async def join_waitlist(
    request: Request,
    drop_id: str,
    body: WaitlistCreate,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> WaitlistEntryOut:
    """Sign up to a sold-out drop's waitlist (secret or publishable key), for one of its
    prices or any. One entry per person by normalised email: signing up again returns
    the same entry. When units come back they are offered in signup order, one each,
    held by a checkout session whose link is emailed (docs/inventory.md#waitlists).
    Limited per IP and per buyer (429 ``rate-limited`` with ``Retry-After``)."""
    await admit_to_drop(request, email=body.email, now=now)
    entry = await waitlists.sign_up(
        session,
        creator_id=creator_id,
        drop_id=drop_id,
        email=body.email,
        price_id=body.price,
        now=now,
    )
    return waitlist_entry_out(entry)


@router.get(
    "/drops/{drop_id}/waitlist",
    response_model=ListOut,
    dependencies=[Depends(reads_a_waitlist)],
)
async def list_waitlist(
    drop_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The drop's waitlist, newest signup first (offers go oldest first): each buyer's
    email, status (``waiting`` → ``offered`` → ``claimed`` | ``passed``) and the session
    holding their offered unit."""
    page = await waitlists.list_entries(
        session,
        creator_id=creator_id,
        drop_id=drop_id,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(data=[waitlist_entry_out(e) for e in page.data], has_more=page.has_more)


# Imports and production batches ----------------------------------------------------------

_CSV_TYPES = {"text/csv", "application/csv", "text/plain"}
_IMPORT_BODY = {
    "required": True,
    "content": {
        "text/csv": {"schema": {"type": "string"}},
        XLSX_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
    },
}


def _file_format(content_type: str, file_name: str) -> FileFormat:
    """CSV or XLSX by the body's content type, else by the file name's extension."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _CSV_TYPES:
        return "csv"
    if media_type == XLSX_MEDIA_TYPE:
        return "xlsx"
    return detect_format(file_name)


@documents(InvalidSpreadsheet)
async def imports_a_spreadsheet() -> None:
    """Documents the 422 of an import: every bad row and column, nothing imported."""


@router.post(
    "/inventory/imports",
    response_model=ImportOut,
    dependencies=[Depends(imports_a_spreadsheet)],
    openapi_extra={"requestBody": _IMPORT_BODY},
)
async def import_inventory(
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    kind: TemplateKind,
    file_name: Annotated[str, Query(min_length=1, max_length=200)] = "upload",
) -> ImportOut:
    """Import a filled-in template, sent as the raw request body: ``Content-Type:
    text/csv`` or the XLSX media type (or any type, with ``file_name`` ending in ``.csv``
    or ``.xlsx``). ``kind`` is ``stock_counts`` (sets on-hand per SKU and location; the
    movements' reason is ``import <file_name>``) or ``production_batches`` (shown as
    ``incoming`` on each SKU). All rows or none: any problem is a 422
    ``invalid-spreadsheet`` listing every row and column (``rows.<n>.<column>``)."""
    data = await request.body()
    file_format = _file_format(request.headers.get("content-type", ""), file_name)
    if kind is TemplateKind.STOCK_COUNTS:
        summary = await imports.apply_stock_counts(
            session,
            creator_id=creator_id,
            sheet=parse_stock_counts(data, file_format=file_format),
            file_name=file_name,
            actor=API_ACTOR,
            now=now,
        )
    else:
        summary = await imports.apply_production_batches(
            session,
            creator_id=creator_id,
            sheet=parse_production_batches(data, file_format=file_format),
            file_name=file_name,
            now=now,
        )
    return import_out(summary)


@router.get(
    "/inventory/templates/{kind}.{file_format}",
    response_class=Response,
    responses={
        200: {
            "description": "The empty template.",
            "content": {"text/csv": {}, XLSX_MEDIA_TYPE: {}},
        }
    },
)
async def download_template(kind: TemplateKind, file_format: Literal["csv", "xlsx"]) -> Response:
    """The empty stock-count or production-batch template, as CSV (header row) or XLSX
    (with data validation and a Help sheet). Public: it holds nothing of yours."""
    template = template_file(kind, file_format)
    return Response(
        content=template.content,
        media_type=template.media_type,
        headers={"Content-Disposition": f'attachment; filename="{template.filename}"'},
    )


@documents(imports.BatchNotFound, imports.BatchAlreadyReceived, stock.StockCommitted)
async def receives_a_batch() -> None:
    """Documents the problems of receiving a production batch."""


@router.post(
    "/inventory/batches/{batch_id}/receive",
    response_model=BatchOut,
    dependencies=[Depends(receives_a_batch)],
)
async def receive_batch(
    batch_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
    body: BatchReceive | None = None,
) -> BatchOut:
    """The batch's pieces arrived: they become on-hand stock at its location with a
    ``received`` movement (its ``reference`` is the batch), and the batch leaves the SKU's
    ``incoming``. ``quantity`` says how many arrived (default: the batch's quantity)."""
    batch = await imports.receive_batch(
        session,
        creator_id=creator_id,
        batch_id=batch_id,
        quantity=body.quantity if body is not None else None,
        actor=API_ACTOR,
        now=now,
    )
    return batch_out(batch)
