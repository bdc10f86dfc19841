"""Connecting a channel: checking where it is, registering our webhooks on it, reading
its listings, and storing it with its credentials sealed; and, on disconnecting, removing
those webhooks again (``docs/channels.md``).

The channel is called with no transaction open: before anything is written (the unit of
work that stores it, or disconnects it, follows)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.channels import service, sync
from stallholder.channels.buffers import Rules
from stallholder.channels.connectors import (
    ChannelError,
    Listing,
    RegisteredWebhook,
    Unauthorized,
)
from stallholder.channels.credentials import CredentialsUnreadable
from stallholder.channels.models import Channel
from stallholder.channels.registry import client_from_settings
from stallholder.channels.schemas import ChannelCreate
from stallholder.events.webhooks import check_target
from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.kit.errors import InvalidRequest
from stallholder.kit.ids import new_id
from stallholder.kit.work import Context, Retry
from stallholder.settings import Settings

# The longest a connect waits for the channel's rate limit at a time (seconds).
CONNECT_MAX_WAIT = 60.0


class ChannelCredentialsRefused(InvalidRequest):
    slug = "channel-credentials-refused"
    title = "The channel refused these credentials"


class ChannelUnreachable(InvalidRequest):
    status = 422
    slug = "channel-unreachable"
    title = "The channel could not be reached"


class InsecureChannelUrl(InvalidRequest):
    slug = "insecure-channel-url"
    title = "Channel URLs must use https"


@dataclass(frozen=True, slots=True)
class NewChannel:
    kind: str
    name: str
    url: str
    credentials: dict[str, Any]
    rules: Rules


@dataclass(frozen=True, slots=True)
class Found:
    webhooks: list[RegisteredWebhook]
    listings: list[Listing]


def delivery_url(settings: Settings, channel_id: str) -> str:
    """Where the channel sends its webhooks for this channel."""
    return f"{settings.base_url.rstrip('/')}/hooks/channels/{channel_id}"


async def check_url(url: str, *, allow_private: bool) -> None:
    """The SSRF guard of webhook endpoints, and https unless private targets are allowed.

    Raises:
        InsecureChannelUrl, InvalidWebhookUrl, PrivateWebhookTarget.
    """
    if urlsplit(url).scheme != "https" and not allow_private:
        raise InsecureChannelUrl(
            f"{url!r} is not an https URL; channels are reached over https (an operator "
            "can allow http on a private network with "
            "STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS=true)"
        )
    await check_target(url, allow_private=allow_private)


async def discover(
    engine: sync.Engine,
    new: NewChannel,
    *,
    channel_id: str,
    settings: Settings,
    http: httpx.AsyncClient | None = None,
) -> Found:
    """Register our webhooks on the channel and read its listings.

    Raises:
        ChannelCredentialsRefused: 401 or 403.
        ChannelUnreachable: anything else that went wrong, with what it was.
    """
    async with client_from_settings(settings) if http is None else _borrowed(http) as client:
        # Connecting reads every listing once: it may wait for the channel's rate limit
        # (a Shopify shop of a thousand variants spends its bucket twice over).
        connector = engine.connect(
            new.kind, new.credentials, {}, client, settings, max_wait=CONNECT_MAX_WAIT
        )
        try:
            webhooks = await connector.register_webhooks(delivery_url(settings, channel_id))
            listings = await connector.listings()
        except Unauthorized as error:
            raise ChannelCredentialsRefused(
                f"{new.url} refused the credentials: {error}; check the token or keys and "
                "their scopes"
            ) from error
        except ChannelError as error:
            raise ChannelUnreachable(f"{new.url} could not be read: {error}") from error
    return Found(webhooks=webhooks, listings=listings)


class _borrowed:
    """A client the caller owns, used as if opened here (not closed on exit)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        return None


async def existing_id(database: Database, *, creator_id: str, new: NewChannel) -> str | None:
    """The creator's channel at the same place (kind and URL), if it has one: connecting
    it again (new keys, a reinstall after a revoked token) updates that channel — its
    orders, cursor and sync log stay, and no order is imported twice."""
    async with database.unit_of_work() as session:
        return (
            await session.execute(
                select(Channel.id).where(
                    Channel.creator_id == creator_id,
                    Channel.kind == new.kind,
                    Channel.url == new.url,
                )
            )
        ).scalar_one_or_none()


async def store(
    session: AsyncSession,
    engine: sync.Engine,
    new: NewChannel,
    found: Found,
    *,
    channel_id: str,
    creator_id: str,
    settings: Settings,
    now: datetime,
) -> Channel:
    """Keep the channel (or update the one at the same place, ``existing_id``) and its
    listings; queue the first push of every matched listing that shows something else
    than it should."""
    existing = await session.get(Channel, channel_id)
    if existing is not None:
        existing.credentials = engine.vault.seal(new.credentials)
        existing.status, existing.paused_reason = service.ACTIVE, None
        existing.webhooks = [
            {"id": hook.external_id, "topic": hook.topic} for hook in found.webhooks
        ]
        existing.rate_state, existing.updated_at = {}, now
        existing.next_poll_at = now  # orders placed while it was away come in now
        existing.next_reconcile_at = now + timedelta(seconds=settings.channel_reconcile_seconds)
        await service.map_listings(session, channel=existing, listings=found.listings, now=now)
        await queue_behind(session, channel=existing, now=now)
        return existing
    # Every channel's orders are also polled: Etsy sends no order webhooks, WooCommerce
    # sends order.created before payment, and a webhook can be lost or a cancellation
    # arrive without one.
    channel = Channel(
        id=channel_id,
        creator_id=creator_id,
        kind=new.kind,
        name=new.name,
        url=new.url,
        status=service.ACTIVE,
        credentials=engine.vault.seal(new.credentials),
        buffer_units=new.rules.buffer_units,
        buffer_percent=new.rules.buffer_percent,
        max_shown=new.rules.max_shown,
        zero_below=new.rules.zero_below,
        rate_state={},
        orders_cursor=None,
        next_poll_at=now,
        next_reconcile_at=now + timedelta(seconds=settings.channel_reconcile_seconds),
        webhooks=[{"id": hook.external_id, "topic": hook.topic} for hook in found.webhooks],
        created_at=now,
        updated_at=now,
    )
    session.add(channel)
    await session.flush()
    await service.map_listings(session, channel=channel, listings=found.listings, now=now)
    await queue_behind(session, channel=channel, now=now)
    return channel


async def connect(
    session: AsyncSession,
    database: Database,
    engine: sync.Engine,
    new: NewChannel,
    *,
    creator_id: str,
    settings: Settings,
    now: datetime,
) -> Channel:
    """Check where the channel is, call it (with no transaction open: the existing
    channel is looked up in a unit of work of its own), then keep it in ``session``.

    Raises:
        InsecureChannelUrl, InvalidWebhookUrl, PrivateWebhookTarget,
        ChannelCredentialsRefused, ChannelUnreachable.
    """
    await check_url(new.url, allow_private=settings.allow_private_webhook_targets)
    channel_id = await existing_id(database, creator_id=creator_id, new=new) or fresh_id()
    found = await discover(engine, new, channel_id=channel_id, settings=settings)
    return await store(
        session,
        engine,
        new,
        found,
        channel_id=channel_id,
        creator_id=creator_id,
        settings=settings,
        now=now,
    )


async def set_status(
    session: AsyncSession, *, channel: Channel, status: str | None, now: datetime
) -> None:
    """Pause (``paused``) or resume (``active``) a channel as its creator asks; None
    keeps the status. An active channel afterwards has every matched listing that shows
    other than it should queued for a push (resuming, or new rules, take effect at once).

    Raises:
        ChannelDisconnected: resuming a disconnected channel.
    """
    if status == service.PAUSED and channel.status != service.DISCONNECTED:
        channel.status, channel.paused_reason = service.PAUSED, "paused by the creator"
    elif status == service.ACTIVE:
        service.resume(channel, now=now)
    channel.updated_at = now
    await session.flush()
    if channel.status == service.ACTIVE:
        await queue_behind(session, channel=channel, now=now)


async def queue_behind(session: AsyncSession, *, channel: Channel, now: datetime) -> int:
    """Queue a push for every matched listing of the channel that shows other than it
    should (on connecting, resuming or changing the rules). Returns how many."""
    behind = await service.behind(session, channel=channel)
    await sync.queue_push(session, channel=channel, listing_ids=behind, now=now)
    return len(behind)


def new_channel(body: ChannelCreate, settings: Settings) -> NewChannel:
    """The channel a create request describes, its credentials completed."""
    rules = Rules(
        buffer_units=body.buffer_units,
        buffer_percent=body.buffer_percent,
        zero_below=body.zero_below,
        max_shown=body.max_shown,
    )
    credentials: dict[str, Any]
    if body.kind == "shopify":
        if not (body.api_secret or settings.shopify_client_secret):
            raise InvalidRequest(
                "give api_secret, the app's client secret (Shopify signs its webhooks with "
                "it; the platform has no Shopify app of its own configured)",
                param="api_secret",
            )
        url = str(body.shop_url).rstrip("/")
        credentials = {
            "shop_url": url,
            "access_token": body.access_token,
            "webhook_secret": body.api_secret or settings.shopify_client_secret,
            "location_id": body.location_id,
        }
        name = body.name or urlsplit(url).hostname or url
    elif body.kind == "etsy":
        url = f"{settings.etsy_api_base.rstrip('/')}/v3/application/shops/{body.shop_id}"
        credentials = {
            "shop_id": body.shop_id,
            "user_id": str(body.access_token).split(".", 1)[0],
            "access_token": body.access_token,
            "refresh_token": body.refresh_token,
            "expires_at": body.expires_at.isoformat() if body.expires_at else None,
        }
        name = body.name or f"Etsy shop {body.shop_id}"
    else:
        url = str(body.store_url).rstrip("/")
        credentials = {
            "store_url": url,
            "consumer_key": body.consumer_key,
            "consumer_secret": body.consumer_secret,
            "webhook_secret": secrets.token_urlsafe(32),
        }
        name = body.name or urlsplit(url).hostname or url
    return NewChannel(kind=body.kind, name=name, url=url, credentials=credentials, rules=rules)


# Disconnecting ---------------------------------------------------------------------------

# The longest a disconnect waits for the channel to remove our webhooks (seconds); past
# it the channel is disconnected all the same, its webhooks left.
REMOVE_WEBHOOKS_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class _Resources:
    """What ``sync.fresh_credentials`` needs of a worker's resources."""

    settings: Settings
    http: httpx.AsyncClient


@dataclass(frozen=True, slots=True)
class Removal:
    """What became of our webhooks on the channel when it was disconnected."""

    removed: bool
    detail: str


async def remove_webhooks(
    database: Database,
    engine: sync.Engine,
    *,
    creator_id: str,
    channel_id: str,
    settings: Settings,
    clock: Clock,
    http: httpx.AsyncClient | None = None,
) -> Removal | None:
    """Delete the webhooks we registered on the channel, with no transaction open (the
    channel is read in a short unit of work of its own; its token refreshed first when it
    expires soon, as the engine does). None: the channel is disconnected already, so
    there is nothing to call it with. A channel that cannot be reached, or refuses our
    credentials, gives ``removed=False`` with why: it is disconnected all the same.

    Raises:
        ChannelNotFound: not the creator's channel.
    """
    async with database.unit_of_work() as session:
        channel = await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
        if channel.status == service.DISCONNECTED:
            return None
        registered = [
            RegisteredWebhook(external_id=str(hook["id"]), topic=str(hook["topic"]))
            for hook in channel.webhooks or []
        ]
        if not registered:
            return Removal(removed=True, detail="disconnected; no webhooks were registered")
        try:
            credentials = engine.vault.open(channel.credentials)
        except CredentialsUnreadable as error:
            return Removal(removed=False, detail=_not_removed(f"the credentials: {error}"))
        state = sync.ChannelState(
            id=channel.id,
            creator_id=channel.creator_id,
            kind=channel.kind,
            name=channel.name,
            status=channel.status,
            rules=service.rules_of(channel),
            credentials=credentials,
            rate_state=dict(channel.rate_state or {}),
        )
    topics = ", ".join(hook.topic for hook in registered)
    target = delivery_url(settings, channel_id)
    async with client_from_settings(settings) if http is None else _borrowed(http) as client:
        context = Context(database=database, clock=clock, resources=_Resources(settings, client))

        async def remove() -> None:
            await sync.fresh_credentials(context, engine, state)
            connector = engine.connect(
                state.kind, state.credentials, state.rate_state, client, settings
            )
            await connector.remove_webhooks(target, registered)

        try:
            await asyncio.wait_for(remove(), timeout=REMOVE_WEBHOOKS_TIMEOUT)
        except Unauthorized as error:
            return Removal(
                removed=False, detail=_not_removed(f"the channel refused our credentials ({error})")
            )
        except (ChannelError, Retry) as error:
            return Removal(removed=False, detail=_not_removed(str(error)))
        except TimeoutError:
            return Removal(
                removed=False,
                detail=_not_removed(f"no answer within {REMOVE_WEBHOOKS_TIMEOUT:g} s"),
            )
    return Removal(
        removed=True, detail=f"disconnected; webhooks removed from the channel ({topics})"
    )


def _not_removed(why: str) -> str:
    return (
        f"disconnected; the webhooks could not be removed from the channel: {why}. The "
        "channel keeps sending them, refused (401), until it gives up on them; delete them "
        "in the channel's admin"
    )[:500]


def fresh_id() -> str:
    return new_id("chn")


def sealed_state(engine: sync.Engine, value: Mapping[str, Any]) -> str:
    return engine.vault.seal(value)
