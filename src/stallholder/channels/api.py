"""HTTP routes for channels: connect (with keys, or by an OAuth install), rules, listings,
orders, the sync log, and the webhooks channels send us (``docs/channels.md``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.channels import connect, oauth, service, sync
from stallholder.channels.credentials import CredentialsUnreadable
from stallholder.channels.models import Channel
from stallholder.channels.registry import client_from_settings, connector_for
from stallholder.channels.schemas import (
    AuthorizeOut,
    ChannelCreate,
    ChannelOut,
    ChannelUpdate,
    DisconnectedOut,
    ImportOut,
    QueuedOut,
    WebhookAck,
    channel_order_out,
    channel_out,
    listing_out,
    sync_log_out,
)
from stallholder.events.webhooks import InvalidWebhookUrl, PrivateWebhookTarget
from stallholder.kit.errors import InvalidRequest, Unauthenticated
from stallholder.kit.http import NowDep, SessionDep, get_database, settings_of
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["channels"])
hooks_router = APIRouter(tags=["channels"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
# How long an OAuth install may take from its start to the callback.
OAUTH_STATE_TTL = timedelta(minutes=15)


def _engine(request: Request) -> sync.Engine:
    engine: sync.Engine = request.app.state.channel_engine
    return engine


@documents(service.ChannelNotFound)
async def names_a_channel() -> None:
    """Documents the 404 of a route that names a channel."""


@documents(service.ChannelDisconnected)
async def resumes_a_channel() -> None:
    """Documents the 409 of resuming a disconnected channel."""


@documents(service.ListingsNotImportable)
async def imports_listings() -> None:
    """Documents the 409 of an import with listings that cannot become products."""


@documents(
    connect.ChannelCredentialsRefused,
    connect.ChannelUnreachable,
    connect.InsecureChannelUrl,
    InvalidWebhookUrl,
    PrivateWebhookTarget,
)
async def connects_a_channel() -> None:
    """Documents the problems of connecting a channel: credentials refused, unreachable,
    or a URL that is not https or not public."""


async def _out(request: Request, session: Any, channel: Channel) -> ChannelOut:
    return channel_out(channel, await service.listing_counts(session, channel_id=channel.id))


@router.post(
    "/channels",
    status_code=201,
    response_model=ChannelOut,
    dependencies=[Depends(connects_a_channel)],
)
async def create_channel(
    request: Request,
    body: ChannelCreate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> ChannelOut:
    """Connect a Shopify shop, an Etsy shop or a WooCommerce store.

    Stallholder checks the URL (https, and a public address unless the platform allows
    private ones), registers its own webhooks on the channel (Shopify ``orders/create``,
    ``orders/cancelled``, ``inventory_levels/update`` and ``app/uninstalled``; WooCommerce
    ``order.created`` and ``product.updated``; Etsy is polled), reads the channel's
    listings and maps them to your variants by SKU. Matched listings are brought to
    ``available − buffer`` at once. Credentials are encrypted at rest and never shown
    again. Connecting a shop you have connected already (new keys, a reinstall after a
    revoked token) updates that channel: 201 with the same id, its orders and sync log
    kept, nothing imported twice."""
    settings = settings_of(request)
    engine = _engine(request)
    new = connect.new_channel(body, settings)
    channel = await connect.connect(
        session,
        get_database(request),
        engine,
        new,
        creator_id=creator_id,
        settings=settings,
        now=now,
    )
    return await _out(request, session, channel)


@router.get("/channels", response_model=ListOut)
async def list_channels(
    request: Request, creator_id: SecretCreatorDep, session: SessionDep
) -> ListOut:
    channels = await service.list_channels(session, creator_id=creator_id)
    return ListOut(data=[await _out(request, session, c) for c in channels], has_more=False)


@router.get(
    "/channels/{channel_id}",
    response_model=ChannelOut,
    dependencies=[Depends(names_a_channel)],
)
async def get_channel(
    request: Request, channel_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> ChannelOut:
    channel = await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    return await _out(request, session, channel)


@router.post(
    "/channels/{channel_id}",
    response_model=ChannelOut,
    dependencies=[Depends(names_a_channel), Depends(resumes_a_channel)],
)
async def update_channel(
    request: Request,
    channel_id: str,
    body: ChannelUpdate,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> ChannelOut:
    """Rename, pause or resume a channel, or change its buffer rules. Resuming, or new
    rules, bring every matched listing to what it should show at once. A disconnected
    channel cannot be resumed (409 ``channel-disconnected``): connect the shop again."""
    channel = await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes and body.name is not None:
        channel.name = body.name
    for rule in ("buffer_units", "buffer_percent"):
        if rule in changes:
            if changes[rule] is None:
                raise InvalidRequest(f"{rule} cannot be null; send 0 for none", param=rule)
            setattr(channel, rule, changes[rule])
    for rule in ("max_shown", "zero_below"):
        if rule in changes:
            setattr(channel, rule, changes[rule])
    await connect.set_status(session, channel=channel, status=body.status, now=now)
    return await _out(request, session, channel)


@router.delete(
    "/channels/{channel_id}",
    response_model=DisconnectedOut,
    dependencies=[Depends(names_a_channel)],
)
async def disconnect_channel(
    request: Request,
    channel_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> DisconnectedOut:
    """Disconnect a channel: first the webhooks Stallholder registered on it are deleted
    from the channel (Shopify ``webhookSubscriptionDelete``, WooCommerce ``DELETE
    /webhooks/{id}?force=true``); then nothing is sent to it any more, its credentials are
    forgotten and its listings removed. A channel that cannot be reached, or that refuses
    the credentials, is disconnected all the same: ``webhooks_removed`` is false, the sync
    log says why, and the webhooks it still sends are refused (401). Its orders and sync
    log stay. Connecting the same shop again brings it back (the same id, nothing imported
    twice). Disconnecting a disconnected channel changes nothing."""
    database = get_database(request)
    engine = _engine(request)
    # The channel is called before ``session`` begins: no transaction is open meanwhile.
    removal = await connect.remove_webhooks(
        database,
        engine,
        creator_id=creator_id,
        channel_id=channel_id,
        settings=settings_of(request),
        clock=request.app.state.clock,
    )
    channel = await service.get_channel(
        session, creator_id=creator_id, channel_id=channel_id, for_update=True
    )
    if removal is not None and channel.status != service.DISCONNECTED:
        await service.disconnect(
            session,
            channel=channel,
            sealed_nothing=engine.vault.seal({}),
            webhooks_removed=removal.removed,
            detail=removal.detail,
            now=now,
        )
    out = await _out(request, session, channel)
    return DisconnectedOut(**out.model_dump(), webhooks_removed=not channel.webhooks)


@router.get(
    "/channels/{channel_id}/listings",
    response_model=ListOut,
    dependencies=[Depends(names_a_channel)],
)
async def list_listings(
    channel_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    status: Literal["matched", "unmatched", "conflict"] | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
) -> ListOut:
    """The channel's listings and how each maps to your variants: ``matched`` (kept in
    step), ``unmatched`` (no variant has its SKU: import it, or give it one of yours),
    ``conflict`` (no SKU, or several listings share it: never written). In ``id`` order;
    page with ``starting_after`` (the last ``id`` seen)."""
    await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    rows, more = await service.list_listings(
        session, channel_id=channel_id, status=status, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[listing_out(row) for row in rows], has_more=more)


@router.post(
    "/channels/{channel_id}/listings/import",
    response_model=ImportOut,
    dependencies=[Depends(names_a_channel), Depends(imports_listings)],
)
async def import_listings(
    channel_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> ImportOut:
    """Create a physical product (published, one variant per listing, with the listing's
    SKU and title, and a one-time price when the channel shows one) for every
    ``unmatched`` listing; they become ``matched``. Their stock starts untracked: set it
    with ``POST /v1/inventory/adjustments`` and the channel follows."""
    channel = await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    summary = await service.import_listings(session, channel=channel, now=now)
    return ImportOut(products=summary.products, variants=summary.variants)


@router.get(
    "/channels/{channel_id}/orders",
    response_model=ListOut,
    dependencies=[Depends(names_a_channel)],
)
async def list_orders(
    channel_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    status: Literal["sold", "oversold", "cancelled"] | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """Orders placed on the channel, newest first; page with ``starting_after`` (the last
    order ``id`` seen). ``oversold``: a line's units were no longer free when the order
    arrived (the line says which SKU and how many); refund or restock on the channel."""
    await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    page = await service.list_orders(
        session, channel_id=channel_id, status=status, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[channel_order_out(row) for row in page.data], has_more=page.has_more)


@router.get(
    "/channels/{channel_id}/sync_log",
    response_model=ListOut,
    dependencies=[Depends(names_a_channel)],
)
async def list_sync_log(
    channel_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    sku: str | None = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: Annotated[int | None, Query(ge=0)] = None,
) -> ListOut:
    """What each push, order and reconciliation found, newest first: per SKU the value
    pushed, the value the channel showed, the latency from the stock change to the
    channel showing it, and the outcome."""
    await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    rows, more = await service.list_sync_log(
        session, channel_id=channel_id, sku=sku, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[sync_log_out(row) for row in rows], has_more=more)


@router.post(
    "/channels/{channel_id}/reconcile",
    status_code=202,
    response_model=QueuedOut,
    dependencies=[Depends(names_a_channel)],
)
async def reconcile(
    channel_id: str, creator_id: SecretCreatorDep, session: SessionDep, now: NowDep
) -> QueuedOut:
    """Read the channel's orders and quantities now and repair any drift (it also runs
    every ``STALLHOLDER_CHANNEL_RECONCILE_SECONDS``); the sync log shows what it found."""
    channel = await service.get_channel(session, creator_id=creator_id, channel_id=channel_id)
    await sync.queue_for_channel(session, kind=sync.RECONCILE_KIND, channel=channel, now=now)
    return QueuedOut(channel=channel.id)


# Webhooks from channels --------------------------------------------------------------


class WebhookNotVerified(Unauthenticated):
    slug = "webhook-not-verified"
    title = "The webhook's signature does not verify"


@hooks_router.post(
    "/hooks/channels/{channel_id}",
    response_model=WebhookAck,
    responses={401: {"description": "The signature does not verify"}},
)
async def receive_channel_webhook(
    request: Request, channel_id: str, session: SessionDep, now: NowDep
) -> WebhookAck:
    """A channel's webhook (no API key: its HMAC signature authenticates it). A verified
    delivery is stored in the inbox for the worker, once per delivery id; a duplicate is
    acknowledged and ignored."""
    body = await request.body()
    channel = await session.get(Channel, channel_id)
    if channel is None:
        raise WebhookNotVerified("no channel has this webhook address")
    if channel.status == service.DISCONNECTED:
        # Its credentials are forgotten: nothing verifies (its webhooks were not removed).
        raise WebhookNotVerified("this channel is disconnected")
    engine = _engine(request)
    try:
        credentials = engine.vault.open(channel.credentials)
    except CredentialsUnreadable as error:
        raise WebhookNotVerified("this channel's credentials cannot be read") from error
    async with client_from_settings(settings_of(request)) as http:
        connector = connector_for(channel.kind, credentials, {}, http, settings_of(request))
        delivery = connector.parse_webhook(
            {key.lower(): value for key, value in request.headers.items()}, body
        )
    if delivery is None:
        raise WebhookNotVerified("the signature does not verify with this channel's secret")
    shop_domain = credentials.get("shop_domain")
    if shop_domain and request.headers.get("x-shopify-shop-domain") != shop_domain:
        # Signed with the platform app's secret, but for another shop that installed it.
        raise WebhookNotVerified("the delivery is for another shop than this channel's")
    if delivery.topic == "ping":
        return WebhookAck(duplicate=False)
    is_new = await sync.record_delivery(session, channel_id=channel.id, delivery=delivery, now=now)
    return WebhookAck(duplicate=not is_new)


# OAuth installs ------------------------------------------------------------------------


@router.get("/channels/oauth/{kind}", response_model=AuthorizeOut)
async def start_install(
    request: Request,
    kind: Literal["shopify", "etsy"],
    creator_id: SecretCreatorDep,
    shop_url: str | None = None,
    shop_id: str | None = None,
) -> AuthorizeOut:
    """The URL to send the creator's browser to, to install the platform's app on their
    shop (Shopify: give ``shop_url``; Etsy: give ``shop_id``): Stallholder's
    ``/channels/oauth/{kind}/begin``, which ties the install to that browser and sends it
    on to the channel. The channel is connected when the channel sends the same browser
    back to ``/channels/oauth/{kind}/callback``."""
    url = oauth.ticket_url(
        _engine(request),
        settings_of(request),
        kind=kind,
        creator_id=creator_id,
        shop_url=shop_url,
        shop_id=shop_id,
    )
    return AuthorizeOut(kind=kind, url=url)


@hooks_router.get("/channels/oauth/{kind}/begin", include_in_schema=False)
async def begin_install(
    request: Request, kind: Literal["shopify", "etsy"], ticket: str = ""
) -> Response:
    """Where the creator's browser opens an install: the install is tied to its session
    and the browser sent on to the channel's consent page."""
    url = oauth.begin(
        _engine(request),
        settings_of(request),
        kind=kind,
        ticket=ticket,
        browser_session=request.session,
        ttl=OAUTH_STATE_TTL,
    )
    return RedirectResponse(url, status_code=303)


@hooks_router.get("/channels/oauth/{kind}/callback", include_in_schema=False)
async def finish_install(
    request: Request, kind: Literal["shopify", "etsy"], session: SessionDep, now: NowDep
) -> Response:
    """Where the channel sends the creator back: the code is exchanged for tokens and the
    channel connected; the creator lands on the dashboard."""
    settings = settings_of(request)
    engine = _engine(request)
    new, creator_id = await oauth.finish(
        engine,
        settings,
        kind=kind,
        query=dict(request.query_params),
        browser_session=request.session,
        ttl=OAUTH_STATE_TTL,
    )
    channel = await connect.connect(
        session,
        get_database(request),
        engine,
        new,
        creator_id=creator_id,
        settings=settings,
        now=now,
    )
    return RedirectResponse(f"/dashboard?channel={channel.id}", status_code=303)
