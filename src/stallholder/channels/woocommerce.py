"""The WooCommerce channel: the ``Connector`` of ``channels.connectors`` over the
WooCommerce REST API v3 (``{store_url}/wp-json/wc/v3/``, HTTP Basic with the store's
consumer key and secret; ADR 0026).

What the store gives us and how we read it:

- Products and their variations carry ``stock_quantity`` when ``manage_stock`` is true; a
  simple product is the listing ``"{product_id}"``, a variation ``"{product_id}/{variation_id}"``
  (its parent in ``extra["parent_id"]``). Lists page with ``per_page`` (at most 100) and
  ``page``; ``X-WP-TotalPages`` says how many pages there are.
- Writes go through ``/products/batch`` and ``/products/{id}/variations/batch``: at most
  100 items a request (more is a 413 for the whole request), and an item the store refuses
  comes back inside the 200 as ``{id, error: {code, message, data}}``. There is no
  compare-and-set, so ``StockUpdate.expected`` is not sent.
- Orders are polled with ``modified_after`` (strictly after, to the second, in GMT with
  ``dates_are_gmt``), sorted by modification date.
- Webhooks (``order.created``, ``product.updated``) are signed with the secret we give the
  store: ``X-WC-Webhook-Signature`` is the base64 HMAC-SHA256 of the raw body. On creation
  the store posts an unsigned form body ``webhook_id=<id>`` (a ping), and it disables a
  webhook by itself after repeated failed deliveries, so registering again re-activates.
  Disconnecting deletes them (``DELETE /webhooks/{id}?force=true``: no trash for webhooks).
- Errors are ``{code, message, data: {status}}``. WooCommerce sets no rate limit of its own;
  hosts and proxies may answer 429 with ``Retry-After``, which we honour.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import httpx

from stallholder.channels.connectors import (
    MAX_WAIT,
    TIMEOUT,
    ChannelKind,
    ChannelOrder,
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
    WebhookDelivery,
    raise_for_status,
    retry_after_seconds,
)
from stallholder.kit.money import exponent

API_PATH = "/wp-json/wc/v3"
# The REST API's largest page and largest batch (``woocommerce_rest_batch_items_limit``).
PAGE_SIZE = 100
BATCH_LIMIT = 100
TOPICS = ("order.created", "product.updated")
# Order statuses whose stock the store has taken, and those that gave it back.
HELD_STATUSES = frozenset({"processing", "on-hold", "completed"})
RELEASED_STATUSES = frozenset({"cancelled", "refunded"})
# Product types with no stock of their own: a grouped product shows its children, an
# external one sells elsewhere; a variable product's stock is its variations'.
_NOT_LISTED_TYPES = frozenset({"grouped", "external", "variable"})
# ``rate_state`` keeps only this: when the last ``Retry-After`` ends (epoch seconds).
RETRY_AT = "retry_at"
# How many 429s in a row one call waits out in-process before it gives up.
_RATE_LIMIT_ATTEMPTS = 3
_PING = re.compile(rb"webhook_id=(\d+)")
_GMT_FORMAT = "%Y-%m-%dT%H:%M:%S"


def _is_missing_code(code: str) -> bool:
    # ``woocommerce_rest_product_invalid_id``, ``woocommerce_rest_product_variation_invalid_id``:
    # the product or variation does not exist (any more).
    return code.startswith("woocommerce_rest_product") and code.endswith("_invalid_id")


def _quantity(item: Mapping[str, Any]) -> int | None:
    """The quantity a product or variation shows; None when the store does not track it.
    A variation's ``manage_stock`` may be ``"parent"``: it shows its parent's stock."""
    if item.get("manage_stock") in (True, "parent") and item.get("stock_quantity") is not None:
        return int(item["stock_quantity"])
    return None


def price_minor_units(price: Any, currency: str) -> int | None:
    """A WooCommerce decimal price string (``"25.00"``, ``"25"``, ``""``) as minor units
    of ``currency``, rounded half up when the store keeps more decimals than the currency
    has; None when the store shows no price."""
    if not isinstance(price, str) or not price.strip():
        return None
    try:
        major = Decimal(price.strip())
    except InvalidOperation:
        return None
    if not major.is_finite():
        return None
    return int(major.scaleb(exponent(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _gmt(value: Any) -> datetime | None:
    """A ``*_gmt`` date of the API (``"2026-11-30T19:00:00"``, no offset) as UTC."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _ids(external_id: str) -> tuple[int, int | None] | None:
    """``"12"`` → (12, None); ``"12/34"`` → (12, 34); anything else → None."""
    parts = external_id.split("/")
    if len(parts) > 2 or not all(part.isdigit() for part in parts):
        return None
    return int(parts[0]), (int(parts[1]) if len(parts) == 2 else None)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def parse_order(payload: Mapping[str, Any]) -> ChannelOrder | None:
    """A REST API order as a ``ChannelOrder``; None for an order that neither holds stock
    nor gave it back (pending payment, failed, a checkout draft)."""
    status = payload.get("status")
    if status not in HELD_STATUSES and status not in RELEASED_STATUSES:
        return None
    created_at = _gmt(payload.get("date_created_gmt"))
    if created_at is None:
        return None
    lines = []
    for item in payload.get("line_items") or ():
        product_id = int(item.get("product_id") or 0)
        variation_id = int(item.get("variation_id") or 0)
        external_id = None
        if product_id:
            external_id = f"{product_id}/{variation_id}" if variation_id else str(product_id)
        lines.append(
            OrderLine(
                sku=item.get("sku") or None,
                quantity=int(item.get("quantity") or 0),
                external_id=external_id,
            )
        )
    return ChannelOrder(
        external_id=str(payload["id"]),
        created_at=created_at,
        lines=tuple(lines),
        name=f"#{payload.get('number') or payload['id']}",
        cancelled=status in RELEASED_STATUSES,
        updated_at=_gmt(payload.get("date_modified_gmt")),
    )


def _inventory(payload: Mapping[str, Any]) -> tuple[InventoryChanged, ...]:
    """What a ``product.updated`` body says of our listings: a variation's body (the store
    sends one when a variation changes) is ``"{parent}/{id}"``, a simple product's its id.
    A variable product is not a listing itself; its variations are."""
    if "id" not in payload:
        return ()
    kind = payload.get("type")
    if kind == "variation" and payload.get("parent_id"):
        external_id = f"{payload['parent_id']}/{payload['id']}"
    elif kind in _NOT_LISTED_TYPES:
        return ()
    else:
        external_id = str(payload["id"])
    return (InventoryChanged(external_id=external_id, quantity=_quantity(payload)),)


class WooCommerceConnector:
    """One WooCommerce store, for one unit of work (see ``channels.connectors``).

    ``credentials``: ``store_url`` (``https://shop.example``), ``consumer_key``,
    ``consumer_secret`` (a REST API key with read/write), ``webhook_secret`` (ours: the
    store signs deliveries with it). ``clock`` gives epoch seconds (the rate-limit end
    time in ``rate_state`` is shared between workers, so it is wall-clock time)."""

    kind: ChannelKind = "woocommerce"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        credentials: Mapping[str, str],
        rate_state: dict[str, Any],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait: float = MAX_WAIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.rate_state = rate_state
        self._sleep = sleep
        # The longest wait for the rate limit before RateLimited is raised instead.
        self.max_wait = max_wait
        self._clock = clock
        self._base = credentials["store_url"].rstrip("/") + API_PATH
        self._auth = (credentials["consumer_key"], credentials["consumer_secret"])
        self._webhook_secret = credentials["webhook_secret"]
        self._currency: str | None = None

    # Plumbing ----------------------------------------------------------------------------

    async def _wait_for_rate_limit(self) -> None:
        retry_at = self.rate_state.get(RETRY_AT)
        if retry_at is None:
            return
        delay = float(retry_at) - self._clock()
        if delay > self.max_wait:
            raise RateLimited("WooCommerce asked us to wait", retry_after=delay)
        if delay > 0:
            await self._sleep(delay)
        self.rate_state.pop(RETRY_AT, None)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        missing_ok: bool = False,
    ) -> httpx.Response:
        """One API call, waiting out a short ``Retry-After``; raises the connector errors
        (``missing_ok``: a 404 is returned, not raised). A 429 means the store did
        nothing, so repeating even a POST is safe."""
        for _ in range(_RATE_LIMIT_ATTEMPTS):
            await self._wait_for_rate_limit()
            try:
                response = await self.http.request(
                    method,
                    self._base + path,
                    params=params,
                    json=body,
                    auth=self._auth,
                    timeout=TIMEOUT,
                )
            except httpx.HTTPError as error:
                raise ChannelUnavailable(f"{method} {path}: {error!r}") from error
            if response.status_code != 429:
                if response.status_code == 404 and missing_ok:
                    return response
                if response.status_code >= 400:
                    raise_for_status(response.status_code, message=_error_message(response))
                return response
            header = response.headers.get("Retry-After") or response.headers.get(
                "RateLimit-Retry-After"
            )
            wait = retry_after_seconds(header, default=1.0)
            self.rate_state[RETRY_AT] = self._clock() + wait
        raise RateLimited(
            f"429 {method} {path}: still limited after {_RATE_LIMIT_ATTEMPTS} tries",
            retry_after=max(0.0, float(self.rate_state[RETRY_AT]) - self._clock()),
        )

    async def _pages(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        page = 1
        while True:
            response = await self._request(
                "GET", path, params={**(params or {}), "per_page": PAGE_SIZE, "page": page}
            )
            yield list(_json(response))
            if page >= int(response.headers.get("X-WP-TotalPages") or 1):
                return
            page += 1

    async def _all(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> list[dict[str, Any]]:
        return [item async for page in self._pages(path, params) for item in page]

    async def _store_currency(self) -> str:
        if self._currency is None:
            response = await self._request("GET", "/data/currencies/current")
            self._currency = str(_json(response)["code"]).lower()
        return self._currency

    # The protocol -------------------------------------------------------------------------

    async def register_webhooks(self, delivery_url: str) -> list[RegisteredWebhook]:
        existing = sorted(await self._all("/webhooks"), key=lambda hook: int(hook["id"]))
        registered = []
        for topic in TOPICS:
            same = [
                hook
                for hook in existing
                if hook.get("topic") == topic and hook.get("delivery_url") == delivery_url
            ]
            if same:
                # The store never shows a webhook's secret, and may have disabled it after
                # failed deliveries: set both, so the one we keep signs with our secret
                # and delivers again.
                response = await self._request(
                    "PUT",
                    f"/webhooks/{same[0]['id']}",
                    body={"status": "active", "secret": self._webhook_secret},
                )
            else:
                response = await self._request(
                    "POST",
                    "/webhooks",
                    body={
                        "name": f"Stallholder {topic}",
                        "topic": topic,
                        "delivery_url": delivery_url,
                        "secret": self._webhook_secret,
                        "status": "active",
                    },
                )
            registered.append(
                RegisteredWebhook(external_id=str(_json(response)["id"]), topic=topic)
            )
        return registered

    async def remove_webhooks(
        self, delivery_url: str, registered: Sequence[RegisteredWebhook]
    ) -> None:
        """``DELETE /webhooks/{id}?force=true`` (webhooks cannot be trashed) for each
        webhook kept at connect and each the store lists for ``delivery_url``; one the
        store no longer has (404 ``woocommerce_rest_shop_webhook_invalid_id``) counts as
        removed."""
        ids = [hook.external_id for hook in registered]
        ids += [
            str(hook["id"])
            for hook in await self._all("/webhooks")
            if hook.get("delivery_url") == delivery_url and str(hook["id"]) not in ids
        ]
        for webhook_id in ids:
            await self._request(
                "DELETE", f"/webhooks/{webhook_id}", params={"force": "true"}, missing_ok=True
            )

    async def listings(self) -> list[Listing]:
        currency = await self._store_currency()
        listings = []
        # By id, oldest first: a product added while we page lands on the last page
        # instead of pushing one we have not read yet onto a page we already read.
        async for page in self._pages("/products", {"orderby": "id", "order": "asc"}):
            for product in page:
                if product.get("type") == "variable":
                    for variation in await self._all(f"/products/{product['id']}/variations"):
                        listings.append(_variation_listing(product, variation, currency))
                elif product.get("type") not in _NOT_LISTED_TYPES:
                    listings.append(
                        Listing(
                            ref=ListingRef(external_id=str(product["id"])),
                            sku=product.get("sku") or None,
                            title=str(product.get("name") or ""),
                            quantity=_quantity(product),
                            price=price_minor_units(product.get("price"), currency),
                            currency=currency,
                        )
                    )
        return listings

    async def read(self, refs: Sequence[ListingRef]) -> dict[str, int | None]:
        products: list[int] = []
        variations: dict[int, list[int]] = {}
        for ref in refs:
            ids = _ids(ref.external_id)
            if ids is None:
                continue
            parent, variation = ids
            if variation is None:
                products.append(parent)
            else:
                variations.setdefault(parent, []).append(variation)
        quantities: dict[str, int | None] = {}
        for chunk in _chunks(products, PAGE_SIZE):
            include = ",".join(str(product_id) for product_id in chunk)
            for product in await self._all("/products", {"include": include}):
                quantities[str(product["id"])] = _quantity(product)
        for parent, variation_ids in variations.items():
            for chunk in _chunks(variation_ids, PAGE_SIZE):
                include = ",".join(str(variation_id) for variation_id in chunk)
                for item in await self._all(f"/products/{parent}/variations", {"include": include}):
                    quantities[f"{parent}/{item['id']}"] = _quantity(item)
        return quantities

    async def push(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        results: list[PushResult | None] = [None] * len(updates)
        # Batch endpoint → [(position in updates, object id)].
        batches: dict[str, list[tuple[int, int]]] = {}
        for position, update in enumerate(updates):
            ids = _ids(update.ref.external_id)
            if ids is None:
                results[position] = PushResult(
                    external_id=update.ref.external_id,
                    outcome="error",
                    error="not a WooCommerce product or variation id",
                )
                continue
            parent, variation = ids
            if variation is None:
                batches.setdefault("/products/batch", []).append((position, parent))
            else:
                batches.setdefault(f"/products/{parent}/variations/batch", []).append(
                    (position, variation)
                )
        for path, items in batches.items():
            for chunk in _chunks(items, BATCH_LIMIT):
                body = {
                    "update": [
                        {
                            "id": object_id,
                            "stock_quantity": updates[position].quantity,
                            "manage_stock": True,
                        }
                        for position, object_id in chunk
                    ]
                }
                response = await self._request("POST", path, body=body)
                replies = list(_json(response).get("update") or [])
                for index, (position, _object_id) in enumerate(chunk):
                    reply = replies[index] if index < len(replies) else None
                    results[position] = _push_result(updates[position], reply)
        return [result for result in results if result is not None]

    async def orders_since(self, cursor: str | None) -> OrdersPage:
        """One page of orders modified since ``cursor``, oldest change first.

        ``modified_after`` is strict and the store's dates have whole seconds, so the
        cursor's own second is asked for again (an order changed later in that second is
        not lost); the orders seen twice are the same orders, which the engine imports
        once by their id. A cursor ``"<time>#<page>"`` carries on within one second when
        more than a page of orders changed in it."""
        if cursor is None:
            now = datetime.fromtimestamp(self._clock(), UTC).replace(microsecond=0)
            since, page = now - timedelta(days=1), 1
        else:
            stamp, _, page_text = cursor.partition("#")
            since = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            page = int(page_text) if page_text else 1
        after = (since - timedelta(seconds=1)).strftime(_GMT_FORMAT)
        response = await self._request(
            "GET",
            "/orders",
            params={
                "modified_after": after,
                "dates_are_gmt": "true",
                "orderby": "modified",
                "order": "asc",
                "per_page": PAGE_SIZE,
                "page": page,
            },
        )
        payloads = list(_json(response))
        more = page < int(response.headers.get("X-WP-TotalPages") or 1)
        orders = tuple(
            order for order in (parse_order(payload) for payload in payloads) if order is not None
        )
        last = max((_gmt(p.get("date_modified_gmt")) for p in payloads), default=None, key=_key)
        if last is None:
            next_cursor = cursor
        elif more and last <= since:
            # A whole page changed within the cursor's second: page on within it.
            next_cursor = f"{since.strftime(_GMT_FORMAT)}#{page + 1}"
        else:
            next_cursor = last.strftime(_GMT_FORMAT)
        return OrdersPage(orders=orders, cursor=next_cursor, more=more)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery | None:
        lowered = {name.lower(): value for name, value in headers.items()}
        signature = lowered.get("x-wc-webhook-signature", "").strip()
        if not signature:
            ping = _PING.fullmatch(body.strip())
            if ping is None:
                return None
            return WebhookDelivery(delivery_id=f"ping:{ping.group(1).decode()}", topic="ping")
        expected = base64.b64encode(
            hmac.new(self._webhook_secret.encode(), body, hashlib.sha256).digest()
        )
        if not hmac.compare_digest(expected, signature.encode()):
            return None
        # The store's delivery id is ``wp_hash(webhook id . current second)``: two
        # deliveries of one webhook in the same second share it. With the body's hash
        # beside it, the same delivery sent twice is still one key, two events are two.
        body_hash = hashlib.sha256(body).hexdigest()
        delivery_id = f"{lowered.get('x-wc-webhook-delivery-id', '')}:{body_hash}"
        topic = lowered.get("x-wc-webhook-topic", "")
        try:
            payload = json.loads(body)
        except ValueError:
            return WebhookDelivery(delivery_id=delivery_id, topic=topic)
        if not isinstance(payload, dict):
            return WebhookDelivery(delivery_id=delivery_id, topic=topic)
        if topic in ("order.created", "order.updated"):
            return WebhookDelivery(delivery_id=delivery_id, topic=topic, order=parse_order(payload))
        if topic == "product.updated":
            return WebhookDelivery(
                delivery_id=delivery_id, topic=topic, inventory=_inventory(payload)
            )
        return WebhookDelivery(delivery_id=delivery_id, topic=topic)


def _key(value: datetime | None) -> datetime:
    return value or datetime.min.replace(tzinfo=UTC)


def _json(response: httpx.Response) -> Any:
    """The reply's JSON. A 2xx that is not JSON is a host's page (a maintenance or
    firewall page served with 200), not the API: worth retrying later."""
    try:
        return response.json()
    except ValueError as error:
        raise ChannelUnavailable(
            f"{response.request.method} {response.request.url.path}: the reply is not JSON"
        ) from error


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "no body"
    if isinstance(body, dict) and "code" in body:
        return f"{body['code']}: {body.get('message', '')}"
    return response.reason_phrase or "no body"


def _variation_listing(
    product: Mapping[str, Any], variation: Mapping[str, Any], currency: str
) -> Listing:
    return Listing(
        ref=ListingRef(
            external_id=f"{product['id']}/{variation['id']}",
            extra={"parent_id": str(product["id"])},
        ),
        sku=variation.get("sku") or None,
        title=_variation_title(product, variation),
        quantity=_quantity(variation),
        price=price_minor_units(variation.get("price"), currency),
        currency=currency,
    )


def _variation_title(product: Mapping[str, Any], variation: Mapping[str, Any]) -> str:
    """The variation's own ``name`` where the store sends one (newer versions), else the
    product's name and the variation's options, as WooCommerce titles a variation."""
    if variation.get("name"):
        return str(variation["name"])
    options = [str(a.get("option")) for a in variation.get("attributes") or () if a.get("option")]
    name = str(product.get("name") or "")
    return f"{name} - {', '.join(options)}" if options else name


def _push_result(update: StockUpdate, reply: Mapping[str, Any] | None) -> PushResult:
    external_id = update.ref.external_id
    if reply is None:
        return PushResult(external_id=external_id, outcome="error", error="no reply for this item")
    error = reply.get("error")
    if error:
        code = str(error.get("code", ""))
        message = f"{code}: {error.get('message', '')}"
        if _is_missing_code(code):
            return PushResult(external_id=external_id, outcome="missing", error=message)
        return PushResult(external_id=external_id, outcome="error", error=message)
    quantity = reply.get("stock_quantity")
    return PushResult(
        external_id=external_id,
        outcome="ok",
        channel_quantity=int(quantity) if quantity is not None else update.quantity,
    )
