"""Chaos (issue 11, "Must be shown"): for a minute of random stock movements — sales on
Stallholder, orders on Shopify, Etsy and WooCommerce, counts and breakage — the doubles
lose, delay and throttle a share of requests and duplicate webhooks. Afterwards, after one
reconciliation, every channel shows ``available − buffer`` for every SKU, every order the
channels took is in the ledger once, and nothing is oversold in the ledger.

The minute is ``STALLHOLDER_CHAOS_SECONDS`` (default 60)."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder.channels.buffers import Rules, shown
from stallholder.channels.models import ChannelOrder
from stallholder.inventory.models import StockLevel
from stallholder.kit.work import WorkItem
from tests.doubles.common import Chaos
from tests.e2e.channel_stack import Stack, channel_stack, eventually
from tests.e2e.test_channels import _stocked

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

SKUS = [f"CHAOS-{n}" for n in range(8)]
RULES = {"shopify": Rules(buffer_units=1), "etsy": Rules(buffer_percent=10), "woocommerce": Rules()}
SECONDS = float(os.environ.get("STALLHOLDER_CHAOS_SECONDS", "60"))
SYNC_KINDS = (
    "channels.push.shopify",
    "channels.push.etsy",
    "channels.push.woocommerce",
    "channels.pull",
    "channels.reconcile",
    "inbox.channel",
)


async def _available(stack: Stack, key: str) -> dict[str, int]:
    found = {}
    for sku in SKUS:
        response = await stack.call("GET", f"/v1/inventory/{sku}", key)
        found[sku] = int(response.json()["available"])
    return found


def _channel_shows(stack: Stack, kind: str, sku: str) -> int | None:
    double: Any = {"shopify": stack.shopify, "etsy": stack.etsy, "woocommerce": stack.woo}[kind]
    return double.quantity_of(sku)  # type: ignore[no-any-return]


async def test_after_a_minute_of_chaos_one_reconciliation_puts_every_channel_right(
    postgres_url: str, tmp_path: Path
) -> None:
    chaos = Chaos(seed=11)  # quiet while connecting
    async with channel_stack(postgres_url, tmp_path / "var", chaos=chaos) as stack:
        _, key = await stack.creator()
        shops = {sku: await _stocked(stack, key, sku, 40) for sku in SKUS}
        for sku in SKUS:
            stack.shopify.add_product(f"Mug {sku}", [(sku, 40)])
            stack.woo.add_product(f"Mug {sku}", [(sku, 40)])
        # Etsy: two listings of four variations each.
        stack.etsy.add_product("Mugs A", [(sku, 40) for sku in SKUS[:4]])
        stack.etsy.add_product("Mugs B", [(sku, 40) for sku in SKUS[4:]])
        channels = {
            kind: await stack.connect(
                key,
                kind,
                buffer_units=RULES[kind].buffer_units,
                buffer_percent=RULES[kind].buffer_percent,
            )
            for kind in ("shopify", "etsy", "woocommerce")
        }

        chaos.lose, chaos.delay, chaos.delay_seconds = 0.05, 0.1, 0.3
        chaos.throttle, chaos.duplicate = 0.05, 0.2
        draw = random.Random(3)
        sold_on = {"shopify": 0, "etsy": 0, "woocommerce": 0}
        loop = asyncio.get_running_loop()
        ends = loop.time() + SECONDS
        while loop.time() < ends:
            sku = draw.choice(SKUS)
            move = draw.random()
            if move < 0.45:  # an order on a channel, if it still shows the unit
                kind = draw.choice(list(sold_on))
                double: Any = {
                    "shopify": stack.shopify,
                    "etsy": stack.etsy,
                    "woocommerce": stack.woo,
                }[kind]
                try:
                    double.sell(sku, 1)
                    sold_on[kind] += 1
                except ValueError:
                    pass
            elif move < 0.7:  # a sale on Stallholder
                response = await stack.call(
                    "POST",
                    "/v1/checkout/sessions",
                    key,
                    json={
                        "line_items": [{"price": shops[sku]["price"], "quantity": 1}],
                        "customer_email": "buyer@example.com",
                    },
                )
                if response.status_code == 201:
                    await stack.call(
                        "POST",
                        f"/v1/checkout/sessions/{response.json()['id']}/confirm",
                        key,
                        json={"payment_method": "tok_visa"},
                    )
            else:  # a count: a few more from the kiln, or breakage
                await stack.call(
                    "POST",
                    "/v1/inventory/adjustments",
                    key,
                    json={
                        "sku": sku,
                        "location": shops[sku]["location"],
                        "delta": draw.choice([-2, -1, 1, 2, 3]),
                        "reason": "count",
                    },
                )
            await asyncio.sleep(draw.uniform(0.02, 0.12))

        chaos.lose = chaos.delay = chaos.throttle = chaos.duplicate = 0.0
        # The chaos happened: replies were lost, late and throttled, webhooks doubled.
        assert (
            min(chaos.counts[what] for what in ("lost", "delayed", "throttled", "duplicated")) > 0
        )
        for channel in channels.values():
            response = await stack.call("POST", f"/v1/channels/{channel['id']}/reconcile", key)
            assert response.status_code == 202

        async def settled() -> bool:
            async with stack.database.unit_of_work() as session:
                waiting = await session.scalar(
                    select(func.count()).select_from(WorkItem).where(WorkItem.kind.in_(SYNC_KINDS))
                )
            if waiting:
                return False
            available = await _available(stack, key)
            return all(
                _channel_shows(stack, kind, sku) == shown(available[sku], RULES[kind])
                for kind in channels
                for sku in SKUS
            )

        try:
            await eventually(settled, within=90, what="every channel showing available − buffer")
        except AssertionError:
            print(await stack.report(SKUS[0]))
            raise

        async with stack.database.unit_of_work() as session:
            recorded = dict(
                (
                    await session.execute(
                        select(ChannelOrder.channel_id, func.count()).group_by(
                            ChannelOrder.channel_id
                        )
                    )
                ).all()
            )
            levels = list((await session.execute(select(StockLevel))).scalars())
        assert {kind: recorded.get(channels[kind]["id"], 0) for kind in channels} == sold_on
        assert sum(sold_on.values()) > 0
        for level in levels:
            assert level.on_hand >= level.reserved + level.allocated >= 0
