"""The demo platform that ``make run`` seeds: three creators and a real catalog.

Seeding goes through the same services as the API and is idempotent: a creator whose
slug exists is left as it is. Demo keys are kept in ``<data_dir>/demo-keys.json`` so
``make run`` can print them on every start (they are stored hashed in the database).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator
from stallholder.billing import renewal, retention, subscriptions
from stallholder.catalog import service as catalog
from stallholder.channels import connect
from stallholder.channels import service as channels
from stallholder.channels.buffers import Rules
from stallholder.channels.registry import engine_from_settings
from stallholder.checkout import service as checkout
from stallholder.digital import service as files
from stallholder.digital.models import File
from stallholder.digital.storage import LocalStorage, Storage
from stallholder.fulfilment import service as fulfilment
from stallholder.fulfilment.addresses import ShippingAddress
from stallholder.inventory import drops, stock, waitlists
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.ids import new_id
from stallholder.ledger.fees import FeeSchedule
from stallholder.orders import service as orders
from stallholder.payments import methods as payment_methods
from stallholder.payments.gateway import Gateway
from stallholder.settings import Settings
from stallholder.wallets import service as wallets

KEYS_FILE = "demo-keys.json"
# A demo sale left half done by a crash is resolved by the worker after this long.
RESOLVE_AFTER = timedelta(minutes=2)
# The buyer a newcomer signs in to the portal as (make run prints it).
DEMO_BUYER = "reader@example.com"
# How long a demo drop stays open after seeding.
DROP_OPEN_FOR = timedelta(days=3)


@dataclass(frozen=True)
class DemoFile:
    """A file generated at seed time and delivered with a product."""

    filename: str
    content_type: str
    content: Callable[[], bytes]


@dataclass(frozen=True)
class DemoProduct:
    kind: str
    name: str
    description: str
    price: catalog.PriceSpec
    variants: tuple[catalog.VariantSpec, ...] = ()
    files: tuple[DemoFile, ...] = ()
    # A pool of license keys, one issued per unit sold.
    license_keys: tuple[str, ...] = ()


def mini_zine() -> bytes:
    """Ink Fox's eight-page mini zine as plain text: the demo's digital download."""
    pages = [
        "INK FOX MINI ZINE #1 - Drawing plants from life",
        "1. Sit with one plant for ten minutes before you draw anything.",
        "2. Draw the negative space between the leaves first.",
        "3. Ink the veins last, with the lightest brush you own.",
        "4. A leaf is never flat: look for where it turns away from you.",
        "5. Draw the same stem every day for a week.",
        "6. Colour comes from the shadows, not the leaf.",
        "Thank you for buying this zine. Share it with a friend who draws.",
    ]
    body = "\n\n".join(f"[page {n}]\n{text}" for n, text in enumerate(pages, start=1))
    return (body + "\n").encode()


@dataclass(frozen=True)
class DemoCreator:
    slug: str
    display_name: str
    email: str
    products: tuple[DemoProduct, ...]
    sales: tuple[tuple[int, int, str], ...] = field(default=())  # (product index, quantity, email)
    # A creator with rates ships its physical goods; its demo sales go to ``ship_to``.
    shipping_rates: tuple[fulfilment.RateSpec, ...] = ()
    ship_to: ShippingAddress | None = None
    # Stock received at a location: (location name, sku, quantity).
    stock: tuple[tuple[str, str, int], ...] = field(default=())
    # A first-come drop of one product, open from seeding for a few days:
    # (name, product index, units, per-customer limit).
    drop: tuple[str, int, int, int] | None = None
    # Checkout sessions left open (their stock held): (product index, quantity, email).
    open_sessions: tuple[tuple[int, int, str], ...] = field(default=())
    # A buyer subscribed to a recurring product with a saved card: (product index, email).
    subscriber: tuple[int, str] | None = None
    # The plan's retention offer, shown once to a buyer canceling in the portal:
    # (product index, percent off, invoices).
    retention_offer: tuple[int, int, int] | None = None
    # A second first-come drop, (name, product index, units), sold out by an open session
    # at seeding, with ``waitlisted`` buyers waiting: when that session expires (10
    # minutes after seeding) its unit is offered to the first of them, by email.
    waitlist_drop: tuple[str, int, int] | None = None
    waitlisted: tuple[str, ...] = ()


USD = "usd"
CREATORS = (
    DemoCreator(
        slug="paper-lantern",
        display_name="Paper Lantern Zines",
        email="hello@paperlantern.example",
        products=(
            DemoProduct(
                "physical",
                "Paper Lantern monthly zine",
                "A 24-page risograph zine in your letterbox every month. Cancel any time.",
                catalog.PriceSpec(
                    currency=USD,
                    unit_amount=300,
                    recurring_interval="month",
                    recurring_interval_count=1,
                    trial_days=0,
                    nickname="$3 / month",
                ),
                (
                    catalog.VariantSpec(
                        sku="PL-ZINE-MONTHLY",
                        weight_grams=60,
                        length_mm=210,
                        width_mm=148,
                        height_mm=3,
                    ),
                ),
            ),
            DemoProduct(
                "physical",
                "Back issue #12: Night Markets",
                "The night-markets issue, while copies last.",
                catalog.PriceSpec(currency=USD, unit_amount=600),
                (catalog.VariantSpec(sku="PL-BACK-12", weight_grams=60),),
            ),
        ),
        sales=((1, 2, "reader@example.com"),),
        # The portal's demo buyer: subscribed here and to Ink Fox's sketchbook club.
        subscriber=(0, DEMO_BUYER),
        retention_offer=(0, 50, 3),
    ),
    DemoCreator(
        slug="kiln-and-clay",
        display_name="Kiln & Clay",
        email="studio@kilnandclay.example",
        products=(
            DemoProduct(
                "physical",
                "Speckled moon mug — winter drop",
                "Wheel-thrown stoneware, 350 ml. A drop of 20 pieces, each one a little different.",
                catalog.PriceSpec(currency=USD, unit_amount=4800),
                (
                    catalog.VariantSpec(
                        sku="KC-MOON-MUG",
                        weight_grams=420,
                        length_mm=120,
                        width_mm=90,
                        height_mm=95,
                    ),
                ),
            ),
            DemoProduct(
                "physical",
                "Studio second — ash-glaze bowl",
                "A bowl with a glaze run on the foot: one piece, sold through a small drop.",
                catalog.PriceSpec(currency=USD, unit_amount=2200),
                (
                    catalog.VariantSpec(
                        sku="KC-SECOND-BOWL",
                        weight_grams=380,
                        length_mm=150,
                        width_mm=150,
                        height_mm=70,
                    ),
                ),
            ),
        ),
        sales=((0, 1, "mug.lover@example.com"),),
        shipping_rates=(
            fulfilment.RateSpec(
                display_name="USPS Ground Advantage",
                countries=("US",),
                currency=USD,
                type="flat",
                amount=800,
                weight_bands=None,
                free_shipping_threshold=10_000,
            ),
            fulfilment.RateSpec(
                display_name="International tracked",
                countries=None,
                currency=USD,
                type="flat",
                amount=2400,
                weight_bands=None,
                free_shipping_threshold=None,
            ),
        ),
        ship_to=ShippingAddress(
            name="Mug Lover",
            line1="350 Fifth Avenue",
            city="New York",
            state="NY",
            postal_code="10118",
            country="US",
        ),
        # 20 pieces: one sold (allocated), one held in an open checkout, 18 available.
        stock=(("Studio shelf", "KC-MOON-MUG", 20), ("Studio shelf", "KC-SECOND-BOWL", 1)),
        # The mug sells only through its drop: open from seeding for three days, at most
        # two per buyer, each checkout held for 10 minutes.
        drop=("Winter mug drop", 0, 20, 2),
        open_sessions=((0, 1, "still.deciding@example.com"), (1, 1, "maybe.later@example.com")),
        # The one studio second is held in that open checkout; two buyers wait for it.
        waitlist_drop=("Studio seconds", 1, 1),
        waitlisted=("first.in.line@example.com", "next.in.line@example.com"),
    ),
    DemoCreator(
        slug="ink-fox",
        display_name="Ink Fox Illustration",
        email="fox@inkfox.example",
        products=(
            DemoProduct(
                "digital",
                "Botanical brush pack",
                "42 Procreate brushes drawn from life. Comes with a licence key.",
                catalog.PriceSpec(currency=USD, unit_amount=1200),
                license_keys=tuple(f"INKFOX-BRUSH-{n:04d}" for n in range(1, 21)),
            ),
            DemoProduct(
                "digital",
                "Desktop wallpapers, volume 3",
                "Six 5K wallpapers. Pay what you like, from $2.",
                catalog.PriceSpec(currency=USD, minimum_amount=200, preset_amount=500),
            ),
            DemoProduct(
                "digital",
                "Sketchbook club",
                "A new sketchbook spread every month, as a print-ready PDF.",
                catalog.PriceSpec(
                    currency=USD,
                    unit_amount=400,
                    recurring_interval="month",
                    recurring_interval_count=1,
                    trial_days=0,
                    nickname="$4 / month",
                ),
            ),
            DemoProduct(
                "digital",
                "Mini zine: drawing plants from life",
                "Eight pages of drawing exercises, delivered as a download.",
                catalog.PriceSpec(currency=USD, unit_amount=400),
                files=(DemoFile("ink-fox-mini-zine.txt", "text/plain", mini_zine),),
            ),
        ),
        sales=((0, 1, "painter@example.com"), (3, 1, "painter@example.com")),
        subscriber=(2, DEMO_BUYER),
    ),
)


def load_keys(data_dir: Path) -> dict[str, dict[str, str]]:
    path = data_dir / KEYS_FILE
    if not path.exists():
        return {}
    keys: dict[str, dict[str, str]] = json.loads(path.read_text())
    return keys


def _save_keys(data_dir: Path, keys: dict[str, dict[str, str]]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEYS_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(keys, handle, indent=2)


async def _subscribe(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    price_id: str,
    email: str,
    fees: FeeSchedule,
    now: datetime,
) -> None:
    """Subscribe ``email`` to the price with a saved test card and pay the first invoice,
    as the API's ``POST /v1/subscriptions`` does (the charge with no transaction open)."""
    async with database.unit_of_work() as session:
        customer = await accounts.customer_for_email(
            session, creator_id=creator_id, email=email, now=now
        )
    saved = await payment_methods.save_payment_method(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer.id,
        token="tok_visa",  # noqa: S106 (a sandbox test token, not a secret)
        now=now,
    )
    async with database.unit_of_work() as session:
        created = await subscriptions.create_subscription(
            session,
            creator_id=creator_id,
            customer_id=customer.id,
            items=[subscriptions.ItemRequest(price_id, 1)],
            default_payment_method_id=saved.method.id,
            metadata={"seeded_by": "demo"},
            consent=subscriptions.ConsentRequest(
                terms="Seeded by the demo: renews every month until canceled in the portal."
            ),
            now=now,
        )
    if created.invoice is not None:
        await renewal.charge_invoice(
            database,
            gateway,
            invoice_id=created.invoice.id,
            attempt=1,
            policy=renewal.BillingPolicy(
                fees=fees,
                retry_days=(1, 3, 5, 7),
                after_last_retry="cancel",
                resolve_after_seconds=int(RESOLVE_AFTER.total_seconds()),
            ),
            now=now,
        )


async def seed(
    database: Database,
    *,
    clock: Clock,
    gateway: Gateway,
    data_dir: Path,
    fees: FeeSchedule,
    base_url: str,
    advance: Callable[[str], None] = lambda _: None,
    storage: Storage | None = None,
) -> dict[str, dict[str, str]]:
    """Create the demo creators that do not exist yet; returns every demo creator's keys.
    Demo files go to ``storage`` (default: the embedded one, ``<data_dir>/files``)."""
    storage = storage or LocalStorage(data_dir / "files")
    keys = load_keys(data_dir)
    for spec in CREATORS:
        advance(spec.display_name)
        async with database.unit_of_work() as session:
            exists = (
                await session.execute(select(Creator.id).where(Creator.slug == spec.slug))
            ).first()
        if exists:
            continue
        # The demo's files are stored first, with no transaction open (as uploads are).
        stored_files: dict[str, File] = {}
        creator_id = new_id("cr")
        for product in spec.products:
            for demo_file in product.files:
                stored_files[demo_file.filename] = await files.store_upload(
                    storage,
                    creator_id=creator_id,
                    upload=files.Received(
                        source=io.BytesIO(demo_file.content()),
                        filename=demo_file.filename,
                        content_type=demo_file.content_type,
                    ),
                )
        async with database.unit_of_work() as session:
            now = clock.now()
            creator, secret, publishable = await accounts.create_creator(
                session,
                display_name=spec.display_name,
                email=spec.email,
                slug=spec.slug,
                platform_fee_bps=None,
                platform_fee_fixed=None,
                listed=True,
                now=now,
                creator_id=creator_id,
            )
            price_ids = []
            for product in spec.products:
                created = await catalog.create_product(
                    session,
                    creator_id=creator.id,
                    kind=product.kind,
                    name=product.name,
                    description=product.description,
                    status="published",
                    variants=product.variants,
                    now=now,
                )
                price = await catalog.create_price(
                    session,
                    creator_id=creator.id,
                    product_id=created.id,
                    spec=product.price,
                    now=now,
                )
                price_ids.append(price.id)
                for demo_file in product.files:
                    stored = await files.record_file(
                        session, stored_files[demo_file.filename], now=now
                    )
                    await files.attach_file(
                        session,
                        creator_id=creator.id,
                        product_id=created.id,
                        file_id=stored.id,
                        now=now,
                    )
                if product.license_keys:
                    await files.add_license_keys(
                        session,
                        creator_id=creator.id,
                        product_id=created.id,
                        keys=product.license_keys,
                        now=now,
                    )
            for rate in spec.shipping_rates:
                await fulfilment.create_rate(session, creator_id=creator.id, spec=rate, now=now)
            locations: dict[str, str] = {}
            for location_name, sku, quantity in spec.stock:
                if location_name not in locations:
                    location = await stock.create_location(
                        session, creator_id=creator.id, name=location_name, now=now
                    )
                    locations[location_name] = location.id
                await stock.adjust(
                    session,
                    creator_id=creator.id,
                    sku=sku,
                    location_id=locations[location_name],
                    delta=quantity,
                    set_to=None,
                    kind="received",
                    reason="demo: the winter firing",
                    actor="system",
                    now=now,
                )
            if spec.drop is not None:
                drop_name, index, units, limit = spec.drop
                await drops.create_drop(
                    session,
                    creator_id=creator.id,
                    name=drop_name,
                    mode="first_come",
                    opens_at=now,
                    closes_at=now + DROP_OPEN_FOR,
                    per_customer_limit=limit,
                    reservation_minutes=10,
                    items=[drops.ItemSpec(price_id=price_ids[index], quantity=units)],
                    now=now,
                )
            waitlist_drop_id = None
            if spec.waitlist_drop is not None:
                drop_name, index, units = spec.waitlist_drop
                second = await drops.create_drop(
                    session,
                    creator_id=creator.id,
                    name=drop_name,
                    mode="first_come",
                    opens_at=now,
                    closes_at=now + DROP_OPEN_FOR,
                    per_customer_limit=None,
                    reservation_minutes=10,
                    items=[drops.ItemSpec(price_id=price_ids[index], quantity=units)],
                    now=now,
                )
                waitlist_drop_id = second.drop.id
            for index, quantity, email in spec.open_sessions:
                # Held until the session expires (30 minutes after seeding; 10 in a drop).
                await checkout.create_session(
                    session,
                    creator_id=creator.id,
                    customer_id=None,
                    customer_email=email,
                    lines=[checkout.LineRequest(price_id=price_ids[index], quantity=quantity)],
                    success_url=None,
                    cancel_url=None,
                    ttl=timedelta(minutes=30),
                    now=now,
                )
            if spec.retention_offer is not None:
                index, percent_off, cycles = spec.retention_offer
                await retention.set_offer(
                    session,
                    creator_id=creator.id,
                    price_id=price_ids[index],
                    terms=retention.OfferTerms(
                        kind="discount", percent_off=percent_off, duration_cycles=cycles
                    ),
                    now=now,
                )
            if waitlist_drop_id is not None:
                for email in spec.waitlisted:
                    await waitlists.sign_up(
                        session,
                        creator_id=creator.id,
                        drop_id=waitlist_drop_id,
                        email=email,
                        price_id=None,
                        now=now,
                    )
            sales = []
            for index, quantity, email in spec.sales:
                sale = await checkout.create_session(
                    session,
                    creator_id=creator.id,
                    customer_id=None,
                    customer_email=email,
                    lines=[checkout.LineRequest(price_id=price_ids[index], quantity=quantity)],
                    success_url=None,
                    cancel_url=None,
                    ttl=timedelta(minutes=30),
                    now=now,
                    shipping_address=spec.ship_to,
                )
                sales.append(sale.id)
        # Paying calls the gateway, which happens with no transaction open (ADR 0007).
        if spec.subscriber is not None:
            await _subscribe(
                database,
                gateway,
                creator_id=creator.id,
                price_id=price_ids[spec.subscriber[0]],
                email=spec.subscriber[1],
                fees=fees,
                now=now,
            )
        for sale_id in sales:
            outcome = await checkout.confirm_session(
                database,
                gateway,
                creator_id=creator.id,
                session_id=sale_id,
                payment_method="tok_visa",
                client_secret=None,
                customer_email=None,
                default_fees=fees,
                base_url=base_url,
                resolve_after=now + RESOLVE_AFTER,
                now=now,
            )
            if spec.slug == "paper-lantern" and outcome.session.customer_id and sale_id == sales[0]:
                # The zine's first reader is a buyer with a card on file for renewals
                # (GET /v1/customers/{id}/payment_methods) and $5 in a wallet, topped up
                # once with that card (GET /v1/customers/{id}/wallet).
                await payment_methods.save_payment_method(
                    database,
                    gateway,
                    creator_id=creator.id,
                    customer_id=outcome.session.customer_id,
                    token="tok_visa",  # noqa: S106 (a sandbox test token, not a secret)
                    now=now,
                )
                await wallets.top_up(
                    database,
                    gateway,
                    creator_id=creator.id,
                    customer_id=outcome.session.customer_id,
                    amount=500,
                    currency="usd",
                    payment_method_id=None,
                    request_key=f"demo:{sale_id}",
                    resolve_after=now + RESOLVE_AFTER,
                    now=now,
                )
            if spec.slug == "paper-lantern" and outcome.session.order_id:
                await orders.create_refund(
                    database,
                    gateway,
                    creator_id=creator.id,
                    order_id=outcome.session.order_id,
                    amount=300,
                    reason="requested_by_customer",
                    resolve_after=now + RESOLVE_AFTER,
                    now=now,
                )
        keys[spec.slug] = {
            "creator": creator.id,
            "display_name": spec.display_name,
            "secret_key": secret,
            "publishable_key": publishable,
            # The price /demo/embed sells with embed.js (docs/checkout-pages.md).
            "embed_price": price_ids[0],
        }
        _save_keys(data_dir, keys)
    return keys


# Channels ------------------------------------------------------------------------------

# ``make run`` starts a local Shopify and Etsy double (tests/doubles/channels_demo.py) and
# names them here: "shopify=http://127.0.0.1:8101,etsy=http://127.0.0.1:8102".
DEMO_CHANNELS_ENV = "STALLHOLDER_DEMO_CHANNELS"
CHANNEL_CREATOR = "kiln-and-clay"
# The credentials the doubles are started with (tests/doubles/channels_demo.py).
DEMO_SHOPIFY_TOKEN = "shpat_demo_kiln_and_clay"  # noqa: S105 (a local double's, not a secret)
DEMO_ETSY_SHOP_ID = "5550001"
DEMO_ETSY_TOKEN = "777001.demo-etsy-token"  # noqa: S105 (a local double's, not a secret)


def demo_channels(value: str | None) -> dict[str, str]:
    """``kind=url,kind=url`` as {kind: url}; empty when unset."""
    found: dict[str, str] = {}
    for part in (value or "").split(","):
        kind, _, url = part.strip().partition("=")
        if kind and url:
            found[kind.strip()] = url.strip()
    return found


async def connect_channels(
    database: Database,
    settings: Settings,
    *,
    urls: dict[str, str],
    clock: Clock,
    attempts: int = 50,
) -> list[str]:
    """Connect Kiln & Clay to the demo's Shopify and Etsy doubles (once: a creator that
    has channels keeps them). Returns the names of the channels connected now."""
    async with database.unit_of_work() as session:
        creator_id = (
            await session.execute(select(Creator.id).where(Creator.slug == CHANNEL_CREATOR))
        ).scalar_one_or_none()
        if creator_id is None or await channels.list_channels(session, creator_id=creator_id):
            return []
    engine = engine_from_settings(settings)
    connected = []
    for kind, url in sorted(urls.items()):
        if kind == "shopify":
            new = connect.NewChannel(
                kind="shopify",
                name="Kiln & Clay on Shopify (local double)",
                url=url,
                credentials={
                    "shop_url": url,
                    "access_token": DEMO_SHOPIFY_TOKEN,
                    "webhook_secret": settings.shopify_client_secret,
                },
                rules=Rules(buffer_units=1),
            )
        elif kind == "etsy":
            new = connect.NewChannel(
                kind="etsy",
                name="Kiln & Clay on Etsy (local double)",
                url=f"{url}/v3/application/shops/{DEMO_ETSY_SHOP_ID}",
                credentials={
                    "api_base": url,
                    "shop_id": DEMO_ETSY_SHOP_ID,
                    "user_id": DEMO_ETSY_TOKEN.split(".", 1)[0],
                    "access_token": DEMO_ETSY_TOKEN,
                },
                rules=Rules(buffer_percent=10),
            )
        else:
            continue
        channel_id = connect.fresh_id()
        # The doubles start beside the demo: wait for them a little.
        for attempt in range(attempts):
            try:
                found = await connect.discover(
                    engine, new, channel_id=channel_id, settings=settings
                )
                break
            except connect.ChannelUnreachable:
                if attempt + 1 == attempts:
                    raise
                await asyncio.sleep(0.2)
        async with database.unit_of_work() as session:
            await connect.store(
                session,
                engine,
                new,
                found,
                channel_id=channel_id,
                creator_id=creator_id,
                settings=settings,
                now=clock.now(),
            )
        connected.append(new.name)
    return connected
