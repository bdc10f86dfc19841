"""OAuth installs of the platform's app on a creator's Shopify or Etsy shop.

The state sent to the channel is sealed with the channel key (Fernet: encrypted and
authenticated, with a time to live): it carries the creator, the shop and, for Etsy,
the PKCE verifier, none of which a third party can read or forge. Shopify's callback is
also checked by its ``hmac`` parameter (the app's client secret)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from stallholder.channels import etsy, shopify
from stallholder.channels.buffers import Rules
from stallholder.channels.connect import NewChannel, check_url
from stallholder.channels.connectors import TIMEOUT, ChannelError
from stallholder.channels.credentials import CredentialsUnreadable
from stallholder.channels.sync import Engine
from stallholder.kit.errors import InvalidRequest
from stallholder.settings import Settings

# What a Shopify shop's address looks like (its myshopify.com domain).
SHOP_URL = re.compile(r"https://[a-z0-9][a-z0-9-]*\.myshopify\.com")


class AppNotConfigured(InvalidRequest):
    slug = "channel-app-not-configured"
    title = "The platform has no app on this channel"


class InstallRefused(InvalidRequest):
    slug = "channel-install-refused"
    title = "The install could not be completed"


def _redirect_uri(settings: Settings, kind: str) -> str:
    return f"{settings.base_url.rstrip('/')}/channels/oauth/{kind}/callback"


def start(
    engine: Engine,
    settings: Settings,
    *,
    kind: str,
    creator_id: str,
    shop_url: str | None,
    shop_id: str | None,
    ttl: timedelta,
) -> str:
    """The authorization URL to send the creator to.

    Raises:
        AppNotConfigured: the platform has no app credentials for this channel.
        InvalidRequest: ``shop_url`` (Shopify) or ``shop_id`` (Etsy) is missing.
    """
    del ttl  # checked when the state comes back
    if kind == "shopify":
        if not (settings.shopify_client_id and settings.shopify_client_secret):
            raise AppNotConfigured(
                "set STALLHOLDER_SHOPIFY_CLIENT_ID and STALLHOLDER_SHOPIFY_CLIENT_SECRET to "
                "install on Shopify, or connect with a custom app's token"
            )
        if not shop_url:
            raise InvalidRequest("give shop_url, e.g. https://your-shop.myshopify.com")
        shop_url = shop_url.rstrip("/")
        if not (SHOP_URL.fullmatch(shop_url) or settings.allow_private_webhook_targets):
            raise InvalidRequest(
                f"{shop_url!r} is not a Shopify shop's address; give "
                "https://your-shop.myshopify.com",
                param="shop_url",
            )
        state = engine.vault.seal(
            {"creator": creator_id, "kind": kind, "shop_url": shop_url.rstrip("/")}
        )
        return shopify.authorization_url(
            shop_url.rstrip("/"),
            client_id=settings.shopify_client_id,
            scopes=shopify.SCOPES,
            redirect_uri=_redirect_uri(settings, kind),
            state=state,
        )
    if not settings.etsy_keystring:
        raise AppNotConfigured("set STALLHOLDER_ETSY_KEYSTRING to install on Etsy")
    if not shop_id or not shop_id.isdigit():
        raise InvalidRequest("give shop_id, the number of your Etsy shop")
    verifier, challenge = etsy.pkce_pair()
    state = engine.vault.seal(
        {"creator": creator_id, "kind": kind, "shop_id": shop_id, "verifier": verifier}
    )
    return etsy.authorization_url(
        client_id=settings.etsy_keystring,
        redirect_uri=_redirect_uri(settings, kind),
        scopes=etsy.SCOPES,
        state=state,
        code_challenge=challenge,
        connect_url=settings.etsy_connect_url,
    )


async def finish(
    engine: Engine,
    settings: Settings,
    *,
    kind: str,
    query: Mapping[str, str],
    ttl: timedelta,
) -> tuple[NewChannel, str]:
    """The channel an install callback connects, and its creator.

    Raises:
        InstallRefused: the state or the signature does not verify, the install expired,
            the creator declined, or the channel refused the code.
    """
    if "error" in query:
        raise InstallRefused(f"the install was not completed: {query.get('error')}")
    try:
        state = engine.vault.open(query.get("state", ""), ttl_seconds=int(ttl.total_seconds()))
    except CredentialsUnreadable as error:
        raise InstallRefused("the install link is not valid or has expired; start again") from error
    if state.get("kind") != kind or not query.get("code"):
        raise InstallRefused("the callback does not belong to this install; start again")
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        try:
            if kind == "shopify":
                if not shopify.verify_callback(query, client_secret=settings.shopify_client_secret):
                    raise InstallRefused("the callback's signature does not verify")
                shop_url = str(state["shop_url"])
                # The shop Shopify says was installed must be the one the install began
                # for: the app's client secret is sent to that address next.
                if query.get("shop") != urlsplit(shop_url).netloc:
                    raise InstallRefused("the callback is for another shop; start again")
                await check_url(shop_url, allow_private=settings.allow_private_webhook_targets)
                tokens = await shopify.exchange_code(
                    http,
                    shop_url,
                    client_id=settings.shopify_client_id,
                    client_secret=settings.shopify_client_secret,
                    code=query["code"],
                )
                credentials = {
                    "shop_url": shop_url,
                    "access_token": tokens.access_token,
                    "refresh_token": tokens.refresh_token,
                    "expires_at": tokens.expires_at.isoformat() if tokens.expires_at else None,
                    "webhook_secret": settings.shopify_client_secret,
                    # The platform app's secret signs every installed shop's webhooks: a
                    # delivery must also name this shop (X-Shopify-Shop-Domain).
                    "shop_domain": query.get("shop"),
                }
                return (
                    NewChannel(
                        kind=kind,
                        name=shop_url.split("//", 1)[-1],
                        url=shop_url,
                        credentials=credentials,
                        rules=Rules(),
                    ),
                    str(state["creator"]),
                )
            tokens = await etsy.exchange_code(
                http,
                api_base=settings.etsy_api_base,
                client_id=settings.etsy_keystring,
                redirect_uri=_redirect_uri(settings, kind),
                code=query["code"],
                code_verifier=str(state["verifier"]),
            )
        except ChannelError as error:
            raise InstallRefused(f"the channel refused the install: {error}") from error
    credentials = {
        "shop_id": str(state["shop_id"]),
        "user_id": tokens.access_token.split(".", 1)[0],
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "expires_at": tokens.expires_at.isoformat() if tokens.expires_at else None,
    }
    return (
        NewChannel(
            kind=kind,
            name=f"Etsy shop {state['shop_id']}",
            url=f"{settings.etsy_api_base.rstrip('/')}/v3/application/shops/{state['shop_id']}",
            credentials=credentials,
            rules=Rules(),
        ),
        str(state["creator"]),
    )
