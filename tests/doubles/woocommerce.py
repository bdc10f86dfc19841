"""A test double of a WooCommerce store's REST API v3, for what the WooCommerce connector
uses, following the WooCommerce source (``WC_REST_CRUD_Controller``, ``WC_REST_Controller``,
the webhooks controller and ``WC_Webhook``) and the REST API docs:

- HTTP Basic with the consumer key and secret. A known key with the wrong secret is
  ``woocommerce_rest_authentication_error`` "Consumer secret is invalid."; an unknown (or
  revoked) key leaves the request anonymous, and the endpoint's permission check answers
  401 (``woocommerce_rest_cannot_view`` "Sorry, you cannot list resources.",
  ``..._cannot_create``, ``..._cannot_edit``, ``..._cannot_batch``). The real store takes
  Basic auth only over HTTPS; the double serves plain HTTP on 127.0.0.1 and takes it there.
- Errors are ``{code, message, data: {status}}``; an unknown route is ``rest_no_route``.
- Lists take ``per_page`` (1 to 100, default 10) and ``page`` and answer ``X-WP-Total``,
  ``X-WP-TotalPages`` and ``Link`` (``prev``/``next``); products take ``include`` and
  ``sku``; orders take ``modified_after`` (strictly after, to the second; GMT with
  ``dates_are_gmt``), ``orderby`` (date, id, include, title, slug, modified) and ``order``.
- ``/products/batch`` and ``/products/{id}/variations/batch`` take at most 100 items in all
  (more: 413 ``woocommerce_rest_request_entity_too_large`` for the whole request) and report
  an item's failure inside the 200 as ``{id, error: {code, message, data}}``
  (``woocommerce_rest_product_invalid_id`` for an unknown product; an external product
  refuses stock management with ``product_external_invalid_manage_stock``). No
  compare-and-set.
- Webhooks: create (then an unsigned ping ``webhook_id=<id>`` posted to the delivery URL
  before the reply; only a 200 clears ``pending_delivery``, and while it is pending every
  save of the active webhook pings again), list, read, update, delete (``force=true``).
  Deliveries are sent once each, not retried, with ``X-WC-Webhook-Source``, ``-Topic``,
  ``-Resource``, ``-Event``, ``-Signature`` (base64 HMAC-SHA256 of the raw body with the
  webhook's secret), ``-ID`` and ``-Delivery-ID``. A reply from 200 to 302 resets the
  webhook's failure count; any other counts a failure, and a failure when the count is
  already above 5 disables the webhook (``WC_Webhook::failed_delivery``): the seventh
  failure in a row. The delivery id is ``wp_hash(webhook id . current second)``, so two
  deliveries of one webhook within one second share it, as on the real store.
- Bodies are encoded as ``wp_json_encode`` does (no spaces, ``/`` escaped as ``\\/``).

A 429 is not WooCommerce's own (it has no rate limit by default): the double answers one
when ``throttle`` asks for it or ``Chaos.throttle`` draws it, shaped as the Store API's
``rate_limit_exceeded`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from stallholder.kit.money import exponent
from tests.doubles.common import Chaos, ChaosMiddleware, Delivery, WebhookSender, serve_app

API = "/wp-json/wc/v3"
WC_VERSION = "9.4.2"
USER_AGENT = f"WooCommerce/{WC_VERSION} Hookshot (WordPress/6.7.1)"
BATCH_LIMIT = 100
# ``woocommerce_max_webhook_delivery_failures``.
MAX_DELIVERY_FAILURES = 5
WEBHOOK_TOPICS = frozenset(
    f"{resource}.{event}"
    for resource in ("coupon", "customer", "order", "product")
    for event in ("created", "updated", "deleted", "restored")
)
WEBHOOK_STATUSES = ("active", "paused", "disabled")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?")
_FORMAT = "%Y-%m-%dT%H:%M:%S"
# The salt of ``wp_hash`` on this imaginary site.
_WP_SALT = b"double-salt"


class WooError(Exception):
    """A reply in WooCommerce's error shape."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, "data": {"status": status}}
        self.headers = headers or {}


@dataclass
class _Product:
    id: int
    name: str
    type: str  # simple, variable, variation, external
    sku: str
    price: int
    manage_stock: bool
    stock_quantity: int | None
    date_created: datetime
    date_modified: datetime
    parent_id: int = 0
    variations: list[int] = field(default_factory=list)
    option: str = ""


@dataclass
class _Order:
    id: int
    status: str
    currency: str
    date_created: datetime
    date_modified: datetime
    line_items: list[dict[str, Any]]


@dataclass
class _Webhook:
    id: int
    name: str
    status: str
    topic: str
    delivery_url: str
    secret: str
    date_created: datetime
    date_modified: datetime | None = None
    failure_count: int = 0
    pending_delivery: bool = True


class _HookshotSender(WebhookSender):
    """WooCommerce's deliveries: one attempt each (the store does not retry), success
    being a reply from 200 to 302; every outcome is reported to the store, which counts
    the webhook's failures."""

    def __init__(self, chaos: Chaos, on_result: Callable[[Delivery, int | None], None]) -> None:
        self._on_result = on_result
        super().__init__(chaos, attempts=1)

    def _deliver(self, client: httpx.Client, delivery: Delivery) -> None:
        status: int | None
        try:
            status = client.post(
                delivery.url, content=delivery.body, headers=dict(delivery.headers)
            ).status_code
        except httpx.HTTPError:
            status = None
        if status is not None and 200 <= status < 303:
            self.sent += 1
        else:
            self.failed.append(delivery)
        self._on_result(delivery, status)


def wp_json_encode(payload: Any) -> bytes:
    """JSON as PHP's ``json_encode`` writes it: compact, ASCII, slashes escaped."""
    return json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()


def sign(body: bytes, secret: str) -> str:
    """``X-WC-Webhook-Signature``: base64 of the HMAC-SHA256 of the body."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def _date(value: datetime | None) -> str | None:
    return None if value is None else value.strftime(_FORMAT)


class WooCommerceDouble:
    """The store's state, its ASGI app and the test controls (the public methods).
    The store's time zone is UTC, so local and ``_gmt`` dates are the same."""

    def __init__(
        self,
        *,
        consumer_key: str = "ck_test",
        consumer_secret: str = "cs_test",
        chaos: Chaos | None = None,
        currency: str = "USD",
    ) -> None:
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.chaos = chaos or Chaos()
        self.currency = currency.upper()
        self.base_url = ""
        self.is_revoked = False
        # Every API request that reached the store: (method, path).
        self.requests: list[tuple[str, str]] = []
        # Every batch request: (path, number of items).
        self.batches: list[tuple[str, int]] = []
        # Every ping: (webhook id, status of the reply or None when unreachable).
        self.pings: list[tuple[int, int | None]] = []
        # The store's clock (tests may replace it); whole seconds, as WordPress stores them.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC).replace(microsecond=0)
        self.products: dict[int, _Product] = {}
        self.orders: dict[int, _Order] = {}
        self.hooks: dict[int, _Webhook] = {}
        # Products, variations and orders share WordPress's post ids.
        self._post_ids = itertools.count(100)
        self._webhook_ids = itertools.count(1)
        self._line_ids = itertools.count(1)
        self._throttles: list[int] = []
        self._lock = threading.RLock()
        self.webhooks: WebhookSender = _HookshotSender(self.chaos, self._delivered)
        routes = [
            Route(f"{API}/products", self._api(self._list_products, "list"), methods=["GET"]),
            Route(
                f"{API}/products/batch",
                self._api(self._batch_products, "batch"),
                methods=["POST", "PUT", "PATCH"],
            ),
            Route(
                f"{API}/products/{{id:int}}",
                self._api(self._get_product, "view"),
                methods=["GET"],
            ),
            Route(
                f"{API}/products/{{id:int}}/variations",
                self._api(self._list_variations, "list"),
                methods=["GET"],
            ),
            Route(
                f"{API}/products/{{id:int}}/variations/batch",
                self._api(self._batch_variations, "batch"),
                methods=["POST", "PUT", "PATCH"],
            ),
            Route(f"{API}/orders", self._api(self._list_orders, "list"), methods=["GET"]),
            Route(f"{API}/orders/{{id:int}}", self._api(self._get_order, "view"), methods=["GET"]),
            Route(f"{API}/webhooks", self._api(self._list_webhooks, "list"), methods=["GET"]),
            Route(f"{API}/webhooks", self._api(self._create_webhook, "create"), methods=["POST"]),
            Route(
                f"{API}/webhooks/{{id:int}}",
                self._api(self._get_webhook, "view"),
                methods=["GET"],
            ),
            Route(
                f"{API}/webhooks/{{id:int}}",
                self._api(self._update_webhook, "edit"),
                methods=["POST", "PUT", "PATCH"],
            ),
            Route(
                f"{API}/webhooks/{{id:int}}",
                self._api(self._delete_webhook, "delete"),
                methods=["DELETE"],
            ),
            Route(
                f"{API}/data/currencies/current",
                self._api(self._current_currency, "view"),
                methods=["GET"],
            ),
            Route("/wp-json/{path:path}", self._no_route, methods=["GET", "POST", "PUT", "DELETE"]),
            Route("/_double/state", self._control_state, methods=["GET"]),
            Route("/_double/sell", self._control_sell, methods=["POST"]),
            Route("/_double/quantity", self._control_quantity, methods=["POST"]),
        ]
        self.app: ASGIApp = ChaosMiddleware(
            Starlette(routes=routes),
            chaos=self.chaos,
            prefix="/wp-json/",
            throttled=self._throttled,
        )

    # Test controls -----------------------------------------------------------------------

    def add_product(
        self, title: str, variants: Sequence[tuple[str, int]], *, price: int = 2500
    ) -> list[str]:
        """One simple product for one (sku, quantity), a variable product with one
        variation each for more; returns the listings' external ids."""
        if not variants:
            raise ValueError("a product needs at least one variant")
        with self._lock:
            now = self.clock()
            if len(variants) == 1:
                [(sku, quantity)] = variants
                product = self._new_product(title, "simple", sku, price, quantity, now)
                return [str(product.id)]
            parent = self._new_product(title, "variable", "", price, None, now)
            parent.manage_stock = False
            ids = []
            for sku, quantity in variants:
                variation = self._new_product(
                    f"{title} - {sku}", "variation", sku, price, quantity, now
                )
                variation.parent_id = parent.id
                variation.option = sku
                parent.variations.append(variation.id)
                ids.append(f"{parent.id}/{variation.id}")
            return ids

    def add_external_product(self, title: str, *, price: int = 2500) -> str:
        """An external (affiliate) product: sold elsewhere, it cannot manage stock."""
        with self._lock:
            product = self._new_product(title, "external", "", price, None, self.clock())
            product.manage_stock = False
            return str(product.id)

    def delete_product(self, product_id: int) -> None:
        """The shop manager deletes a product (or a variation) for good."""
        with self._lock:
            product = self.products.pop(product_id)
            for variation_id in product.variations:
                self.products.pop(variation_id, None)
            if product.parent_id and product.parent_id in self.products:
                self.products[product.parent_id].variations.remove(product_id)

    def quantity_of(self, sku: str) -> int | None:
        with self._lock:
            return self._by_sku(sku).stock_quantity

    def set_quantity(self, sku: str, quantity: int) -> None:
        """A shop manager edits the stock: ``product.updated`` is sent."""
        with self._lock:
            product = self._by_sku(sku)
            product.manage_stock = True
            product.stock_quantity = quantity
            product.date_modified = self.clock()
            self._emit("product.updated", self._product_json(product))

    def sell(self, sku: str, quantity: int = 1, *, status: str = "processing") -> str:
        """A checkout on the store. A paid order (processing, on-hold, completed) takes
        the stock, refused (``ValueError``) beyond what is there; the order is created
        (``order.created``) and a change of stock saves the product (``product.updated``).
        Returns the order id."""
        with self._lock:
            product = self._by_sku(sku)
            takes_stock = status in ("processing", "on-hold", "completed")
            if takes_stock and product.manage_stock:
                available = product.stock_quantity or 0
                if quantity > available:
                    raise ValueError(f"only {available} of {sku} in stock, not {quantity}")
            now = self.clock()
            major = Decimal(product.price * quantity).scaleb(-exponent(self.currency))
            order = _Order(
                id=next(self._post_ids),
                status=status,
                currency=self.currency,
                date_created=now,
                date_modified=now,
                line_items=[
                    {
                        "id": next(self._line_ids),
                        "name": product.name,
                        "product_id": product.parent_id or product.id,
                        "variation_id": product.id if product.parent_id else 0,
                        "quantity": quantity,
                        "tax_class": "",
                        "subtotal": f"{major:f}",
                        "total": f"{major:f}",
                        "sku": product.sku,
                        "price": float(Decimal(product.price).scaleb(-exponent(self.currency))),
                    }
                ],
            )
            self.orders[order.id] = order
            self._emit("order.created", self._order_json(order))
            if takes_stock and product.manage_stock:
                product.stock_quantity = (product.stock_quantity or 0) - quantity
                product.date_modified = now
                self._emit("product.updated", self._product_json(product))
            return str(order.id)

    def set_order_status(self, order_id: str, status: str) -> None:
        """The shop manager changes an order's status (``order.updated``); a cancelled
        order gives its stock back (``product.updated``)."""
        with self._lock:
            order = self.orders[int(order_id)]
            order.status = status
            order.date_modified = self.clock()
            self._emit("order.updated", self._order_json(order))
            if status == "cancelled":
                for line in order.line_items:
                    product = self.products[line["variation_id"] or line["product_id"]]
                    if product.manage_stock:
                        product.stock_quantity = (product.stock_quantity or 0) + line["quantity"]
                        product.date_modified = order.date_modified
                        self._emit("product.updated", self._product_json(product))

    def throttle(self, retry_after: int, *, count: int = 1) -> None:
        """The next ``count`` API requests get a 429 with ``Retry-After: retry_after``
        (a host's or proxy's limit; WooCommerce has none of its own)."""
        with self._lock:
            self._throttles.extend([retry_after] * count)

    def revoke(self) -> None:
        """The shop manager revokes the API key: the key is unknown from now on."""
        self.is_revoked = True

    def webhook(self, webhook_id: int) -> _Webhook:
        with self._lock:
            return copy.copy(self.hooks[webhook_id])

    def close(self) -> None:
        self.webhooks.close()

    # State ------------------------------------------------------------------------------

    def _new_product(
        self, name: str, kind: str, sku: str, price: int, quantity: int | None, now: datetime
    ) -> _Product:
        product = _Product(
            id=next(self._post_ids),
            name=name,
            type=kind,
            sku=sku,
            price=price,
            manage_stock=quantity is not None,
            stock_quantity=quantity,
            date_created=now,
            date_modified=now,
        )
        self.products[product.id] = product
        return product

    def _by_sku(self, sku: str) -> _Product:
        for product in self.products.values():
            if product.sku == sku:
                return product
        raise KeyError(sku)

    def _price(self, minor: int) -> str:
        return f"{Decimal(minor).scaleb(-exponent(self.currency)):f}"

    def _product_json(self, product: _Product) -> dict[str, Any]:
        if product.manage_stock:
            stock_status = "instock" if (product.stock_quantity or 0) > 0 else "outofstock"
        else:
            stock_status = "instock"
        body: dict[str, Any] = {
            "id": product.id,
            "name": product.name,
            "slug": re.sub(r"[^a-z0-9]+", "-", product.name.lower()).strip("-"),
            "permalink": f"{self.base_url}/?p={product.id}",
            "date_created": _date(product.date_created),
            "date_created_gmt": _date(product.date_created),
            "date_modified": _date(product.date_modified),
            "date_modified_gmt": _date(product.date_modified),
            "type": product.type,
            "status": "publish",
            "sku": product.sku,
            "price": self._price(product.price),
            "regular_price": self._price(product.price),
            "sale_price": "",
            "manage_stock": product.manage_stock,
            "stock_quantity": product.stock_quantity,
            "stock_status": stock_status,
            "backorders": "no",
            "parent_id": product.parent_id,
            "meta_data": [],
        }
        if product.type == "variation":
            body["attributes"] = [{"id": 0, "name": "Variant", "option": product.option}]
        else:
            body["variations"] = list(product.variations)
            body["attributes"] = (
                [
                    {
                        "id": 0,
                        "name": "Variant",
                        "variation": True,
                        "options": [self.products[v].option for v in product.variations],
                    }
                ]
                if product.variations
                else []
            )
        return body

    def _variation_json(self, variation: _Product) -> dict[str, Any]:
        """A variation as ``/products/{id}/variations`` shows it (the variations
        controller): no ``name``, ``type`` or ``parent_id``, unlike the same variation
        read through ``/products/{id}`` or sent in a ``product.updated`` webhook."""
        body = self._product_json(variation)
        for key in ("name", "slug", "type", "parent_id"):
            del body[key]
        body["menu_order"] = 0
        return body

    def _order_json(self, order: _Order) -> dict[str, Any]:
        total = sum(Decimal(line["total"]) for line in order.line_items)
        paid = order.status in ("processing", "on-hold", "completed")
        return {
            "id": order.id,
            "parent_id": 0,
            "number": str(order.id),
            "order_key": f"wc_order_{hashlib.sha256(str(order.id).encode()).hexdigest()[:13]}",
            "created_via": "checkout",
            "version": WC_VERSION,
            "status": order.status,
            "currency": order.currency,
            "date_created": _date(order.date_created),
            "date_created_gmt": _date(order.date_created),
            "date_modified": _date(order.date_modified),
            "date_modified_gmt": _date(order.date_modified),
            "date_paid": _date(order.date_created) if paid else None,
            "date_paid_gmt": _date(order.date_created) if paid else None,
            "total": f"{total:f}",
            "customer_id": 0,
            "payment_method": "stripe",
            "line_items": copy.deepcopy(order.line_items),
            "meta_data": [],
        }

    def _webhook_json(self, hook: _Webhook) -> dict[str, Any]:
        resource, _, event = hook.topic.partition(".")
        return {
            "id": hook.id,
            "name": hook.name,
            "status": hook.status,
            "topic": hook.topic,
            "resource": resource,
            "event": event,
            "hooks": [],
            "delivery_url": hook.delivery_url,
            "date_created": _date(hook.date_created),
            "date_created_gmt": _date(hook.date_created),
            "date_modified": _date(hook.date_modified),
            "date_modified_gmt": _date(hook.date_modified),
            "_links": {
                "self": [{"href": f"{self.base_url}{API}/webhooks/{hook.id}"}],
                "collection": [{"href": f"{self.base_url}{API}/webhooks"}],
            },
        }

    # Webhooks ---------------------------------------------------------------------------

    def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        """Queue a delivery of ``payload`` to every active webhook of ``topic`` (called
        with the lock held)."""
        resource, _, event = topic.partition(".")
        body = wp_json_encode(payload)
        second = int(self.clock().timestamp())
        for hook in self.hooks.values():
            if hook.status != "active" or hook.topic != topic:
                continue
            delivery_id = hmac.new(_WP_SALT, f"{hook.id}{second}".encode(), "md5").hexdigest()
            self.webhooks.send(
                Delivery(
                    url=hook.delivery_url,
                    headers={
                        "Content-Type": "application/json",
                        "User-Agent": USER_AGENT,
                        "X-WC-Webhook-Source": f"{self.base_url}/",
                        "X-WC-Webhook-Topic": topic,
                        "X-WC-Webhook-Resource": resource,
                        "X-WC-Webhook-Event": event,
                        "X-WC-Webhook-Signature": sign(body, hook.secret),
                        "X-WC-Webhook-ID": str(hook.id),
                        "X-WC-Webhook-Delivery-ID": delivery_id,
                    },
                    body=body,
                )
            )

    def _delivered(self, delivery: Delivery, status: int | None) -> None:
        """``WC_Webhook::log_delivery``: count failures, disable after too many."""
        with self._lock:
            hook = self.hooks.get(int(delivery.headers["X-WC-Webhook-ID"]))
            if hook is None:
                return
            if status is not None and 200 <= status < 303:
                hook.failure_count = 0
            elif hook.failure_count > MAX_DELIVERY_FAILURES:
                hook.status = "disabled"
            else:
                hook.failure_count += 1
            should_ping = self._saved(hook, is_url_changed=False)
        if should_ping:
            self._ping(hook.id)

    def _saved(self, hook: _Webhook, *, is_url_changed: bool) -> bool:
        """``WC_Webhook_Data_Store::update``: whether saving ``hook`` pings it."""
        hook.date_modified = self.clock()
        return hook.status == "active" and (is_url_changed or hook.pending_delivery)

    def _ping(self, webhook_id: int) -> None:
        """``WC_Webhook::deliver_ping``: unsigned, form-encoded; only a 200 counts."""
        with self._lock:
            hook = self.hooks.get(webhook_id)
            if hook is None:
                return
            url = hook.delivery_url
        status: int | None
        try:
            with httpx.Client(timeout=5.0) as client:
                status = client.post(
                    url,
                    content=f"webhook_id={webhook_id}".encode(),
                    headers={
                        "User-Agent": USER_AGENT,
                        "Content-Type": "application/x-www-form-urlencoded",
                    },
                ).status_code
        except httpx.HTTPError:
            status = None
        with self._lock:
            self.pings.append((webhook_id, status))
            if status == 200 and webhook_id in self.hooks:
                self.hooks[webhook_id].pending_delivery = False

    # The API ----------------------------------------------------------------------------

    _PERMISSION_ERRORS = {
        "list": ("woocommerce_rest_cannot_view", "Sorry, you cannot list resources."),
        "view": ("woocommerce_rest_cannot_view", "Sorry, you cannot view this resource."),
        "create": (
            "woocommerce_rest_cannot_create",
            "Sorry, you are not allowed to create resources.",
        ),
        "edit": (
            "woocommerce_rest_cannot_edit",
            "Sorry, you are not allowed to edit this resource.",
        ),
        "delete": (
            "woocommerce_rest_cannot_delete",
            "Sorry, you are not allowed to delete this resource.",
        ),
        "batch": (
            "woocommerce_rest_cannot_batch",
            "Sorry, you are not allowed to batch manipulate this resource.",
        ),
    }

    def _authenticate(self, request: Request, action: str) -> None:
        key, secret = "", ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            try:
                key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                key, secret = "", ""
        is_known_key = bool(key) and key == self.consumer_key and not self.is_revoked
        if is_known_key and secret and not hmac.compare_digest(secret, self.consumer_secret):
            raise WooError(
                401,
                "woocommerce_rest_authentication_error",
                "Consumer secret is invalid.",
                headers={
                    "WWW-Authenticate": 'Basic realm="WooCommerce API. Use a consumer key in '
                    'the username field and a consumer secret in the password field."'
                },
            )
        if not (is_known_key and secret):
            code, message = self._PERMISSION_ERRORS[action]
            raise WooError(401, code, message)

    def _api(self, handler: Callable[..., Any], action: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            with self._lock:
                self.requests.append((request.method, request.url.path))
                retry_after = self._throttles.pop(0) if self._throttles else None
            if retry_after is not None:
                return _rate_limited(retry_after)
            try:
                self._authenticate(request, action)
                body: Any = None
                if request.method in ("POST", "PUT", "PATCH"):
                    raw = await request.body()
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        raise WooError(
                            400, "rest_invalid_json", "Invalid JSON body passed."
                        ) from None
                result = handler(request, body)
                if asyncio.iscoroutine(result):
                    result = await result
            except WooError as error:
                return JSONResponse(error.body, status_code=error.status, headers=error.headers)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return endpoint

    async def _no_route(self, request: Request) -> Response:
        with self._lock:
            self.requests.append((request.method, request.url.path))
        return JSONResponse(
            {
                "code": "rest_no_route",
                "message": "No route was found matching the URL and request method.",
                "data": {"status": 404},
            },
            status_code=404,
        )

    async def _throttled(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _rate_limited(1)(scope, receive, send)

    def _paged(self, request: Request, items: list[dict[str, Any]], path: str) -> Response:
        per_page = _integer_param(request, "per_page", default=10, minimum=1, maximum=100)
        page = _integer_param(request, "page", default=1, minimum=1, maximum=None)
        total = len(items)
        pages = math.ceil(total / per_page)
        chunk = items[(page - 1) * per_page : page * per_page]
        query = dict(request.query_params)
        links = []
        if page > 1:
            links.append(
                _link(self.base_url + path, {**query, "page": min(page - 1, pages)}, "prev")
            )
        if pages > page:
            links.append(_link(self.base_url + path, {**query, "page": page + 1}, "next"))
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        if links:
            headers["Link"] = ", ".join(links)
        return JSONResponse(chunk, headers=headers)

    def _list_products(self, request: Request, body: Any) -> Response:
        include = _id_list(request, "include")
        skus = {s.strip() for s in request.query_params.get("sku", "").split(",") if s.strip()}
        with self._lock:
            # A ``sku`` search looks at variations too (``post_type`` product and
            # product_variation); a plain list only at products.
            found = [
                p
                for p in self.products.values()
                if (p.type != "variation" or skus)
                and (not include or p.id in include)
                and (not skus or p.sku in skus)
            ]
            key, is_descending = _product_order(request)
            found.sort(key=key, reverse=is_descending)
            items = [self._product_json(p) for p in found]
        return self._paged(request, items, f"{API}/products")

    def _get_product(self, request: Request, body: Any) -> dict[str, Any]:
        with self._lock:
            product = self.products.get(request.path_params["id"])
            if product is None:
                raise WooError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            return self._product_json(product)

    def _list_variations(self, request: Request, body: Any) -> Response:
        parent_id = request.path_params["id"]
        include = _id_list(request, "include")
        with self._lock:
            parent = self.products.get(parent_id)
            found = [
                self.products[v]
                for v in (parent.variations if parent else [])
                if not include or v in include
            ]
            items = [self._variation_json(p) for p in found]
        return self._paged(request, items, f"{API}/products/{parent_id}/variations")

    def _batch_products(self, request: Request, body: Any) -> dict[str, Any]:
        return self._batch(request, body, parent_id=None)

    def _batch_variations(self, request: Request, body: Any) -> dict[str, Any]:
        return self._batch(request, body, parent_id=request.path_params["id"])

    def _batch(self, request: Request, body: Any, *, parent_id: int | None) -> dict[str, Any]:
        """``WC_REST_Controller::batch_items`` for stock updates."""
        if not isinstance(body, dict):
            body = {}
        total = sum(len(body.get(kind) or []) for kind in ("create", "update", "delete"))
        if total > BATCH_LIMIT:
            raise WooError(
                413,
                "woocommerce_rest_request_entity_too_large",
                f"Unable to accept more than {BATCH_LIMIT} items for this request.",
            )
        with self._lock:
            self.batches.append((request.url.path, total))
            replies = [self._update_item(item, parent_id) for item in body.get("update") or []]
        result: dict[str, Any] = {}
        if replies:
            result["update"] = replies
        return result

    def _update_item(self, item: Any, parent_id: int | None) -> dict[str, Any]:
        item_id = item.get("id") if isinstance(item, dict) else None
        product = self.products.get(item_id) if isinstance(item_id, int) else None
        if parent_id is None:
            code = "woocommerce_rest_product_invalid_id"
            is_valid = product is not None
        else:
            code = "woocommerce_rest_product_variation_invalid_id"
            is_valid = product is not None and product.parent_id == parent_id
        if product is None or not is_valid:
            return _item_error(item_id, code, "Invalid ID.", 400)
        manage_stock = item.get("manage_stock", product.manage_stock)
        if product.type == "external" and manage_stock:
            return _item_error(
                item_id,
                "product_external_invalid_manage_stock",
                "External products cannot be stock managed.",
                400,
            )
        changed = False
        if "manage_stock" in item:
            product.manage_stock = bool(manage_stock)
            changed = True
        if "stock_quantity" in item and product.manage_stock:
            product.stock_quantity = int(item["stock_quantity"])
            changed = True
        if changed:
            product.date_modified = self.clock()
            self._emit("product.updated", self._product_json(product))
        if parent_id is None:
            return self._product_json(product)
        return self._variation_json(product)

    def _list_orders(self, request: Request, body: Any) -> Response:
        orderby, is_descending = _order_param(request)
        modified_after = _date_param(request, "modified_after")
        after = _date_param(request, "after")
        with self._lock:
            found = [
                o
                for o in self.orders.values()
                if (modified_after is None or o.date_modified > modified_after)
                and (after is None or o.date_created > after)
            ]

            def sort_key(o: _Order) -> tuple[datetime | int, int]:
                if orderby == "modified":
                    return (o.date_modified, o.id)
                if orderby == "id":
                    return (o.id, o.id)
                return (o.date_created, o.id)

            found.sort(key=sort_key, reverse=is_descending)
            items = [self._order_json(o) for o in found]
        return self._paged(request, items, f"{API}/orders")

    def _get_order(self, request: Request, body: Any) -> dict[str, Any]:
        with self._lock:
            order = self.orders.get(request.path_params["id"])
            if order is None:
                raise WooError(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
            return self._order_json(order)

    def _list_webhooks(self, request: Request, body: Any) -> Response:
        status = request.query_params.get("status", "all")
        if status not in ("all", *WEBHOOK_STATUSES):
            raise _invalid_param(
                "status", "status is not one of all, active, paused, and disabled."
            )
        with self._lock:
            found = [h for h in self.hooks.values() if status in ("all", h.status)]
            found.sort(key=lambda h: (h.date_created, h.id), reverse=True)
            items = [self._webhook_json(h) for h in found]
        return self._paged(request, items, f"{API}/webhooks")

    async def _create_webhook(self, request: Request, body: Any) -> Response:
        if not isinstance(body, dict):
            body = {}
        topic = str(body.get("topic") or "").lower()
        if topic not in WEBHOOK_TOPICS:
            raise WooError(
                400,
                "woocommerce_rest_shop_webhook_invalid_topic",
                "Webhook topic is required and must be valid.",
            )
        url = str(body.get("delivery_url") or "")
        if not re.match(r"https?://", url):
            raise WooError(
                400,
                "woocommerce_rest_shop_webhook_invalid_delivery_url",
                "Webhook delivery URL must be a valid URL starting with http:// or https://.",
            )
        status = str(body.get("status") or "active")
        if status not in WEBHOOK_STATUSES:
            raise _invalid_param("status", "status is not one of active, paused, and disabled.")
        with self._lock:
            now = self.clock()
            hook = _Webhook(
                id=next(self._webhook_ids),
                name=str(body.get("name") or f"Webhook created on {now:%b %d, %Y @ %I:%M %p}"),
                status=status,
                topic=topic,
                delivery_url=url,
                secret=str(body.get("secret") or secrets.token_urlsafe(38)),
                date_created=now,
            )
            self.hooks[hook.id] = hook
            reply = self._webhook_json(hook)
        # The store pings before it answers, and answers 201 whatever the ping got.
        await asyncio.to_thread(self._ping, hook.id)
        return JSONResponse(
            reply, status_code=201, headers={"Location": f"{self.base_url}{API}/webhooks/{hook.id}"}
        )

    def _get_webhook(self, request: Request, body: Any) -> dict[str, Any]:
        with self._lock:
            hook = self.hooks.get(request.path_params["id"])
            if hook is None:
                raise WooError(400, "woocommerce_rest_shop_webhook_invalid_id", "ID is invalid.")
            return self._webhook_json(hook)

    async def _update_webhook(self, request: Request, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            body = {}
        with self._lock:
            hook = self.hooks.get(request.path_params["id"])
            if hook is None:
                raise WooError(400, "woocommerce_rest_shop_webhook_invalid_id", "ID is invalid.")
            topic = str(body.get("topic") or "").lower()
            if topic and topic not in WEBHOOK_TOPICS:
                raise WooError(
                    400,
                    "woocommerce_rest_shop_webhook_invalid_topic",
                    "Webhook topic must be valid.",
                )
            url = str(body.get("delivery_url") or "")
            if url and not re.match(r"https?://", url):
                raise WooError(
                    400,
                    "woocommerce_rest_shop_webhook_invalid_delivery_url",
                    "Webhook delivery URL must be a valid URL starting with http:// or https://.",
                )
            status = str(body.get("status") or "").lower()
            if status and status not in WEBHOOK_STATUSES:
                raise WooError(
                    400,
                    "woocommerce_rest_shop_webhook_invalid_status",
                    "Webhook status must be valid.",
                )
            is_url_changed = bool(url) and url != hook.delivery_url
            if topic:
                hook.topic = topic
            if url:
                hook.delivery_url = url
            if body.get("secret"):
                hook.secret = str(body["secret"])
            if status:
                hook.status = status
            if body.get("name"):
                hook.name = str(body["name"])
            should_ping = self._saved(hook, is_url_changed=is_url_changed)
            reply = self._webhook_json(hook)
        if should_ping:
            await asyncio.to_thread(self._ping, hook.id)
        return reply

    def _delete_webhook(self, request: Request, body: Any) -> dict[str, Any]:
        if request.query_params.get("force") not in ("true", "1"):
            raise WooError(
                501, "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing."
            )
        with self._lock:
            hook = self.hooks.pop(request.path_params["id"], None)
            if hook is None:
                raise WooError(404, "woocommerce_rest_shop_webhook_invalid_id", "Invalid ID.")
            return self._webhook_json(hook)

    def _current_currency(self, request: Request, body: Any) -> dict[str, Any]:
        return {"code": self.currency, "name": self.currency, "symbol": self.currency}

    # Control routes (no chaos) ------------------------------------------------------------

    async def _control_state(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse(
                {
                    "products": [self._product_json(p) for p in self.products.values()],
                    "orders": [self._order_json(o) for o in self.orders.values()],
                    "webhooks": [
                        {**self._webhook_json(h), "failure_count": h.failure_count}
                        for h in self.hooks.values()
                    ],
                }
            )

    async def _control_sell(self, request: Request) -> Response:
        body = await request.json()
        try:
            order_id = self.sell(str(body["sku"]), int(body.get("quantity", 1)))
        except (KeyError, ValueError) as error:
            return JSONResponse({"error": str(error)}, status_code=409)
        return JSONResponse({"order_id": order_id})

    async def _control_quantity(self, request: Request) -> Response:
        body = await request.json()
        try:
            self.set_quantity(str(body["sku"]), int(body["quantity"]))
        except KeyError as error:
            return JSONResponse({"error": str(error)}, status_code=404)
        return JSONResponse({"sku": body["sku"], "quantity": int(body["quantity"])})


def _order_param(request: Request) -> tuple[str, bool]:
    """``orderby`` and whether ``order`` is descending (the default)."""
    orderby = request.query_params.get("orderby", "date")
    if orderby not in ("date", "id", "include", "title", "slug", "modified"):
        raise _invalid_param(
            "orderby", "orderby is not one of date, id, include, title, slug, and modified."
        )
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise _invalid_param("order", "order is not one of asc and desc.")
    return orderby, order == "desc"


def _product_order(request: Request) -> tuple[Callable[[_Product], tuple[Any, int]], bool]:
    """The sort key of ``orderby`` and whether to reverse it; ties go by id in the same
    direction (WooCommerce adds ``ID`` to the order)."""
    orderby, is_descending = _order_param(request)

    def key(product: _Product) -> tuple[Any, int]:
        if orderby in ("title", "slug"):
            return (product.name, product.id)
        if orderby == "modified":
            return (product.date_modified, product.id)
        if orderby == "date":
            return (product.date_created, product.id)
        return (product.id, product.id)

    return key, is_descending


def _rate_limited(retry_after: int) -> Response:
    return JSONResponse(
        {
            "code": "rate_limit_exceeded",
            "message": f"Too many requests. Please wait {retry_after} seconds before trying again.",
            "data": {"status": 429},
        },
        status_code=429,
        headers={"Retry-After": str(retry_after), "RateLimit-Retry-After": str(retry_after)},
    )


def _item_error(item_id: Any, code: str, message: str, status: int) -> dict[str, Any]:
    return {"id": item_id, "error": {"code": code, "message": message, "data": {"status": status}}}


def _invalid_param(name: str, reason: str) -> WooError:
    error = WooError(400, "rest_invalid_param", f"Invalid parameter(s): {name}")
    error.body["data"] = {"status": 400, "params": {name: reason}}
    return error


def _integer_param(
    request: Request, name: str, *, default: int, minimum: int, maximum: int | None
) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not re.fullmatch(r"-?\d+", text):
        raise _invalid_param(name, f"{name} is not of type integer.")
    value = int(text)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} (inclusive) and {maximum} (inclusive)"
        raise _invalid_param(
            name, f"{name} must be {bound}." if maximum else f"{name} must be >= {minimum}."
        )
    return value


def _date_param(request: Request, name: str) -> datetime | None:
    """A date-time parameter, as UTC (the store's time zone is UTC, so ``dates_are_gmt``
    does not change the comparison)."""
    text = request.query_params.get(name)
    if text is None:
        return None
    if not _DATE_TIME.fullmatch(text):
        raise _invalid_param(name, "Invalid date.")
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("t", "T"))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _id_list(request: Request, name: str) -> set[int]:
    """``wp_parse_id_list``: comma- or space-separated ids, also ``name[]=``."""
    values = request.query_params.getlist(name) + request.query_params.getlist(f"{name}[]")
    return {int(part) for value in values for part in re.split(r"[,\s]+", value) if part.isdigit()}


def _link(base: str, query: dict[str, Any], rel: str) -> str:
    return f'<{base}?{urlencode(query)}>; rel="{rel}"'


@contextlib.contextmanager
def serve_woocommerce(double: WooCommerceDouble, *, port: int = 0) -> Iterator[str]:
    """Serve the double on 127.0.0.1 (``port`` 0: a free one); sets ``double.base_url``."""
    with serve_app(double.app, name="WooCommerce", port=port) as url:
        double.base_url = url
        yield url
