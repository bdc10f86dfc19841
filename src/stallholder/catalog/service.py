"""Products with variants, prices and collections, always within one creator."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.schemas import slugify
from stallholder.catalog.models import Collection, CollectionProduct, Price, Product, Variant
from stallholder.kit.db import is_unique_violation
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate


class ProductNotFound(NotFound):
    slug = "product-not-found"
    title = "No such product"


class PriceNotFound(NotFound):
    slug = "price-not-found"
    title = "No such price"


class CollectionNotFound(NotFound):
    slug = "collection-not-found"
    title = "No such collection"


# What a SKU may be: the API's schemas say the same (``catalog.schemas.VariantIn``); the
# service checks it too, for SKUs that come from elsewhere (a channel's listings).
SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
SKU_MAX_LENGTH = 64
_SKU = re.compile(SKU_PATTERN)


class InvalidSku(InvalidRequest):
    slug = "invalid-sku"
    title = "A SKU is not one a variant may have"


class SkuTaken(Conflict):
    slug = "sku-taken"
    title = "SKU already in use"


class CollectionSlugTaken(Conflict):
    slug = "collection-slug-taken"
    title = "Collection slug already in use"


class ProductArchived(InvalidRequest):
    slug = "product-archived"
    title = "The product is archived"


@dataclass(frozen=True, slots=True)
class VariantSpec:
    sku: str
    name: str | None = None
    weight_grams: int | None = None
    length_mm: int | None = None
    width_mm: int | None = None
    height_mm: int | None = None


@dataclass(frozen=True, slots=True)
class PriceSpec:
    currency: str
    unit_amount: int | None = None
    minimum_amount: int | None = None
    maximum_amount: int | None = None
    preset_amount: int | None = None
    recurring_interval: str | None = None
    recurring_interval_count: int | None = None
    trial_days: int | None = None
    nickname: str | None = None
    delivery_calendar: dict[str, Any] | None = None

    @property
    def type(self) -> str:
        if self.recurring_interval is not None:
            return "recurring"
        if self.unit_amount is None:
            return "pay_what_you_want"
        return "one_time"


async def _ensure_free_skus(session: AsyncSession, creator_id: str, skus: Sequence[str]) -> None:
    """Raises InvalidSku (not a SKU a variant may have) or SkuTaken."""
    if not skus:
        return
    for sku in skus:
        if len(sku) > SKU_MAX_LENGTH or not _SKU.fullmatch(sku):
            raise InvalidSku(
                f"sku {sku!r} is not a SKU a variant may have: 1 to {SKU_MAX_LENGTH} letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
    taken = (
        (
            await session.execute(
                select(Variant.sku).where(Variant.creator_id == creator_id, Variant.sku.in_(skus))
            )
        )
        .scalars()
        .all()
    )
    if taken:
        raise SkuTaken(
            f"sku {sorted(taken)[0]!r} already belongs to another variant; SKUs are "
            "unique per creator"
        )


async def create_product(
    session: AsyncSession,
    *,
    creator_id: str,
    kind: str,
    name: str,
    description: str,
    status: str,
    variants: Sequence[VariantSpec],
    now: datetime,
    images: Sequence[str] = (),
) -> Product:
    """A product with its variants; one default variant (generated SKU) when none is given.

    Raises:
        SkuTaken: a variant's SKU is already used by this creator.
    """
    if not variants:
        variants = [VariantSpec(sku=f"{slugify(name)[:40]}-{secrets.token_hex(3)}", name=name)]
    await _ensure_free_skus(session, creator_id, [v.sku for v in variants])
    product = Product(
        id=new_id("prod"),
        creator_id=creator_id,
        kind=kind,
        name=name,
        description=description,
        images=list(images),
        status=status,
        created_at=now,
        updated_at=now,
        variants=[],
    )
    for position, spec in enumerate(variants):
        product.variants.append(
            Variant(
                id=new_id("var"),
                creator_id=creator_id,
                sku=spec.sku,
                name=spec.name or name,
                position=position,
                is_default=position == 0,
                weight_grams=spec.weight_grams,
                length_mm=spec.length_mm,
                width_mm=spec.width_mm,
                height_mm=spec.height_mm,
                created_at=now,
            )
        )
    session.add(product)
    try:
        await session.flush()
    except IntegrityError as error:
        # A concurrent request gave another variant one of these SKUs after the check.
        if is_unique_violation(error, "uq_variants_creator_id_sku"):
            raise SkuTaken(
                "one of these SKUs was taken at this moment by another request; SKUs are "
                "unique per creator"
            ) from error
        raise
    return product


async def get_product(
    session: AsyncSession, *, creator_id: str, product_id: str, published_only: bool = False
) -> Product:
    """Raises ``ProductNotFound`` for another creator's product too, so ids do not leak."""
    product = await session.get(Product, product_id)
    if (
        product is None
        or product.creator_id != creator_id
        or (published_only and product.status != "published")
    ):
        raise ProductNotFound(f"no product {product_id!r}")
    return product


async def update_product(
    session: AsyncSession,
    *,
    creator_id: str,
    product_id: str,
    name: str | None,
    description: str | None,
    status: str | None,
    now: datetime,
    images: Sequence[str] | None = None,
) -> Product:
    product = await get_product(session, creator_id=creator_id, product_id=product_id)
    if name is not None:
        product.name = name
    if images is not None:
        product.images = list(images)
    if description is not None:
        product.description = description
    if status is not None:
        product.status = status
    product.updated_at = now
    await session.flush()
    return product


async def list_products(
    session: AsyncSession,
    *,
    creator_id: str,
    status: str | None,
    limit: int,
    starting_after: str | None,
) -> Page[Product]:
    statement = select(Product).where(Product.creator_id == creator_id)
    if status is not None:
        statement = statement.where(Product.status == status)
    return await paginate(
        session, statement, id_column=Product.id, limit=limit, starting_after=starting_after
    )


async def create_price(
    session: AsyncSession, *, creator_id: str, product_id: str, spec: PriceSpec, now: datetime
) -> Price:
    """Raises ``ProductNotFound``, or ``ProductArchived`` for an archived product."""
    product = await get_product(session, creator_id=creator_id, product_id=product_id)
    if product.status == "archived":
        raise ProductArchived(f"product {product_id!r} is archived; new prices need a live product")
    price = Price(
        id=new_id("price"),
        creator_id=creator_id,
        product_id=product.id,
        type=spec.type,
        currency=spec.currency,
        unit_amount=spec.unit_amount,
        minimum_amount=spec.minimum_amount,
        maximum_amount=spec.maximum_amount,
        preset_amount=spec.preset_amount,
        recurring_interval=spec.recurring_interval,
        recurring_interval_count=spec.recurring_interval_count,
        trial_days=spec.trial_days,
        delivery_calendar=spec.delivery_calendar,
        nickname=spec.nickname,
        is_active=True,
        created_at=now,
    )
    session.add(price)
    await session.flush()
    return price


async def get_price(
    session: AsyncSession, *, creator_id: str, price_id: str, public_only: bool = False
) -> Price:
    """Raises ``PriceNotFound`` for another creator's price too; with ``public_only`` (a
    publishable key) also for an archived price or one of an unpublished product."""
    price = await session.get(Price, price_id)
    if price is None or price.creator_id != creator_id:
        raise PriceNotFound(f"no price {price_id!r}")
    if public_only:
        product = await session.get(Product, price.product_id)
        if not price.is_active or product is None or product.status != "published":
            raise PriceNotFound(f"no price {price_id!r}")
    return price


async def update_price(
    session: AsyncSession,
    *,
    creator_id: str,
    price_id: str,
    is_active: bool | None,
    nickname: str | None,
) -> Price:
    price = await get_price(session, creator_id=creator_id, price_id=price_id)
    if is_active is not None:
        price.is_active = is_active
    if nickname is not None:
        price.nickname = nickname
    await session.flush()
    return price


async def list_prices(
    session: AsyncSession,
    *,
    creator_id: str,
    product_id: str | None,
    limit: int,
    starting_after: str | None,
    public_only: bool = False,
) -> Page[Price]:
    """With ``public_only`` (a publishable key): active prices of published products only."""
    statement = select(Price).where(Price.creator_id == creator_id)
    if product_id is not None:
        statement = statement.where(Price.product_id == product_id)
    if public_only:
        statement = statement.join(Product, Product.id == Price.product_id).where(
            Price.is_active.is_(True), Product.status == "published"
        )
    return await paginate(
        session, statement, id_column=Price.id, limit=limit, starting_after=starting_after
    )


async def _set_collection_products(
    session: AsyncSession, *, creator_id: str, collection_id: str, product_ids: Sequence[str]
) -> None:
    if len(set(product_ids)) != len(product_ids):
        raise InvalidRequest("a product may appear in a collection only once")
    for product_id in product_ids:
        await get_product(session, creator_id=creator_id, product_id=product_id)
    # Two requests replacing one collection's products would insert the same (collection,
    # product) keys; the row lock makes the second wait and replace the first's list.
    await session.execute(
        select(Collection.id).where(Collection.id == collection_id).with_for_update()
    )
    await session.execute(
        delete(CollectionProduct).where(CollectionProduct.collection_id == collection_id)
    )
    for position, product_id in enumerate(product_ids):
        session.add(
            CollectionProduct(
                collection_id=collection_id,
                creator_id=creator_id,
                product_id=product_id,
                position=position,
            )
        )
    await session.flush()


async def create_collection(
    session: AsyncSession,
    *,
    creator_id: str,
    name: str,
    slug: str | None,
    description: str,
    product_ids: Sequence[str],
    now: datetime,
) -> Collection:
    slug = slug or slugify(name)
    if (
        await session.execute(
            select(Collection.id).where(
                Collection.creator_id == creator_id, Collection.slug == slug
            )
        )
    ).first():
        raise CollectionSlugTaken(f"you already have a collection with slug {slug!r}")
    collection = Collection(
        id=new_id("col"),
        creator_id=creator_id,
        name=name,
        slug=slug,
        description=description,
        created_at=now,
    )
    session.add(collection)
    try:
        await session.flush()
    except IntegrityError as error:
        if is_unique_violation(error, "uq_collections_creator_id_slug"):
            raise CollectionSlugTaken(
                f"a collection with slug {slug!r} was created at this moment by another request"
            ) from error
        raise
    await _set_collection_products(
        session, creator_id=creator_id, collection_id=collection.id, product_ids=product_ids
    )
    return collection


async def get_collection(
    session: AsyncSession, *, creator_id: str, collection_id: str
) -> Collection:
    collection = await session.get(Collection, collection_id)
    if collection is None or collection.creator_id != creator_id:
        raise CollectionNotFound(f"no collection {collection_id!r}")
    return collection


async def update_collection(
    session: AsyncSession,
    *,
    creator_id: str,
    collection_id: str,
    name: str | None,
    description: str | None,
    product_ids: Sequence[str] | None,
) -> Collection:
    collection = await get_collection(session, creator_id=creator_id, collection_id=collection_id)
    if name is not None:
        collection.name = name
    if description is not None:
        collection.description = description
    if product_ids is not None:
        await _set_collection_products(
            session, creator_id=creator_id, collection_id=collection_id, product_ids=product_ids
        )
    await session.flush()
    return collection


async def collection_product_ids(session: AsyncSession, collection_id: str) -> list[str]:
    return list(
        (
            await session.execute(
                select(CollectionProduct.product_id)
                .where(CollectionProduct.collection_id == collection_id)
                .order_by(CollectionProduct.position)
            )
        ).scalars()
    )


async def list_collections(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[Collection]:
    return await paginate(
        session,
        select(Collection).where(Collection.creator_id == creator_id),
        id_column=Collection.id,
        limit=limit,
        starting_after=starting_after,
    )


@dataclass(frozen=True, slots=True)
class Offer:
    creator_id: str
    product_id: str
    name: str
    kind: str
    price: Price


async def published_offers(session: AsyncSession, *, limit: int = 200) -> list[Offer]:
    """Active prices of published products, across creators, for the public store index."""
    rows = await session.execute(
        select(Product, Price)
        .join(Price, Price.product_id == Product.id)
        .where(Product.status == "published", Price.is_active.is_(True))
        .order_by(Product.creator_id, Product.id, Price.id)
        .limit(limit)
    )
    return [
        Offer(
            creator_id=product.creator_id,
            product_id=product.id,
            name=product.name,
            kind=product.kind,
            price=price,
        )
        for product, price in rows
    ]


@dataclass(frozen=True, slots=True)
class Listing:
    """A published product with its active prices, as a public store page shows it."""

    product: Product
    prices: list[Price]


async def store_listings(
    session: AsyncSession, *, creator_id: str, product_id: str | None = None, limit: int = 200
) -> list[Listing]:
    """The creator's published products that have an active price, oldest first, each
    with its active prices (cheapest first); one product with ``product_id``."""
    statement = (
        select(Product, Price)
        .join(Price, Price.product_id == Product.id)
        .where(
            Product.creator_id == creator_id,
            Product.status == "published",
            Price.is_active.is_(True),
        )
        .order_by(Product.created_at, Product.id, Price.id)
    )
    if product_id is not None:
        statement = statement.where(Product.id == product_id)
    listings: dict[str, Listing] = {}
    for product, price in await session.execute(statement):
        listing = listings.get(product.id)
        if listing is None:
            if len(listings) == limit:
                break
            listing = listings[product.id] = Listing(product=product, prices=[])
        listing.prices.append(price)
    for listing in listings.values():
        listing.prices.sort(key=lambda p: (p.unit_amount or p.minimum_amount or 0, p.id))
    return list(listings.values())
