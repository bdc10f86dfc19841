"""What the sync engine asks of a channel (ADR 0026): the ``Connector`` protocol and the
plain values that cross it. One module per channel (``shopify``, ``etsy``,
``woocommerce``) implements it over the channel's published API with ``httpx``; the
engine (``channels.sync``) never sees a provider's shapes.

A connector is made for one channel and one unit of work: it is given the channel's
decrypted credentials, its API base, a pooled ``httpx.AsyncClient`` and the channel's
rate-limiter state (``rate_state``, a JSON object the connector reads and updates from
each reply; the engine stores it on the channel row after the call, so the limiter
survives restarts and is shared by every worker).

Errors a connector raises (and nothing else for an API's refusals):

- ``RateLimited(retry_after)``: the channel's limit is spent (a 429, a GraphQL
  ``THROTTLED``, Etsy's quota at 0) and waiting would take longer than ``MAX_WAIT``: the
  engine retries that channel's work after ``retry_after`` seconds; other channels go on.
- ``Unauthorized``: the credentials are revoked or the app uninstalled (401, or 403 for a
  missing scope): the engine pauses the channel and emails the creator.
- ``ChannelUnavailable``: a network error, a timeout or a 5xx: retried with backoff.
- ``ChannelRefused``: a 4xx that retrying cannot fix (a bad request): the work item is
  given up (dead, with the error, listed by ``stallholder jobs``), not retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ChannelKind = Literal["shopify", "etsy", "woocommerce"]
KINDS: tuple[ChannelKind, ...] = ("shopify", "etsy", "woocommerce")

# The longest a connector waits in-process for its rate limit before it raises
# ``RateLimited`` instead (seconds).
MAX_WAIT = 2.0
# Every request's timeout (seconds).
TIMEOUT = 10.0


class ChannelError(Exception):
    """Base of what a connector raises."""


class RateLimited(ChannelError):
    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(ChannelError):
    """The channel refuses our credentials (revoked, uninstalled, missing scope)."""


class ChannelUnavailable(ChannelError):
    """A network error, a timeout or a 5xx: worth retrying later."""


class ChannelRefused(ChannelError):
    """A 4xx that retrying cannot fix."""


@dataclass(frozen=True, slots=True)
class ListingRef:
    """Where one sellable unit (a product or one variation) lives on a channel.

    ``external_id`` is stable across our writes and unique within the channel (Shopify:
    the inventory item's GID; Etsy: ``"{listing_id}:{sku}"``, since Etsy's product and
    offering ids change on every write; WooCommerce: ``"{product_id}"`` or
    ``"{product_id}/{variation_id}"``). ``extra`` is what the connector needs to write
    it (Shopify: the location GID; Etsy: the listing id; WooCommerce: the parent id),
    strings only, stored with the listing."""

    external_id: str
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Listing:
    """One sellable unit as the channel shows it now."""

    ref: ListingRef
    sku: str | None
    title: str
    # The quantity the channel shows (None: the channel does not track its stock).
    quantity: int | None
    # The price in minor units of ``currency`` (None: not known).
    price: int | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class StockUpdate:
    """Set a listing's quantity to ``quantity``. ``expected`` is what we believe the
    channel shows now (the last value read or pushed); a channel with compare-and-set
    (Shopify's ``changeFromQuantity``) refuses the write when it differs. ``key`` is the
    idempotency key of this write (Shopify's ``@idempotent``): the same key is sent again
    only for the same write."""

    ref: ListingRef
    quantity: int
    expected: int | None
    key: str


PushOutcome = Literal["ok", "stale", "missing", "error"]


@dataclass(frozen=True, slots=True)
class PushResult:
    """What became of one ``StockUpdate``.

    - ``ok``: the channel now shows ``quantity``; ``channel_quantity`` is that value.
    - ``stale``: refused by compare-and-set; ``channel_quantity`` is the channel's value
      now (read again by the connector when the refusal did not carry it).
    - ``missing``: the listing is gone from the channel.
    - ``error``: refused for this item only (``error`` says why), not worth retrying.
    """

    external_id: str
    outcome: PushOutcome
    channel_quantity: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str | None
    quantity: int
    # The listing's ``external_id`` when the channel names it (for lines without a SKU).
    external_id: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelOrder:
    """An order placed on the channel. ``external_id`` is the channel's order (Shopify
    order id, Etsy receipt id, WooCommerce order id), unique within the channel."""

    external_id: str
    created_at: datetime
    lines: tuple[OrderLine, ...]
    # A human reference to show (Shopify's "#1001", an Etsy receipt number).
    name: str | None = None
    cancelled: bool = False
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InventoryChanged:
    """The channel says a listing's quantity is now ``quantity`` (Shopify
    ``inventory_levels/update``, WooCommerce ``product.updated``)."""

    external_id: str
    quantity: int | None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """A verified webhook delivery, parsed. ``delivery_id`` is the channel's id of this
    delivery (the inbox's dedupe key: ``X-Shopify-Webhook-Id``,
    ``X-WC-Webhook-Delivery-ID``); ``topic`` is the channel's own name for it."""

    delivery_id: str
    topic: str
    order: ChannelOrder | None = None
    inventory: tuple[InventoryChanged, ...] = ()
    # The app was uninstalled from the shop (Shopify ``app/uninstalled``): our credentials
    # no longer work, as when a call is refused with ``Unauthorized``.
    uninstalled: bool = False


@dataclass(frozen=True, slots=True)
class RegisteredWebhook:
    external_id: str
    topic: str


@dataclass(frozen=True, slots=True)
class OrdersPage:
    """Orders changed since a cursor. ``cursor`` is opaque to the engine and is given
    back to ``orders_since`` next time (an ISO timestamp, a page token)."""

    orders: tuple[ChannelOrder, ...]
    cursor: str | None
    more: bool = False


class Connector(Protocol):
    """One channel's API, for one unit of work."""

    kind: ChannelKind
    # The rate limiter's state: read at construction, updated from every reply.
    rate_state: dict[str, Any]

    async def register_webhooks(self, delivery_url: str) -> list[RegisteredWebhook]:
        """Subscribe our ``delivery_url`` to the order and inventory topics (idempotent:
        an existing subscription to the same URL and topic is kept, not doubled). A
        channel without webhooks (Etsy) returns []."""
        ...

    async def remove_webhooks(
        self, delivery_url: str, registered: Sequence[RegisteredWebhook]
    ) -> None:
        """Delete our subscriptions from the channel: those ``registered`` (the ids kept at
        connect) and any other the channel lists for ``delivery_url``. One already gone
        counts as removed. A channel without webhooks (Etsy) does nothing."""
        ...

    async def listings(self) -> list[Listing]:
        """Every sellable unit of the channel, all pages read."""
        ...

    async def read(self, refs: Sequence[ListingRef]) -> dict[str, int | None]:
        """The quantity each listing shows now, by ``external_id`` (missing listings
        absent)."""
        ...

    async def push(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        """Write quantities, in as few requests as the API allows; one result per
        update, in order."""
        ...

    async def orders_since(self, cursor: str | None) -> OrdersPage:
        """Orders created or changed since ``cursor`` (None: the last day), oldest
        first, one page."""
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery | None:
        """Verify a delivery's signature and parse it. None when the signature is wrong
        or missing (the caller answers 401). A delivery of a topic we do not use parses
        to a ``WebhookDelivery`` with neither order nor inventory."""
        ...


@dataclass(frozen=True, slots=True)
class Tokens:
    """What an OAuth token exchange or refresh gives back. ``expires_at`` None: the
    token does not expire. A refresh token that rotates is replaced by the new one."""

    access_token: str
    refresh_token: str | None = None
    expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()


def retry_after_seconds(value: str | None, *, default: float) -> float:
    """A ``Retry-After`` header (delta seconds; an HTTP date is not used by these APIs)
    as seconds, or ``default`` when absent or unreadable."""
    if value is None:
        return default
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return default


def raise_for_status(status: int, *, message: str, retry_after: str | None = None) -> None:
    """Map an HTTP status to this module's errors (2xx and 3xx pass): 401 and 403 are
    ``Unauthorized``, 429 ``RateLimited`` (after ``Retry-After``, else 1 s), 404 and 410
    and other 4xx ``ChannelRefused``, 5xx ``ChannelUnavailable``."""
    if status < 400:
        return
    if status in (401, 403):
        raise Unauthorized(f"{status}: {message}")
    if status == 429:
        raise RateLimited(
            f"429: {message}", retry_after=retry_after_seconds(retry_after, default=1.0)
        )
    if status >= 500:
        raise ChannelUnavailable(f"{status}: {message}")
    raise ChannelRefused(f"{status}: {message}")
