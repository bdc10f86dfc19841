"""FastAPI dependencies that say who is calling. Interface layer only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from stallholder.accounts.service import Principal, PublishableKeyNotAllowed, authenticate
from stallholder.kit.db import Database
from stallholder.kit.errors import Forbidden


async def get_principal(request: Request) -> Principal:
    """Who is calling, looked up in a short unit of work of its own: the request's unit
    of work is not opened by authentication, so an endpoint that calls a payment gateway
    first (confirm, refund) holds no transaction during the call (ADR 0007)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    database: Database = request.app.state.database
    async with database.unit_of_work() as session:
        principal = await authenticate(session, token=bearer, admin_key=request.app.state.admin_key)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class AdminOnly(Forbidden):
    slug = "admin-key-required"
    title = "This needs the platform admin key"


class CreatorKeyRequired(Forbidden):
    slug = "creator-key-required"
    title = "This needs a creator's API key"


def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise AdminOnly("only the platform admin key (STALLHOLDER_ADMIN_KEY) can do this")
    return principal


def require_secret_key(principal: PrincipalDep) -> str:
    """The creator id behind a secret key."""
    if principal.is_admin or principal.creator_id is None:
        raise CreatorKeyRequired("use the creator's secret key (sk_…) for this")
    if principal.kind != "secret":
        raise PublishableKeyNotAllowed(
            "publishable keys (pk_…) may only create checkout sessions and read the public "
            "catalog; use the secret key (sk_…) on your server"
        )
    return principal.creator_id


def require_creator_key(principal: PrincipalDep) -> str:
    """The creator id behind a secret or a publishable key."""
    if principal.is_admin or principal.creator_id is None:
        raise CreatorKeyRequired("use the creator's secret (sk_…) or publishable (pk_…) key")
    return principal.creator_id


AdminDep = Annotated[Principal, Depends(require_admin)]
SecretCreatorDep = Annotated[str, Depends(require_secret_key)]
AnyCreatorDep = Annotated[str, Depends(require_creator_key)]
