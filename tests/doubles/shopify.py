"""A test double of Shopify's GraphQL Admin API (and its OAuth endpoints), for exactly what
the Shopify connector uses, served over real HTTP.

It follows Shopify's published API (read in November 2026; ADR 0026 lists the facts):

- ``POST /admin/api/{version}/graphql.json`` with ``X-Shopify-Access-Token``; a bad,
  expired or revoked token is 401 ``{"errors": "[API] Invalid API key or access token
  (unrecognized login or wrong password)"}``.
- Replies ``{"data", "errors", "extensions": {"cost": {requestedQueryCost,
  actualQueryCost, throttleStatus {maximumAvailable, currentlyAvailable, restoreRate}}}}``
  from a leaky bucket per app and shop: the Standard plan's 2,000 points restored at 100
  per second (the restore rate is documented; the bucket size is what Shopify's replies to
  Standard shops show). A query's requested cost must be in the bucket before it runs (else
  a 200 with the ``THROTTLED`` error and ``actualQueryCost: null``); the difference to the
  actual cost is refunded after; a query over 1,000 points is ``MAX_COST_EXCEEDED``.
- ``inventorySetQuantities`` as from API version 2026-04: the ``@idempotent(key:)``
  directive and ``changeFromQuantity`` on every entry are required (explicit null skips the
  compare); a stale entry is the user error ``CHANGE_FROM_QUANTITY_STALE`` and refuses the
  whole call (Shopify's docs say "the mutation fails"; that nothing of the call is applied
  is ADR 0026's reading); a key replays its first result, and a key reused with other
  arguments is ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``.
- ``webhookSubscriptionCreate`` / ``webhookSubscriptions`` / ``webhookSubscriptionDelete``
  (``deletedWebhookSubscriptionId``, or a user error on ``id`` for a subscription that
  does not exist); deliveries signed with the app's client secret
  (``X-Shopify-Hmac-Sha256``, base64 HMAC-SHA256 of the body) with Shopify's headers, at
  least once, through ``common.WebhookSender``, to the subscriptions that exist when the
  event happens. A change of an inventory level (a sale, a merchant's edit, the app's own
  write) sends ``inventory_levels/update``, as Shopify does; an order ``orders/create``,
  its cancellation (``cancel()``) ``orders/cancelled``.
- Tokens carry scopes: a root field outside them is a GraphQL ``ACCESS_DENIED`` error.
  ``uninstall()`` sends ``app/uninstalled`` (the shop's object), then refuses every token
  and drops the app's webhooks; ``revoke()`` does the same without the delivery.
- ``field_costs`` sets a field's cost by hand, as Shopify reserves the right to.
- OAuth: ``GET /admin/oauth/authorize`` approves at once and redirects with ``code``,
  ``hmac``, ``shop``, ``state``, ``timestamp``; ``POST /admin/oauth/access_token`` trades
  the code (``expiring=1``: a 3,600 s token and a 90-day refresh token) and refreshes
  (``grant_type=refresh_token``). A refresh token may be retried until its replacement is
  used, then it is retired (Shopify's changelog of 2026-08-28); a retry returns the same
  pair (unconfirmed).

Control routes outside ``/admin/`` (no chaos) let a demo in another process drive it:
``GET /_double/state``, ``POST /_double/sell``, ``POST /_double/quantity``,
``POST /_double/cancel`` (``{"order": <id>}``), ``POST /_double/uninstall``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stallholder.kit.money import exponent
from tests.doubles.common import Chaos, ChaosMiddleware, Delivery, WebhookSender, serve_app
from tests.doubles.shopify_graphql import (
    Executor,
    Field,
    FieldDef,
    GraphQLError,
    Operation,
    Page,
    Schema,
    parse,
    resolve_value,
)

# Versions the double answers as 2026-04 and later behave; an older or unknown one falls
# forward to the oldest of them, as Shopify does with a version it no longer supports.
SUPPORTED_VERSIONS = ("2026-04", "2026-07", "2026-10", "2027-01")
STANDARD_BUCKET_SIZE = 2000
STANDARD_RESTORE_RATE = 100
MAX_QUERY_COST = 1000
MAX_INPUT_ARRAY = 250
ACCESS_TOKEN_SECONDS = 3600
REFRESH_TOKEN_SECONDS = 90 * 86400
INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"
ALL_SCOPES = ("read_products", "read_inventory", "write_inventory", "read_orders", "read_locations")
RATE_LIMITS_DOC = "https://shopify.dev/api/usage/rate-limits"
# The root fields and the scope each needs (write_x implies read_x, as on Shopify).
_REQUIRED_SCOPE = {
    "productVariants": "read_products",
    "nodes": "read_inventory",
    "locations": "read_locations",
    "orders": "read_orders",
    "order": "read_orders",
    "inventorySetQuantities": "write_inventory",
}
_DEFAULT_VARIANT = "Default Title"
_TOPICS = {
    "ORDERS_CREATE": "orders/create",
    "ORDERS_CANCELLED": "orders/cancelled",
    "INVENTORY_LEVELS_UPDATE": "inventory_levels/update",
    "APP_UNINSTALLED": "app/uninstalled",
}


def gid(kind: str, number: int) -> str:
    return f"gid://shopify/{kind}/{number}"


def _number(global_id: Any, kind: str) -> int | None:
    match = re.fullmatch(rf"gid://shopify/{kind}/(\d+)", str(global_id))
    return int(match.group(1)) if match else None


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cursor(*parts: Any) -> str:
    return base64.b64encode(json.dumps(parts).encode()).decode()


def _uncursor(cursor: str) -> list[Any]:
    try:
        parts = json.loads(base64.b64decode(cursor))
    except ValueError:
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor}") from None
    if not isinstance(parts, list):
        raise GraphQLError(f"Invalid cursor for current pagination sort: {cursor}")
    return parts


@dataclass
class _Variant:
    number: int
    product_number: int
    product_title: str
    title: str
    sku: str
    price: int
    item: int


@dataclass
class _Order:
    number: int
    name: str
    created_at: datetime
    updated_at: datetime
    lines: list[tuple[_Variant, int]]
    cancelled_at: datetime | None = None


@dataclass
class _Location:
    number: int
    name: str
    is_active: bool


@dataclass
class _Token:
    scopes: tuple[str, ...]
    expires_at: float | None


@dataclass
class _RefreshToken:
    expires_at: float
    # The pair this token was traded for, while it may still be retried.
    replacement: tuple[str, str] | None = None
    is_retired: bool = False


@dataclass
class _Bucket:
    """Shopify's leaky bucket of query cost points for one app and shop."""

    size: float
    restore_rate: float
    available: float
    # What the bucket tells time by; a test may freeze it so nothing refills meanwhile.
    clock: Callable[[], float] = time.monotonic
    at: float = field(default=-1.0)

    def __post_init__(self) -> None:
        self.at = self.clock()

    def refill(self) -> None:
        now = self.clock()
        self.available = min(self.size, self.available + (now - self.at) * self.restore_rate)
        self.at = now

    def status(self) -> dict[str, Any]:
        return {
            "maximumAvailable": float(self.size),
            "currentlyAvailable": int(self.available),
            "restoreRate": float(self.restore_rate),
        }


class ShopifyDouble:
    """The double's state and its ASGI app; test controls are the public methods."""

    def __init__(
        self,
        *,
        client_id: str = "shp-client",
        client_secret: str = "shp-secret",
        access_token: str = "shpat_test",
        chaos: Chaos | None = None,
        bucket_size: int = STANDARD_BUCKET_SIZE,
        restore_rate: int = STANDARD_RESTORE_RATE,
        currency: str = "USD",
        shop_domain: str = "kiln.myshopify.com",
        field_costs: Mapping[str, int] | None = None,
        bucket_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token = access_token
        self.chaos = chaos or Chaos()
        self.currency = currency.upper()
        self.shop_domain = shop_domain
        # Shopify "reserves the right to set manual costs on fields": "Type.field" -> points.
        self.field_costs = dict(field_costs or {})
        self.base_url = ""
        self.requests: list[tuple[str, str]] = []
        # Replies refused with THROTTLED because the bucket was short (not chaos).
        self.throttled = 0
        self.webhooks = WebhookSender(self.chaos)
        self.bucket = _Bucket(
            float(bucket_size), float(restore_rate), float(bucket_size), bucket_clock
        )
        self.locations = [
            _Location(40001, "Old studio", is_active=False),
            _Location(40002, "Studio", is_active=True),
        ]
        self.location = self.locations[1]
        self.subscriptions: dict[int, tuple[str, str]] = {}  # id -> (topic, uri)
        self._variants: dict[int, _Variant] = {}
        self._levels: dict[tuple[int, int], int] = {}
        self._orders: dict[int, _Order] = {}
        self._tokens: dict[str, _Token] = {access_token: _Token(ALL_SCOPES, None)}
        self._codes: dict[str, tuple[str, ...]] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._refresh_scopes: dict[str, tuple[str, ...]] = {}
        self._idempotent: dict[str, tuple[str, dict[str, Any]]] = {}
        self._ids = itertools.count(1001)
        self._order_numbers = itertools.count(1001)
        self._lock = threading.RLock()
        routes = [
            Route("/admin/api/{version}/graphql.json", self._graphql, methods=["POST"]),
            Route("/admin/oauth/authorize", self._authorize, methods=["GET"]),
            Route("/admin/oauth/access_token", self._access_token, methods=["POST"]),
            Route("/_double/state", self._state, methods=["GET"]),
            Route("/_double/sell", self._control_sell, methods=["POST"]),
            Route("/_double/quantity", self._control_quantity, methods=["POST"]),
            Route("/_double/cancel", self._control_cancel, methods=["POST"]),
            Route("/_double/uninstall", self._control_uninstall, methods=["POST"]),
        ]
        self.app: ASGIApp = ChaosMiddleware(
            Starlette(routes=routes), chaos=self.chaos, prefix="/admin/", throttled=_throttled
        )

    # Test controls ---------------------------------------------------------------------

    def add_product(
        self, title: str, variants: Sequence[tuple[str, int]], *, price: int = 2500
    ) -> list[str]:
        """A product with one variant per ``(sku, quantity)``, stocked at the shop's active
        location; returns their InventoryItem GIDs. A single variant is Shopify's
        "Default Title" one; several are titled by their SKU."""
        with self._lock:
            product = next(self._ids)
            items = []
            for sku, quantity in variants:
                variant = _Variant(
                    number=next(self._ids),
                    product_number=product,
                    product_title=title,
                    title=_DEFAULT_VARIANT if len(variants) == 1 else sku,
                    sku=sku,
                    price=price,
                    item=next(self._ids),
                )
                self._variants[variant.number] = variant
                self._levels[(variant.item, self.location.number)] = quantity
                items.append(gid("InventoryItem", variant.item))
            return items

    def quantity_of(self, sku: str) -> int | None:
        with self._lock:
            variant = self._by_sku(sku)
            if variant is None:
                return None
            return self._levels.get((variant.item, self.location.number))

    def set_quantity(self, sku: str, quantity: int) -> None:
        """A merchant edits the quantity in the Shopify admin."""
        with self._lock:
            variant = self._require(sku)
            self._set_level(variant, self.location.number, quantity)

    def sell(self, sku: str, quantity: int = 1) -> str:
        """A buyer orders on the storefront: refused (``ValueError``) beyond the available
        quantity; returns the order's id as the connector reports it (the numeric id)."""
        return self.order([(sku, quantity)])

    def order(self, lines: Sequence[tuple[str, int]]) -> str:
        """An order of several lines, all or nothing (see ``sell``)."""
        with self._lock:
            wanted = [(self._require(sku), quantity) for sku, quantity in lines]
            for variant, quantity in wanted:
                available = self._levels.get((variant.item, self.location.number), 0)
                if quantity > available:
                    raise ValueError(f"only {available} of {variant.sku} available")
            now = datetime.now(UTC)
            order = _Order(
                number=next(self._ids),
                name=f"#{next(self._order_numbers)}",
                created_at=now,
                updated_at=now,
                lines=wanted,
            )
            self._orders[order.number] = order
            self._deliver("ORDERS_CREATE", self._order_payload(order))
            for variant, quantity in wanted:
                key = (variant.item, self.location.number)
                self._set_level(variant, self.location.number, self._levels[key] - quantity)
            return str(order.number)

    def cancel(self, order_id: str) -> None:
        """The merchant cancels an order (without restocking it on Shopify):
        ``orders/cancelled`` is sent with the order, ``cancelled_at`` set."""
        with self._lock:
            order = self._orders[int(order_id)]
            order.cancelled_at = order.updated_at = datetime.now(UTC)
            self._deliver("ORDERS_CANCELLED", self._order_payload(order))

    def revoke(self) -> None:
        """Every token is refused from now on and the app's webhooks are gone (an
        uninstall whose ``app/uninstalled`` delivery was lost; ``uninstall`` sends it)."""
        with self._lock:
            self._tokens.clear()
            self._refresh_tokens.clear()
            self.subscriptions.clear()  # uninstalling removes the app's webhooks

    def uninstall(self) -> None:
        """The merchant uninstalls the app: ``app/uninstalled`` is sent (the shop's
        object), then every token is refused and the app's webhooks are gone."""
        with self._lock:
            self._deliver(
                "APP_UNINSTALLED",
                {
                    "id": 548380009,
                    "name": "Kiln",
                    "domain": self.shop_domain,
                    "myshopify_domain": self.shop_domain,
                    "currency": self.currency,
                },
            )
            self.revoke()

    def spend(self, points: float) -> None:
        """Another request of this app spent ``points`` of the bucket."""
        with self._lock:
            self.bucket.refill()
            self.bucket.available = max(0.0, self.bucket.available - points)

    def close(self) -> None:
        self.webhooks.close()

    def oauth_hmac(self, params: dict[str, str]) -> str:
        """The ``hmac`` Shopify adds to a redirect: lowercase hex HMAC-SHA256 (client
        secret) of the other parameters, sorted and form-encoded."""
        message = "&".join(
            f"{quote(key, safe='*')}={quote(value, safe='*')}"
            for key, value in sorted(params.items())
            if key not in ("hmac", "signature")
        )
        return hmac.new(self.client_secret.encode(), message.encode(), hashlib.sha256).hexdigest()

    # Model -----------------------------------------------------------------------------

    def _by_sku(self, sku: str) -> _Variant | None:
        return next((v for v in self._variants.values() if v.sku == sku), None)

    def _require(self, sku: str) -> _Variant:
        variant = self._by_sku(sku)
        if variant is None:
            raise KeyError(sku)
        return variant

    def _set_level(self, variant: _Variant, location: int, quantity: int) -> None:
        before = self._levels.get((variant.item, location))
        self._levels[(variant.item, location)] = quantity
        if before != quantity:
            self._deliver(
                "INVENTORY_LEVELS_UPDATE",
                {
                    "inventory_item_id": variant.item,
                    "location_id": location,
                    "available": quantity,
                    "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "admin_graphql_api_id": (
                        f"gid://shopify/InventoryLevel/{location}?inventory_item_id={variant.item}"
                    ),
                },
            )

    def _money(self, minor: int) -> str:
        return f"{Decimal(minor).scaleb(-exponent(self.currency)):f}"

    def _order_payload(self, order: _Order) -> dict[str, Any]:
        """An ``orders/create`` body in Shopify's REST shape (the fields the connector and
        a reader need, not all of them)."""
        return {
            "id": order.number,
            "admin_graphql_api_id": gid("Order", order.number),
            "name": order.name,
            "order_number": int(order.name.lstrip("#")),
            "created_at": order.created_at.isoformat(timespec="seconds"),
            "updated_at": order.updated_at.isoformat(timespec="seconds"),
            "cancelled_at": None
            if order.cancelled_at is None
            else order.cancelled_at.isoformat(timespec="seconds"),
            "cancel_reason": None if order.cancelled_at is None else "customer",
            "currency": self.currency,
            "financial_status": "paid",
            "line_items": [
                {
                    "id": order.number * 10 + index,
                    "admin_graphql_api_id": gid("LineItem", order.number * 10 + index),
                    "sku": variant.sku,
                    "quantity": quantity,
                    "variant_id": variant.number,
                    "product_id": variant.product_number,
                    "title": variant.product_title,
                    "variant_title": None if variant.title == _DEFAULT_VARIANT else variant.title,
                    "price": self._money(variant.price),
                }
                for index, (variant, quantity) in enumerate(order.lines)
            ],
        }

    def _deliver(self, topic: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        signature = base64.b64encode(
            hmac.new(self.client_secret.encode(), body, hashlib.sha256).digest()
        ).decode()
        event_id = str(uuid.uuid4())
        for subscribed_topic, uri in self.subscriptions.values():
            if subscribed_topic != topic:
                continue
            self.webhooks.send(
                Delivery(
                    url=uri,
                    headers={
                        "Content-Type": "application/json",
                        "X-Shopify-Topic": _TOPICS[topic],
                        "X-Shopify-Hmac-Sha256": signature,
                        "X-Shopify-Shop-Domain": self.shop_domain,
                        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                        "X-Shopify-Event-Id": event_id,
                        "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
                        "X-Shopify-API-Version": SUPPORTED_VERSIONS[-2],
                    },
                    body=body,
                )
            )

    # GraphQL objects -------------------------------------------------------------------

    def _variant_object(self, variant: _Variant) -> dict[str, Any]:
        return {"__typename": "ProductVariant", "variant": variant}

    def _item_object(self, variant: _Variant) -> dict[str, Any]:
        return {"__typename": "InventoryItem", "variant": variant}

    def _location_object(self, location: _Location) -> dict[str, Any]:
        return {"__typename": "Location", "location": location}

    def _node(self, global_id: Any) -> dict[str, Any] | None:
        item = _number(global_id, "InventoryItem")
        if item is not None:
            variant = next((v for v in self._variants.values() if v.item == item), None)
            return None if variant is None else self._item_object(variant)
        number = _number(global_id, "ProductVariant")
        if number is not None and number in self._variants:
            return self._variant_object(self._variants[number])
        number = _number(global_id, "Location")
        location = next((loc for loc in self.locations if loc.number == number), None)
        if location is not None:
            return self._location_object(location)
        number = _number(global_id, "Order")
        if number is not None and number in self._orders:
            return {"__typename": "Order", "order": self._orders[number]}
        return None

    def _level_object(self, variant: _Variant, location_id: Any) -> dict[str, Any] | None:
        location = _number(location_id, "Location")
        if location is None or (variant.item, location) not in self._levels:
            return None
        return {"__typename": "InventoryLevel", "variant": variant, "location": location}

    def _page(self, items: list[Any], keys: list[Any], args: dict[str, Any]) -> Page:
        """A forward page of ``items`` (already in order, ``keys`` their sort keys)."""
        after = args.get("after")
        start = 0
        if after is not None:
            last = _uncursor(after)
            start = next((i for i, key in enumerate(keys) if key > last), len(items))
        size = args.get("first") or 0
        chosen = items[start : start + size]
        return Page(
            items=chosen,
            cursors=[_cursor(*key) for key in keys[start : start + size]],
            has_next_page=start + size < len(items),
            has_previous_page=start > 0,
        )

    def _variants_page(self, _: Any, args: dict[str, Any]) -> Page:
        variants = sorted(self._variants.values(), key=lambda v: v.number)
        return self._page(
            [self._variant_object(v) for v in variants], [[v.number] for v in variants], args
        )

    def _locations_page(self, _: Any, args: dict[str, Any]) -> Page:
        shown = [loc for loc in self.locations if loc.is_active or args.get("includeInactive")]
        return self._page(
            [self._location_object(loc) for loc in shown], [[loc.number] for loc in shown], args
        )

    def _orders_page(self, _: Any, args: dict[str, Any]) -> Page:
        if args.get("sortKey") not in (None, "UPDATED_AT"):
            raise GraphQLError("This double sorts orders by UPDATED_AT only")
        orders = sorted(self._orders.values(), key=lambda o: (o.updated_at, o.number))
        search = (args.get("query") or "").strip()
        if search:
            match = re.fullmatch(r"updated_at:(>=|>)'?([^']+)'?", search)
            if match is None:
                raise GraphQLError(f"This double does not understand the search {search!r}")
            since = datetime.fromisoformat(match.group(2))
            orders = [
                o
                for o in orders
                if o.updated_at.replace(microsecond=0) > since
                or (match.group(1) == ">=" and o.updated_at.replace(microsecond=0) == since)
            ]
        if args.get("reverse"):
            orders.reverse()
        return self._page(
            [{"__typename": "Order", "order": o} for o in orders],
            [[_iso(o.updated_at), o.number] for o in orders],
            args,
        )

    def _line_items_page(self, obj: dict[str, Any], args: dict[str, Any]) -> Page:
        order: _Order = obj["order"]
        lines = [
            {"__typename": "LineItem", "variant": variant, "quantity": quantity, "index": index}
            for index, (variant, quantity) in enumerate(order.lines)
        ]
        return self._page(lines, [[line["index"]] for line in lines], args)

    def _subscriptions_page(self, _: Any, args: dict[str, Any]) -> Page:
        chosen = [
            (number, topic, uri)
            for number, (topic, uri) in sorted(self.subscriptions.items())
            if args.get("uri") in (None, uri) and topic in (args.get("topics") or [topic])
        ]
        return self._page(
            [
                {
                    "__typename": "WebhookSubscription",
                    "id": gid("WebhookSubscription", n),
                    "topic": t,
                    "uri": u,
                }
                for n, t, u in chosen
            ],
            [[n] for n, _, _ in chosen],
            args,
        )

    # Mutations.

    def _set_quantities(self, args: dict[str, Any], key: str | None) -> dict[str, Any]:
        entries = args["input"].get("quantities") or []
        if key is None:
            raise GraphQLError(
                "The @idempotent directive is required for this mutation.",
                code="BAD_REQUEST",
            )
        if len(entries) > MAX_INPUT_ARRAY:
            raise GraphQLError(
                f"The input array size of {len(entries)} is greater than the maximum allowed "
                f"of {MAX_INPUT_ARRAY}.",
                code="MAX_INPUT_SIZE_EXCEEDED",
            )
        for index, entry in enumerate(entries):
            if "changeFromQuantity" not in entry:
                raise GraphQLError(
                    f"Variable $input of type InventorySetQuantitiesInput! was provided invalid "
                    f"value for quantities.{index}.changeFromQuantity (changeFromQuantity must "
                    "be provided, null to skip the compare)",
                    code="INVALID_VARIABLE",
                )
        fingerprint = json.dumps(args, sort_keys=True)
        stored = self._idempotent.get(key)
        if stored is not None:
            if stored[0] != fingerprint:
                return _user_errors(
                    [
                        {
                            "field": ["input"],
                            "message": "The same idempotency key cannot be used with "
                            "different operation parameters.",
                            "code": "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
                        }
                    ]
                )
            return stored[1]
        result = self._apply_quantities(args["input"], entries)
        self._idempotent[key] = (fingerprint, result)
        return result

    def _apply_quantities(
        self, payload: dict[str, Any], entries: list[dict[str, Any]]
    ) -> dict[str, Any]:
        errors = []
        if payload.get("name") not in ("available", "on_hand"):
            errors.append(
                _error(
                    ["input", "name"],
                    "The quantity name must be either 'available' or 'on_hand'.",
                    "INVALID_NAME",
                )
            )
        if not payload.get("reason"):
            errors.append(_error(["input", "reason"], "The reason is invalid.", "INVALID_REASON"))
        changes = []
        for index, entry in enumerate(entries):
            path = ["input", "quantities", str(index)]
            item = _number(entry.get("inventoryItemId"), "InventoryItem")
            variant = next((v for v in self._variants.values() if v.item == item), None)
            location = _number(entry.get("locationId"), "Location")
            if variant is None:
                errors.append(
                    _error(
                        [*path, "inventoryItemId"],
                        "The specified inventory item could not be found.",
                        "INVALID_INVENTORY_ITEM",
                    )
                )
                continue
            if location not in {loc.number for loc in self.locations}:
                errors.append(
                    _error(
                        [*path, "locationId"],
                        "The specified location could not be found.",
                        "INVALID_LOCATION",
                    )
                )
                continue
            assert location is not None
            current = self._levels.get((variant.item, location))
            if current is None:
                errors.append(
                    _error(
                        [*path, "locationId"],
                        "The specified inventory item is not stocked at the location.",
                        "ITEM_NOT_STOCKED_AT_LOCATION",
                    )
                )
                continue
            quantity = entry.get("quantity")
            if not isinstance(quantity, int) or quantity < 0:
                errors.append(
                    _error(
                        [*path, "quantity"],
                        "The quantity can't be negative.",
                        "INVALID_QUANTITY_NEGATIVE",
                    )
                )
                continue
            expected = entry["changeFromQuantity"]
            if expected is not None and expected != current:
                errors.append(
                    _error(
                        [*path, "changeFromQuantity"],
                        "The changeFromQuantity value does not match persisted value.",
                        "CHANGE_FROM_QUANTITY_STALE",
                    )
                )
                continue
            changes.append((variant, location, quantity, quantity - current))
        if errors:
            return _user_errors(errors)
        for variant, location, quantity, _ in changes:
            self._set_level(variant, location, quantity)
        moved = [change for change in changes if change[3] != 0]
        group = None
        if moved:
            group = {
                "__typename": "InventoryAdjustmentGroup",
                "id": gid("InventoryAdjustmentGroup", next(self._ids)),
                "reason": payload["reason"],
                "referenceDocumentUri": payload.get("referenceDocumentUri"),
                "changes": [
                    {
                        "__typename": "InventoryChange",
                        "name": payload["name"],
                        "delta": delta,
                        "quantityAfterChange": quantity,
                        "variant": variant,
                        "location": location,
                    }
                    for variant, location, quantity, delta in moved
                ],
            }
        return {"__typename": "InventorySetQuantitiesPayload", "group": group, "errors": []}

    def _create_subscription(self, args: dict[str, Any]) -> dict[str, Any]:
        topic = args.get("topic")
        subscription = args.get("webhookSubscription") or {}
        uri = subscription.get("uri")
        if topic not in _TOPICS:
            raise GraphQLError(
                f"Argument 'topic' on Field 'webhookSubscriptionCreate' has an invalid value "
                f"({topic}). Expected type 'WebhookSubscriptionTopic!'.",
                code="argumentLiteralsIncompatible",
            )
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            return {
                "__typename": "WebhookSubscriptionCreatePayload",
                "subscription": None,
                "errors": [_error(["webhookSubscription", "uri"], "Address is invalid", None)],
            }
        if (topic, uri) in self.subscriptions.values():
            return {
                "__typename": "WebhookSubscriptionCreatePayload",
                "subscription": None,
                "errors": [
                    _error(
                        ["webhookSubscription", "uri"],
                        "Address for this topic has already been taken",
                        None,
                    )
                ],
            }
        number = next(self._ids)
        self.subscriptions[number] = (topic, uri)
        return {
            "__typename": "WebhookSubscriptionCreatePayload",
            "subscription": {
                "__typename": "WebhookSubscription",
                "id": gid("WebhookSubscription", number),
                "topic": topic,
                "uri": uri,
            },
            "errors": [],
        }

    def _delete_subscription(self, args: dict[str, Any]) -> dict[str, Any]:
        """``webhookSubscriptionDelete``: the id of the deleted subscription, or a user
        error on ``id`` for one that does not exist (Shopify's wording, unconfirmed)."""
        number = _number(args.get("id"), "WebhookSubscription")
        if number is None or self.subscriptions.pop(number, None) is None:
            return {
                "__typename": "WebhookSubscriptionDeletePayload",
                "deleted": None,
                "errors": [_error(["id"], "Webhook subscription does not exist", None)],
            }
        return {
            "__typename": "WebhookSubscriptionDeletePayload",
            "deleted": gid("WebhookSubscription", number),
            "errors": [],
        }

    def _schema(self, key: str | None, scopes: tuple[str, ...]) -> Schema:
        """The types the double serves (Shopify's names and shapes, a subset of fields)."""

        def scoped(name: str, definition: FieldDef) -> FieldDef:
            needed = _REQUIRED_SCOPE.get(name)
            granted = set(scopes) | {s.replace("write_", "read_") for s in scopes}
            if needed is None or needed in granted:
                return definition

            def denied(obj: Any, args: dict[str, Any]) -> Any:
                raise GraphQLError(
                    f"Access denied for {name} field. Required access: `{needed}` access scope.",
                    code="ACCESS_DENIED",
                    documentation="https://shopify.dev/api/usage/access-scopes",
                    requiredAccess=f"`{needed}` access scope.",
                )

            return FieldDef(definition.type, denied, definition.arguments, definition.shape)

        connection = frozenset({"first", "after", "last", "before", "reverse", "query"})
        query_root = {
            "shop": FieldDef("Shop", lambda obj, args: {"__typename": "Shop"}),
            "locations": FieldDef(
                "Location", self._locations_page, connection | {"includeInactive"}, "connection"
            ),
            "productVariants": FieldDef(
                "ProductVariant", self._variants_page, connection | {"sortKey"}, "connection"
            ),
            "nodes": FieldDef(
                "Node",
                lambda obj, args: [self._node(i) for i in args["ids"]],
                frozenset({"ids"}),
                "list",
            ),
            "order": FieldDef(
                "Order", lambda obj, args: self._node(args.get("id")), frozenset({"id"})
            ),
            "orders": FieldDef("Order", self._orders_page, connection | {"sortKey"}, "connection"),
            "webhookSubscriptions": FieldDef(
                "WebhookSubscription",
                self._subscriptions_page,
                connection | {"uri", "topics", "format"},
                "connection",
            ),
        }
        mutation = {
            "inventorySetQuantities": FieldDef(
                "InventorySetQuantitiesPayload",
                lambda obj, args: self._set_quantities(args, key),
                frozenset({"input"}),
            ),
            "webhookSubscriptionCreate": FieldDef(
                "WebhookSubscriptionCreatePayload",
                lambda obj, args: self._create_subscription(args),
                frozenset({"topic", "webhookSubscription"}),
            ),
            "webhookSubscriptionDelete": FieldDef(
                "WebhookSubscriptionDeletePayload",
                lambda obj, args: self._delete_subscription(args),
                frozenset({"id"}),
            ),
        }

        def variant(obj: dict[str, Any]) -> _Variant:
            found: _Variant = obj["variant"]
            return found

        return {
            "QueryRoot": {name: scoped(name, d) for name, d in query_root.items()},
            "Mutation": {name: scoped(name, d) for name, d in mutation.items()},
            "Shop": {
                "currencyCode": FieldDef("CurrencyCode", lambda obj, args: self.currency),
                "myshopifyDomain": FieldDef("String", lambda obj, args: self.shop_domain),
            },
            "Location": {
                "id": FieldDef("ID", lambda obj, args: gid("Location", obj["location"].number)),
                "name": FieldDef("String", lambda obj, args: obj["location"].name),
                "isActive": FieldDef("Boolean", lambda obj, args: obj["location"].is_active),
            },
            "ProductVariant": {
                "id": FieldDef("ID", lambda o, a: gid("ProductVariant", variant(o).number)),
                "title": FieldDef("String", lambda o, a: variant(o).title),
                "displayName": FieldDef(
                    "String", lambda o, a: f"{variant(o).product_title} - {variant(o).title}"
                ),
                "sku": FieldDef("String", lambda o, a: variant(o).sku),
                "price": FieldDef("Money", lambda o, a: self._money(variant(o).price)),
                "product": FieldDef(
                    "Product", lambda o, a: {"__typename": "Product", "variant": variant(o)}
                ),
                "inventoryItem": FieldDef(
                    "InventoryItem", lambda o, a: self._item_object(variant(o))
                ),
            },
            "Product": {
                "id": FieldDef("ID", lambda o, a: gid("Product", variant(o).product_number)),
                "title": FieldDef("String", lambda o, a: variant(o).product_title),
            },
            "InventoryItem": {
                "id": FieldDef("ID", lambda o, a: gid("InventoryItem", variant(o).item)),
                "sku": FieldDef("String", lambda o, a: variant(o).sku),
                "tracked": FieldDef("Boolean", lambda o, a: True),
                "variant": FieldDef(
                    "ProductVariant", lambda o, a: self._variant_object(variant(o))
                ),
                "inventoryLevel": FieldDef(
                    "InventoryLevel",
                    lambda o, a: self._level_object(variant(o), a["locationId"]),
                    frozenset({"locationId"}),
                ),
            },
            "InventoryLevel": {
                "id": FieldDef(
                    "ID",
                    lambda o, a: (
                        f"gid://shopify/InventoryLevel/{o['location']}"
                        f"?inventory_item_id={variant(o).item}"
                    ),
                ),
                "location": FieldDef(
                    "Location",
                    lambda o, a: self._location_object(
                        next(loc for loc in self.locations if loc.number == o["location"])
                    ),
                ),
                "quantities": FieldDef(
                    "InventoryQuantity",
                    lambda o, a: [
                        {
                            "__typename": "InventoryQuantity",
                            "name": name,
                            "quantity": self._levels[(variant(o).item, o["location"])],
                        }
                        for name in a["names"]
                        if name in ("available", "on_hand")
                    ],
                    frozenset({"names"}),
                    "list",
                ),
            },
            "InventoryQuantity": {
                "name": FieldDef("String", lambda o, a: o["name"]),
                "quantity": FieldDef("Int", lambda o, a: o["quantity"]),
            },
            "Order": {
                "id": FieldDef("ID", lambda o, a: gid("Order", o["order"].number)),
                "legacyResourceId": FieldDef("UnsignedInt64", lambda o, a: str(o["order"].number)),
                "name": FieldDef("String", lambda o, a: o["order"].name),
                "createdAt": FieldDef("DateTime", lambda o, a: _iso(o["order"].created_at)),
                "updatedAt": FieldDef("DateTime", lambda o, a: _iso(o["order"].updated_at)),
                "cancelledAt": FieldDef(
                    "DateTime",
                    lambda o, a: (
                        None if o["order"].cancelled_at is None else _iso(o["order"].cancelled_at)
                    ),
                ),
                "lineItems": FieldDef(
                    "LineItem",
                    self._line_items_page,
                    frozenset({"first", "after", "last", "before", "reverse"}),
                    "connection",
                ),
            },
            "LineItem": {
                "sku": FieldDef("String", lambda o, a: variant(o).sku),
                "quantity": FieldDef("Int", lambda o, a: o["quantity"]),
                "title": FieldDef("String", lambda o, a: variant(o).product_title),
                "variant": FieldDef(
                    "ProductVariant", lambda o, a: self._variant_object(variant(o))
                ),
            },
            "WebhookSubscription": {
                "id": FieldDef("ID", lambda o, a: o["id"]),
                "topic": FieldDef("WebhookSubscriptionTopic", lambda o, a: o["topic"]),
                "uri": FieldDef("String", lambda o, a: o["uri"]),
                "format": FieldDef("WebhookSubscriptionFormat", lambda o, a: "JSON"),
            },
            "InventorySetQuantitiesPayload": {
                "inventoryAdjustmentGroup": FieldDef(
                    "InventoryAdjustmentGroup", lambda o, a: o["group"]
                ),
                "userErrors": FieldDef(
                    "InventorySetQuantitiesUserError", lambda o, a: o["errors"], shape="list"
                ),
            },
            "InventoryAdjustmentGroup": {
                "id": FieldDef("ID", lambda o, a: o["id"]),
                "reason": FieldDef("String", lambda o, a: o["reason"]),
                "referenceDocumentUri": FieldDef("String", lambda o, a: o["referenceDocumentUri"]),
                "changes": FieldDef(
                    "InventoryChange",
                    lambda o, a: o["changes"],
                    frozenset({"inventoryItemIds", "locationIds", "quantityNames"}),
                    "list",
                ),
            },
            "InventoryChange": {
                "name": FieldDef("String", lambda o, a: o["name"]),
                "delta": FieldDef("Int", lambda o, a: o["delta"]),
                "quantityAfterChange": FieldDef("Int", lambda o, a: o["quantityAfterChange"]),
                "item": FieldDef("InventoryItem", lambda o, a: self._item_object(variant(o))),
                "location": FieldDef(
                    "Location",
                    lambda o, a: self._location_object(
                        next(loc for loc in self.locations if loc.number == o["location"])
                    ),
                ),
            },
            "InventorySetQuantitiesUserError": {
                "field": FieldDef("String", lambda o, a: o["field"]),
                "message": FieldDef("String", lambda o, a: o["message"]),
                "code": FieldDef("InventorySetQuantitiesUserErrorCode", lambda o, a: o["code"]),
            },
            "WebhookSubscriptionCreatePayload": {
                "webhookSubscription": FieldDef(
                    "WebhookSubscription", lambda o, a: o["subscription"]
                ),
                "userErrors": FieldDef("UserError", lambda o, a: o["errors"], shape="list"),
            },
            "WebhookSubscriptionDeletePayload": {
                "deletedWebhookSubscriptionId": FieldDef("ID", lambda o, a: o["deleted"]),
                "userErrors": FieldDef("UserError", lambda o, a: o["errors"], shape="list"),
            },
            # Shopify's generic UserError has no ``code``.
            "UserError": {
                "field": FieldDef("String", lambda o, a: o["field"]),
                "message": FieldDef("String", lambda o, a: o["message"]),
            },
            "Node": {"id": FieldDef("ID", lambda o, a: None)},
        }

    # HTTP ------------------------------------------------------------------------------

    def _token_scopes(self, request: Request) -> tuple[str, ...] | None:
        token = self._tokens.get(request.headers.get("x-shopify-access-token", ""))
        if token is None or (token.expires_at is not None and time.time() >= token.expires_at):
            return None
        return token.scopes

    async def _graphql(self, request: Request) -> Response:
        version = request.path_params["version"]
        effective = version if version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[0]
        headers = {"X-Shopify-API-Version": effective}
        raw = await request.body()
        with self._lock:
            scopes = self._token_scopes(request)
            try:
                body = json.loads(raw)
                source = body["query"]
                variables = body.get("variables") or {}
                if not isinstance(source, str) or not isinstance(variables, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                self.requests.append(("POST", request.url.path))
                return JSONResponse(
                    {"errors": {"query": "Required parameter missing or invalid"}}, 400, headers
                )
            try:
                operation = parse(source)
            except GraphQLError as error:
                self.requests.append(("POST", body.get("operationName") or request.url.path))
                return JSONResponse({"errors": [error.as_json()]}, 200, headers)
            self.requests.append(("POST", operation.name or request.url.path))
            if scopes is None:
                return JSONResponse({"errors": INVALID_TOKEN}, 401, headers)
            reply = self._execute(operation, variables, scopes)
        return JSONResponse(reply, 200, headers)

    def _execute(
        self, operation: Operation, variables: dict[str, Any], scopes: tuple[str, ...]
    ) -> dict[str, Any]:
        # ``@idempotent(key:)`` sits on the mutation field (Shopify's examples).
        key = None
        for selection in operation.selections:
            if isinstance(selection, Field) and "idempotent" in selection.directives:
                key = resolve_value(selection.directives["idempotent"].get("key"), variables)
        executor = Executor(self._schema(key, scopes), variables, self.field_costs)
        root = "Mutation" if operation.kind == "mutation" else "QueryRoot"
        for name, (type_ref, default) in operation.variables.items():
            if type_ref.endswith("!") and variables.get(name, default) is None:
                return {
                    "errors": [
                        GraphQLError(
                            f"Variable ${name} of type {type_ref} was provided invalid value",
                            code="INVALID_VARIABLE",
                        ).as_json()
                    ]
                }
        try:
            requested = executor.requested(root, operation.selections)
        except GraphQLError as error:
            return {"errors": [error.as_json()]}
        self.bucket.refill()
        if requested > MAX_QUERY_COST:
            return {
                "errors": [
                    GraphQLError(
                        f"Query cost is {requested}, which exceeds the single query max cost limit "
                        f"({MAX_QUERY_COST}).",
                        code="MAX_COST_EXCEEDED",
                        cost=requested,
                        maxCost=MAX_QUERY_COST,
                        documentation=RATE_LIMITS_DOC,
                    ).as_json()
                ],
                "extensions": {"cost": self._cost(requested, None)},
            }
        if requested > self.bucket.available:
            self.throttled += 1
            return {
                "errors": [
                    GraphQLError(
                        "Throttled", code="THROTTLED", documentation=RATE_LIMITS_DOC
                    ).as_json()
                ],
                "extensions": {"cost": self._cost(requested, None)},
            }
        self.bucket.available -= requested
        try:
            data, actual = executor.run(root, {"__typename": root}, operation.selections)
        except GraphQLError as error:
            self.bucket.available += requested
            return {
                "data": None,
                "errors": [error.as_json()],
                "extensions": {"cost": self._cost(requested, 0)},
            }
        self.bucket.available = min(self.bucket.size, self.bucket.available + requested - actual)
        return {"data": data, "extensions": {"cost": self._cost(requested, actual)}}

    def _cost(self, requested: int, actual: int | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": self.bucket.status(),
        }

    async def _authorize(self, request: Request) -> Response:
        """The merchant approves the install at once: back to ``redirect_uri`` with a code."""
        params = dict(request.query_params)
        with self._lock:
            self.requests.append(("GET", request.url.path))
            if params.get("client_id") != self.client_id or "redirect_uri" not in params:
                return JSONResponse({"errors": "Invalid client_id or redirect_uri"}, 400)
            code = secrets.token_hex(16)
            scopes = tuple(s for s in params.get("scope", "").split(",") if s)
            self._codes[code] = scopes
        redirect = {
            "code": code,
            "host": base64.b64encode(f"{self.shop_domain}/admin".encode()).decode(),
            "shop": self.shop_domain,
            "state": params.get("state", ""),
            "timestamp": str(int(time.time())),
        }
        redirect["hmac"] = self.oauth_hmac(redirect)
        return RedirectResponse(f"{params['redirect_uri']}?{urlencode(redirect)}", 302)

    async def _access_token(self, request: Request) -> Response:
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                params = {k: str(v) for k, v in json.loads(raw).items()}
            except (ValueError, AttributeError):
                params = {}
        else:
            params = dict(parse_qsl(raw.decode()))
        with self._lock:
            self.requests.append(("POST", request.url.path))
            if (params.get("client_id"), params.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                return _oauth_error("invalid_client", "Client authentication failed")
            if params.get("grant_type") == "refresh_token":
                return self._refresh(params.get("refresh_token", ""))
            scopes = self._codes.pop(params.get("code", ""), None)
            if scopes is None:
                return _oauth_error(
                    "invalid_request", "The authorization code was not found or was already used"
                )
            if params.get("expiring") == "1":
                return JSONResponse(self._issue(scopes))
            token = "shpat_" + secrets.token_hex(16)
            self._tokens[token] = _Token(scopes, None)
            return JSONResponse({"access_token": token, "scope": ",".join(scopes)})

    def _issue(self, scopes: tuple[str, ...]) -> dict[str, Any]:
        now = time.time()
        access, refresh = "shpat_" + secrets.token_hex(16), "shprt_" + secrets.token_hex(16)
        self._tokens[access] = _Token(scopes, now + ACCESS_TOKEN_SECONDS)
        self._refresh_tokens[refresh] = _RefreshToken(now + REFRESH_TOKEN_SECONDS)
        self._refresh_scopes[refresh] = scopes
        return {
            "access_token": access,
            "scope": ",".join(scopes),
            "expires_in": ACCESS_TOKEN_SECONDS,
            "refresh_token": refresh,
            "refresh_token_expires_in": REFRESH_TOKEN_SECONDS,
        }

    def _refresh(self, refresh_token: str) -> Response:
        stored = self._refresh_tokens.get(refresh_token)
        if stored is None or stored.is_retired or time.time() >= stored.expires_at:
            return _oauth_error("invalid_grant", "The refresh token is invalid or expired")
        scopes = self._refresh_scopes[refresh_token]
        # Using a token retires the one it replaced.
        for older in self._refresh_tokens.values():
            if older.replacement is not None and older.replacement[1] == refresh_token:
                older.is_retired = True
        if stored.replacement is not None:
            access, refresh = stored.replacement
            self._tokens[access] = _Token(scopes, time.time() + ACCESS_TOKEN_SECONDS)
            return JSONResponse(
                {
                    "access_token": access,
                    "scope": ",".join(scopes),
                    "expires_in": ACCESS_TOKEN_SECONDS,
                    "refresh_token": refresh,
                    "refresh_token_expires_in": int(
                        self._refresh_tokens[refresh].expires_at - time.time()
                    ),
                }
            )
        issued = self._issue(scopes)
        stored.replacement = (issued["access_token"], issued["refresh_token"])
        return JSONResponse(issued)

    async def _state(self, request: Request) -> Response:
        with self._lock:
            rows = [
                {
                    "sku": v.sku,
                    "title": v.product_title
                    if v.title == _DEFAULT_VARIANT
                    else f"{v.product_title} — {v.title}",
                    "quantity": self._levels.get((v.item, self.location.number)),
                }
                for v in sorted(self._variants.values(), key=lambda v: v.number)
            ]
        return JSONResponse(rows)

    async def _control_sell(self, request: Request) -> Response:
        body = await request.json()
        try:
            order = self.sell(str(body["sku"]), int(body.get("quantity", 1)))
        except (KeyError, ValueError) as error:
            return JSONResponse({"error": str(error)}, 409)
        return JSONResponse({"order": order})

    async def _control_quantity(self, request: Request) -> Response:
        body = await request.json()
        try:
            self.set_quantity(str(body["sku"]), int(body["quantity"]))
        except KeyError as error:
            return JSONResponse({"error": f"unknown sku {error}"}, 404)
        return JSONResponse({"sku": body["sku"], "quantity": int(body["quantity"])})

    async def _control_cancel(self, request: Request) -> Response:
        body = await request.json()
        try:
            self.cancel(str(body["order"]))
        except (KeyError, ValueError) as error:
            return JSONResponse({"error": f"unknown order {error}"}, 404)
        return JSONResponse({"order": str(body["order"]), "cancelled": True})

    async def _control_uninstall(self, request: Request) -> Response:
        self.uninstall()
        return JSONResponse({"uninstalled": True})


def _error(path: list[str], message: str, code: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"__typename": "UserError", "field": path, "message": message}
    if code is not None:
        error["code"] = code
    return error


def _user_errors(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"__typename": "InventorySetQuantitiesPayload", "group": None, "errors": errors}


def _oauth_error(error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, 400)


async def _throttled(scope: Scope, receive: Receive, send: Send) -> None:
    """Chaos: Shopify's throttle as a 429 (another app's load on the shop's API)."""
    response = JSONResponse(
        {
            "errors": [
                {
                    "message": "Throttled",
                    "extensions": {"code": "THROTTLED", "documentation": RATE_LIMITS_DOC},
                }
            ]
        },
        429,
        {"Retry-After": "1.0"},
    )
    await response(scope, receive, send)


@contextlib.contextmanager
def serve_shopify(double: ShopifyDouble, *, port: int = 0) -> Iterator[str]:
    """Serve ``double`` on 127.0.0.1 (``port`` 0: a free one); sets ``double.base_url``."""
    with serve_app(double.app, name="Shopify", port=port) as url:
        double.base_url = url
        yield url
