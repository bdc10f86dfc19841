"""A whole sync stack for end-to-end tests: Stallholder served by uvicorn on a local port
(so the channel doubles can deliver webhooks to it), its worker running, and a Shopify, an
Etsy and a WooCommerce double, each a real HTTP server that the connectors reach through
their normal clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from stallholder.app import create_app
from stallholder.channels.models import ChannelListing, ChannelOrder, SyncLogEntry
from stallholder.events.models import InboxEvent
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.kit.work import WorkItem
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, bearer
from tests.doubles.common import Chaos, serve_app
from tests.doubles.etsy import EtsyDouble, serve_etsy
from tests.doubles.shopify import ShopifyDouble, serve_shopify
from tests.doubles.woocommerce import WooCommerceDouble, serve_woocommerce
from tests.smtp_server import free_port

SHOPIFY_SECRET = "shpss_test_app_secret"
ETSY_KEYSTRING = "etsy-keystring"
ETSY_SECRET = "etsy-secret"
ETSY_SHOP_ID = 5550001
ETSY_TOKEN = "777001.etsy-token"


@dataclass
class Stack:
    base: str
    http: httpx.AsyncClient
    database: Database
    settings: Settings
    shopify: ShopifyDouble
    etsy: EtsyDouble
    woo: WooCommerceDouble
    worker: Worker

    async def creator(self) -> tuple[str, str]:
        """A creator: (id, secret key)."""
        response = await self.http.post(
            "/v1/creators",
            headers=bearer(ADMIN_KEY),
            json={"display_name": "Kiln & Clay", "email": "studio@kilnandclay.example"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return str(body["id"]), str(body["secret_key"])

    async def report(self, sku: str) -> str:
        """What the sync layer holds, for a failed wait's message."""
        async with self.database.unit_of_work() as session:
            rows: list[Any] = [
                *(await session.execute(select(ChannelListing))).scalars(),
                *(await session.execute(select(ChannelOrder))).scalars(),
                *(await session.execute(select(SyncLogEntry))).scalars(),
                *(await session.execute(select(InboxEvent))).scalars(),
                *(
                    await session.execute(select(WorkItem).where(WorkItem.kind != "channels.sweep"))
                ).scalars(),
            ]
            lines = [
                f"{type(row).__name__} "
                + " ".join(f"{k}={v}" for k, v in vars(row).items() if not k.startswith("_"))
                for row in rows
            ]
        shown = {
            name: double.quantity_of(sku)
            for name, double in (("shopify", self.shopify), ("etsy", self.etsy), ("woo", self.woo))
        }
        return "\n".join([*lines, f"the doubles show {shown}"])

    async def call(self, method: str, path: str, key: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(method, path, headers=bearer(key), **kwargs)

    async def connect(self, key: str, kind: str, **rules: Any) -> dict[str, Any]:
        body: dict[str, Any]
        if kind == "shopify":
            body = {
                "kind": "shopify",
                "shop_url": self.shopify.base_url,
                "access_token": self.shopify.access_token,
                "api_secret": SHOPIFY_SECRET,
            }
        elif kind == "etsy":
            body = {
                "kind": "etsy",
                "shop_id": str(ETSY_SHOP_ID),
                "access_token": ETSY_TOKEN,
            }
        else:
            body = {
                "kind": "woocommerce",
                "store_url": self.woo.base_url,
                "consumer_key": self.woo.consumer_key,
                "consumer_secret": self.woo.consumer_secret,
            }
        response = await self.call("POST", "/v1/channels", key, json={**body, **rules})
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float = 20.0,
    what: str = "the condition",
) -> None:
    """Wait until ``check`` holds (the stack is asynchronous: a worker, webhooks)."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def _doubles(chaos: Chaos | None) -> Iterator[tuple[ShopifyDouble, EtsyDouble, WooCommerceDouble]]:
    shopify = ShopifyDouble(client_secret=SHOPIFY_SECRET, chaos=chaos)
    etsy = EtsyDouble(
        keystring=ETSY_KEYSTRING,
        shared_secret=ETSY_SECRET,
        shop_id=ETSY_SHOP_ID,
        access_token=ETSY_TOKEN,
        chaos=chaos,
    )
    woo = WooCommerceDouble(chaos=chaos)
    with serve_shopify(shopify), serve_etsy(etsy), serve_woocommerce(woo):
        try:
            yield shopify, etsy, woo
        finally:
            shopify.close()
            etsy.close()
            woo.close()


@contextlib.asynccontextmanager
async def channel_stack(
    database_url: str, data_dir: Path, *, chaos: Chaos | None = None, **overrides: Any
) -> AsyncIterator[Stack]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _doubles(chaos) as (shopify, etsy, woo):
        settings = Settings(
            data_dir=data_dir,
            database_url=database_url,
            admin_key=ADMIN_KEY,
            base_url=base,
            embedded_worker=False,
            allow_private_webhook_targets=True,
            worker_retry_jitter=0.0,
            worker_poll_seconds=1.0,
            shopify_client_id="shp-client",
            shopify_client_secret=SHOPIFY_SECRET,
            etsy_api_base=etsy.base_url,
            etsy_connect_url=f"{etsy.base_url}/oauth/connect",
            etsy_keystring=ETSY_KEYSTRING,
            etsy_shared_secret=ETSY_SECRET,
            drop_rate_limit_per_ip=0,
            drop_rate_limit_per_buyer=0,
            **{"channel_poll_seconds": 1.0, **overrides},
        )
        app = create_app(settings, clock=SystemClock(), run_worker=False)
        database = Database(database_url)
        worker = Worker(database, SystemClock(), settings=settings)
        with serve_app(app, name="Stallholder", port=port):
            running = asyncio.create_task(worker.run())
            try:
                async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                    yield Stack(
                        base=base,
                        http=http,
                        database=database,
                        settings=settings,
                        shopify=shopify,
                        etsy=etsy,
                        woo=woo,
                        worker=worker,
                    )
            finally:
                worker.stop()
                await asyncio.wait_for(running, timeout=30)
                await database.dispose()
