"""Channel sync: from a stock change on Stallholder to every channel showing it, with 3
channels (Shopify, Etsy, WooCommerce doubles with their real default rate limits) and
1,000 SKUs moving.

Stallholder is served by ``stallholder serve`` (its embedded worker on) on PostgreSQL. The
doubles run in this process, each a real HTTP server: Shopify with 1,000 products (leaky
bucket of 2,000 points restoring 100 a second), WooCommerce with 1,000 products (no
documented limit), Etsy with the same SKUs as 100 listings of 10 variations (10 requests a
second, 10,000 a day). Every channel shows ``available`` (no buffer), so every movement
changes what each channel must show.

For ``duration`` seconds, random SKUs move by ±1 through ``POST /v1/inventory/adjustments``
at ``rate`` a second. A movement's latency on a channel is from the adjustment's response
(the change is committed) to the end of the first push of that SKU to that channel that
shows the value the movement made (or a later one, when the next movement came before the
push: coalesced), read from the sync log (``created_at`` is written when the channel's
reply arrived; one clock, one machine). Afterwards the doubles are compared with the
ledger: every channel must show every SKU's ``available``.

Server CPU (its process tree, from /proc) is reported per movement net of what the idle
server spends each second (the sweep and the polls), measured for 10 s before the
movements begin.
"""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
from rich.table import Table
from sqlalchemy import create_engine, select
from tests.doubles.etsy import EtsyDouble, serve_etsy
from tests.doubles.shopify import ShopifyDouble, serve_shopify
from tests.doubles.woocommerce import WooCommerceDouble, serve_woocommerce

from bench import harness
from bench.checkout import (
    ADMIN_KEY,
    _create_postgres_database,
    _drop_postgres_database,
    _stallholder,
)
from stallholder.channels.models import Channel, SyncLogEntry
from stallholder.kit.db import sync_url

NAME = "channels"
SKUS = 1_000
ON_HAND = 50
ETSY_VARIATIONS = 10
SHOPIFY_SECRET = "shpss_bench"  # noqa: S105 (a local double's, not a secret)
ETSY_KEYSTRING, ETSY_SECRET, ETSY_SHOP, ETSY_TOKEN = (
    "bench-key",
    "bench-secret",
    5550001,
    "777001.bench",
)
GOAL_P99_MS = 2_000
IDLE_SECONDS = 10.0


def _sku(n: int) -> str:
    return f"BENCH-{n:04d}"


def _doubles() -> tuple[ShopifyDouble, EtsyDouble, WooCommerceDouble]:
    shopify = ShopifyDouble(client_secret=SHOPIFY_SECRET)
    woo = WooCommerceDouble()
    etsy = EtsyDouble(
        keystring=ETSY_KEYSTRING,
        shared_secret=ETSY_SECRET,
        shop_id=ETSY_SHOP,
        access_token=ETSY_TOKEN,
    )
    for n in range(SKUS):
        shopify.add_product(f"Mug {n}", [(_sku(n), 0)])
        woo.add_product(f"Mug {n}", [(_sku(n), 0)])
    for start in range(0, SKUS, ETSY_VARIATIONS):
        etsy.add_product(
            f"Mugs {start}", [(_sku(n), 1) for n in range(start, start + ETSY_VARIATIONS)]
        )
    return shopify, etsy, woo


async def _setup(
    base: str, shopify: ShopifyDouble, etsy: EtsyDouble, woo: WooCommerceDouble
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        creator = (
            await http.post(
                "/v1/creators",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                json={"display_name": "Bench Ceramics", "email": "bench@example.com"},
            )
        ).json()
        auth = {"Authorization": f"Bearer {creator['secret_key']}"}
        location = (await http.post("/v1/locations", headers=auth, json={"name": "Kiln"})).json()
        gate = asyncio.Semaphore(16)

        async def stock(n: int) -> None:
            async with gate:
                made = await http.post(
                    "/v1/products",
                    headers=auth,
                    json={
                        "kind": "physical",
                        "name": f"Mug {n}",
                        "status": "published",
                        "variants": [{"sku": _sku(n)}],
                    },
                )
                made.raise_for_status()
                adjusted = await http.post(
                    "/v1/inventory/adjustments",
                    headers=auth,
                    json={
                        "sku": _sku(n),
                        "location": location["id"],
                        "delta": ON_HAND,
                        "reason": "kiln",
                    },
                )
                adjusted.raise_for_status()

        await asyncio.gather(*(stock(n) for n in range(SKUS)))
        channels = {}
        for kind, body in (
            (
                "shopify",
                {
                    "shop_url": shopify.base_url,
                    "access_token": shopify.access_token,
                    "api_secret": SHOPIFY_SECRET,
                },
            ),
            ("etsy", {"shop_id": str(ETSY_SHOP), "access_token": ETSY_TOKEN}),
            (
                "woocommerce",
                {
                    "store_url": woo.base_url,
                    "consumer_key": woo.consumer_key,
                    "consumer_secret": woo.consumer_secret,
                },
            ),
        ):
            response = await http.post("/v1/channels", headers=auth, json={"kind": kind, **body})
            if response.status_code != 201:
                raise RuntimeError(f"connecting {kind}: {response.status_code} {response.text}")
            channels[kind] = response.json()["id"]
    return {"key": creator["secret_key"], "location": location["id"], "channels": channels}


def _in_step(doubles: dict[str, Any], available: dict[str, int]) -> dict[str, int]:
    """How many SKUs each channel shows wrong."""
    return {
        kind: sum(1 for sku, n in available.items() if double.quantity_of(sku) != n)
        for kind, double in doubles.items()
    }


async def _move(
    base: str, shop: dict[str, Any], *, rate: float, duration: float
) -> tuple[list[tuple[str, float, int]], dict[str, int]]:
    """Random ±1 movements at ``rate`` a second: (sku, committed at, available after)."""
    draw = random.Random(7)
    available = {_sku(n): ON_HAND for n in range(SKUS)}
    moves: list[tuple[str, float, int]] = []
    auth = {"Authorization": f"Bearer {shop['key']}"}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        started = time.monotonic()
        tasks = []

        async def one(sku: str, delta: int) -> None:
            response = await http.post(
                "/v1/inventory/adjustments",
                headers=auth,
                json={"sku": sku, "location": shop["location"], "delta": delta, "reason": "count"},
            )
            if response.status_code == 200:
                after = int(response.json()["available"])
                moves.append((sku, datetime.now(UTC).timestamp(), after))

        n = 0
        while time.monotonic() - started < duration:
            due = started + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            sku = _sku(draw.randrange(SKUS))
            tasks.append(asyncio.create_task(one(sku, draw.choice((-1, 1)))))
            n += 1
        await asyncio.gather(*tasks)
        for n in range(SKUS):
            response = await http.get(f"/v1/inventory/{_sku(n)}", headers=auth)
            available[_sku(n)] = int(response.json()["available"])
    return moves, available


def _latencies(
    url: str, channels: dict[str, str], moves: list[tuple[str, float, int]]
) -> dict[str, Any]:
    engine = create_engine(sync_url(url))
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                SyncLogEntry.channel_id,
                SyncLogEntry.sku,
                SyncLogEntry.pushed,
                SyncLogEntry.created_at,
            )
            .where(SyncLogEntry.kind == "push", SyncLogEntry.outcome == "ok")
            .order_by(SyncLogEntry.id)
        ).all()
        statuses = dict(connection.execute(select(Channel.kind, Channel.status)).all())
    engine.dispose()
    pushes: dict[tuple[str, str | None], list[tuple[float, int | None]]] = {}
    for channel_id, sku, pushed, created in rows:
        pushes.setdefault((channel_id, sku), []).append(
            (created.replace(tzinfo=UTC).timestamp(), pushed)
        )
    results: dict[str, Any] = {}
    every: list[float] = []
    for kind, channel_id in channels.items():
        found: list[float] = []
        missing = 0
        for sku, at, value in moves:
            after = [(t, v) for t, v in pushes.get((channel_id, sku), []) if t >= at]
            exact = [t for t, v in after if v == value]
            first = exact[0] if exact else (after[0][0] if after else None)
            if first is None:
                missing += 1
                continue
            found.append((first - at) * 1000)
        found.sort()
        every += found
        results[kind] = {
            "movements": len(moves),
            "measured": len(found),
            "without_push": missing,
            "p50_ms": round(harness.percentile(found, 50), 1) if found else None,
            "p99_ms": round(harness.percentile(found, 99), 1) if found else None,
            "max_ms": round(found[-1], 1) if found else None,
            "status": statuses.get(kind),
        }
    every.sort()
    results["all_channels"] = {
        "p50_ms": round(harness.percentile(every, 50), 1) if every else None,
        "p99_ms": round(harness.percentile(every, 99), 1) if every else None,
    }
    return results


def run(*, duration: float, rate: float = 5.0, **_: Any) -> dict[str, Any]:
    created = _create_postgres_database()
    if created is None:
        return {"skipped": "PostgreSQL is not reachable"}
    url, name = created
    try:
        with TemporaryDirectory(prefix="stallholder-channels-") as tmp, ExitStack() as stack:
            workdir = Path(tmp)
            shopify, etsy, woo = _doubles()
            stack.enter_context(serve_shopify(shopify))
            stack.enter_context(serve_etsy(etsy))
            stack.enter_context(serve_woocommerce(woo))
            stack.callback(shopify.close)
            stack.callback(etsy.close)
            stack.callback(woo.close)
            port = harness.free_port()
            env = {
                "STALLHOLDER_DATABASE_URL": url,
                "STALLHOLDER_ADMIN_KEY": ADMIN_KEY,
                "STALLHOLDER_DATA_DIR": str(workdir / "var"),
                "STALLHOLDER_BASE_URL": f"http://127.0.0.1:{port}",
                "STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS": "true",
                "STALLHOLDER_SHOPIFY_CLIENT_SECRET": SHOPIFY_SECRET,
                "STALLHOLDER_ETSY_API_BASE": etsy.base_url,
                "STALLHOLDER_ETSY_KEYSTRING": ETSY_KEYSTRING,
                "STALLHOLDER_ETSY_SHARED_SECRET": ETSY_SECRET,
            }
            migrated = _stallholder("migrate", env=env)
            if migrated.returncode != 0:
                raise RuntimeError(f"migrate failed: {migrated.stdout}{migrated.stderr}")
            command = [
                str(harness.BIN / "stallholder"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            doubles = {"shopify": shopify, "etsy": etsy, "woocommerce": woo}
            with harness.served(command, env=env, port=port, log=workdir / "serve.log") as (
                base,
                pid,
            ):
                setup_started = time.monotonic()
                shop = asyncio.run(_setup(base, shopify, etsy, woo))
                target = {_sku(n): ON_HAND for n in range(SKUS)}
                deadline = time.monotonic() + 600
                while any(_in_step(doubles, target).values()) and time.monotonic() < deadline:
                    time.sleep(0.5)
                first_sync = round(time.monotonic() - setup_started, 1)
                # Shopify and WooCommerce echo every write as a webhook: let the thousands
                # of the first sync be delivered and handled before anything is measured.
                for double in (shopify, woo):
                    double.webhooks.wait_idle(timeout=600)
                harness.wait_until_idle(lambda: harness.tree_cpu_seconds(pid), limit=300)
                # With nothing moving the server still sweeps every second and polls each
                # channel's orders: measure that, to tell it from what movements cost.
                time.sleep(3)
                idle_started, idle_cpu = time.monotonic(), harness.tree_cpu_seconds(pid)
                time.sleep(IDLE_SECONDS)
                idle_rate = (harness.tree_cpu_seconds(pid) - idle_cpu) / (
                    time.monotonic() - idle_started
                )
                started, cpu_before = time.monotonic(), harness.tree_cpu_seconds(pid)
                moves, available = asyncio.run(_move(base, shop, rate=rate, duration=duration))
                deadline = time.monotonic() + 300
                while any(_in_step(doubles, available).values()) and time.monotonic() < deadline:
                    time.sleep(0.5)
                elapsed = time.monotonic() - started
                cpu = harness.tree_cpu_seconds(pid) - cpu_before - idle_rate * elapsed
                wrong = _in_step(doubles, available)
                latencies = _latencies(url, shop["channels"], moves)
    finally:
        _drop_postgres_database(name)
    overall = latencies["all_channels"]["p99_ms"]
    return {
        "concurrency": 1,
        "skus": SKUS,
        "channels": 3,
        "movements_per_second": rate,
        "duration_seconds": duration,
        "movements": len(moves),
        "setup_and_first_full_sync_seconds": first_sync,
        "server_idle_cpu_ms_per_second": round(idle_rate * 1000, 1),
        "server_cpu_ms_per_movement": round(cpu * 1000 / len(moves), 2) if moves else None,
        **latencies,
        "skus_wrong_after": wrong,
        "goal": f"p99 <= {GOAL_P99_MS} ms from a stock change to every channel showing it; 0 wrong",
        "goal_met": overall is not None and overall <= GOAL_P99_MS and not any(wrong.values()),
    }


def table(results: dict[str, Any]) -> Table:
    table = Table(
        title=f"channels: {results.get('skus')} SKUs × 3 channels, "
        f"{results.get('movements_per_second')} movements/s for {results.get('duration_seconds')} s"
    )
    for column in ("channel", "measured", "p50_ms", "p99_ms", "max_ms", "status"):
        table.add_column(column, justify="left" if column in ("channel", "status") else "right")
    for kind in ("shopify", "etsy", "woocommerce", "all_channels"):
        row = results.get(kind, {})
        table.add_row(
            kind,
            *(str(row.get(c, "")) for c in ("measured", "p50_ms", "p99_ms", "max_ms", "status")),
        )
    return table
