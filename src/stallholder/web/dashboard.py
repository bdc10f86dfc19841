"""The creator dashboard (``/dashboard``): a creator's business at a glance and the
everyday tasks (add a product with its price, refund an order, roll the API keys) as
server-rendered pages, no JavaScript. Every page calls the services the HTTP API calls;
every form carries the session's CSRF token. Sign-in is in ``dashboard_auth.py``; a
creator only ever reads its own rows (every service takes the signed-in ``creator_id``,
and another creator's id is a 404 page).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.analytics import service as analytics
from stallholder.analytics.metrics import MonthPoint
from stallholder.billing import lifecycle, subscriptions
from stallholder.catalog import service as catalog
from stallholder.catalog.schemas import PriceCreate, ProductCreate
from stallholder.channels import connect as channel_connect
from stallholder.channels import service as channel_service
from stallholder.channels import sync as channel_sync
from stallholder.channels.schemas import ChannelCreate
from stallholder.fulfilment import shipments
from stallholder.inventory import stock
from stallholder.inventory.schemas import AdjustmentCreate
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep, get_database
from stallholder.kit.money import parse_major
from stallholder.ledger import service as ledger
from stallholder.notifications import service as notifications
from stallholder.orders import service as orders
from stallholder.web.charts import bar_chart
from stallholder.web.dashboard_auth import sign_in_redirect, signed_in_creator
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import format_money, templates

# Who made a stock movement from the dashboard (docs/inventory.md).
DASHBOARD_ACTOR = "dashboard"

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

# Rows a list page shows (the API pages further with starting_after).
PAGE_SIZE = 50
RECENT_ORDERS = 5
KINDS = ("digital", "physical", "service")
INTERVALS = ("month", "year", "week", "day")

NAV = (
    ("/dashboard", "Overview"),
    ("/dashboard/products", "Products"),
    ("/dashboard/drops", "Drops"),
    ("/dashboard/orders", "Orders"),
    ("/dashboard/subscribers", "Subscribers"),
    ("/dashboard/inventory", "Inventory"),
    ("/dashboard/channels", "Channels"),
    ("/dashboard/balance", "Balance"),
    ("/dashboard/webhooks", "Webhooks"),
    ("/dashboard/keys", "API keys"),
)


async def _page(
    request: Request,
    settings: SettingsDep,
    creator: Creator,
    name: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
) -> Response:
    nav = list(NAV)
    if not settings.smtp_url:  # the embedded default: emails stay here, show them
        nav.append(("/dashboard/mail", "Mail outbox"))
    return templates.TemplateResponse(
        request,
        name,
        {
            "creator": creator,
            "nav": nav,
            "current": request.url.path,
            "store_url": f"{settings.base_url}/",
            **context,
        },
        status_code=status_code,
    )


async def _creator(request: Request, session: SessionDep) -> Creator | None:
    creator_id = signed_in_creator(request)
    if creator_id is None:
        return None
    try:
        return await accounts.get_creator(session, creator_id)
    except accounts.CreatorNotFound:  # deleted since: sign in again
        request.session.clear()
        return None


# The page frame and the signed-in creator, for the dashboard's other modules
# (``dashboard_drops.py``, ``dashboard_webhooks.py``).
render_page = _page
current_creator = _creator


def _month_label(point: MonthPoint) -> str:
    return point.month.strftime("%b")


@router.get("/dashboard", response_class=HTMLResponse)
async def overview(
    request: Request, session: SessionDep, settings: SettingsDep, now: NowDep
) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    figures = await analytics.overview(session, creator_id=creator.id, now=now)
    balances = await ledger.balances_of(session, account=ledger.creator_account(creator.id))
    recent = await orders.list_orders(
        session, creator_id=creator.id, limit=RECENT_ORDERS, starting_after=None
    )
    charts = []
    for series in figures.currencies:
        code = series.currency

        def money(amount: int, currency: str = code) -> str:
            return format_money(amount, currency)

        charts.append(
            {
                "series": series,
                "revenue": bar_chart(
                    [(_month_label(p), p.value) for p in series.revenue],
                    title=f"Net revenue per month ({code.upper()}), last 12 months",
                    describe=money,
                ),
                "mrr": bar_chart(
                    [(_month_label(p), p.value) for p in series.mrr_history],
                    title=f"MRR at each month's end ({code.upper()}), last 12 months",
                    describe=money,
                ),
            }
        )
    subscribers_chart = bar_chart(
        [(_month_label(p), p.value) for p in figures.subscribers_history],
        title="Active subscribers at each month's end, last 12 months",
        describe=str,
    )
    return await _page(
        request,
        settings,
        creator,
        "dashboard_overview.html",
        {
            "figures": figures,
            "charts": charts,
            "subscribers_chart": subscribers_chart,
            "balances": sorted(balances.items()),
            "recent": recent.data,
        },
    )


async def _products_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creator: Creator,
    *,
    form: dict[str, str] | None = None,
    errors: list[str] | None = None,
    created: str | None = None,
    status_code: int = 200,
) -> Response:
    products = await catalog.list_products(
        session, creator_id=creator.id, status=None, limit=PAGE_SIZE, starting_after=None
    )
    prices = await catalog.list_prices(
        session, creator_id=creator.id, product_id=None, limit=PAGE_SIZE * 2, starting_after=None
    )
    by_product: dict[str, list[Any]] = {}
    for price in prices.data:
        by_product.setdefault(price.product_id, []).append(price)
    return await _page(
        request,
        settings,
        creator,
        "dashboard_products.html",
        {
            "products": products.data,
            "prices": by_product,
            "kinds": KINDS,
            "intervals": INTERVALS,
            "form": form or {"currency": "usd", "kind": "digital"},
            "errors": errors or [],
            "created": created,
        },
        status_code=status_code,
    )


@router.get("/dashboard/products", response_class=HTMLResponse)
async def products_page(
    request: Request, session: SessionDep, settings: SettingsDep, created: str | None = None
) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _products_page(request, session, settings, creator, created=created)


def _validation_messages(error: ValidationError) -> list[str]:
    names = {
        "unit_amount": "price",
        "name": "name",
        "currency": "currency",
        "kind": "kind",
        "description": "description",
        "interval": "billing",
    }
    messages = []
    for problem in error.errors():
        field = next((names[str(p)] for p in problem["loc"] if str(p) in names), None)
        text = str(problem["msg"]).removeprefix("Value error, ")
        messages.append(f"{field}: {text}" if field else text)
    return messages


@router.post("/dashboard/products", response_class=HTMLResponse)
async def create_product(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    # Generous bounds here; the schemas say what is too long, on the form (a 422 page of
    # FastAPI's own would lose what was typed).
    name: Annotated[str, Form(max_length=1_000)] = "",
    kind: Annotated[str, Form(max_length=100)] = "digital",
    description: Annotated[str, Form(max_length=40_000)] = "",
    amount: Annotated[str, Form(max_length=100)] = "",
    currency: Annotated[str, Form(max_length=100)] = "usd",
    interval: Annotated[str, Form(max_length=100)] = "",
    publish: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """A product with one price, through the same schemas and services as
    ``POST /v1/products`` and ``POST /v1/prices``. A mistake shows the form again with
    what to fix (422) and creates nothing."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    typed = {
        "name": name,
        "kind": kind,
        "description": description,
        "amount": amount,
        "currency": currency,
        "interval": interval,
        "publish": publish,
    }
    try:
        product_in = ProductCreate.model_validate(
            {
                "kind": kind,
                "name": name.strip(),
                "description": description,
                "status": "published" if publish else "draft",
            }
        )
        unit_amount = parse_major(amount, currency)
        price_in = PriceCreate.model_validate(
            {
                "product": "prod_pending",
                "currency": currency,
                "unit_amount": unit_amount,
                "recurring": {"interval": interval} if interval else None,
            }
        )
    except ValidationError as error:
        return await _products_page(
            request,
            session,
            settings,
            creator,
            form=typed,
            errors=_validation_messages(error),
            status_code=422,
        )
    except ValueError as error:  # the amount (parse_major says what is wrong)
        return await _products_page(
            request,
            session,
            settings,
            creator,
            form=typed,
            errors=[f"price: {error}"],
            status_code=422,
        )
    recurring = price_in.recurring
    product = await catalog.create_product(
        session,
        creator_id=creator.id,
        kind=product_in.kind,
        name=product_in.name,
        description=product_in.description,
        status=product_in.status,
        variants=[],
        now=now,
    )
    await catalog.create_price(
        session,
        creator_id=creator.id,
        product_id=product.id,
        spec=catalog.PriceSpec(
            currency=price_in.currency,
            unit_amount=price_in.unit_amount,
            recurring_interval=recurring.interval if recurring else None,
            recurring_interval_count=recurring.interval_count if recurring else None,
            trial_days=recurring.trial_days if recurring else None,
        ),
        now=now,
    )
    return RedirectResponse(f"/dashboard/products?created={product.id}", status_code=303)


@router.get("/dashboard/orders", response_class=HTMLResponse)
async def orders_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    starting_after: str | None = None,
) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    page = await orders.list_orders(
        session, creator_id=creator.id, limit=PAGE_SIZE, starting_after=starting_after
    )
    return await _page(
        request,
        settings,
        creator,
        "dashboard_orders.html",
        {"orders": page.data, "has_more": page.has_more},
    )


async def _order_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creator: Creator,
    order_id: str,
    *,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    # Another creator's order is OrderNotFound: a 404 page, as in the API.
    order = await orders.get_order(session, creator_id=creator.id, order_id=order_id)
    await session.refresh(order, ["refunds"])
    sent = await shipments.shipments_of_order(session, creator_id=creator.id, order_id=order_id)
    return await _page(
        request,
        settings,
        creator,
        "dashboard_order.html",
        {
            "order": order,
            "refundable": order.amount_total - order.amount_refunded,
            "shipment": sent[0] if sent else None,
            "error": error,
            "notice": notice,
        },
        status_code=status_code,
    )


@router.get("/dashboard/orders/{order_id}", response_class=HTMLResponse)
async def order_page(
    order_id: str, request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _order_page(request, session, settings, creator, order_id)


@router.post("/dashboard/orders/{order_id}/refund", response_class=HTMLResponse)
async def refund_order(
    order_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    amount: Annotated[str, Form(max_length=30)] = "",
    restock: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    """Refund all that remains, or the amount typed, as ``POST /v1/refunds`` does. The
    request's unit of work is not touched before the refund's own first step (on SQLite
    it would hold the write lock that step needs); the order is read in a short read."""
    creator_id = signed_in_creator(request)
    if creator_id is None:
        return sign_in_redirect(request)
    database = request.app.state.database
    async with database.read() as reading:
        # Another creator's order: OrderNotFound, a 404 page.
        order = await orders.get_order(reading, creator_id=creator_id, order_id=order_id)
        currency = order.currency
    try:
        minor = parse_major(amount, currency) if amount.strip() else None
    except ValueError as error:
        creator = await accounts.get_creator(session, creator_id)
        return await _order_page(
            request, session, settings, creator, order_id, error=str(error), status_code=422
        )
    try:
        refund = await orders.create_refund(
            database,
            request.app.state.gateway,
            creator_id=creator_id,
            order_id=order_id,
            amount=minor,
            reason="requested_by_customer",
            resolve_after=now + settings.payment_resolve_after(),
            now=now,
            session=session,
            restock=bool(restock),
        )
    except DomainError as error:
        return await _order_page(
            request,
            session,
            settings,
            await accounts.get_creator(session, creator_id),
            order_id,
            error=error.detail,
            status_code=error.status,
        )
    if refund.status == "failed":
        creator = await accounts.get_creator(session, creator_id)
        return await _order_page(
            request,
            session,
            settings,
            creator,
            order_id,
            error=refund.failure_message or "the payment gateway refused the refund",
            status_code=402,
        )
    return RedirectResponse(f"/dashboard/orders/{order_id}", status_code=303)


@router.post("/dashboard/orders/{order_id}/ship", response_class=HTMLResponse)
async def ship_order(
    order_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    carrier: Annotated[str, Form(max_length=80)] = "",
    tracking_number: Annotated[str, Form(max_length=120)] = "",
) -> Response:
    """Mark the order shipped, as ``POST /v1/orders/{id}/shipments`` does: its stock
    leaves with a ``sold`` movement and the buyer is emailed the tracking."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    try:
        await shipments.ship_order(
            session,
            creator_id=creator.id,
            order_id=order_id,
            carrier=carrier.strip() or None,
            tracking_number=tracking_number.strip() or None,
            tracking_url=None,
            actor=DASHBOARD_ACTOR,
            now=now,
        )
    except DomainError as error:
        # Refused before anything was written: shipped already, or nothing to ship.
        return await _order_page(
            request,
            session,
            settings,
            creator,
            order_id,
            error=error.detail,
            status_code=error.status,
        )
    return RedirectResponse(f"/dashboard/orders/{order_id}", status_code=303)


@router.get("/dashboard/subscribers", response_class=HTMLResponse)
async def subscribers_page(
    request: Request, session: SessionDep, settings: SettingsDep, status: str | None = None
) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    page = await subscriptions.list_subscriptions(
        session,
        creator_id=creator.id,
        customer_id=None,
        status=status or None,
        limit=PAGE_SIZE,
        starting_after=None,
    )
    customers = await accounts.customers_by_id(
        session, creator_id=creator.id, customer_ids=[s.customer_id for s in page.data]
    )
    emails = {customer_id: customer.email for customer_id, customer in customers.items()}
    return await _page(
        request,
        settings,
        creator,
        "dashboard_subscribers.html",
        {
            "subscriptions": page.data,
            "emails": emails,
            "status": status,
            "statuses": lifecycle.STATUSES,
        },
    )


async def _inventory_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creator: Creator,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    levels = await stock.list_levels(session, creator_id=creator.id, limit=PAGE_SIZE * 4)
    locations = await stock.list_locations(
        session, creator_id=creator.id, limit=PAGE_SIZE, starting_after=None
    )
    return await _page(
        request,
        settings,
        creator,
        "dashboard_inventory.html",
        {
            "levels": levels,
            "locations": locations.data,
            "form": form or {},
            "error": error,
            "adjusted": request.query_params.get("adjusted"),
        },
        status_code=status_code,
    )


@router.get("/dashboard/inventory", response_class=HTMLResponse)
async def inventory_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _inventory_page(request, session, settings, creator)


@router.post("/dashboard/inventory/adjustments", response_class=HTMLResponse)
async def adjust_stock(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    sku: Annotated[str, Form(max_length=200)] = "",
    location: Annotated[str, Form(max_length=100)] = "",
    delta: Annotated[str, Form(max_length=100)] = "",
    reason: Annotated[str, Form(max_length=2_000)] = "",
) -> Response:
    """Count in or take out units, as ``POST /v1/inventory/adjustments`` does (every
    channel follows within seconds). A mistake shows the form again with what to fix and
    changes nothing."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    typed = {"sku": sku, "location": location, "delta": delta, "reason": reason}
    try:
        body = AdjustmentCreate.model_validate(
            {
                "sku": sku.strip(),
                "location": location,
                "delta": int(delta.strip()) if delta.strip().lstrip("+-").isdigit() else delta,
                "reason": reason.strip() or "counted in the dashboard",
            }
        )
    except ValidationError as error:
        return await _inventory_page(
            request,
            session,
            settings,
            creator,
            form=typed,
            error="; ".join(_validation_messages(error)),
            status_code=422,
        )
    try:
        await stock.adjust(
            session,
            creator_id=creator.id,
            sku=body.sku,
            location_id=body.location,
            delta=body.delta,
            set_to=body.set_to,
            kind=body.kind,
            reason=body.reason or "counted in the dashboard",
            actor=DASHBOARD_ACTOR,
            now=now,
        )
    except DomainError as error:  # unknown SKU or location, units promised to buyers
        return await _inventory_page(
            request,
            session,
            settings,
            creator,
            form=typed,
            error=error.detail,
            status_code=error.status,
        )
    return RedirectResponse(f"/dashboard/inventory?adjusted={body.sku}", status_code=303)


@router.get("/dashboard/channels", response_class=HTMLResponse)
async def channels_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Each channel with what every matched listing shows there against what it should
    show (``available − buffer``), the orders it oversold and its recent sync log. The
    page refreshes itself every few seconds, so stock is seen moving across channels."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    boards = []
    for channel in await channel_service.list_channels(session, creator_id=creator.id):
        listings, _ = await channel_service.list_listings(
            session, channel_id=channel.id, status=None, limit=PAGE_SIZE * 2, starting_after=None
        )
        stock_now = await channel_service.stock_of(
            session, [listing.variant_id for listing in listings if listing.variant_id]
        )
        rows = [
            {
                "listing": listing,
                "available": found.available if found else None,
                "should_show": channel_service.shown_for(channel, found) if found else None,
            }
            for listing in listings
            for found in [stock_now.get(listing.variant_id or "")]
        ]
        log, _ = await channel_service.list_sync_log(
            session, channel_id=channel.id, sku=None, limit=12, starting_after=None
        )
        oversold = (
            await channel_service.list_orders(
                session, channel_id=channel.id, status="oversold", limit=10
            )
        ).data
        boards.append({"channel": channel, "rows": rows, "log": log, "oversold": oversold})
    return await _page(request, settings, creator, "dashboard_channels.html", {"boards": boards})


async def _new_channel_page(
    request: Request,
    settings: SettingsDep,
    creator: Creator,
    *,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return await _page(
        request,
        settings,
        creator,
        "dashboard_channel_new.html",
        {"form": form or {}, "error": error},
        status_code=status_code,
    )


@router.get("/dashboard/channels/new", response_class=HTMLResponse)
async def new_channel_page(
    request: Request, session: SessionDep, settings: SettingsDep
) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _new_channel_page(request, settings, creator)


@router.post("/dashboard/channels/new", response_class=HTMLResponse)
async def connect_channel(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    kind: Annotated[str, Form(max_length=40)] = "",
    url: Annotated[str, Form(max_length=1_000)] = "",
    access_token: Annotated[str, Form(max_length=1_000)] = "",
    api_secret: Annotated[str, Form(max_length=1_000)] = "",
    consumer_key: Annotated[str, Form(max_length=400)] = "",
    consumer_secret: Annotated[str, Form(max_length=400)] = "",
) -> Response:
    """Connect a Shopify shop (a custom app's token) or a WooCommerce store (REST keys),
    as ``POST /v1/channels`` does: the channel is called before anything is kept, with no
    transaction open (so the request's unit of work is first used after the call: on
    SQLite any transaction holds the one write lock). A mistake or a refusal shows the
    form again (secrets not repeated) and keeps nothing."""
    creator_id = signed_in_creator(request)
    if creator_id is None:
        return sign_in_redirect(request)
    typed = {"kind": kind, "url": url}
    fields: dict[str, str] = (
        {"shop_url": url.strip(), "access_token": access_token.strip()}
        | ({"api_secret": api_secret.strip()} if api_secret.strip() else {})
        if kind == "shopify"
        else {
            "store_url": url.strip(),
            "consumer_key": consumer_key.strip(),
            "consumer_secret": consumer_secret.strip(),
        }
    )
    try:
        # A field left empty is a field not given (the schema says which are needed).
        given = {name: value for name, value in fields.items() if value}
        body = ChannelCreate.model_validate({"kind": kind, **given})
        new = channel_connect.new_channel(body, settings)
        channel = await channel_connect.connect(
            session,
            get_database(request),
            request.app.state.channel_engine,
            new,
            creator_id=creator_id,
            settings=settings,
            now=now,
        )
    except (ValidationError, DomainError) as error:
        creator = await _creator(request, session)
        if creator is None:
            return sign_in_redirect(request)
        if isinstance(error, DomainError):
            message, status = error.detail, error.status
        else:
            message = "; ".join(
                str(problem["msg"]).removeprefix("Value error, ") for problem in error.errors()
            )
            status = 422
        return await _new_channel_page(
            request, settings, creator, form=typed, error=message, status_code=status
        )
    return RedirectResponse(f"/dashboard/channels#channel-{channel.id}", status_code=303)


@router.post("/dashboard/channels/{channel_id}/{action}", response_class=HTMLResponse)
async def channel_action(
    channel_id: str,
    action: Literal["pause", "resume", "sync"],
    request: Request,
    session: SessionDep,
    now: NowDep,
) -> Response:
    """Pause or resume a channel, or reconcile it now, as ``POST /v1/channels/{id}`` and
    ``POST /v1/channels/{id}/reconcile`` do."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    channel = await channel_service.get_channel(
        session, creator_id=creator.id, channel_id=channel_id
    )
    if action == "pause" and channel.status == channel_service.ACTIVE:
        await channel_connect.set_status(session, channel=channel, status="paused", now=now)
    elif action == "resume" and channel.status == channel_service.PAUSED:
        await channel_connect.set_status(session, channel=channel, status="active", now=now)
    elif action == "sync" and channel.status == channel_service.ACTIVE:
        await channel_sync.queue_for_channel(
            session, kind=channel_sync.RECONCILE_KIND, channel=channel, now=now
        )
    return RedirectResponse(f"/dashboard/channels#channel-{channel.id}", status_code=303)


@router.get("/dashboard/balance", response_class=HTMLResponse)
async def balance_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    account = ledger.creator_account(creator.id)
    balances = await ledger.balances_of(session, account=account)
    entries = await ledger.list_transactions(
        session, creator_id=creator.id, limit=PAGE_SIZE, starting_after=None
    )
    return await _page(
        request,
        settings,
        creator,
        "dashboard_balance.html",
        {"balances": sorted(balances.items()), "entries": entries.data, "account": account},
    )


async def _keys_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creator: Creator,
    *,
    new_keys: tuple[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    keys = await accounts.live_keys(session, creator_id=creator.id)
    return await _page(
        request,
        settings,
        creator,
        "dashboard_keys.html",
        {"keys": keys, "new_keys": new_keys, "error": error},
        status_code=status_code,
    )


@router.get("/dashboard/keys", response_class=HTMLResponse)
async def keys_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _keys_page(request, session, settings, creator)


@router.post("/dashboard/keys/roll", response_class=HTMLResponse)
async def roll_keys(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    confirm: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """New secret and publishable keys, shown once on this page; the old ones stop
    working (as ``POST /v1/creators/{id}/keys/roll``)."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    if not confirm:  # the old keys stop working at once: only when ticked
        return await _keys_page(
            request,
            session,
            settings,
            creator,
            error="Tick the box to confirm: your current keys stop working when you roll them.",
            status_code=422,
        )
    new_keys = await accounts.roll_keys(session, creator_id=creator.id, now=now)
    return await _keys_page(request, session, settings, creator, new_keys=new_keys)


@router.get("/dashboard/mail", response_class=HTMLResponse)
async def mail_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The emails this creator's shop sent or will send, in the embedded default (no
    SMTP server configured): receipts, refunds, sign-in links, as written."""
    creator = await _creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    emails = await notifications.list_emails(session, creator_id=creator.id, limit=PAGE_SIZE)
    return await _page(
        request,
        settings,
        creator,
        "dashboard_mail.html",
        {
            "emails": emails,
            "smtp_configured": bool(settings.smtp_url),
            "mail_folder": str(settings.data_dir / "mail"),
        },
    )
