"""The WooCommerce connector against the WooCommerce double served on a real port: paging,
variations, batch writes and their limits, webhooks with their ping, signatures and
disabling, order polling, rate limits and revoked keys."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stallholder.channels.connectors import (
    ChannelOrder,
    ChannelUnavailable,
    InventoryChanged,
    Listing,
    ListingRef,
    OrderLine,
    PushResult,
    RateLimited,
    RegisteredWebhook,
    StockUpdate,
    Unauthorized,
    WebhookDelivery,
)
from stallholder.channels.woocommerce import WooCommerceConnector, price_minor_units
from tests.doubles.common import Chaos, serve_app
from tests.doubles.woocommerce import WooCommerceDouble, serve_woocommerce, sign

pytestmark = pytest.mark.anyio

SECRET = "whsec_stallholder_woo"
NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
API = "/wp-json/wc/v3"


@dataclass
class Receiver:
    """A creator's endpoint: records every request and answers ``status``."""

    status: int = 200
    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((dict(request.headers), body))
        return Response(status_code=self.status)

    def signed(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b in self.received if "x-wc-webhook-signature" in h]

    def pings(self) -> list[bytes]:
        with self.lock:
            return [b for h, b in self.received if "x-wc-webhook-signature" not in h]


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def woo() -> Iterator[WooCommerceDouble]:
    double = WooCommerceDouble(consumer_key="ck_live", consumer_secret="cs_live")
    try:
        with serve_woocommerce(double):
            yield double
    finally:
        double.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    app = Starlette(routes=[Route("/hooks/woo", found.endpoint, methods=["POST"])])
    with serve_app(app, name="receiver") as url:
        found.url = f"{url}/hooks/woo"
        yield found


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def connect(
    http: httpx.AsyncClient,
    double: WooCommerceDouble,
    *,
    secret: str = "cs_live",
    rate_state: dict[str, Any] | None = None,
    sleep: Sleeps | None = None,
    now: datetime = NOW,
) -> WooCommerceConnector:
    return WooCommerceConnector(
        http=http,
        credentials={
            "store_url": double.base_url,
            "consumer_key": "ck_live",
            "consumer_secret": secret,
            "webhook_secret": SECRET,
        },
        rate_state={} if rate_state is None else rate_state,
        sleep=sleep or Sleeps(),
        clock=lambda: now.timestamp(),
    )


async def test_listings_read_every_page_with_a_variable_products_variations(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    simple = [woo.add_product(f"Print {i}", [(f"PR-{i}", i)])[0] for i in range(120)]
    tee = woo.add_product("Tee", [("TEE-S", 3), ("TEE-M", 0), ("TEE-L", 7)], price=1999)
    parent = tee[0].split("/")[0]

    listings = await connect(http, woo).listings()

    assert len(listings) == 123
    by_id = {listing.ref.external_id: listing for listing in listings}
    assert by_id[simple[7]] == Listing(
        ref=ListingRef(external_id=simple[7]),
        sku="PR-7",
        title="Print 7",
        quantity=7,
        price=2500,
        currency="usd",
    )
    assert [by_id[ref] for ref in tee] == [
        Listing(
            ref=ListingRef(external_id=ref, extra={"parent_id": parent}),
            sku=sku,
            title=f"Tee - {sku}",
            quantity=quantity,
            price=1999,
            currency="usd",
        )
        for ref, sku, quantity in zip(tee, ["TEE-S", "TEE-M", "TEE-L"], [3, 0, 7], strict=True)
    ]
    # The variable product itself is not a listing; the products took two pages, oldest
    # first, so the newest (the tee) came last.
    assert parent not in by_id
    assert [listing.ref.external_id for listing in listings] == [*simple, *tee]
    assert woo.requests == [
        ("GET", f"{API}/data/currencies/current"),
        ("GET", f"{API}/products"),
        ("GET", f"{API}/products"),
        ("GET", f"{API}/products/{parent}/variations"),
    ]


async def test_read_gives_quantities_by_external_id_and_leaves_out_what_is_gone(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    [mug] = woo.add_product("Mug", [("MUG", 4)])
    [gone] = woo.add_product("Gone", [("GONE", 1)])
    small, large = woo.add_product("Cap", [("CAP-S", 2), ("CAP-L", 9)])
    woo.delete_product(int(gone))
    refs = [ListingRef(mug), ListingRef(gone), ListingRef(large), ListingRef("not-an-id")]

    assert await connect(http, woo).read(refs) == {mug: 4, large: 9}
    assert await connect(http, woo).read([ListingRef(small)]) == {small: 2}


async def test_a_push_of_150_updates_goes_in_batches_of_at_most_100(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    ids = [woo.add_product(f"Card {i}", [(f"CARD-{i}", 1)])[0] for i in range(150)]
    updates = [
        StockUpdate(ref=ListingRef(external_id), quantity=i + 10, expected=1, key=f"k{i}")
        for i, external_id in enumerate(ids)
    ]

    results = await connect(http, woo).push(updates)

    assert results == [
        PushResult(external_id=external_id, outcome="ok", channel_quantity=i + 10)
        for i, external_id in enumerate(ids)
    ]
    assert woo.batches == [(f"{API}/products/batch", 100), (f"{API}/products/batch", 50)]
    assert [woo.quantity_of(f"CARD-{i}") for i in (0, 99, 100, 149)] == [10, 109, 110, 159]


async def test_the_double_refuses_a_batch_of_more_than_100_items_as_a_whole(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    [card] = woo.add_product("Card", [("CARD", 1)])
    items = [{"id": int(card), "stock_quantity": 5}] * 101

    response = await http.post(
        f"{woo.base_url}{API}/products/batch", json={"update": items}, auth=("ck_live", "cs_live")
    )

    assert response.status_code == 413
    assert response.json() == {
        "code": "woocommerce_rest_request_entity_too_large",
        "message": "Unable to accept more than 100 items for this request.",
        "data": {"status": 413},
    }
    assert woo.quantity_of("CARD") == 1
    assert woo.batches == []


async def test_an_item_refused_inside_the_200_fails_that_update_only(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    [mug] = woo.add_product("Mug", [("MUG", 4)])
    external = woo.add_external_product("Affiliate book")
    [gone] = woo.add_product("Gone", [("GONE", 1)])
    woo.delete_product(int(gone))
    small, _large = woo.add_product("Cap", [("CAP-S", 2), ("CAP-L", 9)])
    parent = small.split("/")[0]
    refs = [
        ListingRef(mug),
        ListingRef(external),
        ListingRef(gone),
        ListingRef(small, extra={"parent_id": parent}),
        ListingRef(f"{parent}/999999", extra={"parent_id": parent}),
    ]

    results = await connect(http, woo).push(
        [StockUpdate(ref=ref, quantity=6, expected=None, key=f"k{i}") for i, ref in enumerate(refs)]
    )

    assert results == [
        PushResult(external_id=mug, outcome="ok", channel_quantity=6),
        PushResult(
            external_id=external,
            outcome="error",
            error=(
                "product_external_invalid_manage_stock: External products cannot be stock managed."
            ),
        ),
        PushResult(
            external_id=gone,
            outcome="missing",
            error="woocommerce_rest_product_invalid_id: Invalid ID.",
        ),
        PushResult(external_id=small, outcome="ok", channel_quantity=6),
        PushResult(
            external_id=f"{parent}/999999",
            outcome="missing",
            error="woocommerce_rest_product_variation_invalid_id: Invalid ID.",
        ),
    ]
    assert (woo.quantity_of("MUG"), woo.quantity_of("CAP-S"), woo.quantity_of("CAP-L")) == (6, 6, 9)
    assert woo.batches == [
        (f"{API}/products/batch", 3),
        (f"{API}/products/{parent}/variations/batch", 2),
    ]


async def test_registering_twice_keeps_two_webhooks_and_each_was_pinged_once(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    connector = connect(http, woo)

    first = await connector.register_webhooks(receiver.url)
    second = await connector.register_webhooks(receiver.url)

    assert (
        first
        == second
        == [
            RegisteredWebhook(external_id="1", topic="order.created"),
            RegisteredWebhook(external_id="2", topic="product.updated"),
        ]
    )
    assert sorted((h.id, h.topic, h.status, h.secret) for h in woo.hooks.values()) == [
        (1, "order.created", "active", SECRET),
        (2, "product.updated", "active", SECRET),
    ]
    # Each was pinged on creation, unsigned, and the 200 cleared its pending delivery.
    assert receiver.pings() == [b"webhook_id=1", b"webhook_id=2"]
    assert woo.pings == [(1, 200), (2, 200)]
    assert [woo.webhook(i).pending_delivery for i in (1, 2)] == [False, False]
    assert [
        connector.parse_webhook({"content-type": "application/x-www-form-urlencoded"}, ping)
        for ping in receiver.pings()
    ] == [
        WebhookDelivery(delivery_id="ping:1", topic="ping"),
        WebhookDelivery(delivery_id="ping:2", topic="ping"),
    ]


async def test_a_sale_on_the_store_delivers_a_signed_order_and_the_new_quantity(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    woo.clock = Clock(NOW)
    small, _large = woo.add_product("Cap", [("CAP-S", 5), ("CAP-L", 9)])
    parent, variation = small.split("/")
    connector = connect(http, woo)
    await connector.register_webhooks(receiver.url)

    order_id = woo.sell("CAP-S", 2)
    assert woo.webhooks.wait_idle()

    [(order_headers, order_body), (product_headers, product_body)] = receiver.signed()
    assert (order_headers["x-wc-webhook-topic"], product_headers["x-wc-webhook-topic"]) == (
        "order.created",
        "product.updated",
    )
    assert order_headers["x-wc-webhook-source"] == f"{woo.base_url}/"
    assert order_headers["x-wc-webhook-signature"] == sign(order_body, SECRET)
    order = connector.parse_webhook(order_headers, order_body)
    # The store's delivery id is per webhook and second, so the body's hash goes with it.
    assert order is not None
    assert order.delivery_id.startswith(order_headers["x-wc-webhook-delivery-id"] + ":")
    assert order == WebhookDelivery(
        delivery_id=order.delivery_id,
        topic="order.created",
        order=ChannelOrder(
            external_id=order_id,
            created_at=NOW,
            lines=(OrderLine(sku="CAP-S", quantity=2, external_id=f"{parent}/{variation}"),),
            name=f"#{order_id}",
            cancelled=False,
            updated_at=NOW,
        ),
    )
    product = connector.parse_webhook(product_headers, product_body)
    assert product is not None
    assert (product.topic, product.order, product.inventory) == (
        "product.updated",
        None,
        (InventoryChanged(external_id=small, quantity=3),),
    )
    assert woo.quantity_of("CAP-S") == 3


async def test_a_tampered_body_a_wrong_secret_or_an_unsigned_body_is_refused(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    woo.add_product("Mug", [("MUG", 4)])
    connector = connect(http, woo)
    await connector.register_webhooks(receiver.url)
    woo.set_quantity("MUG", 8)
    assert woo.webhooks.wait_idle()
    [(headers, body)] = receiver.signed()
    assert connector.parse_webhook(headers, body) is not None

    tampered = body.replace(b'"stock_quantity":8', b'"stock_quantity":80')
    assert tampered != body
    assert connector.parse_webhook(headers, tampered) is None
    other = WooCommerceConnector(
        http=http,
        credentials={
            "store_url": woo.base_url,
            "consumer_key": "ck_live",
            "consumer_secret": "cs_live",
            "webhook_secret": "someone else's",
        },
        rate_state={},
    )
    assert other.parse_webhook(headers, body) is None
    unsigned = {k: v for k, v in headers.items() if k != "x-wc-webhook-signature"}
    assert connector.parse_webhook(unsigned, body) is None
    assert connector.parse_webhook({}, b"webhook_id=1&x=2") is None


async def test_the_store_disables_a_webhook_at_the_seventh_failure_and_registering_revives_it(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    [mug] = woo.add_product("Mug", [("MUG", 40)])
    connector = connect(http, woo)
    receiver.status = 500
    await connector.register_webhooks(receiver.url)

    for quantity in range(6):
        woo.set_quantity("MUG", quantity)
    assert woo.webhooks.wait_idle()
    hook = woo.webhook(2)
    assert (hook.topic, hook.status, hook.failure_count) == ("product.updated", "active", 6)

    woo.set_quantity("MUG", 6)
    assert woo.webhooks.wait_idle()
    hook = woo.webhook(2)
    assert (hook.status, hook.failure_count, hook.pending_delivery) == ("disabled", 6, True)
    # The failed ping left it pending, so each save while active pinged again.
    assert [status for webhook_id, status in woo.pings if webhook_id == 2] == [500] * 7
    woo.set_quantity("MUG", 7)
    assert woo.webhooks.wait_idle()
    assert len(receiver.signed()) == 7

    receiver.status = 200
    assert await connector.register_webhooks(receiver.url) == [
        RegisteredWebhook(external_id="1", topic="order.created"),
        RegisteredWebhook(external_id="2", topic="product.updated"),
    ]
    hook = woo.webhook(2)
    assert (hook.status, hook.pending_delivery) == ("active", False)
    assert len(woo.hooks) == 2
    woo.set_quantity("MUG", 8)
    assert woo.webhooks.wait_idle()
    assert (woo.webhook(2).failure_count, len(receiver.signed())) == (0, 8)
    headers, body = receiver.signed()[-1]
    delivery = connector.parse_webhook(headers, body)
    assert delivery is not None
    assert delivery.inventory == (InventoryChanged(external_id=mug, quantity=8),)


async def test_orders_since_pages_through_changes_oldest_first(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    clock = Clock(NOW - timedelta(hours=5))
    woo.clock = clock
    [mug] = woo.add_product("Mug", [("MUG", 1000)])
    sold = []
    for _ in range(130):
        clock.now += timedelta(seconds=1)
        sold.append(woo.sell("MUG", 1))
    clock.now += timedelta(seconds=1)
    pending = woo.sell("MUG", 1, status="pending")
    clock.now += timedelta(seconds=1)
    woo.set_order_status(sold[0], "cancelled")
    connector = connect(http, woo)

    first = await connector.orders_since(None)

    assert [o.external_id for o in first.orders] == sold[1:101]
    assert first.orders[0] == ChannelOrder(
        external_id=sold[1],
        created_at=NOW - timedelta(hours=5) + timedelta(seconds=2),
        lines=(OrderLine(sku="MUG", quantity=1, external_id=mug),),
        name=f"#{sold[1]}",
        cancelled=False,
        updated_at=NOW - timedelta(hours=5) + timedelta(seconds=2),
    )
    assert (first.cursor, first.more) == ("2026-11-30T07:01:41", True)

    second = await connector.orders_since(first.cursor)

    # The cursor's own second is read again; the pending order holds no stock.
    assert [o.external_id for o in second.orders] == [*sold[100:130], sold[0]]
    assert pending not in {o.external_id for o in second.orders}
    assert second.orders[-1].cancelled is True
    assert (second.cursor, second.more) == ("2026-11-30T07:02:12", False)
    third = await connector.orders_since(second.cursor)
    assert ([o.external_id for o in third.orders], third.cursor, third.more) == (
        [sold[0]],
        "2026-11-30T07:02:12",
        False,
    )


async def test_more_than_a_page_of_orders_in_one_second_pages_on_within_it(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    woo.clock = Clock(NOW - timedelta(hours=1))
    woo.add_product("Mug", [("MUG", 1000)])
    sold = [woo.sell("MUG", 1) for _ in range(120)]
    connector = connect(http, woo)

    first = await connector.orders_since(None)
    second = await connector.orders_since(first.cursor)
    third = await connector.orders_since(second.cursor)

    assert [o.external_id for o in first.orders] == sold[:100]
    assert (first.cursor, first.more) == ("2026-11-30T11:00:00", True)
    assert [o.external_id for o in second.orders] == sold[:100]
    assert (second.cursor, second.more) == ("2026-11-30T11:00:00#2", True)
    assert [o.external_id for o in third.orders] == sold[100:]
    assert (third.cursor, third.more) == ("2026-11-30T11:00:00", False)


async def test_a_429_is_waited_out_when_short_and_raised_when_long(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    woo.add_product("Mug", [("MUG", 4)])
    rate_state: dict[str, Any] = {}
    sleeps = Sleeps()
    connector = connect(http, woo, rate_state=rate_state, sleep=sleeps)

    woo.throttle(1)
    assert await connector.read([ListingRef("100")]) == {"100": 4}
    assert (sleeps.calls, rate_state) == ([1.0], {})

    woo.throttle(30)
    with pytest.raises(RateLimited) as raised:
        await connector.read([ListingRef("100")])
    assert raised.value.retry_after == 30.0
    assert rate_state == {"retry_at": NOW.timestamp() + 30}
    requests = len(woo.requests)

    # A later unit of work with the stored state raises before asking the store.
    later = connect(http, woo, rate_state=rate_state, now=NOW + timedelta(seconds=10))
    with pytest.raises(RateLimited) as raised:
        await later.listings()
    assert raised.value.retry_after == 20.0
    assert len(woo.requests) == requests
    after = connect(http, woo, rate_state=rate_state, sleep=sleeps, now=NOW + timedelta(seconds=29))
    assert await after.read([ListingRef("100")]) == {"100": 4}
    assert (sleeps.calls, rate_state) == ([1.0, 1.0], {})


async def test_revoked_keys_and_a_wrong_secret_are_unauthorized(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    with pytest.raises(Unauthorized) as wrong:
        await connect(http, woo, secret="cs_wrong").listings()
    assert str(wrong.value) == (
        "401: woocommerce_rest_authentication_error: Consumer secret is invalid."
    )

    woo.revoke()
    with pytest.raises(Unauthorized) as revoked:
        await connect(http, woo).listings()
    assert (
        str(revoked.value)
        == "401: woocommerce_rest_cannot_view: Sorry, you cannot view this resource."
    )
    with pytest.raises(Unauthorized) as pushing:
        await connect(http, woo).push(
            [StockUpdate(ref=ListingRef("100"), quantity=1, expected=None, key="k")]
        )
    assert str(pushing.value) == (
        "401: woocommerce_rest_cannot_batch: "
        "Sorry, you are not allowed to batch manipulate this resource."
    )


async def test_a_lost_reply_is_channel_unavailable(http: httpx.AsyncClient) -> None:
    double = WooCommerceDouble(
        consumer_key="ck_live", consumer_secret="cs_live", chaos=Chaos(lose=1.0)
    )
    try:
        with serve_woocommerce(double), pytest.raises(ChannelUnavailable, match="502"):
            await connect(http, double).listings()
    finally:
        double.close()


async def test_prices_are_minor_units_of_the_store_currency() -> None:
    assert [
        price_minor_units("25.00", "usd"),
        price_minor_units("25", "usd"),
        price_minor_units("19.995", "usd"),
        price_minor_units("2500", "jpy"),
        price_minor_units("", "usd"),
        price_minor_units(None, "usd"),
    ] == [2500, 2500, 2000, 2500, None, None]


async def test_the_doubles_lists_page_as_woocommerce_does(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    ids = [woo.add_product(f"Print {i}", [(f"PR-{i}", i)])[0] for i in range(5)]
    auth = ("ck_live", "cs_live")

    response = await http.get(
        f"{woo.base_url}{API}/products", params={"per_page": 2, "page": 2}, auth=auth
    )

    assert response.status_code == 200
    assert [item["id"] for item in response.json()] == [int(ids[2]), int(ids[1])]
    assert (response.headers["X-WP-Total"], response.headers["X-WP-TotalPages"]) == ("5", "3")
    base = f"{woo.base_url}{API}/products"
    assert response.headers["Link"] == (
        f'<{base}?per_page=2&page=1>; rel="prev", <{base}?per_page=2&page=3>; rel="next"'
    )
    by_sku = await http.get(f"{base}", params={"sku": "PR-3"}, auth=auth)
    assert [item["id"] for item in by_sku.json()] == [int(ids[3])]
    [_small, large] = woo.add_product("Cap", [("CAP-S", 2), ("CAP-L", 9)])
    variation = await http.get(f"{base}", params={"sku": "CAP-L"}, auth=auth)
    assert [(item["id"], item["type"]) for item in variation.json()] == [
        (int(large.split("/")[1]), "variation")
    ]
    too_many = await http.get(f"{base}", params={"per_page": 101}, auth=auth)
    assert (too_many.status_code, too_many.json()) == (
        400,
        {
            "code": "rest_invalid_param",
            "message": "Invalid parameter(s): per_page",
            "data": {
                "status": 400,
                "params": {
                    "per_page": "per_page must be between 1 (inclusive) and 100 (inclusive)."
                },
            },
        },
    )
    anonymous = await http.get(f"{base}")
    assert (anonymous.status_code, anonymous.json()["code"]) == (
        401,
        "woocommerce_rest_cannot_view",
    )


async def test_the_doubles_control_routes_sell_and_set_quantities(
    http: httpx.AsyncClient, woo: WooCommerceDouble
) -> None:
    woo.add_product("Mug", [("MUG", 2)])

    sold = await http.post(f"{woo.base_url}/_double/sell", json={"sku": "MUG", "quantity": 2})
    refused = await http.post(f"{woo.base_url}/_double/sell", json={"sku": "MUG", "quantity": 1})
    edited = await http.post(f"{woo.base_url}/_double/quantity", json={"sku": "MUG", "quantity": 9})
    state = (await http.get(f"{woo.base_url}/_double/state")).json()

    assert (sold.status_code, refused.status_code, edited.status_code) == (200, 409, 200)
    assert [order["id"] for order in state["orders"]] == [int(sold.json()["order_id"])]
    assert [(p["sku"], p["stock_quantity"]) for p in state["products"]] == [("MUG", 9)]
    assert woo.requests == []  # the control routes are not the API


async def test_a_duplicate_keeps_its_delivery_id_and_two_changes_in_one_second_do_not_share_one(
    http: httpx.AsyncClient, receiver: Receiver
) -> None:
    double = WooCommerceDouble(
        consumer_key="ck_live", consumer_secret="cs_live", chaos=Chaos(duplicate=1.0)
    )
    double.clock = Clock(NOW)
    try:
        with serve_woocommerce(double):
            [mug] = double.add_product("Mug", [("MUG", 4)])
            connector = connect(http, double)
            await connector.register_webhooks(receiver.url)
            double.set_quantity("MUG", 5)
            double.set_quantity("MUG", 6)
            assert double.webhooks.wait_idle()
    finally:
        double.close()

    deliveries = [connector.parse_webhook(h, b) for h, b in receiver.signed()]
    headers = [h["x-wc-webhook-delivery-id"] for h, _ in receiver.signed()]
    assert len(set(headers)) == 1  # one webhook, one second: the store's id repeats
    assert [d.inventory if d else None for d in deliveries] == [
        (InventoryChanged(external_id=mug, quantity=5),),
        (InventoryChanged(external_id=mug, quantity=5),),
        (InventoryChanged(external_id=mug, quantity=6),),
        (InventoryChanged(external_id=mug, quantity=6),),
    ]
    ids = [d.delivery_id if d else None for d in deliveries]
    assert ids[0] == ids[1] != ids[2] == ids[3]


async def test_a_page_that_is_not_json_or_no_connection_is_channel_unavailable() -> None:
    def host_page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>Briefly unavailable</html>")

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    credentials = {
        "store_url": "https://shop.example",
        "consumer_key": "ck_live",
        "consumer_secret": "cs_live",
        "webhook_secret": SECRET,
    }
    for handler, message in [(host_page, "not JSON"), (unreachable, "ConnectError")]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            connector = WooCommerceConnector(http=client, credentials=credentials, rate_state={})
            with pytest.raises(ChannelUnavailable, match=message):
                await connector.listings()


async def test_a_store_that_keeps_throttling_is_rate_limited_after_three_tries(
    http: httpx.AsyncClient,
) -> None:
    double = WooCommerceDouble(
        consumer_key="ck_live", consumer_secret="cs_live", chaos=Chaos(throttle=1.0)
    )
    sleeps = Sleeps()
    rate_state: dict[str, Any] = {}
    try:
        with serve_woocommerce(double), pytest.raises(RateLimited) as raised:
            await connect(http, double, sleep=sleeps, rate_state=rate_state).listings()
    finally:
        double.close()

    assert raised.value.retry_after == 1.0
    assert (sleeps.calls, rate_state) == ([1.0, 1.0], {"retry_at": NOW.timestamp() + 1})


async def test_the_doubles_webhooks_can_be_read_and_deleted_as_on_the_store(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    auth = ("ck_live", "cs_live")
    hooks = f"{woo.base_url}{API}/webhooks"
    await connect(http, woo).register_webhooks(receiver.url)

    one = await http.get(f"{hooks}/1", auth=auth)
    bad_topic = await http.post(
        hooks, json={"topic": "stock.moved", "delivery_url": receiver.url}, auth=auth
    )
    trashing = await http.delete(f"{hooks}/1", auth=auth)
    deleted = await http.delete(f"{hooks}/1", params={"force": "true"}, auth=auth)
    listed = await http.get(hooks, auth=auth)

    assert (one.status_code, one.json()["topic"], one.json()["status"]) == (
        200,
        "order.created",
        "active",
    )
    assert "secret" not in one.json()
    assert (bad_topic.status_code, bad_topic.json()["code"]) == (
        400,
        "woocommerce_rest_shop_webhook_invalid_topic",
    )
    assert (trashing.status_code, trashing.json()["code"]) == (
        501,
        "woocommerce_rest_trash_not_supported",
    )
    assert (deleted.status_code, [hook["id"] for hook in listed.json()]) == (200, [2])


async def test_removing_webhooks_deletes_ours_and_leaves_the_stores_others(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    connector = connect(http, woo)
    registered = await connector.register_webhooks(receiver.url)  # ids 1 and 2
    other = await connector.register_webhooks(f"{receiver.url}?another=1")  # 3 and 4
    # A webhook of ours the store had (a connect whose id we never kept) and one of ours
    # the shop manager deleted already.
    woo.hooks[5] = replace(woo.hooks[1], id=5)
    del woo.hooks[2]
    woo.requests.clear()

    await connector.remove_webhooks(receiver.url, registered)

    assert sorted(woo.hooks) == [int(hook.external_id) for hook in other] == [3, 4]
    assert woo.requests == [
        ("GET", f"{API}/webhooks"),
        ("DELETE", f"{API}/webhooks/1"),
        ("DELETE", f"{API}/webhooks/2"),
        ("DELETE", f"{API}/webhooks/5"),
    ]


async def test_a_deleted_webhook_is_sent_nothing(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    woo.add_product("Cap", [("CAP", 5)])
    connector = connect(http, woo)
    registered = await connector.register_webhooks(receiver.url)

    await connector.remove_webhooks(receiver.url, registered)
    woo.sell("CAP", 1)

    assert woo.webhooks.wait_idle()
    assert (woo.hooks, receiver.signed()) == ({}, [])


async def test_removing_webhooks_with_revoked_keys_is_unauthorized(
    http: httpx.AsyncClient, woo: WooCommerceDouble, receiver: Receiver
) -> None:
    connector = connect(http, woo)
    registered = await connector.register_webhooks(receiver.url)
    woo.revoke()

    with pytest.raises(Unauthorized) as refused:
        await connector.remove_webhooks(receiver.url, registered)

    assert (
        str(refused.value) == "401: woocommerce_rest_cannot_view: Sorry, you cannot list resources."
    )
    assert sorted(woo.hooks) == [1, 2]
