"""The sync layer end to end over HTTP: Stallholder served on a local port with its worker
running, and a Shopify, an Etsy and a WooCommerce double as real HTTP servers. Sales on
Stallholder and on the channels within a second, an oversold order flagged, a stale
write refused and corrected, an Etsy listing's variations kept, a revoked token pausing
its channel (issue 11, "Must be shown")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stallholder.channels.models import Channel, ChannelOrder
from stallholder.channels.registry import vault_from_settings
from stallholder.events.models import InboxEvent
from stallholder.inventory.models import StockLevel
from stallholder.notifications.models import Email
from tests.e2e.channel_stack import Stack, channel_stack, eventually
from tests.smtp_server import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(any_database_url: str, tmp_path: Path) -> Any:
    async with channel_stack(any_database_url, tmp_path / "var") as built:
        yield built


async def _stocked(stack: Stack, key: str, sku: str, on_hand: int) -> dict[str, Any]:
    """A published product with one variant of ``sku``, a price, and ``on_hand`` units."""
    product = await stack.call(
        "POST",
        "/v1/products",
        key,
        json={
            "kind": "physical",
            "name": f"Mug {sku}",
            "status": "published",
            "variants": [{"sku": sku}],
        },
    )
    assert product.status_code == 201, product.text
    price = await stack.call(
        "POST",
        "/v1/prices",
        key,
        json={"product": product.json()["id"], "currency": "usd", "unit_amount": 4800},
    )
    assert price.status_code == 201, price.text
    location = await stack.call("POST", "/v1/locations", key, json={"name": "Workshop"})
    if location.status_code == 201:
        stack_location = location.json()["id"]
    else:
        listed = await stack.call("GET", "/v1/locations", key)
        stack_location = listed.json()["data"][0]["id"]
    adjusted = await stack.call(
        "POST",
        "/v1/inventory/adjustments",
        key,
        json={"sku": sku, "location": stack_location, "delta": on_hand, "reason": "kiln"},
    )
    assert adjusted.status_code == 200, adjusted.text
    return {"price": price.json()["id"], "location": stack_location}


async def _available(stack: Stack, key: str, sku: str) -> int:
    response = await stack.call("GET", f"/v1/inventory/{sku}", key)
    return int(response.json()["available"])


async def _buy(stack: Stack, key: str, price: str) -> None:
    session = await stack.call(
        "POST",
        "/v1/checkout/sessions",
        key,
        json={"line_items": [{"price": price, "quantity": 1}], "customer_email": "a@example.com"},
    )
    assert session.status_code == 201, session.text
    confirmed = await stack.call(
        "POST",
        f"/v1/checkout/sessions/{session.json()['id']}/confirm",
        key,
        json={"payment_method": "tok_visa"},
    )
    assert confirmed.status_code == 200, confirmed.text


def _all_show(stack: Stack, sku: str, quantity: int) -> bool:
    return (
        stack.shopify.quantity_of(sku) == quantity
        and stack.etsy.quantity_of(sku) == quantity
        and stack.woo.quantity_of(sku) == quantity
    )


async def test_sales_on_three_channels_in_one_second_leave_every_channel_right(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    shop = await _stocked(stack, key, "MUG-1", 10)
    stack.shopify.add_product("Moon mug", [("MUG-1", 4)])
    stack.etsy.add_product("Moon mug", [("MUG-1", 4)])
    stack.woo.add_product("Moon mug", [("MUG-1", 4)])
    channels = [await stack.connect(key, kind) for kind in ("shopify", "etsy", "woocommerce")]
    assert [c["listings"] for c in channels] == [{"matched": 1, "unmatched": 0, "conflict": 0}] * 3
    await eventually(lambda: _all_show(stack, "MUG-1", 10), what="every channel showing 10")

    # Within one second: a sale here, an order on Shopify, a receipt on Etsy.
    await _buy(stack, key, shop["price"])
    stack.shopify.sell("MUG-1", 1)
    stack.etsy.sell("MUG-1", 1)

    try:
        await eventually(lambda: _all_show(stack, "MUG-1", 7), what="every channel showing 7")
    except AssertionError:
        print(await stack.report("MUG-1"))
        raise
    assert await _available(stack, key, "MUG-1") == 7
    async with stack.database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        # Our sale is allocated (paid, to ship); the channels' two were sold from stock.
        assert (level.on_hand, level.allocated, level.reserved) == (8, 1, 0)
        orders = (await session.execute(select(ChannelOrder.status))).scalars().all()
        assert sorted(orders) == ["sold", "sold"]

    # One unit left: Shopify and WooCommerce both sell it before either hears of the other.
    await stack.call(
        "POST",
        "/v1/inventory/adjustments",
        key,
        json={
            "sku": "MUG-1",
            "location": shop["location"],
            "delta": -6,
            "reason": "breakage",
            "kind": "damaged",
        },
    )
    await eventually(lambda: _all_show(stack, "MUG-1", 1), what="every channel showing 1")
    stack.shopify.sell("MUG-1", 1)
    stack.woo.sell("MUG-1", 1)
    await eventually(lambda: _all_show(stack, "MUG-1", 0), what="every channel showing 0")

    async def flagged() -> bool:
        async with stack.database.unit_of_work() as session:
            statuses = (await session.execute(select(ChannelOrder.status))).scalars().all()
            return sorted(statuses) == ["oversold", "sold", "sold", "sold"]

    await eventually(flagged, what="the second order flagged oversold")
    oversold = [
        order
        for channel in channels
        for order in (
            await stack.call("GET", f"/v1/channels/{channel['id']}/orders?status=oversold", key)
        ).json()["data"]
    ]
    assert [(o["status"], o["lines"]) for o in oversold] == [
        ("oversold", [{"sku": "MUG-1", "quantity": 1, "outcome": "oversold"}])
    ]
    events = (await stack.call("GET", "/v1/events?type=channel.oversold", key)).json()["data"]
    assert [(e["data"]["object"]["sku"], e["data"]["object"]["quantity"]) for e in events] == [
        ("MUG-1", 1)
    ]
    async with stack.database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        assert (level.on_hand, level.allocated) == (1, 1)


async def test_an_etsy_listing_keeps_all_three_variations_after_a_push(stack: Stack) -> None:
    _, key = await stack.creator()
    await _stocked(stack, key, "GLAZE-ASH", 6)
    [listing_ref, *_] = stack.etsy.add_product(
        "Moon mug", [("GLAZE-ASH", 2), ("GLAZE-MOSS", 3), ("GLAZE-SAND", 4)]
    )
    listing_id = int(listing_ref.split(":", 1)[0])
    before = stack.etsy.products_of(listing_id)
    channel = await stack.connect(key, "etsy", buffer_units=1)
    assert channel["listings"] == {"matched": 1, "unmatched": 2, "conflict": 0}
    await eventually(lambda: stack.etsy.quantity_of("GLAZE-ASH") == 5, what="Etsy showing 5")
    after = stack.etsy.products_of(listing_id)
    assert [p["sku"] for p in after] == ["GLAZE-ASH", "GLAZE-MOSS", "GLAZE-SAND"]
    assert [p["property_values"] for p in after] == [p["property_values"] for p in before]
    assert [stack.etsy.quantity_of(s) for s in ("GLAZE-ASH", "GLAZE-MOSS", "GLAZE-SAND")] == [
        5,
        3,
        4,
    ]


async def test_a_revoked_token_pauses_the_channel_and_emails_the_creator(stack: Stack) -> None:
    _, key = await stack.creator()
    shop = await _stocked(stack, key, "MUG-2", 5)
    stack.shopify.add_product("Mug", [("MUG-2", 5)])
    channel = await stack.connect(key, "shopify")
    stack.shopify.revoke()
    await stack.call(
        "POST",
        "/v1/inventory/adjustments",
        key,
        json={"sku": "MUG-2", "location": shop["location"], "delta": -1, "reason": "count"},
    )

    async def paused() -> bool:
        found = await stack.call("GET", f"/v1/channels/{channel['id']}", key)
        return bool(found.json()["status"] == "paused")

    await eventually(paused, what="the channel paused")
    found = (await stack.call("GET", f"/v1/channels/{channel['id']}", key)).json()
    assert found["paused_reason"].startswith("the channel refused our credentials (401")

    async def emailed() -> list[Email]:
        async with stack.database.unit_of_work() as session:
            return list(
                (
                    await session.execute(select(Email).where(Email.kind == "channel_paused"))
                ).scalars()
            )

    await eventually(lambda: _nonempty(emailed()), what="the creator emailed")
    [email] = await emailed()
    assert email.to_address == "studio@kilnandclay.example"
    assert stack.shopify.quantity_of("MUG-2") == 5  # nothing written while paused


async def _nonempty(found: Any) -> bool:
    return bool(await found)


async def test_webhooks_with_a_bad_signature_are_refused(stack: Stack) -> None:
    _, key = await stack.creator()
    stack.shopify.add_product("Mug", [("MUG-3", 1)])
    channel = await stack.connect(key, "shopify")
    response = await stack.http.post(
        f"/hooks/channels/{channel['id']}",
        content=b'{"id": 1}',
        headers={
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Hmac-Sha256": "bm90IGEgc2lnbmF0dXJl",
            "X-Shopify-Webhook-Id": "w-1",
        },
    )
    assert response.status_code == 401
    assert response.json()["type"].endswith("/webhook-not-verified")


async def test_connecting_a_shop_again_updates_its_channel_and_imports_nothing_twice(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    await _stocked(stack, key, "MUG-4", 5)
    stack.woo.add_product("Mug", [("MUG-4", 5)])
    first = await stack.connect(key, "woocommerce")
    stack.woo.sell("MUG-4", 1)

    async def sold() -> bool:
        return await _available(stack, key, "MUG-4") == 4

    await eventually(sold, what="the WooCommerce order taken from stock")
    paused = await stack.call("POST", f"/v1/channels/{first['id']}", key, json={"status": "paused"})
    assert paused.json()["status"] == "paused"

    again = await stack.connect(key, "woocommerce")
    assert again["id"] == first["id"]
    assert (again["status"], again["paused_reason"]) == ("active", None)
    listed = (await stack.call("GET", "/v1/channels", key)).json()["data"]
    assert [channel["id"] for channel in listed] == [first["id"]]
    orders = (await stack.call("GET", f"/v1/channels/{first['id']}/orders", key)).json()
    assert [order["status"] for order in orders["data"]] == ["sold"]
    assert await _available(stack, key, "MUG-4") == 4


async def test_a_disconnected_channel_is_sent_nothing_and_comes_back_by_connecting_again(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    shop = await _stocked(stack, key, "MUG-5", 5)
    stack.woo.add_product("Mug", [("MUG-5", 5)])
    channel = await stack.connect(key, "woocommerce")
    gone = await stack.call("DELETE", f"/v1/channels/{channel['id']}", key)
    assert gone.status_code == 200
    assert (gone.json()["status"], gone.json()["listings"]) == (
        "disconnected",
        {"matched": 0, "unmatched": 0, "conflict": 0},
    )
    resumed = await stack.call(
        "POST", f"/v1/channels/{channel['id']}", key, json={"status": "active"}
    )
    assert resumed.status_code == 409
    assert resumed.json()["type"].endswith("/channel-disconnected")
    await stack.call(
        "POST",
        "/v1/inventory/adjustments",
        key,
        json={"sku": "MUG-5", "location": shop["location"], "delta": -2, "reason": "count"},
    )
    stack.woo.sell("MUG-5", 1)  # its webhook is refused: nothing is imported yet
    await asyncio.sleep(3)
    assert stack.woo.quantity_of("MUG-5") == 4
    assert await _available(stack, key, "MUG-5") == 3

    # Connected again: the order placed while it was away is polled in and sold.
    again = await stack.connect(key, "woocommerce")
    assert (again["id"], again["status"]) == (channel["id"], "active")

    async def caught_up() -> bool:
        return stack.woo.quantity_of("MUG-5") == 2 and await _available(stack, key, "MUG-5") == 2

    await eventually(caught_up, what="the order polled in and WooCommerce showing 2")


async def test_an_import_with_a_taken_sku_imports_nothing_and_names_the_listing(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    for sku in ("TEA-1", "TEA-2", "TEA-3"):
        stack.woo.add_product(f"Teapot {sku}", [(sku, 4)], price=3600)
    channel = await stack.connect(key, "woocommerce")
    assert channel["listings"] == {"matched": 0, "unmatched": 3, "conflict": 0}
    listings = await stack.call("GET", f"/v1/channels/{channel['id']}/listings", key)
    tea_2 = next(row["id"] for row in listings.json()["data"] if row["sku"] == "TEA-2")
    # The creator makes a product with one of the SKUs after the listings were read.
    made = await stack.call(
        "POST",
        "/v1/products",
        key,
        json={"kind": "physical", "name": "Teapot", "variants": [{"sku": "TEA-2"}]},
    )
    assert made.status_code == 201, made.text

    refused = await stack.call("POST", f"/v1/channels/{channel['id']}/listings/import", key)

    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["type"].endswith("/listings-not-importable")
    assert problem["listings"] == [
        {
            "listing": tea_2,
            "sku": "TEA-2",
            "problem": "sku-taken",
            "detail": problem["listings"][0]["detail"],
        }
    ]
    assert "TEA-2" in problem["listings"][0]["detail"]
    assert problem["detail"].startswith("nothing was imported: 1 of 3 listing(s)")
    assert f"POST /v1/channels/{channel['id']}/reconcile" in problem["detail"]
    products = (await stack.call("GET", "/v1/products", key)).json()["data"]
    assert [product["id"] for product in products] == [made.json()["id"]]
    listed = await stack.call("GET", f"/v1/channels/{channel['id']}/listings?status=unmatched", key)
    assert sorted(row["sku"] for row in listed.json()["data"]) == ["TEA-1", "TEA-2", "TEA-3"]

    # Reconciled, the taken SKU's listing is matched to the creator's variant; the rest import.
    reconciled = await stack.call("POST", f"/v1/channels/{channel['id']}/reconcile", key)
    assert reconciled.status_code in (200, 202), reconciled.text

    async def matched() -> bool:
        found = await stack.call(
            "GET", f"/v1/channels/{channel['id']}/listings?status=matched", key
        )
        return [row["sku"] for row in found.json()["data"]] == ["TEA-2"]

    await eventually(matched, what="TEA-2's listing matched by the reconciliation")
    imported = await stack.call("POST", f"/v1/channels/{channel['id']}/listings/import", key)
    assert imported.status_code == 200, imported.text
    assert imported.json() == {"object": "channel_import", "products": 2, "variants": 2}
    products = (await stack.call("GET", "/v1/products?limit=10", key)).json()["data"]
    skus = sorted(variant["sku"] for product in products for variant in product["variants"])
    assert skus == ["TEA-1", "TEA-2", "TEA-3"]
    prices = (await stack.call("GET", "/v1/prices?limit=10", key)).json()["data"]
    assert sorted(price["unit_amount"] for price in prices) == [3600, 3600]


# Webhooks: removed on disconnecting, cancellations and uninstalls ----------------------


@pytest.fixture
async def quiet_stack(any_database_url: str, tmp_path: Path) -> Any:
    """The stack with polls and reconciliations an hour apart: what happens in a test
    after the first poll comes by webhook."""
    async with channel_stack(
        any_database_url,
        tmp_path / "var",
        channel_poll_seconds=3600,
        channel_reconcile_seconds=3600,
    ) as built:
        yield built


async def _polled_once(stack: Stack, channel_id: str) -> None:
    """Wait for the first poll after connecting (it comes due at once)."""

    async def polled() -> bool:
        async with stack.database.unit_of_work() as session:
            channel = await session.get_one(Channel, channel_id)
            return channel.orders_cursor is not None

    await eventually(polled, what="the first poll")


async def _sync_log(stack: Stack, key: str, channel_id: str) -> list[dict[str, Any]]:
    response = await stack.call("GET", f"/v1/channels/{channel_id}/sync_log", key)
    entries: list[dict[str, Any]] = response.json()["data"]
    return entries


async def test_disconnecting_removes_our_webhooks_from_shopify_and_woocommerce(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    stack.shopify.add_product("Mug", [("MUG-6", 5)])
    stack.woo.add_product("Mug", [("MUG-6", 5)])
    shopify = await stack.connect(key, "shopify")
    woo = await stack.connect(key, "woocommerce")
    assert shopify["webhooks"] == [
        "orders/create",
        "orders/cancelled",
        "inventory_levels/update",
        "app/uninstalled",
    ]
    assert (len(stack.shopify.subscriptions), len(stack.woo.hooks)) == (4, 2)

    gone = [
        (await stack.call("DELETE", f"/v1/channels/{c['id']}", key)).json() for c in (shopify, woo)
    ]

    assert [(g["status"], g["webhooks"], g["webhooks_removed"]) for g in gone] == [
        ("disconnected", [], True),
        ("disconnected", [], True),
    ]
    assert (stack.shopify.subscriptions, stack.woo.hooks) == ({}, {})
    [shopify_log, *_] = await _sync_log(stack, key, shopify["id"])
    [woo_log, *_] = await _sync_log(stack, key, woo["id"])
    assert (shopify_log["kind"], shopify_log["outcome"], shopify_log["detail"]) == (
        "disconnect",
        "ok",
        "disconnected; webhooks removed from the channel (orders/create, orders/cancelled, "
        "inventory_levels/update, app/uninstalled)",
    )
    assert (woo_log["kind"], woo_log["outcome"], woo_log["detail"]) == (
        "disconnect",
        "ok",
        "disconnected; webhooks removed from the channel (order.created, product.updated)",
    )
    # Disconnecting again calls nothing and changes nothing.
    again = await stack.call("DELETE", f"/v1/channels/{shopify['id']}", key)
    assert (again.status_code, again.json()["webhooks_removed"]) == (200, True)
    assert [e["kind"] for e in await _sync_log(stack, key, shopify["id"])].count("disconnect") == 1


async def test_a_channel_unreachable_or_refusing_the_keys_is_disconnected_all_the_same(
    stack: Stack,
) -> None:
    _, key = await stack.creator()
    stack.shopify.add_product("Mug", [("MUG-7", 5)])
    stack.woo.add_product("Mug", [("MUG-7", 5)])
    shopify = await stack.connect(key, "shopify")
    woo = await stack.connect(key, "woocommerce")
    # The shop moved away (nothing listens at its address any more); the store's shop
    # manager revoked the API key.
    vault = vault_from_settings(stack.settings)
    async with stack.database.unit_of_work() as session:
        channel = await session.get_one(Channel, shopify["id"])
        credentials = vault.open(channel.credentials)
        channel.credentials = vault.seal(
            {**credentials, "shop_url": f"http://127.0.0.1:{free_port()}"}
        )
    stack.woo.revoke()

    unreachable = await stack.call("DELETE", f"/v1/channels/{shopify['id']}", key)
    refused = await stack.call("DELETE", f"/v1/channels/{woo['id']}", key)

    assert (unreachable.status_code, refused.status_code) == (200, 200)
    assert [
        (c.json()["status"], c.json()["webhooks_removed"], c.json()["webhooks"])
        for c in (unreachable, refused)
    ] == [
        (
            "disconnected",
            False,
            ["orders/create", "orders/cancelled", "inventory_levels/update", "app/uninstalled"],
        ),
        ("disconnected", False, ["order.created", "product.updated"]),
    ]
    [shopify_log, *_] = await _sync_log(stack, key, shopify["id"])
    [woo_log, *_] = await _sync_log(stack, key, woo["id"])
    assert (shopify_log["kind"], shopify_log["outcome"]) == ("disconnect", "error")
    assert shopify_log["detail"].startswith(
        "disconnected; the webhooks could not be removed from the channel: Shopify: ConnectError"
    )
    assert (woo_log["kind"], woo_log["outcome"], woo_log["detail"]) == (
        "disconnect",
        "error",
        "disconnected; the webhooks could not be removed from the channel: the channel "
        "refused our credentials (401: woocommerce_rest_cannot_view: Sorry, you cannot list "
        "resources.). The channel keeps sending them, refused (401), until it gives up on "
        "them; delete them in the channel's admin",
    )
    assert len(stack.woo.hooks) == 2  # still on the store
    async with stack.database.unit_of_work() as session:
        for channel_id in (shopify["id"], woo["id"]):
            channel = await session.get_one(Channel, channel_id)
            assert vault.open(channel.credentials) == {}
    # Its deliveries are refused (401): the store counts a failure of each webhook.
    stack.woo.sell("MUG-7", 1)
    await eventually(
        lambda: [h.failure_count for h in stack.woo.hooks.values()] == [1, 1],
        what="the store's deliveries refused",
    )
    refused_delivery = await stack.http.post(
        f"/hooks/channels/{woo['id']}",
        content=b"{}",
        headers={"X-WC-Webhook-Topic": "order.created", "X-WC-Webhook-Signature": "c2ln"},
    )
    assert refused_delivery.status_code == 401
    assert refused_delivery.json()["detail"] == "this channel is disconnected"


async def test_a_shopify_cancellation_returns_the_units_by_webhook(quiet_stack: Stack) -> None:
    stack = quiet_stack
    _, key = await stack.creator()
    await _stocked(stack, key, "MUG-8", 5)
    stack.shopify.add_product("Mug", [("MUG-8", 5)])
    channel = await stack.connect(key, "shopify")
    await _polled_once(stack, channel["id"])
    order_id = stack.shopify.sell("MUG-8", 2)

    async def available_is(n: int) -> bool:
        return await _available(stack, key, "MUG-8") == n

    await eventually(lambda: available_is(3), what="the order taken from stock by webhook")

    async def known_to_show_3() -> bool:
        listings = await stack.call("GET", f"/v1/channels/{channel['id']}/listings", key)
        return bool(listings.json()["data"][0]["channel_quantity"] == 3)

    await eventually(known_to_show_3, what="the sale's count known (a stale write read it)")
    cancelled = await stack.http.post(
        f"{stack.shopify.base_url}/_double/cancel", json={"order": order_id}
    )
    assert cancelled.status_code == 200

    await eventually(lambda: available_is(5), within=10, what="the units back by webhook")
    orders = (await stack.call("GET", f"/v1/channels/{channel['id']}/orders", key)).json()
    assert [(o["external_id"], o["status"], o["lines"]) for o in orders["data"]] == [
        (order_id, "cancelled", [{"sku": "MUG-8", "quantity": 2, "outcome": "cancelled"}])
    ]
    async with stack.database.unit_of_work() as session:
        topics = (
            await session.execute(
                select(InboxEvent.type).where(InboxEvent.processed_at.is_not(None))
            )
        ).scalars()
        assert "orders/cancelled" in set(topics)
        channel_row = await session.get_one(Channel, channel["id"])
        assert channel_row.next_poll_at is not None
        assert channel_row.next_poll_at > datetime.now(UTC) + timedelta(minutes=50)
    await eventually(
        lambda: stack.shopify.quantity_of("MUG-8") == 5, what="Shopify showing 5 again"
    )


async def test_an_app_uninstalled_webhook_pauses_the_channel_and_emails_the_creator(
    quiet_stack: Stack,
) -> None:
    stack = quiet_stack
    _, key = await stack.creator()
    stack.shopify.add_product("Mug", [("MUG-9", 5)])
    channel = await stack.connect(key, "shopify")
    await _polled_once(stack, channel["id"])

    uninstalled = await stack.http.post(f"{stack.shopify.base_url}/_double/uninstall")
    assert uninstalled.status_code == 200

    async def paused() -> bool:
        found = await stack.call("GET", f"/v1/channels/{channel['id']}", key)
        return bool(found.json()["status"] == "paused")

    await eventually(paused, within=10, what="the channel paused by the webhook")
    found = (await stack.call("GET", f"/v1/channels/{channel['id']}", key)).json()
    assert found["paused_reason"] == "the app was uninstalled from the shop (app/uninstalled)"
    [entry, *_] = await _sync_log(stack, key, channel["id"])
    assert (entry["kind"], entry["outcome"], entry["detail"]) == (
        "push",
        "paused",
        "the app was uninstalled from the shop (app/uninstalled)",
    )
    events = (await stack.call("GET", "/v1/events?type=channel.paused", key)).json()["data"]
    assert [e["data"]["object"]["paused_reason"] for e in events] == [
        "the app was uninstalled from the shop (app/uninstalled)"
    ]

    async def emailed() -> bool:
        async with stack.database.unit_of_work() as session:
            found = (
                await session.execute(select(Email).where(Email.kind == "channel_paused"))
            ).scalars()
            return len(list(found)) == 1

    await eventually(emailed, what="the creator emailed")


async def test_an_import_of_a_sku_no_variant_may_have_imports_nothing(stack: Stack) -> None:
    _, key = await stack.creator()
    stack.woo.add_product("Teapot", [("TEA-OK", 4)])
    stack.woo.add_product("Odd teapot", [("TEA BAD/1", 4)])
    channel = await stack.connect(key, "woocommerce")
    assert channel["listings"] == {"matched": 0, "unmatched": 2, "conflict": 0}

    refused = await stack.call("POST", f"/v1/channels/{channel['id']}/listings/import", key)

    assert refused.status_code == 409, refused.text
    [listing] = refused.json()["listings"]
    assert (listing["sku"], listing["problem"]) == ("TEA BAD/1", "invalid-sku")
    assert listing["detail"].startswith("sku 'TEA BAD/1' is not a SKU a variant may have")
    assert (await stack.call("GET", "/v1/products", key)).json()["data"] == []
