"""Public store pages: the index of listed creators, each creator's store (``/s/{slug}``)
and its product pages (``/s/{slug}/{product}``) with prices, what a subscription delivers
and when, stock state, drop countdowns and raffle entry. Server-rendered and complete
without JavaScript; a small script only ticks the countdown (docs/store.md)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from babel.dates import format_date, format_datetime
from babel.units import format_unit
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.billing import delivery
from stallholder.billing.periods import Plan
from stallholder.billing.subscriptions import calendar_of
from stallholder.catalog import service as catalog
from stallholder.catalog.models import Price
from stallholder.digital import service as digital
from stallholder.inventory import drops, raffles, waitlists
from stallholder.inventory import stock as inventory
from stallholder.inventory.api import admit_to_drop
from stallholder.inventory.drops import DropView
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.kit.money import Money
from stallholder.kit.schemas import Email
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

LOCALE = "en_US"
# At or below this many units a page says "Only N left".
LOW_STOCK = 5
# Store pages show subscription dates on this calendar: a visitor has no time zone yet
# (a subscriber's own dates follow their zone once they subscribe).
STORE_ZONE = "UTC"

Availability = Literal["InStock", "OutOfStock", "PreOrder"]


def _price_label(price: Price) -> str:
    if price.type == "pay_what_you_want":
        return f"from {Money(price.minimum_amount or 0, price.currency).format()}"
    label = Money(price.unit_amount or 0, price.currency).format()
    if price.type == "recurring":
        every = (
            price.recurring_interval
            if price.recurring_interval_count == 1
            else (f"{price.recurring_interval_count} {price.recurring_interval}s")
        )
        return f"{label} / {every}"
    return label


def _day(moment: datetime) -> str:
    return str(format_date(moment.date(), format="long", locale=LOCALE))


def _moment(moment: datetime) -> str:
    """``March 1, 2026 at 14:00 UTC``."""
    when = format_datetime(moment, "MMMM d, y 'at' HH:mm", tzinfo=UTC, locale=LOCALE)
    return f"{when} UTC"


def format_size(size: int) -> str:
    """``1.2 MB``, ``340 kB``, ``52 bytes``: a file's size in decimal units, as babel
    writes them."""
    unit, scale = next(
        (
            (name, factor)
            for name, factor in (
                ("digital-gigabyte", 10**9),
                ("digital-megabyte", 10**6),
                ("digital-kilobyte", 10**3),
            )
            if size >= factor
        ),
        ("digital-byte", 1),
    )
    amount = (Decimal(size) / scale).quantize(Decimal("1") if scale == 1 else Decimal("0.1"))
    # "52 bytes", not "52 byte"
    return str(format_unit(amount, unit, length="long" if scale == 1 else "short", locale=LOCALE))


def _until(moment: datetime, now: datetime) -> str:
    """``in 2 days 3 hours``, ``in 5 minutes``: the countdown as the server renders it."""
    seconds = max(0, int((moment - now).total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes = rest // 60
    parts = [
        f"{value} {unit}{'s' if value != 1 else ''}"
        for value, unit in ((days, "day"), (hours, "hour"), (minutes, "minute"))
        if value
    ][:2]
    return "in " + " ".join(parts) if parts else "in less than a minute"


@dataclass(frozen=True, slots=True)
class Stock:
    """What a page says about whether a price can be bought now."""

    label: str
    availability: Availability
    can_buy: bool
    is_low: bool = False


def stock_state(
    *, available: int | None, drop: DropView | None, price_id: str, now: datetime
) -> Stock:
    """The stock state of one price: from its drop's window and units when it is in one,
    else from the product's available stock (``available`` None: stock not tracked)."""
    if drop is not None:
        state = drop.state(now)
        if state == "scheduled":
            return Stock(label="Not on sale yet", availability="PreOrder", can_buy=False)
        if drop.drop.mode == "raffle":
            if state == "closed":
                return Stock(
                    label="Raffle entries closed", availability="OutOfStock", can_buy=False
                )
            return Stock(label="Raffle open for entries", availability="PreOrder", can_buy=False)
        if state == "closed":
            return Stock(label="Drop closed", availability="OutOfStock", can_buy=False)
        item = next(i for i in drop.items if i.price_id == price_id)
        left = item.quantity - item.held - item.sold
        available = left if available is None else min(left, available)
    if available is None:
        return Stock(label="In stock", availability="InStock", can_buy=True)
    if available <= 0:
        return Stock(label="Sold out", availability="OutOfStock", can_buy=False)
    if available <= LOW_STOCK:
        return Stock(
            label=f"Only {available} left", availability="InStock", can_buy=True, is_low=True
        )
    return Stock(label="In stock", availability="InStock", can_buy=True)


def _subscription_terms(price: Price, *, kind: str, now: datetime) -> dict[str, Any] | None:
    """What subscribing now delivers and when, from billing's own calendar code."""
    if price.type != "recurring" or price.recurring_interval is None:
        return None
    plan = Plan(price.recurring_interval, price.recurring_interval_count or 1)  # type: ignore[arg-type]
    amount = price.unit_amount or 0
    starting = delivery.signup(
        calendar_of(price),
        plan,
        signup_at=now,
        zone_name=STORE_ZONE,
        trial_days=price.trial_days or 0,
        amount=amount,
    )
    money = Money(amount, price.currency).format()
    if starting.trial_end is not None:
        first_charge = f"Free until {_day(starting.trial_end)}, then {money} on that day"
    elif starting.joining.is_charged_now:
        first_charge = f"{money} today"
    else:
        first_charge = f"{money} on {_day(starting.first.charge_at)}"
    has_calendar = price.delivery_calendar is not None
    return {
        "first_charge": first_charge,
        "next_charge": f"{money} on {_day(starting.following.charge_at)}",
        "cutoff": _moment(starting.first.cutoff_at) if has_calendar else None,
        "ships_on": str(format_date(starting.first.ships_on, format="long", locale=LOCALE))
        if has_calendar
        else None,
        "ships_word": "Ships on" if kind == "physical" else "Released on",
    }


async def _offers(
    session: SessionDep, *, creator: Creator, listings: list[catalog.Listing], now: datetime
) -> list[dict[str, Any]]:
    """Each listing with its prices' labels, stock state and drop, for the templates."""
    variant_ids = [v.id for listing in listings for v in listing.product.variants]
    available_by_variant = await inventory.available_by_variant(session, variant_ids=variant_ids)
    drop_by_price = await drops.drops_by_price(
        session, price_ids=[p.id for listing in listings for p in listing.prices]
    )
    products = []
    for listing in listings:
        product = listing.product
        tracked = [
            available_by_variant[v.id] for v in product.variants if v.id in available_by_variant
        ]
        available = sum(tracked) if tracked else None
        prices = []
        for price in listing.prices:
            drop = drop_by_price.get(price.id)
            stock = stock_state(available=available, drop=drop, price_id=price.id, now=now)
            prices.append(
                {
                    "id": price.id,
                    "label": _price_label(price),
                    "nickname": price.nickname,
                    "amount": price.unit_amount
                    if price.unit_amount is not None
                    else price.minimum_amount or 0,
                    "currency": price.currency,
                    "subscribes": price.type == "recurring",
                    "terms": _subscription_terms(price, kind=product.kind, now=now),
                    "stock": stock,
                    "buy_url": f"/buy/{price.id}",
                    "drop": None if drop is None else _drop_context(drop, now=now),
                }
            )
        files = await digital.product_files(session, product_id=product.id)
        products.append(
            {
                "files": [{"filename": f.filename, "size": format_size(f.size)} for f in files],
                "has_license_key": await digital.has_key_pool(session, product_id=product.id),
                "id": product.id,
                "name": product.name,
                "description": product.description,
                "kind": product.kind,
                "url": f"/s/{creator.slug}/{product.id}",
                "prices": prices,
            }
        )
    return products


def _drop_context(view: DropView, *, now: datetime) -> dict[str, Any]:
    drop = view.drop
    return {
        "id": drop.id,
        "name": drop.name,
        "mode": drop.mode,
        "state": view.state(now),
        "opens_at": drop.opens_at,
        "opens_at_iso": drop.opens_at.isoformat().replace("+00:00", "Z"),
        "opens_label": _moment(drop.opens_at),
        "opens_in": _until(drop.opens_at, now),
        "closes_at_iso": drop.closes_at.isoformat().replace("+00:00", "Z"),
        "closes_label": _moment(drop.closes_at),
        "closes_in": _until(drop.closes_at, now),
        "per_customer_limit": drop.per_customer_limit,
        "remaining": view.remaining,
    }


def not_found_page(request: Request, detail: str) -> Response:
    """The 404 page a browser gets for a store or product that is not there."""
    return templates.TemplateResponse(
        request, "not_found.html", {"detail": detail}, status_code=404
    )


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Every listed creator's published offers; an unlisted creator is not shown."""
    offers = await catalog.published_offers(session)
    creators = await accounts.creators_by_id(
        session, sorted({o.creator_id for o in offers}), listed_only=True
    )
    grouped: dict[str, dict[str, Any]] = {}
    for offer in offers:
        creator = creators.get(offer.creator_id)
        if creator is None:
            continue
        entry = grouped.setdefault(
            creator.id,
            {
                "display_name": creator.display_name,
                "slug": creator.slug,
                "url": f"/s/{creator.slug}",
                "offers": [],
            },
        )
        entry["offers"].append(
            {
                "name": offer.name,
                "kind": offer.kind,
                "url": f"/s/{creator.slug}/{offer.product_id}",
                "price_label": _price_label(offer.price),
                "buy_url": f"/buy/{offer.price.id}",
                "subscribes": offer.price.type == "recurring",
            }
        )
    return templates.TemplateResponse(
        request, "index.html", {"creators": list(grouped.values()), "base_url": settings.base_url}
    )


@router.get("/s/{slug}", response_class=HTMLResponse)
async def store(slug: str, request: Request, session: SessionDep, now: NowDep) -> Response:
    """One creator's store: its published products with prices and stock state."""
    try:
        creator = await accounts.listed_creator(session, slug=slug)
    except accounts.CreatorNotFound:
        return not_found_page(request, f"There is no store at /s/{slug}.")
    listings = await catalog.store_listings(session, creator_id=creator.id)
    return templates.TemplateResponse(
        request,
        "store.html",
        {
            "creator": creator,
            "products": await _offers(session, creator=creator, listings=listings, now=now),
        },
    )


def product_json_ld(product: dict[str, Any], *, base_url: str, merchant: str) -> str:
    """schema.org ``Product`` with one ``Offer`` per price, for search engines and agents.
    Prices are decimal strings in major units (``"15.00"``), currencies ISO 4217."""
    document = {
        "@context": "https://schema.org",
        "@type": "Product",
        "name": product["name"],
        "description": product["description"],
        "url": base_url + product["url"],
        "brand": {"@type": "Brand", "name": merchant},
        "offers": [
            {
                "@type": "Offer",
                "price": str(Money(price["amount"], price["currency"]).major()),
                "priceCurrency": price["currency"].upper(),
                "availability": f"https://schema.org/{price['stock'].availability}",
                "url": base_url + product["url"],
                "seller": {"@type": "Organization", "name": merchant},
            }
            for price in product["prices"]
        ],
    }
    # Inside <script>, "</" must not appear; JSON allows the escaped slash.
    return json.dumps(document, ensure_ascii=False).replace("</", "<\\/")


async def _product_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: datetime,
    *,
    slug: str,
    product_id: str,
    notice: str | None = None,
    error: str | None = None,
    status_code: int = 200,
    email: str = "",
) -> Response:
    try:
        creator = await accounts.listed_creator(session, slug=slug)
    except accounts.CreatorNotFound:
        return not_found_page(request, f"There is no store at /s/{slug}.")
    listings = await catalog.store_listings(session, creator_id=creator.id, product_id=product_id)
    if not listings:
        return not_found_page(
            request, f"{creator.display_name} has no product {product_id} for sale."
        )
    [product] = await _offers(session, creator=creator, listings=listings, now=now)
    return templates.TemplateResponse(
        request,
        "product.html",
        {
            "creator": creator,
            "product": product,
            "json_ld": product_json_ld(
                product, base_url=settings.base_url, merchant=creator.display_name
            ),
            "canonical_url": settings.base_url + product["url"],
            "notice": notice,
            "error": error,
            "email": email,
        },
        status_code=status_code,
    )


@router.get("/s/{slug}/{product_id}", response_class=HTMLResponse)
async def product_page(
    slug: str,
    product_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
) -> Response:
    """A product: its prices, what a subscription delivers and when, stock state, a drop's
    countdown or raffle entry, and schema.org JSON-LD."""
    return await _product_page(request, session, settings, now, slug=slug, product_id=product_id)


_EMAIL = TypeAdapter(Email)


async def _enter_drop(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: datetime,
    *,
    slug: str,
    product_id: str,
    email: str,
    what: str,
    enter: Callable[[AsyncSession, str, str], Awaitable[object]],
    notice: str,
) -> Response:
    """A drop form's entry (a raffle entry, a waitlist signup), limited per address and per
    buyer as the API's are (429). The entry is written in a unit of work of its own before
    the page reads anything, so a refusal rolls it back whole and the page renders from
    the request's session afterwards."""

    async def again(
        *, status_code: int, error: str | None = None, note: str | None = None
    ) -> Response:
        return await _product_page(
            request,
            session,
            settings,
            now,
            slug=slug,
            product_id=product_id,
            error=error,
            notice=note,
            status_code=status_code,
            email=email,
        )

    try:
        address = _EMAIL.validate_python(email)
    except ValidationError:
        return await again(
            status_code=422, error=f"Enter your email address (name@example.com) to {what}."
        )
    try:
        await admit_to_drop(request, email=address, now=now)
        async with request.app.state.database.unit_of_work() as writing:
            creator = await accounts.listed_creator(writing, slug=slug)
            await enter(writing, creator.id, address)
    except accounts.CreatorNotFound:
        return not_found_page(request, f"There is no store at /s/{slug}.")
    except DomainError as error:
        return await again(status_code=error.status, error=error.detail)
    return await again(status_code=200, note=notice.format(address=address))


@router.post("/s/{slug}/{product_id}/raffle", response_class=HTMLResponse)
async def enter_raffle(
    slug: str,
    product_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    drop_id: Annotated[str, Form(max_length=40)],
    email: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    """The raffle entry form: the raffle service's own entry (one per person)."""
    return await _enter_drop(
        request,
        session,
        settings,
        now,
        slug=slug,
        product_id=product_id,
        email=email,
        what="enter the raffle",
        enter=lambda writing, creator_id, address: raffles.enter(
            writing, creator_id=creator_id, drop_id=drop_id, email=address, now=now
        ),
        notice="You are entered in the raffle as {address}. If you are drawn, we email you "
        "a link to buy before the offer expires.",
    )


@router.post("/s/{slug}/{product_id}/waitlist", response_class=HTMLResponse)
async def join_waitlist(
    slug: str,
    product_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    drop_id: Annotated[str, Form(max_length=40)],
    email: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    """The waitlist form of a sold-out drop: the waitlist service's own signup (one per
    person; signing up again keeps the place)."""
    return await _enter_drop(
        request,
        session,
        settings,
        now,
        slug=slug,
        product_id=product_id,
        email=email,
        what="join the waitlist",
        enter=lambda writing, creator_id, address: waitlists.sign_up(
            writing,
            creator_id=creator_id,
            drop_id=drop_id,
            email=address,
            price_id=None,
            now=now,
        ),
        notice="You are on the waitlist as {address}. If a piece comes back, we hold it for "
        "you and email you a link to buy it.",
    )
