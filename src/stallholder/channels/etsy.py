"""The Etsy channel: a ``Connector`` over Etsy Open API v3, and its OAuth 2.0 helpers.

Etsy facts this module relies on (developers.etsy.com, read November 2026):

- Every request sends ``x-api-key: <keystring>:<shared_secret>`` (the keystring alone
  is refused since 2026-02-09) and ``Authorization: Bearer <access token>``, where the
  access token Etsy issues is ``"<user_id>.<token>"``; a token stored without its user
  id is prefixed with ``user_id``.
- A listing's stock is its inventory: products (one per variation), each with one
  offering (``quantity``, ``is_enabled``, a Money ``price``). ``updateListingInventory``
  replaces the whole inventory and gives every product and offering a new id, so a
  listing is named by SKU: ``"{listing_id}:{sku}"``, or for a product without a SKU
  ``"{listing_id}:#{values}"`` where ``values`` are its property values joined by
  ``"/"`` (``"123:#Blue/Large"``; ``"123:#"`` for a listing without variations).
- Rate limits per token: per second and per rolling day, reported on successful
  replies in ``x-limit-per-second``, ``x-remaining-this-second``, ``x-limit-per-day``,
  ``x-remaining-today``; a spent limit is a 429 without those headers.
- Etsy sends no order or stock webhooks to most apps: receipts are polled.
- ``getListingsInventoryByListingIds`` (``GET /v3/application/listings/batch/inventory``,
  ``listing_ids`` comma-separated, at most 100, scope ``listings_r``) answers
  ``{"count", "results"}``: each listing (``state`` included) with its ``inventory``, in
  one request. If any id does not exist the whole request is a 404. ``getListing`` no
  longer takes ``includes=Inventory`` (its ``includes`` are ``Shop``, ``Images``,
  ``User``, ``Translations``, ``Videos``, ``Personalization``, ``BuyerPrice``), nor does
  ``getListingsByListingIds``; ``getListingsByShop`` still does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from stallholder.channels.connectors import (
    MAX_WAIT,
    TIMEOUT,
    ChannelKind,
    ChannelOrder,
    ChannelRefused,
    ChannelUnavailable,
    Listing,
    ListingRef,
    OrderLine,
    OrdersPage,
    PushOutcome,
    PushResult,
    RateLimited,
    RegisteredWebhook,
    StockUpdate,
    Tokens,
    WebhookDelivery,
    raise_for_status,
)

API_BASE = "https://api.etsy.com"
CONNECT_URL = "https://www.etsy.com/oauth/connect"
# Read listings and their inventory, write the inventory, read receipts; shops_r to find
# the seller's shop after connecting.
SCOPES = ("listings_r", "listings_w", "transactions_r", "shops_r")
PAGE_SIZE = 100
# Listing ids one getListingsInventoryByListingIds request takes at most.
BATCH_IDS = 100
# Etsy counts the day over a rolling 24 h of buckets (two-hour blocks in its older
# documentation); when today's quota is spent we cannot see when the oldest bucket
# leaves, so we try again after this long and the next reply's x-remaining-today says
# how much came back.
DAY_RETRY_SECONDS = 15 * 60.0
# A 429 without Retry-After: Etsy's per-second window is over within a second.
DEFAULT_RETRY_SECONDS = 1.0
# Listing writes of one push sent side by side (each still waits for the limiter, which
# counts the requests in flight against the quota the last reply showed): one after
# another, a push of n listings took n round trips, and at 10 requests a second the
# round trips, not the quota, bounded a loaded machine.
PARALLEL_WRITES = 4
# The fields of a GET inventory that a PUT takes (everything else is read-only).
_PROPERTY_FIELDS = ("property_id", "property_name", "scale_id", "value_ids", "values")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def user_id_of(access_token: str) -> str:
    """The numeric user id an Etsy access token begins with (``"12345678.abc"``)."""
    prefix, _, _ = access_token.partition(".")
    if not prefix.isdigit():
        raise ValueError("an Etsy access token begins with the numeric user id and a period")
    return prefix


def external_id_of(listing_id: int | str, product: Mapping[str, Any]) -> str:
    """A product's stable name: by SKU, else by its property values (module docstring)."""
    sku = product.get("sku") or ""
    if sku:
        return f"{listing_id}:{sku}"
    values = "/".join(
        str(value) for prop in product.get("property_values", []) for value in prop["values"]
    )
    return f"{listing_id}:#{values}"


def _offering(product: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The product's offering on sale: the enabled one, else the first."""
    offerings = [each for each in product.get("offerings", []) if not each.get("is_deleted")]
    enabled = [each for each in offerings if each.get("is_enabled")]
    chosen = enabled or offerings
    return chosen[0] if chosen else None


def _minor_units(money: Mapping[str, Any]) -> int:
    """A Money object (``amount`` over ``divisor``) in cents-like minor units."""
    amount = Decimal(int(money["amount"])) * 100 / Decimal(int(money["divisor"]))
    return int(amount.to_integral_value())


def _price_float(money: Mapping[str, Any]) -> float:
    """What the inventory PUT takes for a price: a float of major units. Exact for the
    amounts Etsy holds (whole cents), and only ever built from the GET's own Money."""
    return float(Decimal(int(money["amount"])) / Decimal(int(money["divisor"])))


def writable_inventory(inventory: Mapping[str, Any]) -> dict[str, Any]:
    """A GET inventory as a PUT takes it: every product with its SKU, property values
    (without ``scale_name``) and offerings (``price`` as a float, ``quantity``,
    ``is_enabled``), without ``product_id``, ``offering_id``, ``is_deleted``, and the
    three ``*_on_property`` arrays."""
    products = []
    for product in inventory["products"]:
        if product.get("is_deleted"):
            continue
        products.append(
            {
                "sku": product.get("sku") or "",
                "property_values": [
                    {name: prop[name] for name in _PROPERTY_FIELDS if name in prop}
                    for prop in product.get("property_values", [])
                ],
                "offerings": [
                    {
                        "price": _price_float(offering["price"]),
                        "quantity": int(offering["quantity"]),
                        "is_enabled": bool(offering["is_enabled"]),
                    }
                    for offering in product.get("offerings", [])
                    if not offering.get("is_deleted")
                ],
            }
        )
    return {
        "products": products,
        "price_on_property": list(inventory.get("price_on_property") or []),
        "quantity_on_property": list(inventory.get("quantity_on_property") or []),
        "sku_on_property": list(inventory.get("sku_on_property") or []),
    }


class EtsyConnector:
    """One Etsy shop's API for one unit of work.

    ``credentials``: ``api_base`` (default ``https://api.etsy.com``), ``keystring``,
    ``shared_secret``, ``shop_id``, ``user_id`` and ``access_token``.

    ``rate_state`` keeps the last reply's limits: ``second_limit``,
    ``second_remaining``, ``day_limit``, ``day_remaining`` and ``seen_at`` (epoch
    seconds of that reply, from ``now``). Requests are sent one at a time, so each one
    knows what the previous reply left: with this second spent it sleeps until a second
    after that reply (always within ``MAX_WAIT``); with today's quota spent it raises
    ``RateLimited`` (``DAY_RETRY_SECONDS`` after that reply) without sending.
    ``rate_state["deactivated"]`` lists the listings this connector deactivated because
    they had nothing left (``push``): the engine must store ``rate_state`` after every
    call, failed ones included, for them to be reactivated.
    """

    kind: ChannelKind = "etsy"

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        credentials: Mapping[str, str],
        rate_state: dict[str, Any],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_wait: float = MAX_WAIT,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.http = http
        self.rate_state = rate_state
        self.sleep = sleep
        # The longest wait for the rate limit before RateLimited is raised instead.
        self.max_wait = max_wait
        self.now = now
        # Requests sent and not yet answered: the last reply's remaining quota may not
        # count them yet, so the limiter subtracts them from it.
        self.in_flight = 0
        self.api_base = credentials.get("api_base", API_BASE).rstrip("/")
        self.shop_id = credentials["shop_id"]
        token = credentials["access_token"]
        if not token.partition(".")[0].isdigit():
            token = f"{credentials['user_id']}.{token}"
        self.headers = {
            "x-api-key": f"{credentials['keystring']}:{credentials['shared_secret']}",
            "authorization": f"Bearer {token}",
        }

    # ------------------------------------------------------------------ the protocol

    async def register_webhooks(self, delivery_url: str) -> list[RegisteredWebhook]:
        """Etsy has no order or stock webhooks for this app: nothing to register."""
        return []

    async def remove_webhooks(
        self, delivery_url: str, registered: Sequence[RegisteredWebhook]
    ) -> None:
        """Nothing was registered: nothing to remove."""

    async def listings(self) -> list[Listing]:
        """Every product of the shop's active listings, inventories read with the
        listings (``includes=Inventory``), 100 listings a request."""
        found: list[Listing] = []
        offset = 0
        while True:
            page = await self._json(
                "GET",
                f"/v3/application/shops/{self.shop_id}/listings",
                params={
                    "state": "active",
                    "limit": PAGE_SIZE,
                    "offset": offset,
                    "includes": "Inventory",
                },
            )
            for listing in page["results"]:
                inventory = listing.get("inventory") or await self._inventory(listing["listing_id"])
                found.extend(self._listings_of(listing["listing_id"], listing["title"], inventory))
            offset += len(page["results"])
            if not page["results"] or offset >= int(page["count"]):
                return found

    async def read(self, refs: Sequence[ListingRef]) -> dict[str, int | None]:
        """The listings' inventories in one request per 100 listings
        (``getListingsInventoryByListingIds``), however many of their products are asked.
        A listing that is not active shows 0 for every product: nobody can buy it,
        whatever its inventory says."""
        quantities: dict[str, int | None] = {}
        wanted_by_listing = self._by_listing(refs)
        found = await self._listings_with_inventory(list(wanted_by_listing))
        for listing_id, wanted in wanted_by_listing.items():
            listing = found.get(listing_id)
            if listing is None:
                continue
            is_active = listing["state"] == "active"
            shown = {
                external_id_of(listing_id, product): _quantity(product) if is_active else 0
                for product in listing["inventory"]["products"]
                if not product.get("is_deleted")
            }
            for ref in wanted:
                if ref.external_id in shown:
                    quantities[ref.external_id] = shown[ref.external_id]
        return quantities

    async def push(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        """A read-modify-write per listing: the pushed listings are read with their
        inventories in one request per 100 (``getListingsInventoryByListingIds``), then
        for each listing the quantities of the pushed products' offerings are changed and
        every product is PUT back (``writable_inventory``), one request per listing. No
        variation is dropped and nothing but those quantities changes. Etsy has no
        compare-and-set, so ``expected`` is not used. A listing Etsy refuses (a 4xx)
        makes its updates ``error`` and the others go on (a refused read, all of them);
        a rate limit, revoked credentials or an outage stop the push (what was written
        stays written: a push only sets values, so sending it again is harmless).

        A listing whose variations share one quantity (``quantity_on_property`` empty,
        several products) has a single stock count: every offering gets the pushed
        value. When one push names several of its products with different values, the
        smallest is written (never show more than the scarcest variation has); the
        updates asking for more get ``error`` with the value written.

        Etsy refuses an inventory in which no offering has a quantity above 0 ("One
        offering must have quantity greater than 0"; etsy/open-api issues 395 and 560:
        no API call can zero a listing). So a push that would leave every product at 0
        deactivates the listing instead (``updateListing`` ``state=inactive``; its
        inventory keeps its old numbers, which nobody can buy) and notes the listing in
        ``rate_state["deactivated"]``. The next push above 0 to it writes the pushed
        quantities, 0 for every other product (they were all 0 when it was
        deactivated), and activates it again. A listing the seller deactivated, or one
        that sold out on Etsy (``sold_out``: relisting it costs the seller a listing
        fee), is not reactivated: such pushes are ``error``.
        """
        results: dict[int, PushResult] = {}
        by_listing: dict[str, list[tuple[int, StockUpdate]]] = {}
        for index, update in enumerate(updates):
            listing_id = update.ref.extra.get("listing_id") or update.ref.external_id.split(":")[0]
            by_listing.setdefault(listing_id, []).append((index, update))
        # One read for every listing of the push, then one write per listing. Etsy has no
        # compare-and-set, so a sale on Etsy between the read and a listing's write is
        # written over; a batch widens that window from one request to at most a batch
        # of writes (PUSH_BATCH: about a second). The sale is still imported (and flagged
        # oversold if need be) and reconciliation repairs the quantity.
        try:
            read = await self._listings_with_inventory(list(by_listing))
        except ChannelRefused as refused:
            return [_result(update, "error", error=str(refused)) for update in updates]
        # The writes go PARALLEL_WRITES at a time. A rate limit, revoked credentials or
        # an outage in one stops the others (cancelled; a write already sent stays
        # written) and is raised as it would be alone.
        lanes = asyncio.Semaphore(PARALLEL_WRITES)

        async def write(
            listing_id: str, items: list[tuple[int, StockUpdate]]
        ) -> list[tuple[int, PushResult]]:
            async with lanes:
                try:
                    return await self._push_listing(listing_id, read.get(listing_id), items)
                except ChannelRefused as refused:
                    return [
                        (index, _result(update, "error", error=str(refused)))
                        for index, update in items
                    ]

        try:
            async with asyncio.TaskGroup() as group:
                writes = [
                    group.create_task(write(listing_id, items))
                    for listing_id, items in by_listing.items()
                ]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        for done in writes:
            for index, result in done.result():
                results[index] = result
        return [results[index] for index in range(len(updates))]

    async def orders_since(self, cursor: str | None) -> OrdersPage:
        """Paid receipts changed since ``cursor``, oldest change first, one page of 100.

        ``cursor`` is the last receipt's ``updated_timestamp`` (epoch seconds, a
        string); None reads the last day. ``min_last_modified`` is inclusive, so the
        receipts changed in the cursor's own second come again (the engine deduplicates
        by receipt id). Only when a whole page shares that second does the cursor carry
        an offset as well (``"{timestamp}:{offset}"``), so a busy second cannot stall the
        poll."""
        if cursor is None:
            since, skip = int(self.now().timestamp()) - 86_400, 0
        else:
            stamp, _, offset = cursor.partition(":")
            since, skip = int(stamp), int(offset or 0)
        page = await self._json(
            "GET",
            f"/v3/application/shops/{self.shop_id}/receipts",
            params={
                "min_last_modified": since,
                "was_paid": "true",
                "sort_on": "updated",
                "sort_order": "asc",
                "limit": PAGE_SIZE,
                "offset": skip,
            },
        )
        receipts = page["results"]
        orders = tuple(self._order(receipt) for receipt in receipts)
        more = skip + len(receipts) < int(page["count"])
        if not receipts:
            return OrdersPage(orders=(), cursor=cursor, more=False)
        last = int(receipts[-1]["updated_timestamp"])
        if last == since and len(receipts) == PAGE_SIZE:
            return OrdersPage(orders=orders, cursor=f"{since}:{skip + len(receipts)}", more=more)
        return OrdersPage(orders=orders, cursor=str(last), more=more)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery | None:
        """Etsy sends this app no webhooks: nothing is ever a valid delivery."""
        return None

    # ------------------------------------------------------------------ pushing

    async def _push_listing(
        self,
        listing_id: str,
        listing: Mapping[str, Any] | None,
        items: list[tuple[int, StockUpdate]],
    ) -> list[tuple[int, PushResult]]:
        if listing is None:
            return [(index, _result(update, "missing")) for index, update in items]
        body = writable_inventory(listing["inventory"])
        names = [external_id_of(listing_id, product) for product in body["products"]]
        known = [(index, update) for index, update in items if update.ref.external_id in names]
        results = [
            (index, _result(update, "missing"))
            for index, update in items
            if update.ref.external_id not in names
        ]
        if not known:
            return results
        state = listing["state"]
        deactivated: list[str] = self.rate_state.setdefault("deactivated", [])
        if state == "active" and listing_id in deactivated:
            deactivated.remove(listing_id)  # noted, but the deactivation never happened
        is_ours = state == "inactive" and listing_id in deactivated
        if state != "active" and not is_ours:
            why = f"the listing is {state} on Etsy; the seller must relist it"
            return results + _outcomes(known, dict.fromkeys(names, 0), why)
        if is_ours:
            _set_quantities(body, names, {})
        wanted = {update.ref.external_id: update.quantity for _, update in known}
        written = _set_quantities(body, names, wanted)
        if not any(
            offering["quantity"] > 0
            for product in body["products"]
            for offering in product["offerings"]
        ):
            if state == "active":
                # Noted first: a reply lost after Etsy applied the change must still
                # leave the listing ours to reactivate.
                if listing_id not in deactivated:
                    deactivated.append(listing_id)
                await self._set_state(listing_id, "inactive")
            shown: dict[str, int | None] = dict.fromkeys(names, 0)
        else:
            saved = await self._json(
                "PUT", f"/v3/application/listings/{listing_id}/inventory", json=body
            )
            if is_ours:
                await self._set_state(listing_id, "active")
                deactivated.remove(listing_id)
            shown = {
                external_id_of(listing_id, product): _quantity(product)
                for product in saved["products"]
            }
        why = f"the listing's variations share one quantity; {written} written for all"
        return results + _outcomes(known, shown, why)

    async def _set_state(self, listing_id: str, state: str) -> None:
        """``updateListing`` (a PATCH of the listing's fields, form-encoded)."""
        response = await self._send(
            "PATCH",
            f"/v3/application/shops/{self.shop_id}/listings/{listing_id}",
            data={"state": state},
        )
        self._body(response)

    # ------------------------------------------------------------------ reading

    def _listings_of(
        self, listing_id: int, title: str, inventory: Mapping[str, Any]
    ) -> list[Listing]:
        found = []
        for product in inventory["products"]:
            if product.get("is_deleted"):
                continue
            offering = _offering(product)
            price = offering["price"] if offering else None
            found.append(
                Listing(
                    ref=ListingRef(
                        external_id=external_id_of(listing_id, product),
                        extra={"listing_id": str(listing_id)},
                    ),
                    sku=product.get("sku") or None,
                    title=title,
                    quantity=_quantity(product),
                    price=_minor_units(price) if price else None,
                    currency=str(price["currency_code"]) if price else None,
                )
            )
        return found

    @staticmethod
    def _by_listing(refs: Sequence[ListingRef]) -> dict[str, list[ListingRef]]:
        grouped: dict[str, list[ListingRef]] = {}
        for ref in refs:
            listing_id = ref.extra.get("listing_id") or ref.external_id.split(":")[0]
            grouped.setdefault(listing_id, []).append(ref)
        return grouped

    async def _inventory(self, listing_id: int | str) -> dict[str, Any]:
        return await self._json("GET", f"/v3/application/listings/{listing_id}/inventory")

    async def _listings_with_inventory(self, listing_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each listing (its ``state``) with its ``inventory``, by listing id, 100 a
        request (``getListingsInventoryByListingIds``); listings that are gone are
        absent. Etsy answers the whole request 404 when any id is gone, so such a batch
        is read again one listing at a time (``_listing_or_none``) to tell which."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(listing_ids), BATCH_IDS):
            chunk = listing_ids[start : start + BATCH_IDS]
            response = await self._send(
                "GET",
                "/v3/application/listings/batch/inventory",
                params={"listing_ids": ",".join(chunk)},
            )
            if response.status_code == 404:
                for listing_id in chunk:
                    listing = await self._listing_or_none(listing_id)
                    if listing is not None:
                        found[listing_id] = listing
                continue
            for listing in self._body(response)["results"]:
                if "state" not in listing or not listing.get("inventory"):
                    # Not the shape the reference documents: read this one alone.
                    fallback = await self._listing_or_none(str(listing["listing_id"]))
                    if fallback is None:
                        continue
                    listing = fallback
                found[str(listing["listing_id"])] = listing
        return found

    async def _listing_or_none(self, listing_id: str) -> dict[str, Any] | None:
        """The listing (``getListing``, for its ``state``) with its ``inventory``
        (``getListingInventory``): two requests; None when it is gone (404)."""
        response = await self._send("GET", f"/v3/application/listings/{listing_id}")
        if response.status_code == 404:
            return None
        listing = self._body(response)
        listing["inventory"] = await self._inventory(listing_id)
        return listing

    def _order(self, receipt: Mapping[str, Any]) -> ChannelOrder:
        lines = tuple(
            OrderLine(
                sku=transaction.get("sku") or None,
                quantity=int(transaction["quantity"]),
                external_id=(
                    f"{transaction['listing_id']}:{transaction['sku']}"
                    if transaction.get("sku")
                    else None
                ),
            )
            for transaction in receipt.get("transactions", [])
        )
        return ChannelOrder(
            external_id=str(receipt["receipt_id"]),
            created_at=datetime.fromtimestamp(int(receipt["created_timestamp"]), UTC),
            updated_at=datetime.fromtimestamp(int(receipt["updated_timestamp"]), UTC),
            lines=lines,
            name=f"Etsy receipt {receipt['receipt_id']}",
            cancelled=str(receipt.get("status", "")).lower() == "canceled",
        )

    # ------------------------------------------------------------------ HTTP and limits

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
    ) -> dict[str, Any]:
        return self._body(await self._send(method, path, params=params, json=json))

    def _body(self, response: httpx.Response) -> dict[str, Any]:
        """The reply's JSON, or the error its status maps to (``raise_for_status``)."""
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error", response.text))
            except ValueError:
                message = response.text or response.reason_phrase
            raise_for_status(
                response.status_code,
                message=message,
                retry_after=response.headers.get("retry-after"),
            )
        body: dict[str, Any] = response.json()
        return body

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request after the limiter's leave; 429s and failures become errors."""
        await self._wait_for_quota()
        # Counted from the limiter's leave (no await between them) to the reply.
        self.in_flight += 1
        try:
            response = await self.http.request(
                method,
                f"{self.api_base}{path}",
                params=dict(params or {}),
                json=json,
                data=data,
                headers=self.headers,
                timeout=TIMEOUT,
            )
        except httpx.HTTPError as error:
            raise ChannelUnavailable(f"Etsy: {type(error).__name__}: {error}") from error
        finally:
            self.in_flight -= 1
        if response.status_code == 429:
            raise_for_status(429, message=_error_text(response), retry_after=_retry_after(response))
        if response.status_code < 400:
            self._remember_limits(response.headers)
        return response

    def _remember_limits(self, headers: httpx.Headers) -> None:
        names = {
            "second_limit": "x-limit-per-second",
            "second_remaining": "x-remaining-this-second",
            "day_limit": "x-limit-per-day",
            "day_remaining": "x-remaining-today",
        }
        seen = {key: headers.get(name) for key, name in names.items()}
        if any(value is None for value in seen.values()):
            return
        for key, value in seen.items():
            self.rate_state[key] = int(str(value))
        self.rate_state["seen_at"] = self.now().timestamp()

    async def _wait_for_quota(self) -> None:
        """Wait until this second's quota, as the last reply showed it less the requests
        still in flight, has room for one more; raise RateLimited when today's is spent
        or the wait would be longer than ``max_wait``."""
        state = self.rate_state
        while "seen_at" in state:
            seen_at = float(state["seen_at"])
            elapsed = self.now().timestamp() - seen_at
            if int(state["day_remaining"]) - self.in_flight <= 0 and elapsed < DAY_RETRY_SECONDS:
                raise RateLimited(
                    "Etsy: today's quota is spent", retry_after=DAY_RETRY_SECONDS - elapsed
                )
            if elapsed >= 1.0:
                # The second the last reply counted is over; a new one starts now, until
                # the next reply says what is left of it.
                state["second_remaining"] = int(state["second_limit"])
                state["seen_at"] = seen_at = self.now().timestamp()
                elapsed = 0.0
            if int(state["second_remaining"]) - self.in_flight > 0:
                return
            wait = 1.0 - elapsed
            if wait > self.max_wait:
                raise RateLimited("Etsy: this second's quota is spent", retry_after=wait)
            await self.sleep(wait)
            if float(state["seen_at"]) == seen_at:
                # No reply meanwhile: the next second began when this one ended.
                state["second_remaining"] = int(state["second_limit"])
                state["seen_at"] = seen_at + 1.0


def _set_quantities(body: dict[str, Any], names: list[str], wanted: Mapping[str, int]) -> int:
    """Set the offerings' quantities of a writable inventory: those named in ``wanted``
    (all of them with ``{}``: 0 for every product), or, when the products share one
    quantity, the smallest wanted value for all. Returns that shared value (or the
    smallest wanted)."""
    is_shared = len(body["products"]) > 1 and not body["quantity_on_property"]
    smallest = min(wanted.values(), default=0)
    for name, product in zip(names, body["products"], strict=True):
        if is_shared or not wanted:
            quantity = smallest
        elif name in wanted:
            quantity = wanted[name]
        else:
            continue
        for offering in product["offerings"]:
            offering["quantity"] = quantity
    return smallest


def _outcomes(
    updates: list[tuple[int, StockUpdate]], shown: Mapping[str, int | None], why: str
) -> list[tuple[int, PushResult]]:
    """Each update is ``ok`` when the channel shows its quantity, else ``error`` (``why``)
    with what it shows."""
    outcomes = []
    for index, update in updates:
        quantity = shown.get(update.ref.external_id)
        if quantity == update.quantity:
            outcomes.append((index, _result(update, "ok", quantity)))
        else:
            outcomes.append((index, _result(update, "error", quantity, why)))
    return outcomes


def _result(
    update: StockUpdate,
    outcome: PushOutcome,
    quantity: int | None = None,
    error: str | None = None,
) -> PushResult:
    return PushResult(
        external_id=update.ref.external_id, outcome=outcome, channel_quantity=quantity, error=error
    )


def _quantity(product: Mapping[str, Any]) -> int | None:
    offering = _offering(product)
    return int(offering["quantity"]) if offering else None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text or response.reason_phrase


def _retry_after(response: httpx.Response) -> str:
    return response.headers.get("retry-after") or str(DEFAULT_RETRY_SECONDS)


# ---------------------------------------------------------------------- OAuth 2.0, PKCE


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier (64 URL-safe characters) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _challenge(verifier)


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorization_url(
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    code_challenge: str,
    connect_url: str = CONNECT_URL,
) -> str:
    """Where to send the seller to connect their shop (Etsy's authorization code grant;
    scopes space-separated, percent-encoded)."""
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        },
        quote_via=quote,
    )
    return f"{connect_url}?{query}"


async def exchange_code(
    http: httpx.AsyncClient,
    *,
    api_base: str,
    client_id: str,
    redirect_uri: str,
    code: str,
    code_verifier: str,
    now: datetime | None = None,
) -> Tokens:
    """Trade the callback's code for tokens. Raises ``ChannelRefused`` for a wrong code
    or verifier, ``ChannelUnavailable`` when Etsy cannot be reached."""
    return await _token_request(
        http,
        api_base=api_base,
        form={
            "grant_type": "authorization_code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "code": code,
            "code_verifier": code_verifier,
        },
        now=now,
    )


async def refresh(
    http: httpx.AsyncClient,
    *,
    api_base: str,
    client_id: str,
    refresh_token: str,
    now: datetime | None = None,
) -> Tokens:
    """A new access token. The refresh token rotates: the one given stops working, so
    the caller stores the new one (under the channel's lock) before using it."""
    return await _token_request(
        http,
        api_base=api_base,
        form={
            "grant_type": "refresh_token",
            "client_id": client_id,
            "refresh_token": refresh_token,
        },
        now=now,
    )


async def _token_request(
    http: httpx.AsyncClient, *, api_base: str, form: dict[str, str], now: datetime | None
) -> Tokens:
    try:
        response = await http.post(
            f"{api_base.rstrip('/')}/v3/public/oauth/token", data=form, timeout=TIMEOUT
        )
    except httpx.HTTPError as error:
        raise ChannelUnavailable(f"Etsy: {type(error).__name__}: {error}") from error
    if response.status_code >= 400:
        try:
            body = response.json()
            message = f"{body.get('error')}: {body.get('error_description', '')}"
        except ValueError:
            message = response.text or response.reason_phrase
        # A refused grant is 400 here; it is not our API credentials being revoked.
        status = 400 if response.status_code in (400, 401) else response.status_code
        raise_for_status(status, message=message, retry_after=response.headers.get("retry-after"))
    body = response.json()
    issued = now or _utc_now()
    expires_in = body.get("expires_in")
    scope = body.get("scope")
    return Tokens(
        access_token=str(body["access_token"]),
        refresh_token=body.get("refresh_token"),
        expires_at=issued + timedelta(seconds=int(expires_in)) if expires_in else None,
        scopes=tuple(str(scope).split()) if scope else (),
    )
