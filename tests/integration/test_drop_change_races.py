"""Changing a drop while its raffle is drawn, on PostgreSQL (where the two really run at
once): the change waits for the draw and is refused, never changing the units after the
draw counted them."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from stallholder.inventory import drops, raffles
from stallholder.inventory.models import Drop, DropItem
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests.conftest import Api
from tests.e2e.test_drops import CLOSES, winter_mug_shop

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


async def test_a_quantity_change_during_the_draw_waits_for_it_and_is_refused(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    shop = await winter_mug_shop(api)
    created = await shop.drop(mode="raffle", per_customer_limit=None)
    assert created.status_code == 201, created.text
    drop_id = created.json()["id"]
    clock.set(CLOSES)  # closed, not drawn yet: its draw is due

    async def change() -> None:
        async with database.unit_of_work() as session:
            drop = await session.get(Drop, drop_id)
            assert drop is not None
            await drops.update_drop(
                session,
                creator_id=drop.creator_id,
                drop_id=drop_id,
                changes={"items": [drops.ItemSpec(price_id=shop.price, quantity=9)]},
                now=CLOSES,
            )

    async with database.unit_of_work() as drawing:
        assert await raffles.draw(drawing, drop_id=drop_id, now=CLOSES) is True
        changing = asyncio.create_task(change())
        await asyncio.sleep(0.5)
        assert not changing.done()  # it waits for the draw's lock on the drop
    with pytest.raises(drops.DropNotEditable, match="was drawn at"):
        await changing
    async with database.read() as session:
        quantity = (
            await session.execute(select(DropItem.quantity).where(DropItem.price_id == shop.price))
        ).scalar_one()
    assert quantity == 3
