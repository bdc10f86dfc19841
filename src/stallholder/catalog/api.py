"""HTTP routes for products, prices and collections."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from stallholder.accounts.auth import AnyCreatorDep, PrincipalDep, SecretCreatorDep
from stallholder.catalog import service
from stallholder.catalog.models import Collection
from stallholder.catalog.schemas import (
    CollectionCreate,
    CollectionOut,
    CollectionUpdate,
    PriceCreate,
    PriceOut,
    PriceUpdate,
    ProductCreate,
    ProductOut,
    ProductStatus,
    ProductUpdate,
    collection_out,
    price_out,
)
from stallholder.kit.http import NowDep, SessionDep
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["catalog"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.post("/products", status_code=201, response_model=ProductOut)
async def create_product(
    body: ProductCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> ProductOut:
    product = await service.create_product(
        session,
        creator_id=creator_id,
        kind=body.kind,
        name=body.name,
        description=body.description,
        images=[str(url) for url in body.images],
        status=body.status,
        now=now,
        variants=[
            service.VariantSpec(
                sku=v.sku,
                name=v.name,
                weight_grams=v.weight_grams,
                length_mm=v.dimensions.length_mm if v.dimensions else None,
                width_mm=v.dimensions.width_mm if v.dimensions else None,
                height_mm=v.dimensions.height_mm if v.dimensions else None,
            )
            for v in body.variants
        ],
    )
    return ProductOut.model_validate(product)


@router.get("/products", response_model=ListOut)
async def list_products(
    principal: PrincipalDep,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    status: ProductStatus | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """A publishable key sees published products only."""
    if principal.kind == "publishable":
        status = "published"
    page = await service.list_products(
        session, creator_id=creator_id, status=status, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[ProductOut.model_validate(p) for p in page.data], has_more=page.has_more)


@router.get("/products/{product_id}", response_model=ProductOut)
async def get_product(
    product_id: str, principal: PrincipalDep, creator_id: AnyCreatorDep, session: SessionDep
) -> ProductOut:
    return ProductOut.model_validate(
        await service.get_product(
            session,
            creator_id=creator_id,
            product_id=product_id,
            published_only=principal.kind == "publishable",
        )
    )


@router.patch("/products/{product_id}", response_model=ProductOut)
async def update_product(
    product_id: str,
    body: ProductUpdate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> ProductOut:
    """Change name, description or images, or publish (``status: published``) and
    archive."""
    return ProductOut.model_validate(
        await service.update_product(
            session,
            creator_id=creator_id,
            product_id=product_id,
            name=body.name,
            description=body.description,
            images=None if body.images is None else [str(url) for url in body.images],
            status=body.status,
            now=now,
        )
    )


@router.post("/prices", status_code=201, response_model=PriceOut)
async def create_price(
    body: PriceCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> PriceOut:
    custom = body.custom_unit_amount
    recurring = body.recurring
    spec = service.PriceSpec(
        currency=body.currency,
        unit_amount=body.unit_amount,
        minimum_amount=custom.minimum if custom else None,
        maximum_amount=custom.maximum if custom else None,
        preset_amount=custom.preset if custom else None,
        recurring_interval=recurring.interval if recurring else None,
        recurring_interval_count=recurring.interval_count if recurring else None,
        trial_days=recurring.trial_days if recurring else None,
        delivery_calendar=recurring.delivery.model_dump()
        if recurring is not None and recurring.delivery is not None
        else None,
        nickname=body.nickname,
    )
    return price_out(
        await service.create_price(
            session, creator_id=creator_id, product_id=body.product, spec=spec, now=now
        )
    )


@router.get("/prices", response_model=ListOut)
async def list_prices(
    principal: PrincipalDep,
    creator_id: AnyCreatorDep,
    session: SessionDep,
    product: str | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """A publishable key sees active prices of published products only."""
    page = await service.list_prices(
        session,
        creator_id=creator_id,
        product_id=product,
        limit=limit,
        starting_after=starting_after,
        public_only=principal.kind == "publishable",
    )
    return ListOut(data=[price_out(p) for p in page.data], has_more=page.has_more)


@router.get("/prices/{price_id}", response_model=PriceOut)
async def get_price(
    price_id: str, principal: PrincipalDep, creator_id: AnyCreatorDep, session: SessionDep
) -> PriceOut:
    return price_out(
        await service.get_price(
            session,
            creator_id=creator_id,
            price_id=price_id,
            public_only=principal.kind == "publishable",
        )
    )


@router.patch("/prices/{price_id}", response_model=PriceOut)
async def update_price(
    price_id: str, body: PriceUpdate, creator_id: SecretCreatorDep, session: SessionDep
) -> PriceOut:
    """Archive a price with ``active: false``: it can no longer be bought."""
    return price_out(
        await service.update_price(
            session,
            creator_id=creator_id,
            price_id=price_id,
            is_active=body.active,
            nickname=body.nickname,
        )
    )


async def _collection_out(session: SessionDep, collection: Collection) -> CollectionOut:
    return collection_out(
        collection, product_ids=await service.collection_product_ids(session, collection.id)
    )


@router.post("/collections", status_code=201, response_model=CollectionOut)
async def create_collection(
    body: CollectionCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> CollectionOut:
    collection = await service.create_collection(
        session,
        creator_id=creator_id,
        name=body.name,
        slug=body.slug,
        description=body.description,
        product_ids=body.products,
        now=now,
    )
    return await _collection_out(session, collection)


@router.get("/collections", response_model=ListOut)
async def list_collections(
    creator_id: AnyCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await service.list_collections(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(
        data=[await _collection_out(session, c) for c in page.data], has_more=page.has_more
    )


@router.get("/collections/{collection_id}", response_model=CollectionOut)
async def get_collection(
    collection_id: str, creator_id: AnyCreatorDep, session: SessionDep
) -> CollectionOut:
    return await _collection_out(
        session,
        await service.get_collection(session, creator_id=creator_id, collection_id=collection_id),
    )


@router.patch("/collections/{collection_id}", response_model=CollectionOut)
async def update_collection(
    collection_id: str, body: CollectionUpdate, creator_id: SecretCreatorDep, session: SessionDep
) -> CollectionOut:
    return await _collection_out(
        session,
        await service.update_collection(
            session,
            creator_id=creator_id,
            collection_id=collection_id,
            name=body.name,
            description=body.description,
            product_ids=body.products,
        ),
    )
