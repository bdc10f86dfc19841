"""FastAPI dependencies that say who is calling. Interface layer only."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.service import (
    KeyCache,
    Principal,
    PublishableKeyNotAllowed,
    authenticate,
)
from stallholder.kit.errors import Forbidden, Unauthenticated
from stallholder.kit.http import PRINCIPAL_SCOPE_KEY, get_database
from stallholder.kit.openapi import documents

# The OpenAPI security schemes: all three are bearer tokens, so Swagger UI's Authorize
# dialog takes one of each and every operation says which of them it accepts.
ADMIN_KEY_SCHEME = "AdminKey"
SECRET_KEY_SCHEME = "SecretKey"  # noqa: S105 (a scheme name, not a secret)
PUBLISHABLE_KEY_SCHEME = "PublishableKey"
SECURITY_SCHEMES = {
    ADMIN_KEY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "admin_…",
        "description": "The platform admin key (STALLHOLDER_ADMIN_KEY, or var/admin-key).",
    },
    SECRET_KEY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "sk_…",
        "description": "A creator's secret key: everything for that creator. Server-side only.",
    },
    PUBLISHABLE_KEY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "pk_…",
        "description": "A creator's publishable key: checkout sessions and the public catalog.",
    },
}


async def authenticate_header(
    session: AsyncSession,
    *,
    authorization: str,
    admin_key: str,
    cache: KeyCache | None = None,
) -> Principal:
    """The principal behind an ``Authorization: Bearer <key>`` header.

    Raises:
        Unauthenticated: not a bearer token, or one that matches no live key.
    """
    scheme, _, token = authorization.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    return await authenticate(session, token=bearer, admin_key=admin_key, cache=cache)


@documents(Unauthenticated, accepts=(ADMIN_KEY_SCHEME, SECRET_KEY_SCHEME, PUBLISHABLE_KEY_SCHEME))
async def get_principal(request: Request) -> Principal:
    """Who is calling. Authenticating reads in a short transaction of its own, so it never
    begins the request's unit of work (on SQLite: never takes the write lock). The
    idempotency middleware has already done it for a POST with a key and hands it over."""
    principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        async with get_database(request).read() as session:
            principal = await authenticate_header(
                session,
                authorization=request.headers.get("authorization", ""),
                admin_key=request.app.state.admin_key,
                cache=getattr(request.app.state, "key_cache", None),
            )
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class AdminOnly(Forbidden):
    slug = "admin-key-required"
    title = "This needs the platform admin key"


class CreatorKeyRequired(Forbidden):
    slug = "creator-key-required"
    title = "This needs a creator's API key"


@documents(AdminOnly, accepts=(ADMIN_KEY_SCHEME,))
async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise AdminOnly("only the platform admin key (STALLHOLDER_ADMIN_KEY) can do this")
    return principal


@documents(CreatorKeyRequired, PublishableKeyNotAllowed, accepts=(SECRET_KEY_SCHEME,))
async def require_secret_key(principal: PrincipalDep) -> str:
    """The creator id behind a secret key."""
    if principal.is_admin or principal.creator_id is None:
        raise CreatorKeyRequired("use the creator's secret key (sk_…) for this")
    if principal.kind != "secret":
        raise PublishableKeyNotAllowed(
            "publishable keys (pk_…) may only create checkout sessions and read the public "
            "catalog; use the secret key (sk_…) on your server"
        )
    return principal.creator_id


@documents(CreatorKeyRequired, accepts=(SECRET_KEY_SCHEME, PUBLISHABLE_KEY_SCHEME))
async def require_creator_key(principal: PrincipalDep) -> str:
    """The creator id behind a secret or a publishable key."""
    if principal.is_admin or principal.creator_id is None:
        raise CreatorKeyRequired("use the creator's secret (sk_…) or publishable (pk_…) key")
    return principal.creator_id


AdminDep = Annotated[Principal, Depends(require_admin)]
SecretCreatorDep = Annotated[str, Depends(require_secret_key)]
AnyCreatorDep = Annotated[str, Depends(require_creator_key)]
