"""The dashboard's stock form and channel buttons (issue 10: stock by form, not only by
API; issue 11: a channel paused, resumed and synced from the page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stallholder import demo
from stallholder.channels import connect
from stallholder.channels.buffers import Rules
from stallholder.channels.connectors import Listing, ListingRef
from stallholder.channels.models import Channel
from stallholder.channels.registry import engine_from_settings
from stallholder.channels.sync import RECONCILE_KIND
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.work import WorkItem
from stallholder.ledger.service import platform_fee_policy
from stallholder.payments.config import gateway_from_settings
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.doubles.woocommerce import WooCommerceDouble, serve_woocommerce
from tests.e2e.portal_helpers import browser, submit
from tests.e2e.test_dashboard import _sign_in_from_outbox, unlabelled_controls

pytestmark = pytest.mark.anyio
KILN = "studio@kilnandclay.example"


async def _kiln(
    settings: Settings, database: Database, clock: FrozenClock, tmp_path: Path
) -> dict[str, Any]:
    keys = await demo.seed(
        database,
        clock=clock,
        gateway=gateway_from_settings(settings, database=database),
        data_dir=tmp_path,
        fees=platform_fee_policy(settings),
        base_url=settings.base_url,
    )
    return next(entry for entry in keys.values() if entry["display_name"] == "Kiln & Clay")


async def test_stock_is_counted_in_and_out_from_the_inventory_page(
    api: Api, settings: Settings, database: Database, clock: FrozenClock, tmp_path: Path
) -> None:
    kiln = await _kiln(settings, database, clock, tmp_path)
    key = kiln["secret_key"]
    before = (await api.http.get("/v1/inventory/KC-MOON-MUG", headers=bearer(key))).json()
    [level] = before["locations"]
    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, KILN)
        page = await phone.get("/dashboard/inventory")
        assert 'id="adjust-form"' in page.text
        assert unlabelled_controls(page.text) == []
        done = await submit(
            phone,
            "/dashboard/inventory",
            "/dashboard/inventory/adjustments",
            {
                "sku": "KC-MOON-MUG",
                "location": level["location"],
                "delta": "+3",
                "reason": "firing",
            },
        )
        assert (done.status_code, done.headers["location"]) == (
            303,
            "/dashboard/inventory?adjusted=KC-MOON-MUG",
        )
        # Mistakes show the form again, say what to fix, and change nothing.
        typo = await submit(
            phone,
            "/dashboard/inventory",
            "/dashboard/inventory/adjustments",
            {"sku": "KC-MOON-MUG", "location": level["location"], "delta": "three"},
        )
        assert typo.status_code == 422
        assert 'id="adjust-error"' in typo.text
        assert 'value="three"' in typo.text
        unknown = await submit(
            phone,
            "/dashboard/inventory",
            "/dashboard/inventory/adjustments",
            {"sku": "NO-SUCH", "location": level["location"], "delta": "1"},
        )
        assert unknown.status_code == 404
        assert "none of your variants has the SKU &#39;NO-SUCH&#39;" in unknown.text
        too_many = await submit(
            phone,
            "/dashboard/inventory",
            "/dashboard/inventory/adjustments",
            {"sku": "KC-MOON-MUG", "location": level["location"], "delta": "-1000"},
        )
        assert too_many.status_code == 409
    after = (await api.http.get("/v1/inventory/KC-MOON-MUG", headers=bearer(key))).json()
    assert after["on_hand"] == before["on_hand"] + 3
    movements = (
        await api.http.get("/v1/inventory/KC-MOON-MUG/movements", headers=bearer(key))
    ).json()["data"]
    assert (movements[0]["quantity"], movements[0]["reason"], movements[0]["actor"]) == (
        3,
        "firing",
        "dashboard",
    )


async def test_a_channel_is_paused_resumed_and_synced_from_its_page(
    settings: Settings, database: Database, clock: FrozenClock, tmp_path: Path
) -> None:
    kiln = await _kiln(settings, database, clock, tmp_path)
    engine = engine_from_settings(settings)
    new = connect.NewChannel(
        kind="woocommerce",
        name="Kiln & Clay on WooCommerce",
        url="https://shop.example",
        credentials={"store_url": "https://shop.example"},
        rules=Rules(),
    )
    found = connect.Found(
        webhooks=[],
        listings=[Listing(ref=ListingRef("1"), sku="KC-MOON-MUG", title="Mug", quantity=0)],
    )
    async with database.unit_of_work() as session:
        channel = await connect.store(
            session,
            engine,
            new,
            found,
            channel_id="chn_dashboard",
            creator_id=kiln["creator"],
            settings=settings,
            now=clock.now(),
        )
    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, KILN)
        page = await phone.get("/dashboard/channels")
        assert "Kiln &amp; Clay on WooCommerce" in page.text
        assert unlabelled_controls(page.text) == []
        paused = await submit(
            phone, "/dashboard/channels", f"/dashboard/channels/{channel.id}/pause"
        )
        assert paused.status_code == 303
        resumed = await submit(
            phone, "/dashboard/channels", f"/dashboard/channels/{channel.id}/resume"
        )
        assert resumed.status_code == 303
        synced = await submit(
            phone, "/dashboard/channels", f"/dashboard/channels/{channel.id}/sync"
        )
        assert synced.status_code == 303
        other = await phone.post("/dashboard/channels/chn_not_yours/pause", data={})
        assert other.status_code in (403, 404)
    async with database.unit_of_work() as session:
        stored = await session.get_one(Channel, channel.id)
        assert (stored.status, stored.paused_reason) == ("active", None)
        kinds = (await session.execute(select(WorkItem.kind))).scalars().all()
    assert RECONCILE_KIND in kinds


async def test_a_store_is_connected_from_the_dashboard(
    settings: Settings, database: Database, clock: FrozenClock, tmp_path: Path
) -> None:
    kiln = await _kiln(settings, database, clock, tmp_path)
    woo = WooCommerceDouble()
    woo.add_product("Speckled moon mug", [("KC-MOON-MUG", 3)])
    with serve_woocommerce(woo):
        try:
            async with browser(settings, database, clock) as phone:
                await _sign_in_from_outbox(phone, database, KILN)
                page = await phone.get("/dashboard/channels/new")
                assert unlabelled_controls(page.text) == []
                missing = await submit(
                    phone,
                    "/dashboard/channels/new",
                    "/dashboard/channels/new",
                    {"kind": "shopify", "url": "https://kiln.myshopify.com"},
                )
                assert missing.status_code == 422
                assert "a shopify channel needs access_token" in missing.text
                refused = await submit(
                    phone,
                    "/dashboard/channels/new",
                    "/dashboard/channels/new",
                    {
                        "kind": "woocommerce",
                        "url": woo.base_url,
                        "consumer_key": "ck_wrong",
                        "consumer_secret": "cs_wrong",
                    },
                )
                assert refused.status_code == 400
                assert "refused the credentials" in refused.text
                assert "cs_wrong" not in refused.text  # secrets are not shown again
                connected = await submit(
                    phone,
                    "/dashboard/channels/new",
                    "/dashboard/channels/new",
                    {
                        "kind": "woocommerce",
                        "url": woo.base_url,
                        "consumer_key": woo.consumer_key,
                        "consumer_secret": woo.consumer_secret,
                    },
                )
                assert connected.status_code == 303
                board = await phone.get("/dashboard/channels")
        finally:
            woo.close()
    assert "KC-MOON-MUG" in board.text
    async with database.unit_of_work() as session:
        [channel] = (
            await session.execute(select(Channel).where(Channel.creator_id == kiln["creator"]))
        ).scalars()
    assert (channel.kind, channel.status, channel.url) == ("woocommerce", "active", woo.base_url)
