"""The connectors by channel kind, with the platform's app credentials merged in, and
the HTTP client they call out with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from stallholder.channels import etsy, shopify, woocommerce
from stallholder.channels.connectors import MAX_WAIT, TIMEOUT, Connector, Tokens
from stallholder.channels.credentials import Vault, vault_for
from stallholder.channels.sync import Engine
from stallholder.kit.outbound import Resolver, guarded_client, resolve
from stallholder.settings import Settings


def client_from_settings(settings: Settings, *, resolve: Resolver = resolve) -> httpx.AsyncClient:
    """A client for calling channels outside the worker (connecting, installs): each
    request goes to an address of its host resolved and checked then (``GuardedTransport``),
    not only when the channel's URL was first checked. The worker's client is guarded the
    same way (``jobs.worker``)."""
    return guarded_client(
        allow_private=settings.allow_private_webhook_targets, timeout=TIMEOUT, resolve=resolve
    )


def connector_for(
    kind: str,
    credentials: Mapping[str, Any],
    rate_state: dict[str, Any],
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    max_wait: float = MAX_WAIT,
) -> Connector:
    """``max_wait``: the longest the connector waits for the channel's rate limit before
    it raises ``RateLimited`` (work items retry later instead; connecting waits longer).

    Raises ValueError for an unknown kind."""
    given = {key: str(value) for key, value in credentials.items() if value is not None}
    if kind == "shopify":
        return shopify.ShopifyConnector(
            http=http, credentials=given, rate_state=rate_state, max_wait=max_wait
        )
    if kind == "etsy":
        given.setdefault("api_base", settings.etsy_api_base)
        given.setdefault("keystring", settings.etsy_keystring)
        given.setdefault("shared_secret", settings.etsy_shared_secret)
        return etsy.EtsyConnector(
            http=http, credentials=given, rate_state=rate_state, max_wait=max_wait
        )
    if kind == "woocommerce":
        return woocommerce.WooCommerceConnector(http=http, credentials=given, rate_state=rate_state)
    raise ValueError(f"no connector for channels of kind {kind!r}")


async def refresh_tokens(
    kind: str, credentials: Mapping[str, Any], http: httpx.AsyncClient, settings: Settings
) -> Tokens | None:
    """New tokens for a channel whose token expires (None: it has no refresh token)."""
    refresh_token = credentials.get("refresh_token")
    if not refresh_token:
        return None
    if kind == "shopify":
        return await shopify.refresh(
            http,
            str(credentials["shop_url"]),
            client_id=settings.shopify_client_id,
            client_secret=settings.shopify_client_secret,
            refresh_token=str(refresh_token),
        )
    if kind == "etsy":
        return await etsy.refresh(
            http,
            api_base=str(credentials.get("api_base") or settings.etsy_api_base),
            client_id=settings.etsy_keystring,
            refresh_token=str(refresh_token),
        )
    return None


def vault_from_settings(settings: Settings) -> Vault:
    return vault_for(configured=settings.channel_key, data_dir=settings.data_dir)


def engine_from_settings(settings: Settings) -> Engine:
    return Engine(
        connect=connector_for, refresh=refresh_tokens, vault=vault_from_settings(settings)
    )
