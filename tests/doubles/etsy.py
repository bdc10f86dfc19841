"""A test double of Etsy Open API v3, for what the Etsy connector uses.

It follows Etsy's published v3 documentation (developers.etsy.com, read November 2026):

- Every request under ``/v3/`` carries ``x-api-key: <keystring>:<shared_secret>``; the
  keystring alone is refused with 403 (Etsy's text, as reported by integrators after
  2026-02-09: "Shared secret is required in x-api-key header"). Shop data needs
  ``Authorization: Bearer <user_id>.<token>``: the access token Etsy issues already begins
  with the numeric user id and a period.
- ``GET /v3/application/shops/{shop_id}/listings`` (``state``, ``limit`` 1–100, default
  25, ``offset``, ``includes=Inventory``) answers ``{"count", "results"}``.
- ``GET /v3/application/listings/{listing_id}`` (``getListing``; its ``includes`` are
  ``Shop``, ``Images``, ``User``, ``Translations``, ``Videos``, ``Personalization`` and
  ``BuyerPrice``, none of which the double attaches; ``Inventory`` is no longer one of
  them, and a value outside the list is refused with 400, as integrators report for
  ``/listings/batch``) and ``PATCH /v3/application/shops/{shop_id}/listings/{listing_id}``
  (``updateListing``, form-encoded, ``state`` only). A sale that leaves no offering above
  0 makes the listing ``sold_out``.
- ``GET /v3/application/listings/batch/inventory`` (``getListingsInventoryByListingIds``):
  ``listing_ids``, comma-separated (or repeated), 1 to 100 of them, answers
  ``{"count", "results"}`` with each listing, in the order asked, and its ``inventory``;
  when any id does not exist the whole request is a 404 ("All requested listing IDs must
  exist"). One request, counted once against the per-second and per-day limits however
  many ids it names.
- ``GET /v3/application/listings/{listing_id}/inventory`` answers the products with their
  read-only ``product_id``, ``is_deleted``, ``scale_name``, ``offering_id`` and a Money
  ``price`` (``amount``/``divisor``/``currency_code``). ``PUT`` on the same path replaces
  the whole inventory: products left out are deleted, and every product and offering gets
  a new id. The read-only fields, a Money object for ``price``, and unknown fields are
  refused with 400, as integrators found Etsy refuses them (etsy/open-api issue 159; the
  exact text of those refusals is not published: ours names the field). A product
  without ``property_values`` is refused with Etsy's "Property values can't be empty"
  (issue 134), a PUT without products with "Missing Input Parameter: [products]"
  (issue 168), one with no offering above 0 with "One offering must have quantity
  greater than 0" (issues 395 and 560: no API call can zero a listing). With
  ``quantity_on_property`` empty, all offerings share one quantity and must carry the
  same value (the meaning of the array; Etsy's text for it unconfirmed).
- ``GET /v3/application/shops/{shop_id}/receipts`` (``min_last_modified`` — inclusive
  here, Etsy does not say — ``was_paid``, ``limit``, ``offset``, ``sort_on`` ``created`` |
  ``updated`` | ``receipt_id``, ``sort_order`` ``asc`` | ``desc`` and synonyms).
- Rate limits per token: ``per_second`` (QPS) and ``per_day`` (QPD over a rolling 24 h);
  the defaults are Etsy's documented defaults for a new app, 10 and 10,000. Successful
  replies carry ``x-limit-per-second``, ``x-remaining-this-second``, ``x-limit-per-day``,
  ``x-remaining-today``; a spent limit is a 429 without them (as documented), with a
  ``Retry-After`` (whether Etsy sends one is unconfirmed). The second is the wall clock's.
- ``POST /v3/public/oauth/token``: ``authorization_code`` with PKCE (S256 verified) and
  ``refresh_token``; every refresh issues a new refresh token and the old one is refused.
  ``GET /oauth/connect`` stands in for the consent page at www.etsy.com: it redirects to
  ``redirect_uri`` with a code and the state.

Errors are ``{"error": "…"}`` (OAuth errors add ``error_description``, as OAuth does).
Control routes for a demo in another process, outside chaos: ``GET /_double/state``,
``POST /_double/sell``, ``POST /_double/quantity``.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import copy
import hashlib
import itertools
import math
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.doubles.common import Chaos, ChaosMiddleware, serve_app

# Etsy's documented defaults for a new app (rate limits page).
PER_SECOND = 10
PER_DAY = 10_000
DAY_SECONDS = 86_400
ACCESS_TOKEN_SECONDS = 3_600
# Etsy's id for a seller's own ("custom") variation property.
CUSTOM_PROPERTY_ID = 513
MAX_QUANTITY = 999
# Listing ids one getListingsInventoryByListingIds request takes at most.
BATCH_IDS = 100
# What getListing's ``includes`` takes (Etsy's reference, 2026).
_LISTING_INCLUDES = (
    "Shop",
    "Images",
    "User",
    "Translations",
    "Videos",
    "Personalization",
    "BuyerPrice",
)

_PRODUCT_FIELDS = {"sku", "property_values", "offerings"}
_OFFERING_FIELDS = {"price", "quantity", "is_enabled"}
_PROPERTY_FIELDS = {"property_id", "property_name", "scale_id", "value_ids", "values"}
_INVENTORY_FIELDS = {"products", "price_on_property", "quantity_on_property", "sku_on_property"}
_ASCENDING = {"asc", "ascending", "up"}
_DESCENDING = {"desc", "descending", "down"}


class EtsyError(Exception):
    def __init__(self, status: int, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, str] = {"error": message, **extra}
        self.headers: dict[str, str] = {}


@dataclass
class _Listing:
    listing_id: int
    title: str
    # Products as stored: offerings' prices in minor units, ids, no Money objects.
    products: list[dict[str, Any]]
    price_on_property: list[int]
    quantity_on_property: list[int]
    sku_on_property: list[int]
    created: int
    updated: int
    state: str = "active"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    code_challenge: str
    scopes: tuple[str, ...]


@dataclass
class _Usage:
    """One token's requests: this second's count and the last day's times."""

    second: int = -1
    in_second: int = 0
    day: collections.deque[float] = field(default_factory=collections.deque)


class EtsyDouble:
    """Etsy's API for one shop and one seller, served by ``serve_etsy``."""

    def __init__(
        self,
        *,
        keystring: str = "etsy-keystring",
        shared_secret: str = "etsy-secret",
        shop_id: int = 5550001,
        user_id: int = 777001,
        access_token: str = "777001.etsy-token",
        chaos: Chaos | None = None,
        per_second: int = PER_SECOND,
        per_day: int = PER_DAY,
        currency: str = "USD",
    ) -> None:
        self.keystring = keystring
        self.shared_secret = shared_secret
        self.shop_id = shop_id
        self.user_id = user_id
        self.chaos = chaos or Chaos()
        self.per_second = per_second
        self.per_day = per_day
        self.currency = currency
        self.base_url = ""
        # Every API request (under /v3/) as (method, path), refused ones included.
        self.requests: list[tuple[str, str]] = []
        # When each request that counted against a limit was let through (time.time()).
        self.served_at: list[float] = []
        # The ids of each getListingsInventoryByListingIds request served.
        self.inventory_reads: list[list[int]] = []
        self.throttled = 0
        # Sold-out listings activated again (a listing fee on Etsy).
        self.renewals = 0
        self._access_tokens: dict[str, float] = {access_token: float("inf")}
        self._refresh_tokens: set[str] = set()
        self._grants: dict[str, _Grant] = {}
        self._usage: dict[str, _Usage] = {}
        self._listings: dict[int, _Listing] = {}
        self._receipts: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(1_000_001)
        self._lock = threading.Lock()
        api = Starlette(
            routes=[
                Route(
                    "/v3/application/shops/{shop_id:int}/listings",
                    self._get_listings,
                    methods=["GET"],
                ),
                Route(
                    "/v3/application/listings/batch/inventory",
                    self._get_inventories,
                    methods=["GET"],
                ),
                Route(
                    "/v3/application/listings/{listing_id:int}", self._get_listing, methods=["GET"]
                ),
                Route(
                    "/v3/application/shops/{shop_id:int}/listings/{listing_id:int}",
                    self._update_listing,
                    methods=["PATCH"],
                ),
                Route(
                    "/v3/application/listings/{listing_id:int}/inventory",
                    self._inventory,
                    methods=["GET", "PUT"],
                ),
                Route(
                    "/v3/application/shops/{shop_id:int}/receipts",
                    self._get_receipts,
                    methods=["GET"],
                ),
                Route("/v3/public/oauth/token", self._token, methods=["POST"]),
                Route("/oauth/connect", self._connect, methods=["GET"]),
                Route("/_double/state", self._control_state, methods=["GET"]),
                Route("/_double/sell", self._control_sell, methods=["POST"]),
                Route("/_double/quantity", self._control_quantity, methods=["POST"]),
            ]
        )
        self._chaotic: ASGIApp = ChaosMiddleware(
            api, chaos=self.chaos, prefix="/v3/", throttled=self._chaos_throttled
        )
        # After this many more counted requests, every request is a 429 (another app of
        # the seller spends the quota): ``spend_quota_after``.
        self._spent_after: int | None = None
        # API requests being answered now, and the most there ever were at once.
        self.at_once = 0
        self.most_at_once = 0

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await self._counting(scope, receive, send)

        # A plain function, so uvicorn sees an ASGI 3 app.
        self.app: ASGIApp = app

    async def _counting(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Counts the API requests the double answers side by side."""
        counted = scope["type"] == "http" and str(scope.get("path", "")).startswith("/v3/")
        if counted:
            with self._lock:
                self.at_once += 1
                self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            await self._chaotic(scope, receive, send)
        finally:
            if counted:
                with self._lock:
                    self.at_once -= 1

    # ------------------------------------------------------------------ the Python API

    def spend_quota_after(self, requests: int) -> None:
        """Let ``requests`` more API requests through, then answer every one with the
        per-second 429, as when another app of the seller spends the quota."""
        with self._lock:
            self._spent_after = requests

    def add_product(
        self,
        title: str,
        variants: Sequence[tuple[str, int]],
        *,
        price: int = 2500,
        prices: Sequence[int] | None = None,
        enabled: Sequence[bool] | None = None,
        is_quantity_shared: bool = False,
    ) -> list[str]:
        """One active listing. One variant: a product without variations. More: a
        "Glaze" variation property (values "Glaze 1", "Glaze 2", …) with SKU and quantity
        on the property (``is_quantity_shared``: one quantity for all, the first
        variant's), and the price on it too when ``prices`` differ. Returns
        ``"{listing_id}:{sku}"`` for each variant."""
        listing_id = next(self._ids)
        is_varied = len(variants) > 1
        products = []
        for index, (sku, quantity) in enumerate(variants):
            shown = variants[0][1] if is_quantity_shared else quantity
            properties = []
            if is_varied:
                properties = [
                    {
                        "property_id": CUSTOM_PROPERTY_ID,
                        "property_name": "Glaze",
                        "scale_id": None,
                        "scale_name": None,
                        "value_ids": [next(self._ids)],
                        "values": [f"Glaze {index + 1}"],
                    }
                ]
            products.append(
                self._new_product(
                    sku=sku,
                    property_values=properties,
                    price=prices[index] if prices else price,
                    quantity=shown,
                    is_enabled=enabled[index] if enabled else True,
                )
            )
        on_property = [CUSTOM_PROPERTY_ID] if is_varied else []
        now = int(time.time())
        with self._lock:
            self._listings[listing_id] = _Listing(
                listing_id=listing_id,
                title=title,
                products=products,
                price_on_property=on_property if prices and len(set(prices)) > 1 else [],
                quantity_on_property=[] if is_quantity_shared else on_property,
                sku_on_property=on_property,
                created=now,
                updated=now,
            )
        return [f"{listing_id}:{sku}" for sku, _ in variants]

    def quantity_of(self, sku: str) -> int | None:
        """What a buyer can buy of ``sku``: its offering's quantity while the listing is
        active, 0 when it is inactive or sold out; None for an unknown SKU."""
        with self._lock:
            found = self._find(sku)
            if found is None:
                return None
            listing, product = found
            if listing.state != "active":
                return 0
            return int(product["offerings"][0]["quantity"])

    def state_of(self, listing_id: int) -> str:
        """The listing's state: ``active``, ``inactive`` or ``sold_out``."""
        with self._lock:
            return self._listings[listing_id].state

    def set_quantity(self, sku: str, quantity: int) -> None:
        with self._lock:
            self._set_quantity(sku, quantity)

    def sell(
        self, sku: str, quantity: int = 1, *, is_paid: bool = True, at: int | None = None
    ) -> str:
        """A buyer checks out on Etsy: the quantity drops and a receipt appears (paid, or
        "payment processing" when not ``is_paid``), updated at ``at`` (epoch seconds,
        default now). Refuses (ValueError) more than the listing has."""
        with self._lock:
            found = self._find(sku)
            if found is None:
                raise ValueError(f"no product with SKU {sku}")
            listing, product = found
            have = int(product["offerings"][0]["quantity"]) if listing.state == "active" else 0
            if quantity > have:
                raise ValueError(f"{sku}: {quantity} wanted, {have} left")
            self._set_quantity(sku, have - quantity)
            if not any(
                offering["quantity"] > 0
                for each in listing.products
                for offering in each["offerings"]
            ):
                # The last one sold: Etsy marks the listing sold out (relisting is a renewal).
                listing.state = "sold_out"
            moment = int(time.time()) if at is None else at
            receipt_id = next(self._ids)
            self._receipts[receipt_id] = {
                "receipt_id": receipt_id,
                "receipt_type": 0,
                "seller_user_id": self.user_id,
                "buyer_user_id": next(self._ids),
                "name": "Etsy Buyer",
                "status": "paid" if is_paid else "payment processing",
                "is_paid": is_paid,
                "is_shipped": False,
                "create_timestamp": moment,
                "created_timestamp": moment,
                "update_timestamp": moment,
                "updated_timestamp": moment,
                "transactions": [
                    {
                        "transaction_id": next(self._ids),
                        "title": listing.title,
                        "seller_user_id": self.user_id,
                        "receipt_id": receipt_id,
                        "listing_id": listing.listing_id,
                        "product_id": product["product_id"],
                        "sku": sku,
                        "quantity": quantity,
                        "price": self._money(product["offerings"][0]["price"]),
                    }
                ],
            }
            return str(receipt_id)

    def cancel(self, receipt_id: str, *, at: int | None = None) -> None:
        """The seller cancels an order: status "canceled", updated now (or ``at``)."""
        with self._lock:
            receipt = self._receipts[int(receipt_id)]
            moment = int(time.time()) if at is None else at
            receipt["status"] = "canceled"
            receipt["update_timestamp"] = receipt["updated_timestamp"] = moment

    def products_of(self, listing_id: int) -> list[dict[str, Any]]:
        """The listing's products as ``getListingInventory`` shows them."""
        with self._lock:
            products: list[dict[str, Any]] = self._render_inventory(self._listings[listing_id])[
                "products"
            ]
            return products

    def authorize(
        self, *, client_id: str, redirect_uri: str, scopes: Sequence[str], code_challenge: str
    ) -> str:
        """The seller consents at Etsy's connect page: an authorization code."""
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[code] = _Grant(client_id, redirect_uri, code_challenge, tuple(scopes))
        return code

    def revoke(self) -> None:
        """The seller removes the app: every access and refresh token stops working."""
        with self._lock:
            self._access_tokens.clear()
            self._refresh_tokens.clear()

    def close(self) -> None:
        """Nothing to release: the server's lifetime is ``serve_etsy``'s."""

    # ------------------------------------------------------------------ state helpers

    def _new_product(
        self,
        *,
        sku: str,
        property_values: list[dict[str, Any]],
        price: int,
        quantity: int,
        is_enabled: bool,
    ) -> dict[str, Any]:
        return {
            "product_id": next(self._ids),
            "sku": sku,
            "is_deleted": False,
            "property_values": property_values,
            "offerings": [
                {
                    "offering_id": next(self._ids),
                    "quantity": quantity,
                    "is_enabled": is_enabled,
                    "is_deleted": False,
                    "price": price,
                }
            ],
        }

    def _find(self, sku: str) -> tuple[_Listing, dict[str, Any]] | None:
        for listing in self._listings.values():
            for product in listing.products:
                if product["sku"] == sku:
                    return listing, product
        return None

    def _set_quantity(self, sku: str, quantity: int) -> None:
        found = self._find(sku)
        if found is None:
            raise ValueError(f"no product with SKU {sku}")
        listing, product = found
        shared = len(listing.products) > 1 and not listing.quantity_on_property
        for each in listing.products if shared else [product]:
            for offering in each["offerings"]:
                offering["quantity"] = quantity
        listing.updated = int(time.time())

    def _money(self, minor: int) -> dict[str, Any]:
        return {"amount": minor, "divisor": 100, "currency_code": self.currency}

    def _render_inventory(self, listing: _Listing) -> dict[str, Any]:
        products = copy.deepcopy(listing.products)
        for product in products:
            for offering in product["offerings"]:
                offering["price"] = self._money(offering["price"])
        return {
            "products": products,
            "price_on_property": list(listing.price_on_property),
            "quantity_on_property": list(listing.quantity_on_property),
            "sku_on_property": list(listing.sku_on_property),
            "listing": None,
        }

    def _render_listing(self, listing: _Listing, *, with_inventory: bool) -> dict[str, Any]:
        first = listing.products[0]["offerings"][0]
        body: dict[str, Any] = {
            "listing_id": listing.listing_id,
            "user_id": self.user_id,
            "shop_id": self.shop_id,
            "title": listing.title,
            "state": listing.state,
            "quantity": sum(
                offering["quantity"]
                for product in listing.products
                for offering in product["offerings"]
                if offering["is_enabled"]
            ),
            "price": self._money(first["price"]),
            "has_variations": len(listing.products) > 1,
            "created_timestamp": listing.created,
            "updated_timestamp": listing.updated,
        }
        if with_inventory:
            body["inventory"] = self._render_inventory(listing)
        return body

    # ------------------------------------------------------------------ HTTP plumbing

    async def _chaos_throttled(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"error": f"You have exceeded your quota of: {self.per_second} requests per second"},
            status_code=429,
            headers={"retry-after": "1"},
        )
        await response(scope, receive, send)

    def _guard(self, request: Request, *, needs_token: bool = True) -> dict[str, str]:
        """The checks every API request passes, in Etsy's order: the API key, the rate
        limits (per token), the OAuth token. Returns the rate-limit headers."""
        self.requests.append((request.method, request.url.path))
        key = request.headers.get("x-api-key", "")
        keystring, _, secret = key.partition(":")
        if keystring != self.keystring:
            raise EtsyError(403, "Invalid API key")
        if secret != self.shared_secret:
            raise EtsyError(403, "Shared secret is required in x-api-key header")
        authorization = request.headers.get("authorization", "")
        token = authorization.removeprefix("Bearer ").strip()
        headers = self._count(token or key)
        if needs_token:
            expiry = self._access_tokens.get(token)
            if expiry is None or expiry < time.time():
                raise EtsyError(401, "invalid_token", error_description="access token is not valid")
        return headers

    def _count(self, who: str) -> dict[str, str]:
        now = time.time()
        usage = self._usage.setdefault(who, _Usage())
        second = int(now)
        if usage.second != second:
            usage.second, usage.in_second = second, 0
        while usage.day and usage.day[0] <= now - DAY_SECONDS:
            usage.day.popleft()
        spent_elsewhere = self._spent_after is not None and self._spent_after <= 0
        if self._spent_after is not None:
            self._spent_after -= 1
        if usage.in_second >= self.per_second or spent_elsewhere:
            self.throttled += 1
            error = EtsyError(
                429, f"You have exceeded your quota of: {self.per_second} requests per second"
            )
            error.headers = {"retry-after": "1"}
            raise error
        if len(usage.day) >= self.per_day:
            self.throttled += 1
            wait = max(1, math.ceil(usage.day[0] + DAY_SECONDS - now))
            error = EtsyError(
                429, f"You have exceeded your quota of: {self.per_day} requests per day"
            )
            error.headers = {"retry-after": str(wait)}
            raise error
        usage.in_second += 1
        usage.day.append(now)
        self.served_at.append(now)
        return {
            "x-limit-per-second": str(self.per_second),
            "x-remaining-this-second": str(self.per_second - usage.in_second),
            "x-limit-per-day": str(self.per_day),
            "x-remaining-today": str(self.per_day - len(usage.day)),
        }

    @staticmethod
    def _error(error: EtsyError) -> JSONResponse:
        return JSONResponse(error.body, status_code=error.status, headers=error.headers)

    @staticmethod
    def _integer(request: Request, name: str, default: int, *, low: int, high: int) -> int:
        raw = request.query_params.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise EtsyError(400, f"Expected int for {name}") from None
        if not low <= value <= high:
            raise EtsyError(400, f"{name} must be between {low} and {high}")
        return value

    # ------------------------------------------------------------------ endpoints

    async def _get_listings(self, request: Request) -> Response:
        try:
            with self._lock:
                headers = self._guard(request)
                if request.path_params["shop_id"] != self.shop_id:
                    raise EtsyError(404, f"Shop with id {request.path_params['shop_id']} not found")
                limit = self._integer(request, "limit", 25, low=1, high=100)
                offset = self._integer(request, "offset", 0, low=0, high=10**9)
                state = request.query_params.get("state", "active")
                includes = request.query_params.get("includes", "").split(",")
                chosen = [each for each in self._listings.values() if each.state == state]
                page = [
                    self._render_listing(each, with_inventory="Inventory" in includes)
                    for each in chosen[offset : offset + limit]
                ]
        except EtsyError as error:
            return self._error(error)
        return JSONResponse({"count": len(chosen), "results": page}, headers=headers)

    async def _get_listing(self, request: Request) -> Response:
        """``getListing``, any state. The ``includes`` it takes attach nothing here (the
        double has no shops, images or translations to attach)."""
        try:
            with self._lock:
                headers = self._guard(request)
                raw = request.query_params.get("includes", "")
                for name in filter(None, raw.split(",")):
                    if name not in _LISTING_INCLUDES:
                        raise EtsyError(
                            400, f"includes must be one of {', '.join(_LISTING_INCLUDES)}"
                        )
                listing = self._listing(request)
                rendered = self._render_listing(listing, with_inventory=False)
        except EtsyError as error:
            return self._error(error)
        return JSONResponse(rendered, headers=headers)

    async def _get_inventories(self, request: Request) -> Response:
        """``getListingsInventoryByListingIds``: at most 100 listings, all of which must
        exist, each with its inventory; one request against the limits."""
        try:
            with self._lock:
                headers = self._guard(request)
                raw = ",".join(request.query_params.getlist("listing_ids"))
                try:
                    listing_ids = [int(each) for each in raw.split(",") if each.strip()]
                except ValueError:
                    raise EtsyError(400, "Expected an array of integers for listing_ids") from None
                if not listing_ids:
                    raise EtsyError(400, "Missing Input Parameter: [listing_ids]")
                if len(listing_ids) > BATCH_IDS:
                    raise EtsyError(400, f"listing_ids can have at most {BATCH_IDS} ids")
                missing = [each for each in listing_ids if each not in self._listings]
                if missing:
                    raise EtsyError(404, f"Listing {missing[0]} does not exist")
                page = [
                    self._render_listing(self._listings[each], with_inventory=True)
                    for each in listing_ids
                ]
                self.inventory_reads.append(listing_ids)
        except EtsyError as error:
            return self._error(error)
        return JSONResponse({"count": len(page), "results": page}, headers=headers)

    async def _update_listing(self, request: Request) -> Response:
        """``updateListing`` for ``state`` only (``active`` or ``inactive``), form-encoded
        as Etsy takes it. Activating a sold-out listing renews it (a fee on Etsy):
        counted in ``renewals``."""
        form = await request.form()
        try:
            with self._lock:
                headers = self._guard(request)
                if request.path_params["shop_id"] != self.shop_id:
                    raise EtsyError(403, "The listing does not belong to this shop")
                listing = self._listing(request)
                state = str(form.get("state", listing.state))
                if state not in ("active", "inactive"):
                    raise EtsyError(400, "state must be one of active, inactive")
                if state == "active" and listing.state == "sold_out":
                    self.renewals += 1
                listing.state = state
                listing.updated = int(time.time())
                rendered = self._render_listing(listing, with_inventory=False)
        except EtsyError as error:
            return self._error(error)
        return JSONResponse(rendered, headers=headers)

    def _listing(self, request: Request) -> _Listing:
        listing_id = request.path_params["listing_id"]
        listing = self._listings.get(listing_id)
        if listing is None:
            raise EtsyError(404, f"Listing {listing_id} does not exist")
        return listing

    async def _inventory(self, request: Request) -> Response:
        body: Any = None
        if request.method == "PUT":
            try:
                body = await request.json()
            except ValueError:
                body = None
        try:
            with self._lock:
                headers = self._guard(request)
                listing = self._listing(request)
                if request.method == "PUT":
                    self._replace_inventory(listing, body)
                rendered = self._render_inventory(listing)
        except EtsyError as error:
            return self._error(error)
        return JSONResponse(rendered, headers=headers)

    def _replace_inventory(self, listing: _Listing, body: Any) -> None:
        """``updateListingInventory``: validate everything, then replace every product."""
        if not isinstance(body, dict) or not body.get("products"):
            raise EtsyError(400, "Missing Input Parameter: [products]")
        for name in body:
            if name not in _INVENTORY_FIELDS:
                raise EtsyError(400, f"Unexpected parameter: {name}")
        arrays = {}
        for name in ("price_on_property", "quantity_on_property", "sku_on_property"):
            value = body.get(name, [])
            if not isinstance(value, list) or not all(isinstance(each, int) for each in value):
                raise EtsyError(400, f"Expected an array of integers for {name}")
            arrays[name] = value
        products = []
        for index, product in enumerate(body["products"]):
            products.append(self._parse_product(index, product))
        if not any(each["offerings"][0]["quantity"] > 0 for each in products):
            raise EtsyError(400, "One offering must have quantity greater than 0")
        shared = len(products) > 1 and not arrays["quantity_on_property"]
        if shared and len({each["offerings"][0]["quantity"] for each in products}) > 1:
            raise EtsyError(
                400, "Quantity must be the same for all offerings when it does not vary"
            )
        listing.products = products
        listing.price_on_property = arrays["price_on_property"]
        listing.quantity_on_property = arrays["quantity_on_property"]
        listing.sku_on_property = arrays["sku_on_property"]
        listing.updated = int(time.time())

    def _parse_product(self, index: int, product: Any) -> dict[str, Any]:
        where = f"products[{index}]"
        if not isinstance(product, dict):
            raise EtsyError(400, f"Expected an object for {where}")
        for name in product:
            if name not in _PRODUCT_FIELDS:
                raise EtsyError(400, f"Unexpected parameter: {where}.{name}")
        if "property_values" not in product:
            raise EtsyError(400, "Property values can't be empty")
        properties = []
        for position, value in enumerate(product["property_values"]):
            for name in value:
                if name not in _PROPERTY_FIELDS:
                    raise EtsyError(
                        400, f"Unexpected parameter: {where}.property_values[{position}].{name}"
                    )
            properties.append({**value, "scale_name": None})
        offerings = product.get("offerings")
        if not isinstance(offerings, list) or len(offerings) != 1:
            raise EtsyError(400, f"{where} must have exactly one offering")
        offering = offerings[0]
        for name in offering:
            if name not in _OFFERING_FIELDS:
                raise EtsyError(400, f"Unexpected parameter: {where}.offerings[0].{name}")
        price = offering.get("price")
        if isinstance(price, bool) or not isinstance(price, int | float):
            raise EtsyError(400, f"Expected a number for {where}.offerings[0].price")
        try:
            cents = Decimal(str(price)) * 100
        except InvalidOperation:
            raise EtsyError(400, f"Invalid price for {where}") from None
        if cents != cents.to_integral_value() or cents <= 0:
            raise EtsyError(400, f"Invalid price for {where}")
        quantity = offering.get("quantity")
        if not isinstance(quantity, int) or not 0 <= quantity <= MAX_QUANTITY:
            raise EtsyError(400, f"Quantity must be between 0 and {MAX_QUANTITY}")
        is_enabled = offering.get("is_enabled", True)
        if not isinstance(is_enabled, bool):
            raise EtsyError(400, f"Expected a boolean for {where}.offerings[0].is_enabled")
        return self._new_product(
            sku=str(product.get("sku") or ""),
            property_values=properties,
            price=int(cents),
            quantity=quantity,
            is_enabled=is_enabled,
        )

    async def _get_receipts(self, request: Request) -> Response:
        try:
            with self._lock:
                headers = self._guard(request)
                if request.path_params["shop_id"] != self.shop_id:
                    raise EtsyError(404, f"Shop with id {request.path_params['shop_id']} not found")
                limit = self._integer(request, "limit", 25, low=1, high=100)
                offset = self._integer(request, "offset", 0, low=0, high=10**9)
                since = self._integer(request, "min_last_modified", 0, low=0, high=2**40)
                was_paid = request.query_params.get("was_paid")
                sort_on = request.query_params.get("sort_on", "created")
                sort_order = request.query_params.get("sort_order", "desc")
                if sort_on not in ("created", "updated", "receipt_id"):
                    raise EtsyError(400, "sort_on must be one of created, updated, receipt_id")
                if sort_order not in _ASCENDING | _DESCENDING:
                    raise EtsyError(400, "sort_order must be one of asc, desc")
                chosen = [
                    each
                    for each in self._receipts.values()
                    if each["updated_timestamp"] >= since
                    and (was_paid is None or each["is_paid"] == (was_paid == "true"))
                ]
                field_name = {
                    "created": "created_timestamp",
                    "updated": "updated_timestamp",
                    "receipt_id": "receipt_id",
                }[sort_on]
                chosen.sort(
                    key=lambda each: (each[field_name], each["receipt_id"]),
                    reverse=sort_order in _DESCENDING,
                )
                page = copy.deepcopy(chosen[offset : offset + limit])
        except EtsyError as error:
            return self._error(error)
        return JSONResponse({"count": len(chosen), "results": page}, headers=headers)

    async def _connect(self, request: Request) -> Response:
        params = request.query_params
        if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256":
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if params.get("client_id") != self.keystring:
            return JSONResponse({"error": "invalid_client"}, status_code=400)
        code = self.authorize(
            client_id=params["client_id"],
            redirect_uri=params.get("redirect_uri", ""),
            scopes=params.get("scope", "").split(" "),
            code_challenge=params.get("code_challenge", ""),
        )
        query = urlencode({"code": code, "state": params.get("state", "")})
        return RedirectResponse(f"{params.get('redirect_uri', '')}?{query}", status_code=302)

    async def _token(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path))
        form = await request.form()
        fields = {name: str(value) for name, value in form.items()}
        try:
            with self._lock:
                tokens = self._issue(fields)
        except EtsyError as error:
            return self._error(error)
        return JSONResponse(tokens)

    def _issue(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("client_id") != self.keystring:
            raise EtsyError(401, "invalid_client", error_description="client_id is not valid")
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            grant = self._grants.pop(form.get("code", ""), None)
            if grant is None or grant.client_id != form["client_id"]:
                raise EtsyError(400, "invalid_grant", error_description="code is not valid")
            if grant.redirect_uri != form.get("redirect_uri"):
                raise EtsyError(400, "invalid_grant", error_description="redirect_uri mismatch")
            digest = hashlib.sha256(form.get("code_verifier", "").encode("ascii")).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
            if not secrets.compare_digest(challenge, grant.code_challenge):
                raise EtsyError(
                    400, "invalid_grant", error_description="code_verifier is not valid"
                )
        elif grant_type == "refresh_token":
            refresh_token = form.get("refresh_token", "")
            if refresh_token not in self._refresh_tokens:
                raise EtsyError(
                    400, "invalid_grant", error_description="refresh_token is not valid"
                )
            self._refresh_tokens.discard(refresh_token)
        else:
            raise EtsyError(400, "unsupported_grant_type")
        access_token = f"{self.user_id}.{secrets.token_urlsafe(32)}"
        refresh_token = f"{self.user_id}.{secrets.token_urlsafe(32)}"
        self._access_tokens[access_token] = time.time() + ACCESS_TOKEN_SECONDS
        self._refresh_tokens.add(refresh_token)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "refresh_token": refresh_token,
        }

    # ------------------------------------------------------------------ control routes

    async def _control_state(self, request: Request) -> Response:
        with self._lock:
            state = [
                {
                    "sku": product["sku"],
                    "title": listing.title,
                    "quantity": (
                        product["offerings"][0]["quantity"] if listing.state == "active" else 0
                    ),
                }
                for listing in self._listings.values()
                for product in listing.products
            ]
        return JSONResponse(state)

    async def _control_sell(self, request: Request) -> Response:
        body = await request.json()
        try:
            receipt_id = self.sell(str(body["sku"]), int(body.get("quantity", 1)))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"receipt_id": receipt_id})

    async def _control_quantity(self, request: Request) -> Response:
        body = await request.json()
        try:
            self.set_quantity(str(body["sku"]), int(body["quantity"]))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse({"sku": body["sku"], "quantity": int(body["quantity"])})


@contextlib.contextmanager
def serve_etsy(double: EtsyDouble, *, port: int = 0) -> Iterator[str]:
    """Serve ``double`` on 127.0.0.1 (``port`` 0: a free one); sets ``double.base_url``."""
    with serve_app(double.app, name="Etsy", port=port) as base_url:
        double.base_url = base_url
        yield base_url
