"""OAuth installs of the platform's app on a creator's Shopify or Etsy shop.

An install has three steps. ``ticket_url`` (the API, with the creator's secret key)
answers Stallholder's own begin URL with a sealed ticket. ``begin`` (the creator's
browser opens it) ties the install to that browser's session: the session gets a random
install key (``BROWSER_KEY``) and the state sent to the channel names its SHA-256.
``finish`` (the callback) opens the state and refuses it unless the browser's session
holds that key, so a valid state carried to another browser connects nothing.

Tickets and states are sealed with the channel key (Fernet: encrypted and authenticated,
with a time to live): they carry the creator, the shop and, for Etsy, the PKCE verifier,
none of which a third party can read or forge; each names its use, so one is never taken
for the other. Shopify's callback is also checked by its ``hmac`` parameter (the app's
client secret)."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from stallholder.channels import etsy, shopify
from stallholder.channels.buffers import Rules
from stallholder.channels.connect import NewChannel, check_url
from stallholder.channels.connectors import ChannelError
from stallholder.channels.credentials import CredentialsUnreadable
from stallholder.channels.registry import client_from_settings
from stallholder.channels.sync import Engine
from stallholder.kit.errors import InvalidRequest
from stallholder.settings import Settings

# What a Shopify shop's address looks like (its myshopify.com domain).
SHOP_URL = re.compile(r"https://[a-z0-9][a-z0-9-]*\.myshopify\.com")
# The browser session's install key (``request.session``).
BROWSER_KEY = "channel_install_key"
_TICKET, _STATE = "ticket", "state"


class AppNotConfigured(InvalidRequest):
    slug = "channel-app-not-configured"
    title = "The platform has no app on this channel"


class InstallRefused(InvalidRequest):
    slug = "channel-install-refused"
    title = "The install could not be completed"


def _redirect_uri(settings: Settings, kind: str) -> str:
    return f"{settings.base_url.rstrip('/')}/channels/oauth/{kind}/callback"


def ticket_url(
    engine: Engine,
    settings: Settings,
    *,
    kind: str,
    creator_id: str,
    shop_url: str | None,
    shop_id: str | None,
) -> str:
    """The URL to send the creator's browser to: Stallholder's begin route with a sealed
    ticket naming the creator and the shop.

    Raises:
        AppNotConfigured: the platform has no app credentials for this channel.
        InvalidRequest: ``shop_url`` (Shopify) or ``shop_id`` (Etsy) is missing.
    """
    install: dict[str, Any] = {"use": _TICKET, "creator": creator_id, "kind": kind}
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
        install["shop_url"] = shop_url
    else:
        if not settings.etsy_keystring:
            raise AppNotConfigured("set STALLHOLDER_ETSY_KEYSTRING to install on Etsy")
        if not shop_id or not shop_id.isdigit():
            raise InvalidRequest("give shop_id, the number of your Etsy shop")
        install["shop_id"] = shop_id
    ticket = urlencode({"ticket": engine.vault.seal(install)})
    return f"{settings.base_url.rstrip('/')}/channels/oauth/{kind}/begin?{ticket}"


def _browser_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def begin(
    engine: Engine,
    settings: Settings,
    *,
    kind: str,
    ticket: str,
    browser_session: MutableMapping[str, Any],
    ttl: timedelta,
) -> str:
    """The channel's consent URL for the install ``ticket`` names, tied to the browser:
    ``browser_session`` (the signed cookie session) gets the install key if it has none,
    and the state names its digest.

    Raises:
        InstallRefused: the ticket is forged, of another use or kind, or expired.
    """
    try:
        install = engine.vault.open(ticket, ttl_seconds=int(ttl.total_seconds()))
    except CredentialsUnreadable as error:
        raise InstallRefused("the install link is not valid or has expired; start again") from error
    if install.get("use") != _TICKET or install.get("kind") != kind:
        raise InstallRefused("the install link is not valid or has expired; start again")
    key = browser_session.get(BROWSER_KEY)
    if not isinstance(key, str):
        key = secrets.token_urlsafe(32)
        browser_session[BROWSER_KEY] = key
    state: dict[str, Any] = {
        "use": _STATE,
        "creator": install["creator"],
        "kind": kind,
        "browser": _browser_digest(key),
    }
    if kind == "shopify":
        shop_url = str(install["shop_url"])
        return shopify.authorization_url(
            shop_url,
            client_id=settings.shopify_client_id,
            scopes=shopify.SCOPES,
            redirect_uri=_redirect_uri(settings, kind),
            state=engine.vault.seal({**state, "shop_url": shop_url}),
        )
    verifier, challenge = etsy.pkce_pair()
    return etsy.authorization_url(
        client_id=settings.etsy_keystring,
        redirect_uri=_redirect_uri(settings, kind),
        scopes=etsy.SCOPES,
        state=engine.vault.seal({**state, "shop_id": install["shop_id"], "verifier": verifier}),
        code_challenge=challenge,
        connect_url=settings.etsy_connect_url,
    )


async def finish(
    engine: Engine,
    settings: Settings,
    *,
    kind: str,
    query: Mapping[str, str],
    browser_session: Mapping[str, Any],
    ttl: timedelta,
) -> tuple[NewChannel, str]:
    """The channel an install callback connects, and its creator.

    Raises:
        InstallRefused: the state or the signature does not verify, the install expired,
            the callback came to another browser than the one that began the install,
            the creator declined, or the channel refused the code.
    """
    if "error" in query:
        raise InstallRefused(f"the install was not completed: {query.get('error')}")
    try:
        state = engine.vault.open(query.get("state", ""), ttl_seconds=int(ttl.total_seconds()))
    except CredentialsUnreadable as error:
        raise InstallRefused("the install link is not valid or has expired; start again") from error
    if state.get("use") != _STATE or state.get("kind") != kind or not query.get("code"):
        raise InstallRefused("the callback does not belong to this install; start again")
    key = browser_session.get(BROWSER_KEY)
    if not isinstance(key, str) or not secrets.compare_digest(
        _browser_digest(key), str(state.get("browser", ""))
    ):
        raise InstallRefused("the install was begun in another browser; start it again here")
    async with client_from_settings(settings) as http:
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
