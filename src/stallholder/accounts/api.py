"""HTTP routes for creators, keys and customers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from stallholder.accounts import service
from stallholder.accounts.auth import (
    ADMIN_KEY_SCHEME,
    SECRET_KEY_SCHEME,
    AdminDep,
    PrincipalDep,
    SecretCreatorDep,
)
from stallholder.accounts.schemas import (
    CreatorCreate,
    CreatorOut,
    CreatorUpdate,
    CreatorWithKeys,
    CustomerCreate,
    CustomerOut,
    KeysOut,
    creator_with_keys,
)
from stallholder.kit.http import NowDep, SessionDep
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["accounts"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@documents(accepts=(ADMIN_KEY_SCHEME, SECRET_KEY_SCHEME))
async def require_account_access(creator_id: str, principal: PrincipalDep) -> str:
    """The admin reaches any creator's account; a creator's secret key only its own. A
    publishable key, which ships in web pages, reads no account data."""
    if not principal.is_admin and not (
        principal.kind == "secret" and principal.creator_id == creator_id
    ):
        raise service.CreatorNotFound(f"no creator {creator_id!r}")
    return creator_id


AccountDep = Annotated[str, Depends(require_account_access)]


@router.post("/creators", status_code=201, response_model=CreatorWithKeys)
async def create_creator(
    body: CreatorCreate, _: AdminDep, session: SessionDep, now: NowDep
) -> CreatorWithKeys:
    """Create a creator (admin key). The keys are shown once: store them now."""
    creator, secret, publishable = await service.create_creator(
        session,
        display_name=body.display_name,
        email=body.email,
        slug=body.slug,
        platform_fee_bps=body.platform_fee_bps,
        platform_fee_fixed=body.platform_fee_fixed,
        listed=body.listed,
        now=now,
    )
    return creator_with_keys(creator, secret_key=secret, publishable_key=publishable)


@router.get("/creators", response_model=ListOut)
async def list_creators(
    _: AdminDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """Every creator on the platform, newest first (admin key)."""
    page = await service.list_creators(session, limit=limit, starting_after=starting_after)
    return ListOut(data=[CreatorOut.model_validate(c) for c in page.data], has_more=page.has_more)


@router.get("/creators/{creator_id}", response_model=CreatorOut)
async def get_creator(creator_id: AccountDep, session: SessionDep) -> CreatorOut:
    """The admin sees any creator; a creator's secret key sees only its own."""
    return CreatorOut.model_validate(await service.get_creator(session, creator_id))


@router.patch("/creators/{creator_id}", response_model=CreatorOut)
async def update_creator(
    creator_id: AccountDep, body: CreatorUpdate, session: SessionDep
) -> CreatorOut:
    """Change the creator's settings (admin key, or the creator's secret key); a field
    left out keeps its value. ``display_name``; ``listed``: whether the public store index
    lists the creator (an unlisted creator's store pages answer 404); ``allowed_origins``:
    the sites (``https://shop.example``) that may embed the creator's checkout in an
    iframe and open sessions from a browser with the publishable key (the list replaces
    the old one)."""
    creator = await service.update_creator(
        session,
        creator_id=creator_id,
        display_name=body.display_name,
        listed=body.listed,
        allowed_origins=body.allowed_origins,
    )
    return CreatorOut.model_validate(creator)


@router.post("/creators/{creator_id}/keys/roll", response_model=KeysOut)
async def roll_keys(creator_id: AccountDep, session: SessionDep, now: NowDep) -> KeysOut:
    """Revoke the creator's keys and issue new ones (admin key, or the creator's secret key)."""
    secret, publishable = await service.roll_keys(session, creator_id=creator_id, now=now)
    return KeysOut(creator=creator_id, secret_key=secret, publishable_key=publishable)


@router.post("/customers", status_code=201, response_model=CustomerOut)
async def create_customer(
    body: CustomerCreate, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> CustomerOut:
    customer = await service.create_customer(
        session,
        creator_id=creator_id,
        email=body.email,
        name=body.name,
        time_zone=body.time_zone,
        now=now,
        test_clock_id=body.test_clock,
        country=body.country,
    )
    return CustomerOut.model_validate(customer)


@router.get("/customers/{customer_id}", response_model=CustomerOut)
async def get_customer(
    customer_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> CustomerOut:
    return CustomerOut.model_validate(
        await service.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    )


@router.get("/customers", response_model=ListOut)
async def list_customers(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    page = await service.list_customers(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[CustomerOut.model_validate(c) for c in page.data], has_more=page.has_more)
