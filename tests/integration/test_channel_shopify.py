"""The Shopify connector against the Shopify double over real HTTP: listings, reads,
compare-and-set pushes, the leaky bucket, revocation, webhooks, orders and OAuth."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stallholder.channels.connectors import (
    MAX_WAIT,
    ChannelOrder,
    InventoryChanged,
    ListingRef,
    OrderLine,
    PushResult,
    RateLimited,
    RegisteredWebhook,
    StockUpdate,
    Unauthorized,
)
from stallholder.channels.shopify import (
    SCOPES,
    ShopifyConnector,
    authorization_url,
    exchange_code,
    refresh,
    verify_callback,
)
from stallholder.kit.clock import FrozenClock
from tests.doubles.common import Chaos, serve_app
from tests.doubles.shopify import ShopifyDouble, serve_shopify

pytestmark = pytest.mark.anyio

LOCATION = "gid://shopify/Location/40002"


@pytest.fixture
def double() -> Iterator[ShopifyDouble]:
    shop = ShopifyDouble()
    with serve_shopify(shop):
        yield shop
    shop.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def connect(
    double: ShopifyDouble,
    http: httpx.AsyncClient,
    *,
    token: str | None = None,
    secret: str | None = None,
    **options: Any,
) -> ShopifyConnector:
    return ShopifyConnector(
        http=http,
        credentials={
            "shop_url": double.base_url,
            "access_token": token or double.access_token,
            "webhook_secret": secret or double.client_secret,
        },
        rate_state={},
        **options,
    )


def operations(double: ShopifyDouble) -> list[str]:
    return [name for _, name in double.requests]


class Receiver:
    """A delivery URL that records what arrives (Starlette lower-cases header names)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/hooks/shopify", self._hook, methods=["POST"])])

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.received.append((dict(request.headers), body))
        return Response(status_code=200)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    hooks = Receiver()
    with serve_app(hooks.app, name="receiver") as url:
        yield hooks, f"{url}/hooks/shopify"


# Listings and reads ---------------------------------------------------------------------


async def test_listings_read_every_page_with_titles_prices_and_quantities(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [blue, red] = double.add_product("Mug", [("MUG-BLUE", 3), ("MUG-RED", 0)], price=2500)
    for number in range(118):
        double.add_product(f"Print {number:03}", [(f"PRINT-{number:03}", number)], price=1999)

    listings = await connect(double, http).listings()

    assert len(listings) == 120
    assert [(x.sku, x.title, x.quantity, x.price, x.currency) for x in listings[:3]] == [
        ("MUG-BLUE", "Mug — MUG-BLUE", 3, 2500, "USD"),
        ("MUG-RED", "Mug — MUG-RED", 0, 2500, "USD"),
        ("PRINT-000", "Print 000", 0, 1999, "USD"),
    ]
    assert listings[-1].sku == "PRINT-117"
    assert listings[-1].quantity == 117
    assert listings[0].ref == ListingRef(
        external_id=blue,
        extra={"location_id": LOCATION, "variant_id": "gid://shopify/ProductVariant/1002"},
    )
    assert listings[1].ref.external_id == red
    assert operations(double) == ["StallholderShop", "StallholderListings", "StallholderListings"]


async def test_a_price_is_read_in_the_minor_units_of_the_shops_currency(
    http: httpx.AsyncClient,
) -> None:
    shop = ShopifyDouble(currency="JPY")
    shop.add_product("Tenugui", [("TENUGUI", 4)], price=2200)
    with serve_shopify(shop):
        [listing] = await connect(shop, http).listings()
    shop.close()

    assert (listing.price, listing.currency) == (2200, "JPY")


async def test_read_gives_each_items_available_quantity_and_leaves_out_missing_ones(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug] = double.add_product("Mug", [("MUG", 3)])
    [bowl] = double.add_product("Bowl", [("BOWL", 7)])
    gone = "gid://shopify/InventoryItem/999999"

    quantities = await connect(double, http).read(
        [ListingRef(mug, {"location_id": LOCATION}), ListingRef(bowl), ListingRef(gone)]
    )

    assert quantities == {mug: 3, bowl: 7}


async def test_a_query_shopify_does_not_know_is_refused_with_its_error(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    reply = await http.post(
        f"{double.base_url}/admin/api/2026-10/graphql.json",
        json={"query": "query Odd { shop { currencyCode inventoryCount } }"},
        headers={"X-Shopify-Access-Token": double.access_token},
    )

    assert reply.status_code == 200
    assert reply.json() == {
        "errors": [
            {
                "message": "Field 'inventoryCount' doesn't exist on type 'Shop'",
                "extensions": {
                    "code": "undefinedField",
                    "typeName": "Shop",
                    "fieldName": "inventoryCount",
                },
            }
        ]
    }


# Pushes ---------------------------------------------------------------------------------


def update(item: str, quantity: int, expected: int | None, key: str) -> StockUpdate:
    return StockUpdate(
        ref=ListingRef(item, {"location_id": LOCATION}),
        quantity=quantity,
        expected=expected,
        key=key,
    )


async def test_a_push_sets_every_quantity_in_one_call(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug, bowl, jug] = double.add_product("Set", [("MUG", 3), ("BOWL", 7), ("JUG", 1)])

    results = await connect(double, http).push(
        [update(mug, 2, 3, "p1"), update(bowl, 9, 7, "p2"), update(jug, 0, None, "p3")]
    )

    assert results == [
        PushResult(mug, "ok", 2),
        PushResult(bowl, "ok", 9),
        PushResult(jug, "ok", 0),
    ]
    assert [double.quantity_of(sku) for sku in ("MUG", "BOWL", "JUG")] == [2, 9, 0]
    assert operations(double) == ["StallholderSetQuantities"]


async def test_a_stale_entry_is_reported_with_the_fresh_value_and_the_others_are_applied(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug, bowl, jug] = double.add_product("Set", [("MUG", 3), ("BOWL", 7), ("JUG", 1)])
    double.sell("BOWL", 2)  # a sale on Shopify since we last read 7

    results = await connect(double, http).push(
        [update(mug, 2, 3, "p1"), update(bowl, 6, 7, "p2"), update(jug, 4, 1, "p3")]
    )

    assert results == [
        PushResult(mug, "ok", 2),
        PushResult(bowl, "stale", 5),
        PushResult(jug, "ok", 4),
    ]
    assert [double.quantity_of(sku) for sku in ("MUG", "BOWL", "JUG")] == [2, 5, 4]
    assert operations(double) == [
        "StallholderSetQuantities",  # refused whole: BOWL is stale
        "StallholderRead",
        "StallholderSetQuantities",  # MUG and JUG under a key of their own
    ]


async def test_the_same_push_again_replays_instead_of_writing_twice(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug] = double.add_product("Mug", [("MUG", 3)])
    connector = connect(double, http)
    # No compare: only the idempotency key keeps a retry from undoing a later sale.
    push = [update(mug, 5, None, "sync:MUG:41")]

    first = await connector.push(push)
    double.sell("MUG", 1)
    again = await connector.push(push)  # e.g. the first reply was lost

    assert first == again == [PushResult(mug, "ok", 5)]
    assert double.quantity_of("MUG") == 4
    assert operations(double) == ["StallholderSetQuantities", "StallholderSetQuantities"]


async def test_the_double_refuses_writes_without_a_key_or_a_compare_and_a_reused_key(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug] = double.add_product("Mug", [("MUG", 3)])
    mutation = """
      mutation Set($input: InventorySetQuantitiesInput!, $key: String!) {
        inventorySetQuantities(input: $input) @idempotent(key: $key) {
          userErrors { field message code }
        }
      }"""
    unkeyed = mutation.replace(" @idempotent(key: $key)", "").replace(", $key: String!", "")

    async def send(query: str, quantity: dict[str, Any], key: str | None) -> Any:
        variables: dict[str, Any] = {
            "input": {"name": "available", "reason": "correction", "quantities": [quantity]}
        }
        if key is not None:
            variables["key"] = key
        reply = await http.post(
            f"{double.base_url}/admin/api/2026-10/graphql.json",
            json={"query": query, "variables": variables},
            headers={"X-Shopify-Access-Token": double.access_token},
        )
        return reply.json()

    entry = {"inventoryItemId": mug, "locationId": LOCATION, "quantity": 4}
    no_key = await send(unkeyed, {**entry, "changeFromQuantity": 3}, None)
    no_compare = await send(mutation, entry, "k1")
    applied = await send(mutation, {**entry, "changeFromQuantity": 3}, "k2")
    reused = await send(mutation, {**entry, "quantity": 6, "changeFromQuantity": 4}, "k2")

    assert (
        no_key["errors"][0]["message"] == "The @idempotent directive is required for this mutation."
    )
    assert no_compare["errors"][0]["extensions"]["code"] == "INVALID_VARIABLE"
    assert applied["data"] == {"inventorySetQuantities": {"userErrors": []}}
    assert reused["data"]["inventorySetQuantities"]["userErrors"] == [
        {
            "field": ["input"],
            "message": "The same idempotency key cannot be used with different operation "
            "parameters.",
            "code": "IDEMPOTENCY_KEY_PARAMETER_MISMATCH",
        }
    ]
    assert double.quantity_of("MUG") == 4


# Rate limits ----------------------------------------------------------------------------


class RecordingSleep:
    def __init__(self, *, really: bool) -> None:
        self.waits: list[float] = []
        self.really = really

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.really:
            await asyncio.sleep(seconds)


async def test_a_small_bucket_makes_the_connector_wait_and_never_overdraw_it(
    http: httpx.AsyncClient,
) -> None:
    shop = ShopifyDouble(bucket_size=60, restore_rate=200)
    for number in range(30):
        shop.add_product(f"Print {number}", [(f"PRINT-{number}", number)])
    sleep = RecordingSleep(really=True)
    with serve_shopify(shop):
        listings = await connect(shop, http, sleep=sleep).listings()
    shop.close()

    assert [x.quantity for x in listings] == list(range(30))
    # Pages shrink to the bucket: (60 - 2) // 5 points a variant = 11 a page.
    assert operations(shop) == ["StallholderShop"] + ["StallholderListings"] * 3
    assert len(sleep.waits) == 3
    assert all(0 < wait <= MAX_WAIT for wait in sleep.waits)
    assert shop.throttled == 0


async def test_a_wait_longer_than_max_wait_raises_rate_limited_with_the_time_it_needs(
    http: httpx.AsyncClient,
) -> None:
    shop = ShopifyDouble(bucket_size=60, restore_rate=10)
    for number in range(12):
        shop.add_product(f"Print {number}", [(f"PRINT-{number}", number)])
    clock = FrozenClock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    with serve_shopify(shop):
        connector = connect(shop, http, sleep=RecordingSleep(really=True), clock=clock)
        with pytest.raises(RateLimited) as raised:
            await connector.listings()
    shop.close()

    # The second page asks for 2 + 11 × 5 = 57 points at 10 a second.
    assert raised.value.retry_after == (57 - connector.rate_state["available"]) / 10
    assert raised.value.retry_after > MAX_WAIT
    assert connector.rate_state["maximum"] == 60.0
    assert connector.rate_state["restore_rate"] == 10.0
    assert operations(shop) == ["StallholderShop", "StallholderListings"]
    assert shop.throttled == 0


async def test_a_throttled_reply_raises_rate_limited(http: httpx.AsyncClient) -> None:
    # The bucket's clock stands still, so a slow machine cannot refill it between the
    # spend and the read (it did: 30 ms at 100 points a second paid for the read).
    double = ShopifyDouble(bucket_clock=lambda: 1000.0)
    [mug] = double.add_product("Mug", [("MUG", 3)])
    double.spend(2000)  # another worker of ours spent the bucket

    with serve_shopify(double):
        connector = connect(double, http)
        with pytest.raises(RateLimited) as raised:
            await connector.read([ListingRef(mug, {"location_id": LOCATION})])
    double.close()

    state = connector.rate_state
    assert state["available"] == 0.0
    assert raised.value.retry_after == 3 / 100
    assert state["restore_rate"] == 100.0
    assert double.throttled == 1


async def test_shopifys_429_raises_rate_limited_after_its_retry_after(
    http: httpx.AsyncClient,
) -> None:
    shop = ShopifyDouble(chaos=Chaos(throttle=1.0))
    [mug] = shop.add_product("Mug", [("MUG", 3)])
    with serve_shopify(shop), pytest.raises(RateLimited) as raised:
        await connect(shop, http).read([ListingRef(mug, {"location_id": LOCATION})])
    shop.close()

    assert raised.value.retry_after == 1.0


async def test_an_uninstalled_app_or_a_wrong_token_is_unauthorized(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug] = double.add_product("Mug", [("MUG", 3)])
    refs = [ListingRef(mug, {"location_id": LOCATION})]
    assert await connect(double, http).read(refs) == {mug: 3}

    with pytest.raises(Unauthorized, match="Invalid API key or access token"):
        await connect(double, http, token="shpat_wrong").read(refs)
    double.revoke()
    with pytest.raises(Unauthorized):
        await connect(double, http).read(refs)


# Webhooks and orders --------------------------------------------------------------------


async def test_registering_twice_keeps_one_subscription_per_topic(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    connector = connect(double, http)

    first = await connector.register_webhooks("https://stallholder.test/hooks/shopify/1")
    second = await connector.register_webhooks("https://stallholder.test/hooks/shopify/1")

    assert (
        first
        == second
        == [
            RegisteredWebhook("gid://shopify/WebhookSubscription/1001", "orders/create"),
            RegisteredWebhook("gid://shopify/WebhookSubscription/1002", "orders/cancelled"),
            RegisteredWebhook("gid://shopify/WebhookSubscription/1003", "inventory_levels/update"),
            RegisteredWebhook("gid://shopify/WebhookSubscription/1004", "app/uninstalled"),
        ]
    )
    assert sorted(double.subscriptions.values()) == [
        ("APP_UNINSTALLED", "https://stallholder.test/hooks/shopify/1"),
        ("INVENTORY_LEVELS_UPDATE", "https://stallholder.test/hooks/shopify/1"),
        ("ORDERS_CANCELLED", "https://stallholder.test/hooks/shopify/1"),
        ("ORDERS_CREATE", "https://stallholder.test/hooks/shopify/1"),
    ]


async def test_two_workers_registering_at_once_keep_one_subscription_per_topic(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    url = "https://stallholder.test/hooks/shopify/1"

    first, second = await asyncio.gather(
        connect(double, http).register_webhooks(url), connect(double, http).register_webhooks(url)
    )

    assert first == second
    assert sorted(double.subscriptions.values()) == [
        ("APP_UNINSTALLED", url),
        ("INVENTORY_LEVELS_UPDATE", url),
        ("ORDERS_CANCELLED", url),
        ("ORDERS_CREATE", url),
    ]


async def test_removing_webhooks_deletes_ours_and_leaves_other_subscriptions(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    ours, other = "https://stallholder.test/hooks/1", "https://stallholder.test/hooks/2"
    connector = connect(double, http)
    registered = await connector.register_webhooks(ours)
    await connector.register_webhooks(other)
    # One of ours is gone already (Shopify drops subscriptions that keep failing), and one
    # was subscribed by another connect whose id we never kept.
    del double.subscriptions[1001]
    double.requests.clear()

    await connector.remove_webhooks(ours, registered[:3])

    assert sorted(double.subscriptions.values()) == [
        ("APP_UNINSTALLED", other),
        ("INVENTORY_LEVELS_UPDATE", other),
        ("ORDERS_CANCELLED", other),
        ("ORDERS_CREATE", other),
    ]
    assert operations(double) == ["StallholderWebhooks", *["StallholderDeleteWebhook"] * 4]
    await connector.remove_webhooks(ours, registered)  # again: every one is gone already
    assert len(double.subscriptions) == 4


async def test_the_double_deletes_a_subscription_as_shopify_does(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [subscription, *_] = await connect(double, http).register_webhooks("https://s.test/h")
    query = """mutation Delete($id: ID!) {
      webhookSubscriptionDelete(id: $id) {
        deletedWebhookSubscriptionId
        userErrors { field message }
      }
    }"""

    async def delete() -> Any:
        response = await http.post(
            f"{double.base_url}/admin/api/2026-10/graphql.json",
            json={"query": query, "variables": {"id": subscription.external_id}},
            headers={"X-Shopify-Access-Token": double.access_token},
        )
        assert response.status_code == 200
        return response.json()

    first, second = await delete(), await delete()

    assert first["data"] == {
        "webhookSubscriptionDelete": {
            "deletedWebhookSubscriptionId": "gid://shopify/WebhookSubscription/1001",
            "userErrors": [],
        }
    }
    assert first["extensions"]["cost"]["requestedQueryCost"] == 10
    assert second["data"] == {
        "webhookSubscriptionDelete": {
            "deletedWebhookSubscriptionId": None,
            "userErrors": [{"field": ["id"], "message": "Webhook subscription does not exist"}],
        }
    }


async def test_a_deleted_subscription_is_sent_nothing(
    double: ShopifyDouble, http: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    hooks, url = receiver
    double.add_product("Mug", [("MUG", 3)])
    connector = connect(double, http)
    registered = await connector.register_webhooks(url)
    double.sell("MUG", 1)
    assert double.webhooks.wait_idle()
    assert len(hooks.received) == 2  # orders/create, inventory_levels/update

    await connector.remove_webhooks(url, registered)
    order_id = double.sell("MUG", 1)
    double.cancel(order_id)
    double.uninstall()

    assert double.webhooks.wait_idle()
    assert len(hooks.received) == 2


async def test_removing_webhooks_with_a_revoked_token_is_unauthorized(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    connector = connect(double, http)
    registered = await connector.register_webhooks("https://s.test/h")
    double.revoke()

    with pytest.raises(Unauthorized):
        await connector.remove_webhooks("https://s.test/h", registered)


async def test_a_cancellation_delivers_orders_cancelled_parsed_as_a_cancelled_order(
    double: ShopifyDouble, http: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    hooks, url = receiver
    double.add_product("Mug", [("MUG", 3)])
    connector = connect(double, http)
    await connector.register_webhooks(url)
    order_id = double.sell("MUG", 2)
    assert double.webhooks.wait_idle()
    hooks.received.clear()

    cancelled = await http.post(f"{double.base_url}/_double/cancel", json={"order": order_id})
    unknown = await http.post(f"{double.base_url}/_double/cancel", json={"order": "99"})

    assert (cancelled.status_code, unknown.status_code) == (200, 404)
    assert double.webhooks.wait_idle()
    [(headers, body)] = hooks.received
    delivery = connector.parse_webhook(headers, body)
    assert delivery is not None
    assert (delivery.topic, delivery.uninstalled) == ("orders/cancelled", False)
    assert delivery.order is not None
    assert (delivery.order.external_id, delivery.order.cancelled, delivery.order.lines) == (
        order_id,
        True,
        (OrderLine(sku="MUG", quantity=2),),
    )


async def test_an_uninstall_delivers_app_uninstalled_and_then_refuses_the_token(
    double: ShopifyDouble, http: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    hooks, url = receiver
    [mug] = double.add_product("Mug", [("MUG", 3)])
    connector = connect(double, http)
    await connector.register_webhooks(url)

    uninstalled = await http.post(f"{double.base_url}/_double/uninstall")

    assert uninstalled.status_code == 200
    assert double.webhooks.wait_idle()
    [(headers, body)] = hooks.received
    delivery = connector.parse_webhook(headers, body)
    assert delivery is not None
    assert (delivery.topic, delivery.uninstalled, delivery.order) == ("app/uninstalled", True, None)
    assert headers["x-shopify-shop-domain"] == "kiln.myshopify.com"
    assert double.subscriptions == {}
    with pytest.raises(Unauthorized):
        await connector.read([ListingRef(mug, {"location_id": LOCATION})])


async def test_a_sale_delivers_a_signed_order_and_a_new_level_the_connector_parses(
    double: ShopifyDouble, http: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    hooks, url = receiver
    [mug] = double.add_product("Mug", [("MUG", 3)])
    connector = connect(double, http)
    await connector.register_webhooks(url)

    order_id = double.sell("MUG", 2)
    assert double.webhooks.wait_idle()

    [(order_headers, order_body), (level_headers, level_body)] = hooks.received
    order = connector.parse_webhook(order_headers, order_body)
    level = connector.parse_webhook(level_headers, level_body)
    assert order is not None
    assert level is not None
    assert (order.delivery_id, order.topic) == (
        order_headers["x-shopify-webhook-id"],
        "orders/create",
    )
    assert order.order is not None
    assert (order.order.external_id, order.order.name, order.order.lines) == (
        order_id,
        "#1001",
        (OrderLine(sku="MUG", quantity=2),),
    )
    assert level.topic == "inventory_levels/update"
    assert level.inventory == (InventoryChanged(external_id=mug, quantity=1),)
    assert order.delivery_id != level.delivery_id
    assert order_headers["x-shopify-shop-domain"] == "kiln.myshopify.com"
    # The same order, polled, has the same id.
    polled = await connector.orders_since(None)
    assert [o.external_id for o in polled.orders] == [order_id]


async def test_a_tampered_body_or_another_secret_is_refused(
    double: ShopifyDouble, http: httpx.AsyncClient, receiver: tuple[Receiver, str]
) -> None:
    hooks, url = receiver
    double.add_product("Mug", [("MUG", 3)])
    connector = connect(double, http)
    await connector.register_webhooks(url)
    double.sell("MUG", 1)
    assert double.webhooks.wait_idle()
    headers, body = hooks.received[0]

    assert connector.parse_webhook(headers, body) is not None
    assert (
        connector.parse_webhook(headers, body.replace(b'"quantity": 1', b'"quantity": 9')) is None
    )
    assert connect(double, http, secret="another-secret").parse_webhook(headers, body) is None
    unsigned = {k: v for k, v in headers.items() if k != "x-shopify-hmac-sha256"}
    assert connector.parse_webhook(unsigned, body) is None


async def test_orders_since_pages_oldest_first_with_every_line(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    skus = [f"SKU-{n:02}" for n in range(12)]
    double.add_product("Sampler", [(sku, 100) for sku in skus])
    big = double.order([(sku, 1) for sku in skus])  # more lines than one page of lines
    sold = [double.sell("SKU-00") for _ in range(25)]
    connector = connect(double, http)

    first = await connector.orders_since(None)
    second = await connector.orders_since(first.cursor)

    assert first.more is True
    assert [o.external_id for o in first.orders] == [big, *sold[:24]]
    assert first.orders[0].lines == tuple(
        OrderLine(sku=sku, quantity=1, external_id=f"gid://shopify/InventoryItem/{1003 + 2 * n}")
        for n, sku in enumerate(skus)
    )
    assert second.more is False
    assert [o.external_id for o in second.orders] == [sold[24]]
    updated = second.orders[0].updated_at
    assert updated is not None
    assert second.cursor == updated.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert operations(double).count("StallholderOrderLines") == 1


async def test_a_cancelled_order_is_reported_cancelled(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    double.add_product("Mug", [("MUG", 3)])
    order_id = double.sell("MUG")
    double.cancel(order_id)

    page = await connect(double, http).orders_since(None)

    [order] = page.orders
    assert isinstance(order, ChannelOrder)
    assert (order.external_id, order.cancelled) == (order_id, True)


# OAuth ----------------------------------------------------------------------------------


async def test_install_exchange_and_rotating_refresh(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    url = authorization_url(
        double.base_url,
        client_id="shp-client",
        scopes=SCOPES,
        redirect_uri="https://stallholder.test/channels/shopify/callback",
        state="st-1",
    )
    assert url == (
        f"{double.base_url}/admin/oauth/authorize?client_id=shp-client"
        "&scope=read_products%2Cread_inventory%2Cwrite_inventory%2Cread_orders%2Cread_locations"
        "&redirect_uri=https%3A%2F%2Fstallholder.test%2Fchannels%2Fshopify%2Fcallback"
        "&state=st-1"
    )

    approved = await http.get(url)  # the merchant approves
    assert approved.status_code == 302
    location = urlsplit(approved.headers["location"])
    callback = dict(parse_qsl(location.query))
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        "https://stallholder.test/channels/shopify/callback"
    )
    assert (callback["state"], callback["shop"]) == ("st-1", "kiln.myshopify.com")
    assert verify_callback(callback, client_secret="shp-secret") is True
    assert verify_callback({**callback, "state": "st-2"}, client_secret="shp-secret") is False
    assert verify_callback(callback, client_secret="other") is False

    clock = FrozenClock(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    tokens = await exchange_code(
        http,
        double.base_url,
        client_id="shp-client",
        client_secret="shp-secret",
        code=callback["code"],
        clock=clock,
    )
    assert tokens.expires_at == clock.now() + timedelta(seconds=3600)
    assert tokens.scopes == SCOPES
    assert tokens.refresh_token is not None
    with pytest.raises(Unauthorized):  # a code is good once
        await exchange_code(
            http,
            double.base_url,
            client_id="shp-client",
            client_secret="shp-secret",
            code=callback["code"],
        )
    double.add_product("Mug", [("MUG", 3)])
    assert len(await connect(double, http, token=tokens.access_token).listings()) == 1

    second = await refresh(
        http,
        double.base_url,
        client_id="shp-client",
        client_secret="shp-secret",
        refresh_token=tokens.refresh_token,
    )
    assert second.refresh_token is not None
    third = await refresh(
        http,
        double.base_url,
        client_id="shp-client",
        client_secret="shp-secret",
        refresh_token=second.refresh_token,
    )
    assert len({tokens.access_token, second.access_token, third.access_token}) == 3
    assert len({tokens.refresh_token, second.refresh_token, third.refresh_token}) == 3
    # Using its replacement retired the first refresh token.
    with pytest.raises(Unauthorized, match="invalid_grant"):
        await refresh(
            http,
            double.base_url,
            client_id="shp-client",
            client_secret="shp-secret",
            refresh_token=tokens.refresh_token,
        )
    assert len(await connect(double, http, token=third.access_token).listings()) == 1


async def test_a_query_shopify_prices_above_its_limit_is_resent_in_smaller_pages(
    http: httpx.AsyncClient,
) -> None:
    # Shopify sets some field costs by hand: here a level costs 10 points, not 1.
    shop = ShopifyDouble(field_costs={"InventoryItem.inventoryLevel": 10})
    for number in range(100):
        shop.add_product(f"Print {number}", [(f"PRINT-{number}", number)])
    with serve_shopify(shop):
        connector = connect(shop, http)
        listings = await connector.listings()
    shop.close()

    assert [x.quantity for x in listings] == list(range(100))
    # 2 + 100 × 14 = 1,402 points is refused; 1,402 / 502 estimated scales the pages to 71.
    assert connector.rate_state["cost_factor"] == 1402 / 502
    assert operations(shop) == ["StallholderShop"] + ["StallholderListings"] * 3
    assert shop.throttled == 0


async def test_entries_refused_for_their_own_reasons_are_missing_or_errors(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug] = double.add_product("Mug", [("MUG", 3)])
    [bowl] = double.add_product("Bowl", [("BOWL", 5)])
    unstocked = "gid://shopify/Location/40001"  # the shop's old, inactive location

    results = await connect(double, http).push(
        [
            update(mug, 2, 3, "p1"),
            StockUpdate(ListingRef(bowl, {"location_id": unstocked}), 1, None, "p2"),
            update("gid://shopify/InventoryItem/999999", 1, 0, "p3"),
        ]
    )

    assert results == [
        PushResult(mug, "ok", 2),
        PushResult(
            bowl,
            "error",
            error="ITEM_NOT_STOCKED_AT_LOCATION: The specified inventory "
            "item is not stocked at the location.",
        ),
        PushResult("gid://shopify/InventoryItem/999999", "missing"),
    ]
    assert [double.quantity_of("MUG"), double.quantity_of("BOWL")] == [2, 5]
    assert operations(double) == [
        "StallholderSetQuantities",
        "StallholderRead",
        "StallholderRead",
        "StallholderSetQuantities",
    ]


async def test_a_token_without_the_scope_is_unauthorized(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    [mug] = double.add_product("Mug", [("MUG", 3)])
    url = authorization_url(
        double.base_url,
        client_id="shp-client",
        scopes=("read_products", "read_locations"),
        redirect_uri="https://stallholder.test/callback",
        state="st-1",
    )
    callback = dict(parse_qsl(urlsplit((await http.get(url)).headers["location"]).query))
    tokens = await exchange_code(
        http,
        double.base_url,
        client_id="shp-client",
        client_secret="shp-secret",
        code=callback["code"],
    )
    connector = connect(double, http, token=tokens.access_token)

    assert tokens.scopes == ("read_products", "read_locations")
    with pytest.raises(Unauthorized, match="read_inventory"):
        await connector.read([ListingRef(mug, {"location_id": LOCATION})])


async def test_the_control_routes_drive_the_double_from_another_process(
    double: ShopifyDouble, http: httpx.AsyncClient
) -> None:
    double.add_product("Mug", [("MUG-BLUE", 3), ("MUG-RED", 1)])

    sold = await http.post(
        f"{double.base_url}/_double/sell", json={"sku": "MUG-BLUE", "quantity": 2}
    )
    refused = await http.post(
        f"{double.base_url}/_double/sell", json={"sku": "MUG-RED", "quantity": 2}
    )
    edited = await http.post(
        f"{double.base_url}/_double/quantity", json={"sku": "MUG-RED", "quantity": 8}
    )
    state = await http.get(f"{double.base_url}/_double/state")

    assert sold.status_code == 200
    assert refused.status_code == 409
    assert edited.status_code == 200
    assert state.json() == [
        {"sku": "MUG-BLUE", "title": "Mug — MUG-BLUE", "quantity": 1},
        {"sku": "MUG-RED", "title": "Mug — MUG-RED", "quantity": 8},
    ]
