"""The Shopify channel (ADR 0026): a ``Connector`` over Shopify's GraphQL Admin API, and the
OAuth helpers that install the app on a shop.

Credentials (``credentials``): ``shop_url`` (``https://kiln.myshopify.com``),
``access_token`` (sent as ``X-Shopify-Access-Token``), ``webhook_secret`` (the app's client
secret, which signs deliveries) and, optionally, ``location_id`` (a Location GID; without
it the shop's first active location, read once per connector).

What Shopify does that shapes this module:

- Rate limits are a leaky bucket of query cost points per app and shop. Every reply's
  ``extensions.cost.throttleStatus`` is kept in ``rate_state`` (with when it was seen);
  before a request the connector estimates the bucket now and waits (up to ``MAX_WAIT``)
  for the points the request will ask for, or raises ``RateLimited``. Page sizes shrink
  to fit a small bucket. The restore rate is read from replies, never assumed. Costs are
  estimated by Shopify's documented rules; when a reply's ``requestedQueryCost`` shows
  Shopify prices more (it may set field costs by hand), ``rate_state["cost_factor"]``
  scales later estimates and pages, and a query refused as ``MAX_COST_EXCEEDED`` is sent
  again in a smaller page.
- ``inventorySetQuantities`` (API 2026-04 and later) needs ``@idempotent(key:)`` and a
  ``changeFromQuantity`` on every entry. A refusal refuses the whole call, so after one the
  connector reads the items again, reports each entry on its own (``stale`` with the
  channel's value, ``ok`` when the channel already shows the target, ``missing``,
  ``error``) and resends the entries that are still good under a key derived from theirs.
  Keys are derived from the updates' own keys, so a retried ``push`` replays rather than
  writes twice and never reuses a key for other arguments.
- Orders are identified by Shopify's numeric order id (``legacyResourceId`` in GraphQL,
  ``id`` in the ``orders/create`` webhook), the same in both paths.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx

from stallholder.channels.connectors import (
    MAX_WAIT,
    TIMEOUT,
    ChannelKind,
    ChannelOrder,
    ChannelRefused,
    ChannelUnavailable,
    InventoryChanged,
    Listing,
    ListingRef,
    OrderLine,
    OrdersPage,
    PushResult,
    RateLimited,
    RegisteredWebhook,
    StockUpdate,
    Tokens,
    Unauthorized,
    WebhookDelivery,
    raise_for_status,
    retry_after_seconds,
)
from stallholder.kit.clock import Clock, SystemClock
from stallholder.kit.money import exponent

API_VERSION = "2026-10"
SCOPES = ("read_products", "read_inventory", "write_inventory", "read_orders", "read_locations")
ORDERS_CREATE = "ORDERS_CREATE"
ORDERS_CANCELLED = "ORDERS_CANCELLED"
INVENTORY_LEVELS_UPDATE = "INVENTORY_LEVELS_UPDATE"
APP_UNINSTALLED = "APP_UNINSTALLED"
# The GraphQL topic enum and the name deliveries carry in ``X-Shopify-Topic``, in the order
# they are subscribed.
TOPICS = {
    ORDERS_CREATE: "orders/create",
    ORDERS_CANCELLED: "orders/cancelled",
    INVENTORY_LEVELS_UPDATE: "inventory_levels/update",
    APP_UNINSTALLED: "app/uninstalled",
}
# The topics whose body is an order (Shopify's REST shape).
_ORDER_TOPICS = frozenset({TOPICS[ORDERS_CREATE], TOPICS[ORDERS_CANCELLED]})

# Shopify refuses a single query over 1,000 points whatever the bucket holds.
SINGLE_QUERY_LIMIT = 1000
# Until a reply says otherwise, assume a Standard shop's bucket.
ASSUMED_BUCKET = 2000
LISTINGS_PAGE = 100
READ_BATCH = 100
PUSH_BATCH = 100
ORDERS_PAGE = 25
ORDER_LINES_PAGE = 10
MORE_LINES_PAGE = 100
PUSH_ATTEMPTS = 3
# Requested cost of one item of each query by Shopify's documented rules (an object 1,
# scalars 0, a connection 2 plus ``first`` times its node, a mutation 10).
VARIANT_COST = 5  # variant, product, inventoryItem, inventoryLevel, quantities
READ_ITEM_COST = 3  # inventoryItem, inventoryLevel, quantities
LINE_COST = 3  # lineItem, variant, inventoryItem
ORDER_COST = 1 + 2 + ORDER_LINES_PAGE * LINE_COST
MUTATION_COST = 10
SHOP_COST = 4
WEBHOOKS_COST = 2 + 10
MORE_LINES_COST = 1 + 2 + MORE_LINES_PAGE * LINE_COST

STALE_CODES = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})
# A key's earlier attempt failed or its arguments differ: sort the entries out afresh and
# resend under a new key.
IDEMPOTENCY_CODES = frozenset(
    {"IDEMPOTENCY_KEY_PARAMETER_MISMATCH", "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"}
)
_KEY_NAMESPACE = uuid.UUID("6f1d4c1e-3b0a-4e58-9a57-5b1f0f5a2c11")
_T = TypeVar("_T")

_SHOP_QUERY = """
query StallholderShop {
  shop { currencyCode }
  locations(first: 1) { nodes { id } }
}"""

_LISTINGS_QUERY = """
query StallholderListings($first: Int!, $after: String, $locationId: ID!) {
  productVariants(first: $first, after: $after) {
    nodes {
      id
      title
      sku
      price
      product { title }
      inventoryItem {
        id
        inventoryLevel(locationId: $locationId) {
          quantities(names: ["available"]) { name quantity }
        }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}"""

_READ_QUERY = """
query StallholderRead($ids: [ID!]!, $locationId: ID!) {
  nodes(ids: $ids) {
    ... on InventoryItem {
      id
      inventoryLevel(locationId: $locationId) {
        quantities(names: ["available"]) { name quantity }
      }
    }
  }
}"""

_SET_QUANTITIES = """
mutation StallholderSetQuantities($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { field message code }
  }
}"""

_WEBHOOKS_QUERY = """
query StallholderWebhooks($uri: String!) {
  webhookSubscriptions(first: 10, uri: $uri) { nodes { id topic uri } }
}"""

_DELETE_WEBHOOK = """
mutation StallholderDeleteWebhook($id: ID!) {
  webhookSubscriptionDelete(id: $id) {
    deletedWebhookSubscriptionId
    userErrors { field message }
  }
}"""

_CREATE_WEBHOOK = """
mutation StallholderCreateWebhook($topic: WebhookSubscriptionTopic!, $uri: String!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: {uri: $uri, format: JSON}) {
    webhookSubscription { id topic }
    userErrors { field message }
  }
}"""

_LINES = """
      nodes { sku quantity variant { inventoryItem { id } } }
      pageInfo { hasNextPage endCursor }"""

_ORDERS_QUERY = f"""
query StallholderOrders($first: Int!, $after: String, $query: String!) {{
  orders(first: $first, after: $after, sortKey: UPDATED_AT, query: $query) {{
    nodes {{
      id
      legacyResourceId
      name
      createdAt
      updatedAt
      cancelledAt
      lineItems(first: {ORDER_LINES_PAGE}) {{{_LINES}
      }}
    }}
    pageInfo {{ hasNextPage endCursor }}
  }}
}}"""

_ORDER_LINES_QUERY = f"""
query StallholderOrderLines($id: ID!, $after: String) {{
  order(id: $id) {{
    lineItems(first: {MORE_LINES_PAGE}, after: $after) {{{_LINES}
    }}
  }}
}}"""


class _TooCostly(ChannelRefused):
    """Shopify refused a query over its single-query cost limit (``MAX_COST_EXCEEDED``)."""


class ShopifyConnector:
    """The ``Connector`` for one Shopify shop (see the module docstring)."""

    kind: ChannelKind = "shopify"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        credentials: Mapping[str, str],
        rate_state: dict[str, Any],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait: float = MAX_WAIT,
        clock: Clock | None = None,
    ) -> None:
        self._http = http
        self._shop_url = credentials["shop_url"].rstrip("/")
        self._token = credentials["access_token"]
        self._secret = credentials.get("webhook_secret", "")
        self._location_id = credentials.get("location_id") or None
        self._currency: str | None = None
        self.rate_state = rate_state
        self._sleep = sleep
        # The longest wait for the rate limit before RateLimited is raised instead.
        self.max_wait = max_wait
        self._clock = clock or SystemClock()
        self._endpoint = f"{self._shop_url}/admin/api/{API_VERSION}/graphql.json"

    # Connector -------------------------------------------------------------------------

    async def register_webhooks(self, delivery_url: str) -> list[RegisteredWebhook]:
        existing = await self._subscriptions(delivery_url)
        registered = []
        for topic in TOPICS:
            subscription_id = existing.get(topic)
            if subscription_id is None:
                created = await self._call(
                    _CREATE_WEBHOOK, {"topic": topic, "uri": delivery_url}, cost=MUTATION_COST
                )
                payload = created["webhookSubscriptionCreate"]
                if payload["webhookSubscription"] is not None:
                    subscription_id = payload["webhookSubscription"]["id"]
                elif any("already been taken" in e["message"] for e in payload["userErrors"]):
                    # Another worker subscribed it since we looked: keep theirs.
                    subscription_id = (await self._subscriptions(delivery_url)).get(topic)
                if subscription_id is None:
                    raise ChannelRefused(f"Shopify refused the {topic} webhook: {payload}")
            registered.append(RegisteredWebhook(external_id=subscription_id, topic=TOPICS[topic]))
        return registered

    async def remove_webhooks(
        self, delivery_url: str, registered: Sequence[RegisteredWebhook]
    ) -> None:
        """``webhookSubscriptionDelete`` for each subscription kept at connect and each the
        shop lists for ``delivery_url``; a subscription that no longer exists (Shopify
        drops subscriptions that keep failing) counts as removed."""
        ids = [hook.external_id for hook in registered]
        ids += [i for i in (await self._subscriptions(delivery_url)).values() if i not in ids]
        for subscription_id in ids:
            deleted = await self._call(_DELETE_WEBHOOK, {"id": subscription_id}, cost=MUTATION_COST)
            payload = deleted["webhookSubscriptionDelete"]
            errors = payload.get("userErrors") or []
            if payload.get("deletedWebhookSubscriptionId") is None and not all(
                "does not exist" in str(error.get("message")) for error in errors
            ):
                raise ChannelRefused(
                    f"Shopify refused to delete webhook subscription {subscription_id}: {errors}"
                )

    async def _subscriptions(self, delivery_url: str) -> dict[str, str]:
        """Our subscriptions to ``delivery_url``, by topic."""
        data = await self._call(_WEBHOOKS_QUERY, {"uri": delivery_url}, cost=WEBHOOKS_COST)
        return {
            node["topic"]: node["id"]
            for node in data["webhookSubscriptions"]["nodes"]
            if node["uri"] == delivery_url
        }

    async def listings(self) -> list[Listing]:
        location = await self._default_location()
        currency = self._currency
        listings = []
        after = None
        while True:
            page = await self._sized(
                LISTINGS_PAGE, VARIANT_COST, functools.partial(self._listings_page, location, after)
            )
            for node in page["nodes"]:
                item = node["inventoryItem"]
                title = node["product"]["title"]
                if node["title"] != "Default Title":
                    title = f"{title} — {node['title']}"
                listings.append(
                    Listing(
                        ref=ListingRef(
                            external_id=item["id"],
                            extra={"location_id": location, "variant_id": node["id"]},
                        ),
                        sku=node["sku"] or None,
                        title=title,
                        quantity=_available(item["inventoryLevel"]),
                        price=_minor_units(node["price"], currency),
                        currency=currency,
                    )
                )
            if not page["pageInfo"]["hasNextPage"]:
                return listings
            after = page["pageInfo"]["endCursor"]

    async def read(self, refs: Sequence[ListingRef]) -> dict[str, int | None]:
        by_location: dict[str, list[str]] = {}
        for ref in refs:
            location = ref.extra.get("location_id") or await self._default_location()
            by_location.setdefault(location, []).append(ref.external_id)
        quantities: dict[str, int | None] = {}
        for location, ids in by_location.items():
            start = 0
            while start < len(ids):
                read = functools.partial(self._read_chunk, ids[start:], location, quantities)
                start += await self._sized(READ_BATCH, READ_ITEM_COST, read, fixed=0)
        return quantities

    async def push(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        results: list[PushResult] = []
        for start in range(0, len(updates), PUSH_BATCH):
            results.extend(await self._push_batch(updates[start : start + PUSH_BATCH]))
        return results

    async def orders_since(self, cursor: str | None) -> OrdersPage:
        if cursor is None:
            since, after = _iso(self._clock.now() - timedelta(days=1)), None
        elif "|" in cursor:
            since, after = cursor.split("|", 1)
        else:
            since, after = cursor, None
        page = await self._sized(
            ORDERS_PAGE, ORDER_COST, functools.partial(self._orders_page, since, after)
        )
        orders = []
        for node in page["nodes"]:
            lines = await self._order_lines(node)
            orders.append(
                ChannelOrder(
                    external_id=str(node["legacyResourceId"]),
                    created_at=_parse_time(node["createdAt"]),
                    updated_at=_parse_time(node["updatedAt"]),
                    lines=lines,
                    name=node["name"],
                    cancelled=node["cancelledAt"] is not None,
                )
            )
        more = bool(page["pageInfo"]["hasNextPage"])
        if more:
            # The same search, after this page: a page of orders that all changed in the
            # same second would otherwise come back for ever.
            next_cursor = f"{since}|{page['pageInfo']['endCursor']}"
        elif page["nodes"]:
            next_cursor = page["nodes"][-1]["updatedAt"]
        else:
            next_cursor = since
        return OrdersPage(orders=tuple(orders), cursor=next_cursor, more=more)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery | None:
        lowered = {name.lower(): value for name, value in headers.items()}
        signature = lowered.get("x-shopify-hmac-sha256")
        if not signature or not verify_webhook(body, signature, secret=self._secret):
            return None
        topic = lowered.get("x-shopify-topic", "")
        delivery_id = (
            lowered.get("x-shopify-webhook-id")
            or lowered.get("x-shopify-event-id")
            or hashlib.sha256(body).hexdigest()
        )
        try:
            payload = json.loads(body)
        except ValueError:
            return WebhookDelivery(delivery_id=delivery_id, topic=topic)
        if topic in _ORDER_TOPICS:
            return WebhookDelivery(
                delivery_id=delivery_id, topic=topic, order=_webhook_order(payload)
            )
        if topic == TOPICS[APP_UNINSTALLED]:
            return WebhookDelivery(delivery_id=delivery_id, topic=topic, uninstalled=True)
        if topic == TOPICS[INVENTORY_LEVELS_UPDATE]:
            location = f"gid://shopify/Location/{payload.get('location_id')}"
            if self._location_id is not None and location != self._location_id:
                return WebhookDelivery(delivery_id=delivery_id, topic=topic)
            available = payload.get("available")
            changed = InventoryChanged(
                external_id=f"gid://shopify/InventoryItem/{payload['inventory_item_id']}",
                quantity=available if isinstance(available, int) else None,
            )
            return WebhookDelivery(delivery_id=delivery_id, topic=topic, inventory=(changed,))
        return WebhookDelivery(delivery_id=delivery_id, topic=topic)

    # Pushing ---------------------------------------------------------------------------

    async def _push_batch(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        outcome: dict[int, PushResult] = {}
        pending = list(range(len(updates)))
        keys = [update.key for update in updates]
        fresh: dict[str, int | None] = {}
        for attempt in range(PUSH_ATTEMPTS):
            batch = [updates[i] for i in pending]
            # The first call's key stands for these updates; a resend's for the entries
            # resent, so a different set never reuses a key.
            key = _derived_key(
                keys if attempt == 0 else [*keys, f"resend {attempt}", *(u.key for u in batch)]
            )
            errors = await self._set_quantities(batch, key)
            if not errors:
                for i in pending:
                    outcome[i] = _result(updates[i], "ok", updates[i].quantity)
                pending = []
                break
            flagged = _errors_by_entry(errors)
            unplaced = [
                error
                for error in errors
                if error.get("code") not in STALE_CODES | IDEMPOTENCY_CODES
                and _entry_index(error) is None
            ]
            if unplaced:
                # The whole input is wrong (a name, a reason): a bug of ours, not a sale.
                raise ChannelRefused(f"Shopify refused inventorySetQuantities: {unplaced}")
            fresh = await self.read([update.ref for update in batch])
            retry = []
            for position, i in enumerate(pending):
                decided = _decide(updates[i], flagged.get(position), fresh)
                if decided is None:
                    retry.append(i)
                else:
                    outcome[i] = decided
            pending = retry
            if not pending:
                break
        for i in pending:
            # Refused on every attempt although the channel still shows what we expected:
            # report the channel's value; the engine recomputes and pushes again.
            outcome[i] = _result(updates[i], "stale", fresh.get(updates[i].ref.external_id))
        return [outcome[i] for i in range(len(updates))]

    async def _set_quantities(
        self, updates: Sequence[StockUpdate], key: str
    ) -> list[dict[str, Any]]:
        default = None
        if any(not u.ref.extra.get("location_id") for u in updates):
            default = await self._default_location()
        quantities = [
            {
                "inventoryItemId": u.ref.external_id,
                "locationId": u.ref.extra.get("location_id") or default,
                "quantity": u.quantity,
                # Always present: explicit null skips the compare (required from 2026-04).
                "changeFromQuantity": u.expected,
            }
            for u in updates
        ]
        data = await self._call(
            _SET_QUANTITIES,
            {
                "key": key,
                "input": {
                    "name": "available",
                    "reason": "correction",
                    "referenceDocumentUri": f"stallholder://channel-sync/{key}",
                    "quantities": quantities,
                },
            },
            cost=MUTATION_COST,
        )
        errors: list[dict[str, Any]] = data["inventorySetQuantities"]["userErrors"]
        if any(error.get("code") == "IDEMPOTENCY_CONCURRENT_REQUEST" for error in errors):
            raise ChannelUnavailable("Shopify: the same write is still in progress")
        return errors

    # Requests --------------------------------------------------------------------------

    async def _default_location(self) -> str:
        if self._location_id is None or self._currency is None:
            data = await self._call(_SHOP_QUERY, {}, cost=SHOP_COST)
            self._currency = data["shop"]["currencyCode"]
            if self._location_id is None:
                nodes = data["locations"]["nodes"]
                if not nodes:
                    raise ChannelRefused("Shopify: the shop has no active location")
                self._location_id = str(nodes[0]["id"])
        return self._location_id

    async def _order_lines(self, node: dict[str, Any]) -> tuple[OrderLine, ...]:
        connection = node["lineItems"]
        lines = [_line(line) for line in connection["nodes"]]
        while connection["pageInfo"]["hasNextPage"]:
            data = await self._call(
                _ORDER_LINES_QUERY,
                {"id": node["id"], "after": connection["pageInfo"]["endCursor"]},
                cost=MORE_LINES_COST,
            )
            connection = data["order"]["lineItems"]
            lines.extend(_line(line) for line in connection["nodes"])
        return tuple(lines)

    async def _listings_page(self, location: str, after: str | None, size: int) -> Any:
        data = await self._call(
            _LISTINGS_QUERY,
            {"first": size, "after": after, "locationId": location},
            cost=2 + size * VARIANT_COST,
        )
        return data["productVariants"]

    async def _read_chunk(
        self, ids: Sequence[str], location: str, into: dict[str, int | None], size: int
    ) -> int:
        chunk = list(ids[:size])
        data = await self._call(
            _READ_QUERY, {"ids": chunk, "locationId": location}, cost=len(chunk) * READ_ITEM_COST
        )
        for node in data["nodes"]:
            if node and "id" in node:
                into[node["id"]] = _available(node["inventoryLevel"])
        return len(chunk)

    async def _orders_page(self, since: str, after: str | None, size: int) -> Any:
        data = await self._call(
            _ORDERS_QUERY,
            {"first": size, "after": after, "query": f"updated_at:>='{since}'"},
            cost=2 + size * ORDER_COST,
        )
        return data["orders"]

    async def _sized(
        self,
        largest: int,
        item_cost: int,
        send: Callable[[int], Awaitable[_T]],
        *,
        fixed: int = 2,
    ) -> _T:
        """``send`` a page of as many items as fit; once more, smaller, when Shopify prices
        the query above its single-query limit (the factor it was off by is learned)."""
        try:
            return await send(self._page_size(largest, item_cost, fixed))
        except _TooCostly:
            return await send(self._page_size(largest, item_cost, fixed))

    def _page_size(self, largest: int, item_cost: int, fixed: int) -> int:
        """As many items as fit in one query: the bucket and Shopify's single-query limit,
        with item costs scaled by what Shopify charged more than our estimate so far."""
        budget = min(SINGLE_QUERY_LIMIT, int(self.rate_state.get("maximum", ASSUMED_BUCKET)))
        factor = float(self.rate_state.get("cost_factor", 1.0))
        return max(1, min(largest, int((budget - fixed * factor) // (item_cost * factor))))

    async def _wait_for(self, cost: int) -> None:
        """Wait until the bucket (as last seen, restored since) holds ``cost`` points, or
        raise ``RateLimited`` when that would take longer than ``MAX_WAIT``."""
        state = self.rate_state
        if not {"available", "maximum", "restore_rate", "observed_at"} <= state.keys():
            return
        rate = float(state["restore_rate"])
        elapsed = max(0.0, self._clock.now().timestamp() - float(state["observed_at"]))
        available = min(float(state["maximum"]), float(state["available"]) + elapsed * rate)
        if available >= cost:
            return
        if rate <= 0:
            raise RateLimited("Shopify: the query cost bucket is empty", retry_after=self.max_wait)
        wait = (cost - available) / rate
        if wait > self.max_wait:
            raise RateLimited(
                f"Shopify: {cost} points needed, {available:.0f} in the bucket",
                retry_after=wait,
            )
        await self._sleep(wait)

    def _observe(self, cost: Any, *, at: float) -> None:
        """Keep the bucket a reply reports, as of ``at``: when the reply arrived (after
        Shopify measured it), so the estimate of what has been restored since errs on the
        short side."""
        status = cost.get("throttleStatus") if isinstance(cost, dict) else None
        if not isinstance(status, dict):
            return
        self.rate_state.update(
            maximum=float(status["maximumAvailable"]),
            available=float(status["currentlyAvailable"]),
            restore_rate=float(status["restoreRate"]),
            observed_at=at,
        )

    async def _call(self, query: str, variables: dict[str, Any], *, cost: int) -> Any:
        """One GraphQL request; its ``data``, or the module's errors."""
        await self._wait_for(math.ceil(cost * float(self.rate_state.get("cost_factor", 1.0))))
        try:
            response = await self._http.post(
                self._endpoint,
                json={"query": query, "variables": variables},
                headers={"X-Shopify-Access-Token": self._token, "Accept": "application/json"},
                timeout=TIMEOUT,
            )
        except httpx.HTTPError as error:
            raise ChannelUnavailable(f"Shopify: {error!r}") from error
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        extensions = body.get("extensions")
        cost_info = extensions.get("cost") if isinstance(extensions, dict) else None
        self._observe(cost_info, at=self._clock.now().timestamp())
        errors = body.get("errors")
        codes = _error_codes(errors)
        if isinstance(cost_info, dict):
            self._learn(cost_info.get("requestedQueryCost"), cost)
        if "MAX_COST_EXCEEDED" in codes:
            for refusal in errors if isinstance(errors, list) else []:
                self._learn((refusal.get("extensions") or {}).get("cost"), cost)
            raise _TooCostly(f"Shopify priced the query above its limit: {errors}")
        if response.status_code == 429 or "THROTTLED" in codes:
            raise RateLimited(
                f"Shopify throttled the request ({response.status_code})",
                retry_after=self._throttle_wait(cost_info, response.headers.get("retry-after")),
            )
        raise_for_status(
            response.status_code,
            message=f"Shopify: {str(errors or response.text)[:200]}",
            retry_after=response.headers.get("retry-after"),
        )
        if "ACCESS_DENIED" in codes:
            raise Unauthorized(f"Shopify denied access: {errors}")
        if "INTERNAL_SERVER_ERROR" in codes:
            raise ChannelUnavailable(f"Shopify: {errors}")
        if errors or not isinstance(body.get("data"), dict):
            raise ChannelRefused(f"Shopify refused the request: {errors}")
        return body["data"]

    def _learn(self, requested: Any, estimate: int) -> None:
        """Remember by how much Shopify's requested cost exceeded our estimate (Shopify may
        price fields by hand), so later estimates and page sizes allow for it."""
        if isinstance(requested, int | float) and estimate > 0 and requested > estimate:
            factor = max(float(self.rate_state.get("cost_factor", 1.0)), requested / estimate)
            self.rate_state["cost_factor"] = factor

    def _throttle_wait(self, cost: Any, retry_after: str | None) -> float:
        """How long until the bucket holds what the throttled request asked for."""
        if retry_after is not None:
            return retry_after_seconds(retry_after, default=1.0)
        if isinstance(cost, dict) and isinstance(cost.get("throttleStatus"), dict):
            status = cost["throttleStatus"]
            missing = float(cost.get("requestedQueryCost") or 0) - float(
                status["currentlyAvailable"]
            )
            rate = float(status["restoreRate"])
            if rate > 0:
                return max(missing / rate, 1.0 / rate)
        return 1.0


# Pure helpers ---------------------------------------------------------------------------


def verify_webhook(body: bytes, signature: str, *, secret: str) -> bool:
    """``X-Shopify-Hmac-Sha256``: base64 HMAC-SHA256 of the raw body with the app's client
    secret, compared in constant time."""
    if not secret:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, signature.strip().encode())


def _derived_key(parts: Sequence[str]) -> str:
    """An idempotency key (a UUID, as Shopify recommends) that depends only on ``parts``."""
    return str(uuid.uuid5(_KEY_NAMESPACE, "\x1f".join(parts)))


def _result(update: StockUpdate, outcome: Any, quantity: int | None) -> PushResult:
    return PushResult(
        external_id=update.ref.external_id, outcome=outcome, channel_quantity=quantity
    )


def _errors_by_entry(errors: Sequence[Mapping[str, Any]]) -> dict[int, tuple[str, str]]:
    """User errors by the index of the ``quantities`` entry their ``field`` path names."""
    flagged: dict[int, tuple[str, str]] = {}
    for error in errors:
        index = _entry_index(error)
        if index is not None:
            flagged[index] = (str(error.get("code") or ""), str(error.get("message")))
    return flagged


def _entry_index(error: Mapping[str, Any]) -> int | None:
    """The ``quantities`` entry a user error's ``field`` path names
    (``["input", "quantities", "3", "changeFromQuantity"]``), if any."""
    path = error.get("field") or []
    if len(path) >= 3 and path[1] == "quantities" and str(path[2]).isdigit():
        return int(path[2])
    return None


def _decide(
    update: StockUpdate, flagged: tuple[str, str] | None, fresh: Mapping[str, int | None]
) -> PushResult | None:
    """What became of one entry of a refused call, from its own error (if any) and the
    channel's quantity read after the refusal; None: resend it."""
    code, message = flagged or ("", "")
    if code == "INVALID_INVENTORY_ITEM" or update.ref.external_id not in fresh:
        return _result(update, "missing", None)
    if code and code not in STALE_CODES and code not in IDEMPOTENCY_CODES:
        return PushResult(update.ref.external_id, "error", error=f"{code}: {message}")
    now = fresh[update.ref.external_id]
    if now is None:
        return PushResult(update.ref.external_id, "error", error="not stocked at the location")
    if now == update.quantity:
        return _result(update, "ok", now)
    if update.expected is None or now == update.expected:
        return None
    return _result(update, "stale", now)


def _error_codes(errors: Any) -> set[str]:
    if not isinstance(errors, list):
        return set()
    codes = set()
    for error in errors:
        extensions = error.get("extensions") if isinstance(error, dict) else None
        if isinstance(extensions, dict) and extensions.get("code"):
            codes.add(str(extensions["code"]))
        elif isinstance(error, dict) and str(error.get("message", "")).lower() == "throttled":
            codes.add("THROTTLED")
    return codes


def _available(level: Mapping[str, Any] | None) -> int | None:
    if not level:
        return None
    for quantity in level.get("quantities") or []:
        if quantity.get("name") == "available":
            return int(quantity["quantity"])
    return None


def _minor_units(price: Any, currency: str | None) -> int | None:
    """Shopify's decimal string price as minor units of the shop's currency."""
    if price is None or currency is None:
        return None
    try:
        minor = Decimal(str(price)).scaleb(exponent(currency))
    except (InvalidOperation, ValueError):
        return None
    if minor != minor.to_integral_value():
        return None
    return int(minor)


def _line(line: Mapping[str, Any]) -> OrderLine:
    variant = line.get("variant") or {}
    item = variant.get("inventoryItem") or {}
    return OrderLine(
        sku=line.get("sku") or None, quantity=int(line["quantity"]), external_id=item.get("id")
    )


def _webhook_order(payload: Mapping[str, Any]) -> ChannelOrder:
    """An ``orders/create`` or ``orders/cancelled`` body (Shopify's REST shape; a
    cancelled order has ``cancelled_at``). Its lines name the variant, not
    the inventory item, so they carry the SKU only."""
    return ChannelOrder(
        external_id=str(payload["id"]),
        created_at=_parse_time(payload["created_at"]),
        updated_at=_parse_time(payload["updated_at"]) if payload.get("updated_at") else None,
        lines=tuple(
            OrderLine(sku=line.get("sku") or None, quantity=int(line["quantity"]))
            for line in payload.get("line_items") or []
        ),
        name=payload.get("name"),
        cancelled=payload.get("cancelled_at") is not None,
    )


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# OAuth ----------------------------------------------------------------------------------


def authorization_url(
    shop_url: str, *, client_id: str, scopes: Sequence[str], redirect_uri: str, state: str
) -> str:
    """Where to send the merchant to install the app with an offline token (no
    ``grant_options[]=per-user``)."""
    query = urlencode(
        {
            "client_id": client_id,
            "scope": ",".join(scopes),
            "redirect_uri": redirect_uri,
            "state": state,
        }
    )
    return f"{shop_url.rstrip('/')}/admin/oauth/authorize?{query}"


def verify_callback(query: Mapping[str, str], *, client_secret: str) -> bool:
    """Whether the install callback's ``hmac`` is Shopify's: lowercase hex HMAC-SHA256
    (client secret) of the other parameters sorted by name and form-encoded. The caller
    still checks ``state`` against the one it sent."""
    signature = query.get("hmac")
    if not signature:
        return False
    message = "&".join(
        f"{quote(name, safe='*')}={quote(value, safe='*')}"
        for name, value in sorted(query.items())
        if name not in ("hmac", "signature")
    )
    expected = hmac.new(client_secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.lower())


async def exchange_code(
    http: httpx.AsyncClient,
    shop_url: str,
    *,
    client_id: str,
    client_secret: str,
    code: str,
    clock: Clock | None = None,
) -> Tokens:
    """Trade the callback's code for an expiring offline token and its refresh token.

    Raises ``Unauthorized`` when Shopify refuses the code or the client,
    ``ChannelUnavailable`` on a network error or a 5xx."""
    return await _token_request(
        http,
        shop_url,
        {"client_id": client_id, "client_secret": client_secret, "code": code, "expiring": 1},
        clock=clock,
    )


async def refresh(
    http: httpx.AsyncClient,
    shop_url: str,
    *,
    client_id: str,
    client_secret: str,
    refresh_token: str,
    clock: Clock | None = None,
) -> Tokens:
    """A new access token for an expiring one. The refresh token rotates: store the new
    one (with the access token, atomically) before using it; the old one is retired once
    the new one is used.

    Raises ``Unauthorized`` when the refresh token is refused (retired, expired, the app
    uninstalled), ``ChannelUnavailable`` on a network error or a 5xx."""
    return await _token_request(
        http,
        shop_url,
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        },
        clock=clock,
    )


async def _token_request(
    http: httpx.AsyncClient, shop_url: str, body: dict[str, Any], *, clock: Clock | None
) -> Tokens:
    now = (clock or SystemClock()).now()
    try:
        response = await http.post(
            f"{shop_url.rstrip('/')}/admin/oauth/access_token",
            json=body,
            headers={"Accept": "application/json"},
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as error:
        raise ChannelUnavailable(f"Shopify OAuth: {error!r}") from error
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    if response.status_code == 400 and isinstance(payload, dict) and payload.get("error"):
        raise Unauthorized(f"Shopify OAuth: {payload.get('error')}: {payload}")
    raise_for_status(response.status_code, message=f"Shopify OAuth: {response.text[:200]}")
    expires_in = payload.get("expires_in")
    return Tokens(
        access_token=payload["access_token"],
        refresh_token=payload.get("refresh_token"),
        expires_at=now + timedelta(seconds=int(expires_in)) if expires_in else None,
        scopes=tuple(s for s in str(payload.get("scope", "")).split(",") if s),
    )
