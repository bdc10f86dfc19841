from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from stallholder.channels.models import Channel, ChannelListing, ChannelOrder, SyncLogEntry
from stallholder.channels.service import MappingSummary
from stallholder.kit.schemas import Input

_MAX_UNITS = 1_000_000_000


class RulesIn(Input):
    """What the channel is shown of ``available`` (``docs/channels.md#buffers``)."""

    buffer_units: int = Field(default=0, ge=0, le=_MAX_UNITS)
    buffer_percent: int = Field(default=0, ge=0, le=100)
    max_shown: int | None = Field(default=None, ge=0, le=_MAX_UNITS)
    zero_below: int | None = Field(default=None, ge=0, le=_MAX_UNITS)


_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # kind: (required, optional) beyond kind, name and the rules.
    "shopify": (("shop_url", "access_token"), ("api_secret", "location_id")),
    "etsy": (("shop_id", "access_token"), ("refresh_token", "expires_at")),
    "woocommerce": (("store_url", "consumer_key", "consumer_secret"), ()),
}


class ChannelCreate(RulesIn):
    """A channel and its credentials, by ``kind``:

    - ``shopify``: ``shop_url`` (``https://your-shop.myshopify.com``) and an Admin API
      ``access_token`` (a custom app's, or one from the OAuth install); ``api_secret`` is
      the app's client secret, which signs webhooks (default: the platform app's,
      ``STALLHOLDER_SHOPIFY_CLIENT_SECRET``); ``location_id`` (a Location GID; default the
      shop's first location).
    - ``etsy``: ``shop_id`` and an OAuth ``access_token`` (``<user id>.<token>``), with
      its ``refresh_token`` and ``expires_at`` when it expires; the app's keystring and
      shared secret are the platform's (``STALLHOLDER_ETSY_KEYSTRING``,
      ``STALLHOLDER_ETSY_SHARED_SECRET``).
    - ``woocommerce``: ``store_url`` and REST API keys ``consumer_key`` and
      ``consumer_secret`` (WooCommerce → Settings → Advanced → REST API, read/write).
    """

    kind: Literal["shopify", "etsy", "woocommerce"]
    name: str | None = Field(default=None, min_length=1, max_length=200)
    shop_url: str | None = Field(default=None, min_length=8, max_length=500)
    access_token: str | None = Field(default=None, min_length=1, max_length=500)
    api_secret: str | None = Field(default=None, min_length=1, max_length=500)
    location_id: str | None = Field(default=None, min_length=1, max_length=200)
    shop_id: str | None = Field(default=None, min_length=1, max_length=40, pattern=r"^[0-9]+$")
    refresh_token: str | None = Field(default=None, min_length=1, max_length=500)
    expires_at: AwareDatetime | None = None
    store_url: str | None = Field(default=None, min_length=8, max_length=500)
    consumer_key: str | None = Field(default=None, min_length=1, max_length=200)
    consumer_secret: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> Self:
        required, optional = _FIELDS[self.kind]
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f"a {self.kind} channel needs {', '.join(missing)}")
        others = sorted(
            name
            for kind, (req, opt) in _FIELDS.items()
            if kind != self.kind
            for name in (*req, *opt)
            if name not in required + optional and getattr(self, name) is not None
        )
        if others:
            raise ValueError(f"a {self.kind} channel takes no {', '.join(others)}")
        if self.kind == "etsy" and "." not in str(self.access_token):
            raise ValueError("an Etsy access_token is '<user id>.<token>'")
        return self


class ChannelUpdate(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    # active: keep it in step (a paused channel is pushed in full when resumed); paused:
    # send nothing to it.
    status: Literal["active", "paused"] | None = None
    buffer_units: int | None = Field(default=None, ge=0, le=_MAX_UNITS)
    buffer_percent: int | None = Field(default=None, ge=0, le=100)
    max_shown: int | None = Field(default=None, ge=0, le=_MAX_UNITS)
    zero_below: int | None = Field(default=None, ge=0, le=_MAX_UNITS)


class RulesOut(BaseModel):
    buffer_units: int
    buffer_percent: int
    max_shown: int | None
    zero_below: int | None


class ListingCounts(BaseModel):
    matched: int
    unmatched: int
    conflict: int


class ChannelOut(BaseModel):
    object: Literal["channel"] = "channel"
    id: str
    kind: str
    name: str
    url: str
    status: str
    paused_reason: str | None
    rules: RulesOut
    listings: ListingCounts
    webhooks: list[str]
    created: datetime


class DisconnectedOut(ChannelOut):
    """A channel as ``DELETE /v1/channels/{id}`` leaves it. ``webhooks_removed``: every
    webhook Stallholder registered on the channel was deleted from it (or it had none);
    false when the channel could not be reached or refused the credentials (``webhooks``
    then lists the topics it may still send; the sync log says why)."""

    webhooks_removed: bool


def channel_out(channel: Channel, counts: MappingSummary) -> ChannelOut:
    return ChannelOut(
        id=channel.id,
        kind=channel.kind,
        name=channel.name,
        url=channel.url,
        status=channel.status,
        paused_reason=channel.paused_reason,
        rules=RulesOut(
            buffer_units=channel.buffer_units,
            buffer_percent=channel.buffer_percent,
            max_shown=channel.max_shown,
            zero_below=channel.zero_below,
        ),
        listings=ListingCounts(
            matched=counts.matched, unmatched=counts.unmatched, conflict=counts.conflict
        ),
        webhooks=[str(hook.get("topic")) for hook in channel.webhooks or []],
        created=channel.created_at,
    )


class ListingOut(BaseModel):
    object: Literal["channel_listing"] = "channel_listing"
    id: int
    external_id: str
    sku: str | None
    title: str
    price: int | None
    currency: str | None
    status: str
    variant: str | None
    channel_quantity: int | None
    pushed_quantity: int | None
    pushed_at: datetime | None


def listing_out(listing: ChannelListing) -> ListingOut:
    return ListingOut(
        id=listing.id,
        external_id=listing.external_id,
        sku=listing.sku,
        title=listing.title,
        price=listing.price,
        currency=listing.currency,
        status=listing.status,
        variant=listing.variant_id,
        channel_quantity=listing.channel_quantity,
        pushed_quantity=listing.pushed_quantity,
        pushed_at=listing.pushed_at,
    )


class OrderLineOut(BaseModel):
    sku: str | None
    quantity: int
    outcome: str


class ChannelOrderOut(BaseModel):
    object: Literal["channel_order"] = "channel_order"
    id: str
    channel: str
    external_id: str
    name: str | None
    status: str
    lines: list[OrderLineOut]
    placed_at: datetime
    created: datetime


def channel_order_out(order: ChannelOrder) -> ChannelOrderOut:
    return ChannelOrderOut(
        id=order.id,
        channel=order.channel_id,
        external_id=order.external_id,
        name=order.name,
        status=order.status,
        lines=[
            OrderLineOut(
                sku=line.get("sku"), quantity=int(line["quantity"]), outcome=str(line["outcome"])
            )
            for line in order.lines
        ],
        placed_at=order.placed_at,
        created=order.created_at,
    )


class SyncLogOut(BaseModel):
    object: Literal["sync_log_entry"] = "sync_log_entry"
    id: int
    kind: str
    sku: str | None
    external_id: str | None
    pushed: int | None
    channel_value: int | None
    latency_ms: int | None
    outcome: str
    detail: str | None
    created: datetime


def sync_log_out(entry: SyncLogEntry) -> SyncLogOut:
    return SyncLogOut(
        id=entry.id,
        kind=entry.kind,
        sku=entry.sku,
        external_id=entry.external_id,
        pushed=entry.pushed,
        channel_value=entry.channel_value,
        latency_ms=entry.latency_ms,
        outcome=entry.outcome,
        detail=entry.detail,
        created=entry.created_at,
    )


class ImportOut(BaseModel):
    object: Literal["channel_import"] = "channel_import"
    products: int
    variants: int


class WebhookAck(BaseModel):
    received: bool = True
    duplicate: bool


class QueuedOut(BaseModel):
    object: Literal["channel_reconciliation"] = "channel_reconciliation"
    channel: str
    queued: bool = True


class AuthorizeOut(BaseModel):
    object: Literal["channel_authorization"] = "channel_authorization"
    kind: str
    url: str
