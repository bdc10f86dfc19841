"""The sync engine against a connector written here to the ``Connector`` protocol (the
provider doubles in tests/doubles are exercised by each connector's own tests and the
end-to-end tests): sweep → push with buffers, coalescing, orders in with oversold
flagged, stale writes, rate limits per channel, revoked credentials."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.catalog import service as catalog
from stallholder.channels import connect as connect_module
from stallholder.channels import service, sync
from stallholder.channels.buffers import Rules
from stallholder.channels.connect import Found, NewChannel, store
from stallholder.channels.connectors import (
    ChannelKind,
    ChannelOrder,
    ChannelUnavailable,
    Listing,
    ListingRef,
    OrderLine,
    OrdersPage,
    PushResult,
    RateLimited,
    RegisteredWebhook,
    StockUpdate,
    Tokens,
    Unauthorized,
    WebhookDelivery,
)
from stallholder.channels.credentials import Vault
from stallholder.channels.models import Channel, ChannelListing, SyncLogEntry
from stallholder.channels.models import ChannelOrder as OrderRow
from stallholder.events.models import Event
from stallholder.inventory import stock
from stallholder.inventory.models import StockLevel, StockMovement
from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.pagination import InvalidCursor
from stallholder.settings import Settings
from tests.factories import create_creator

pytestmark = pytest.mark.anyio
KEY = b"3q2-7wX4d9vJ0m1n2b3v4c5x6z7a8s9d0f1g2h3j4k4="


class FakeChannel:
    """A channel that keeps quantities in memory, with compare-and-set like Shopify's."""

    def __init__(self, quantities: dict[str, int]) -> None:
        self.quantities = dict(quantities)
        self.pushes: list[list[StockUpdate]] = []
        self.orders: list[ChannelOrder] = []
        self.fail: Exception | None = None
        # Orders the channel has taken but not yet shows to a poll (a slow index).
        self.unlisted: list[ChannelOrder] = []
        # What ``remove_webhooks`` was asked, and what it does first.
        self.removals: list[tuple[str, list[RegisteredWebhook]]] = []
        self.on_remove: Callable[[], Awaitable[None]] | None = None


class FakeConnector:
    kind: ChannelKind = "shopify"

    def __init__(self, channel: FakeChannel, rate_state: dict[str, Any]) -> None:
        self.channel = channel
        self.rate_state = rate_state

    async def register_webhooks(self, delivery_url: str) -> list[RegisteredWebhook]:
        return [RegisteredWebhook(external_id="1", topic="ORDERS_CREATE")]

    async def remove_webhooks(
        self, delivery_url: str, registered: Sequence[RegisteredWebhook]
    ) -> None:
        if self.channel.on_remove is not None:
            await self.channel.on_remove()
        if self.channel.fail is not None:
            raise self.channel.fail
        self.channel.removals.append((delivery_url, list(registered)))

    async def listings(self) -> list[Listing]:
        return [
            Listing(ref=ListingRef(external_id=f"item-{sku}"), sku=sku, title=sku, quantity=n)
            for sku, n in sorted(self.channel.quantities.items())
        ]

    async def read(self, refs: Sequence[ListingRef]) -> dict[str, int | None]:
        return {r.external_id: self.channel.quantities[r.external_id[5:]] for r in refs}

    async def push(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        if self.channel.fail is not None:
            raise self.channel.fail
        self.channel.pushes.append(list(updates))
        self.channel.orders += self.channel.unlisted  # listed by the time we write
        self.channel.unlisted = []
        results = []
        for u in updates:
            sku = u.ref.external_id[5:]
            now = self.channel.quantities[sku]
            if u.expected is not None and u.expected != now:
                results.append(PushResult(u.ref.external_id, "stale", channel_quantity=now))
                continue
            self.channel.quantities[sku] = u.quantity
            results.append(PushResult(u.ref.external_id, "ok", channel_quantity=u.quantity))
        return results

    async def orders_since(self, cursor: str | None) -> OrdersPage:
        start = int(cursor or 0)
        return OrdersPage(
            orders=tuple(self.channel.orders[start:]), cursor=str(len(self.channel.orders))
        )

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery | None:
        return None


@pytest.fixture
def fakes() -> dict[str, FakeChannel]:
    return {}


@pytest.fixture
def engine(fakes: dict[str, FakeChannel]) -> sync.Engine:
    def connect(
        kind: str,
        credentials: Mapping[str, Any],
        rate_state: dict[str, Any],
        http: httpx.AsyncClient,
        settings: Settings,
    ) -> FakeConnector:
        return FakeConnector(fakes[str(credentials["shop"])], rate_state)

    async def refresh(
        kind: str, credentials: Mapping[str, Any], http: httpx.AsyncClient, settings: Settings
    ) -> Tokens | None:
        return None

    return sync.Engine(connect=connect, refresh=refresh, vault=Vault(KEY))  # type: ignore[arg-type]


@pytest.fixture
def worker(
    database: Database, clock: FrozenClock, settings: Settings, engine: sync.Engine
) -> Worker:
    return Worker(database, clock, settings=settings, kinds=sync.kinds(engine, settings=settings))


async def _setup(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    *,
    on_hand: int = 10,
    shops: Sequence[tuple[str, int, Rules]] = (("a", 5, Rules()),),
) -> tuple[str, list[str]]:
    now = clock.now()
    async with database.unit_of_work() as session:
        creator = await create_creator(session, now=now)
        await catalog.create_product(
            session,
            creator_id=creator.id,
            kind="physical",
            name="Moon mug",
            description="",
            status="published",
            variants=[catalog.VariantSpec(sku="MUG-1")],
            now=now,
        )
        location = await stock.create_location(
            session, creator_id=creator.id, name="Workshop", now=now
        )
        await stock.adjust(
            session,
            creator_id=creator.id,
            sku="MUG-1",
            location_id=location.id,
            delta=on_hand,
            set_to=None,
            kind="received",
            reason="first firing",
            actor="test",
            now=now,
        )
    ids = []
    for shop, shown_now, rules in shops:
        fakes[shop] = FakeChannel({"MUG-1": shown_now})
        new = NewChannel(
            kind="shopify",
            name=shop,
            url=f"https://{shop}.example",
            credentials={"shop": shop},
            rules=rules,
        )
        found = Found(webhooks=[], listings=await FakeConnector(fakes[shop], {}).listings())
        channel_id = f"chn_{shop}"
        async with database.unit_of_work() as session:
            await store(
                session,
                engine,
                new,
                found,
                channel_id=channel_id,
                creator_id=creator.id,
                settings=settings,
                now=now,
            )
        ids.append(channel_id)
    return creator.id, ids


async def _drain(worker: Worker) -> None:
    for _ in range(20):
        if not await worker.run_once():
            return


async def _adjust(database: Database, clock: FrozenClock, creator_id: str, delta: int) -> None:
    async with database.unit_of_work() as session:
        location = (
            await stock.list_locations(session, creator_id=creator_id, limit=1, starting_after=None)
        ).data[0]
        await stock.adjust(
            session,
            creator_id=creator_id,
            sku="MUG-1",
            location_id=location.id,
            delta=delta,
            set_to=None,
            kind="adjusted",
            reason="count",
            actor="test",
            now=clock.now(),
        )


async def _sweep(database: Database, clock: FrozenClock, settings: Settings) -> int:
    async with database.unit_of_work() as session:
        return await sync.sweep(session, settings=settings, now=clock.now())


async def test_connecting_brings_the_channel_to_available_minus_its_buffer(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    worker: Worker,
) -> None:
    await _setup(database, clock, settings, engine, fakes, shops=[("a", 5, Rules(buffer_units=2))])
    await _drain(worker)
    assert fakes["a"].quantities == {"MUG-1": 8}
    [[sent]] = fakes["a"].pushes
    assert (sent.quantity, sent.expected) == (8, 5)
    async with database.unit_of_work() as session:
        listing = (await session.execute(select(ChannelListing))).scalar_one()
        assert (listing.channel_quantity, listing.pushed_quantity, listing.writes) == (8, 8, 1)
        log = (await session.execute(select(SyncLogEntry))).scalar_one()
        assert (log.kind, log.outcome, log.pushed, log.channel_value, log.latency_ms) == (
            "push",
            "ok",
            8,
            8,
            0,
        )


async def test_changes_before_a_push_runs_make_one_write_of_the_latest_value(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    worker: Worker,
) -> None:
    creator_id, _ = await _setup(
        database, clock, settings, engine, fakes, shops=[("a", 10, Rules())]
    )
    await _drain(worker)
    assert fakes["a"].pushes == []  # it showed 10 already
    for delta in (-1, -2, -3):
        clock.advance(timedelta(milliseconds=100))
        await _adjust(database, clock, creator_id, delta)
        assert await _sweep(database, clock, settings) == 1
    async with database.unit_of_work() as session:
        queued = await session.scalar(
            select(func.count())
            .select_from(work.WorkItem)
            .where(work.WorkItem.kind == sync.push_kind_name("shopify"))
        )
    assert queued == 1
    await _drain(worker)
    assert [[u.quantity for u in batch] for batch in fakes["a"].pushes] == [[4]]
    assert fakes["a"].quantities == {"MUG-1": 4}
    assert await _sweep(database, clock, settings) == 0  # in step: nothing more


async def test_a_channel_order_is_sold_from_stock_and_one_for_units_no_longer_free_is_oversold(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(
        database,
        clock,
        settings,
        engine,
        fakes,
        on_hand=1,
        shops=[("a", 1, Rules()), ("b", 1, Rules())],
    )
    order = ChannelOrder(
        external_id="1001",
        created_at=clock.now(),
        name="#1001",
        lines=(OrderLine(sku="MUG-1", quantity=1),),
    )
    async with database.unit_of_work() as session:
        a = await session.get_one(Channel, "chn_a")
        b = await session.get_one(Channel, "chn_b")
        first = await service.import_order(session, channel=a, order=order, now=clock.now())
        again = await service.import_order(session, channel=a, order=order, now=clock.now())
        second = await service.import_order(
            session,
            channel=b,
            order=ChannelOrder(
                external_id="77",
                created_at=clock.now(),
                lines=(OrderLine(sku="MUG-1", quantity=1),),
            ),
            now=clock.now(),
        )
    assert first is not None
    assert first.status == "sold"
    assert again is None  # the same order twice is imported once
    assert second is not None
    assert second.status == "oversold"
    assert second.lines == [{"sku": "MUG-1", "quantity": 1, "levels": {}, "outcome": "oversold"}]
    async with database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        assert (level.on_hand, level.allocated, level.reserved) == (0, 0, 0)
        movement = (
            await session.execute(select(StockMovement).where(StockMovement.kind == "sold"))
        ).scalar_one()
        assert (movement.quantity, movement.reference, movement.actor) == (
            -1,
            first.id,
            "channel:chn_a",
        )
        assert movement.reason == "a: order #1001"
        oversold = (
            await session.execute(select(Event).where(Event.type == "channel.oversold"))
        ).scalar_one()
        assert {k: oversold.data[k] for k in ("channel", "order", "sku", "quantity")} == {
            "channel": "chn_b",
            "order": "77",
            "sku": "MUG-1",
            "quantity": 1,
        }
        # The counts were read from the channels (not written by us): they may include
        # the sales already, so they are left for the next push or read to settle.
        shown = dict(
            (
                await session.execute(
                    select(ChannelListing.channel_id, ChannelListing.channel_quantity)
                )
            ).all()
        )
        assert shown == {"chn_a": 1, "chn_b": 1}


async def test_channel_orders_page_newest_first_with_starting_after(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(database, clock, settings, engine, fakes, on_hand=9, shops=[("a", 9, Rules())])
    async with database.unit_of_work() as session:
        a = await session.get_one(Channel, "chn_a")
        for number in range(5):
            await service.import_order(
                session,
                channel=a,
                order=ChannelOrder(
                    external_id=str(1000 + number),
                    created_at=clock.now(),
                    lines=(OrderLine(sku="MUG-1", quantity=1),),
                ),
                now=clock.now(),
            )
    async with database.unit_of_work() as session:
        first = await service.list_orders(session, channel_id="chn_a", status=None, limit=2)
        second = await service.list_orders(
            session, channel_id="chn_a", status="sold", limit=2, starting_after=first.data[-1].id
        )
        last = await service.list_orders(
            session, channel_id="chn_a", status=None, limit=2, starting_after=second.data[-1].id
        )
        with pytest.raises(InvalidCursor):
            await service.list_orders(
                session, channel_id="chn_a", status=None, limit=2, starting_after="cho_nope"
            )
    pages = [first, second, last]
    assert [[row.external_id for row in page.data] for page in pages] == [
        ["1004", "1003"],
        ["1002", "1001"],
        ["1000"],
    ]
    assert [page.has_more for page in pages] == [True, True, False]


async def test_a_cancelled_channel_order_gives_its_units_back(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(database, clock, settings, engine, fakes, on_hand=3)
    line = (OrderLine(sku="MUG-1", quantity=2),)
    async with database.unit_of_work() as session:
        a = await session.get_one(Channel, "chn_a")
        await service.import_order(
            session, channel=a, order=ChannelOrder("9", clock.now(), line), now=clock.now()
        )
        row = await service.import_order(
            session,
            channel=a,
            order=ChannelOrder("9", clock.now(), line, cancelled=True),
            now=clock.now(),
        )
    assert row is not None
    assert row.status == "cancelled"
    async with database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        assert (level.on_hand, level.allocated) == (3, 0)
        kinds = (
            await session.execute(
                select(StockMovement.kind, StockMovement.quantity).order_by(StockMovement.id)
            )
        ).all()
        assert [tuple(k) for k in kinds] == [("received", 3), ("sold", -2), ("returned", 2)]


async def test_a_stale_write_is_refused_and_written_again_after_the_orders_are_pulled(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    worker: Worker,
) -> None:
    await _setup(database, clock, settings, engine, fakes, on_hand=10, shops=[("a", 10, Rules())])
    await _drain(worker)
    creator_id = await _creator(database)
    # A sale on the channel we have not heard of, and one of ours: the push is stale.
    fakes["a"].quantities["MUG-1"] = 9
    # (The order shows to a poll only once our write has gone out: deterministic order.)
    fakes["a"].unlisted.append(
        ChannelOrder("5", clock.now(), (OrderLine(sku="MUG-1", quantity=1),))
    )
    await _adjust(database, clock, creator_id, -2)
    await _sweep(database, clock, settings)
    await _drain(worker)
    assert [(u.quantity, u.expected) for [u] in fakes["a"].pushes] == [(8, 10)]
    assert fakes["a"].quantities == {"MUG-1": 9}
    clock.advance(timedelta(seconds=2))
    await _drain(worker)  # the pull imports order 5, the retry writes 10 − 2 − 1
    assert [(u.quantity, u.expected) for [u] in fakes["a"].pushes] == [(8, 10), (7, 9)]
    assert fakes["a"].quantities == {"MUG-1": 7}
    async with database.unit_of_work() as session:
        outcomes = list(
            (
                await session.execute(
                    select(SyncLogEntry.kind, SyncLogEntry.outcome).order_by(SyncLogEntry.id)
                )
            ).all()
        )
    # The order's row and the stale push's row are written by handlers that may run side
    # by side (a poll of the channel can be under way): their order is not defined.
    assert sorted(tuple(o) for o in outcomes) == [
        ("order", "ok"),
        ("push", "ok"),
        ("push", "stale"),
    ]
    assert tuple(outcomes[-1]) == ("push", "ok")


async def _creator(database: Database) -> str:
    async with database.unit_of_work() as session:
        return str((await session.execute(select(Channel.creator_id).limit(1))).scalar_one())


async def test_a_rate_limited_channel_waits_without_holding_up_another(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    worker: Worker,
) -> None:
    await _setup(
        database, clock, settings, engine, fakes, shops=[("a", 1, Rules()), ("b", 1, Rules())]
    )
    fakes["a"].fail = RateLimited("bucket empty", retry_after=3.0)
    await _drain(worker)
    assert fakes["b"].quantities == {"MUG-1": 10}
    assert fakes["a"].quantities == {"MUG-1": 1}
    async with database.unit_of_work() as session:
        waiting = (
            await session.execute(
                select(work.WorkItem).where(work.WorkItem.kind == sync.push_kind_name("shopify"))
            )
        ).scalar_one()
        assert waiting.due_at == clock.now() + timedelta(seconds=3)
        assert waiting.last_error == "shopify rate limit: bucket empty"
    fakes["a"].fail = None
    clock.advance(timedelta(seconds=3))
    await _drain(worker)
    assert fakes["a"].quantities == {"MUG-1": 10}


async def test_revoked_credentials_pause_the_channel_and_tell_the_creator(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    worker: Worker,
) -> None:
    await _setup(database, clock, settings, engine, fakes)
    fakes["a"].fail = Unauthorized("401: [API] Invalid API key or access token")
    await _drain(worker)
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        assert channel.status == "paused"
        assert channel.paused_reason == (
            "the channel refused our credentials (401: [API] Invalid API key or access token)"
        )
        event = (
            await session.execute(select(Event).where(Event.type == "channel.paused"))
        ).scalar_one()
        assert event.data["id"] == "chn_a"
        pending = await session.scalar(
            select(func.count())
            .select_from(work.WorkItem)
            .where(work.WorkItem.kind == sync.push_kind_name("shopify"))
        )
    assert pending == 0
    assert fakes["a"].pushes == []


@pytest.fixture
def database_url(any_database_url: str) -> str:
    """These tests run on SQLite and on PostgreSQL."""
    return any_database_url


async def test_orders_racing_from_three_channels_never_take_more_than_there_is(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(
        database,
        clock,
        settings,
        engine,
        fakes,
        on_hand=10,
        shops=[("a", 10, Rules()), ("b", 10, Rules()), ("c", 10, Rules())],
    )

    async def order(channel_id: str, n: int) -> str:
        async with database.unit_of_work() as session:
            channel = await session.get_one(Channel, channel_id)
            row = await service.import_order(
                session,
                channel=channel,
                order=ChannelOrder(f"{n}", clock.now(), (OrderLine(sku="MUG-1", quantity=1),)),
                now=clock.now(),
            )
            assert row is not None
            return row.status

    statuses = await asyncio.gather(*(order(f"chn_{shop}", n) for n in range(10) for shop in "abc"))
    assert sorted(statuses) == ["oversold"] * 20 + ["sold"] * 10
    async with database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        assert (level.on_hand, level.allocated) == (0, 0)
        oversold = await session.scalar(
            select(func.count()).select_from(OrderRow).where(OrderRow.status == "oversold")
        )
        assert oversold == 20


async def test_the_sync_log_keeps_its_last_thirty_days(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    worker: Worker,
) -> None:
    await _setup(database, clock, settings, engine, fakes, shops=[("a", 5, Rules())])
    await _drain(worker)  # one push: one row
    clock.advance(timedelta(days=30, seconds=1))
    await _adjust(database, clock, await _creator(database), -1)
    await _sweep(database, clock, settings)
    await _drain(worker)  # a second push, 30 days later, and the worker's hourly prune
    cutoff = clock.now() - timedelta(days=30)
    async with database.unit_of_work() as session:
        assert await sync.prune_sync_log(session, before=cutoff) == 0  # the first push: gone
        left = (await session.execute(select(SyncLogEntry))).scalars().all()
    assert 9 in [row.pushed for row in left]
    assert all(row.created_at >= cutoff for row in left)


async def test_an_expiring_token_is_refreshed_once_with_no_transaction_open(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    fakes: dict[str, FakeChannel],
) -> None:
    calls: list[str] = []
    in_transaction: list[bool] = []

    async def refresh(
        kind: str, credentials: Mapping[str, Any], http: httpx.AsyncClient, settings: Settings
    ) -> Tokens | None:
        calls.append(str(credentials["refresh_token"]))
        # No unit of work of the engine is open: another one can write at once.
        async with database.unit_of_work() as session:
            channel = await session.get_one(Channel, "chn_a")
            in_transaction.append(channel.rate_state.get(sync.REFRESHING) is not None)
        await asyncio.sleep(0.3)
        return Tokens(
            access_token="new-token",
            refresh_token=f"{credentials['refresh_token']}-next",
            expires_at=clock.now() + timedelta(hours=1),
        )

    def connect(
        kind: str,
        credentials: Mapping[str, Any],
        rate_state: dict[str, Any],
        http: httpx.AsyncClient,
        settings: Settings,
        *,
        max_wait: float = 2.0,
    ) -> FakeConnector:
        return FakeConnector(fakes[str(credentials["shop"])], rate_state)

    engine = sync.Engine(connect=connect, refresh=refresh, vault=Vault(KEY))
    await _setup(database, clock, settings, engine, fakes, shops=[("a", 5, Rules())])
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        channel.credentials = engine.vault.seal(
            {
                "shop": "a",
                "refresh_token": "r1",
                "expires_at": (clock.now() + timedelta(minutes=1)).isoformat(),
            }
        )
    context = work.Context(
        database=database,
        clock=clock,
        resources=type("R", (), {"settings": settings, "http": None})(),
    )
    states = [await sync._state(database, engine, "chn_a") for _ in range(2)]
    await asyncio.gather(
        *(sync.fresh_credentials(context, engine, state) for state in states if state)
    )
    assert calls == ["r1"]  # refreshed once: the refresh token rotates on use
    assert in_transaction == [True]  # claimed, and the claim committed before the call
    assert [state.credentials["access_token"] for state in states if state] == [
        "new-token",
        "new-token",
    ]
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        stored = engine.vault.open(channel.credentials)
        assert (stored["access_token"], stored["refresh_token"]) == ("new-token", "r1-next")
        assert sync.REFRESHING not in channel.rate_state


class EtsyShopFake:
    """An Etsy shop in memory for the engine: products named ``"<listing id>:<sku>"``. A
    push holds until ``gate`` is open and counts the pushes of each listing in flight."""

    kind: ChannelKind = "etsy"

    def __init__(self, quantities: dict[str, int]) -> None:
        self.quantities = dict(quantities)
        self.rate_state: dict[str, Any] = {}
        self.pushes: list[list[tuple[str, int]]] = []
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight = 0
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def register_webhooks(self, delivery_url: str) -> list[RegisteredWebhook]:
        return []

    async def remove_webhooks(
        self, delivery_url: str, registered: Sequence[RegisteredWebhook]
    ) -> None:
        return None

    async def listings(self) -> list[Listing]:
        return [
            Listing(
                ref=ListingRef(external_id=name, extra={"listing_id": name.partition(":")[0]}),
                sku=name.partition(":")[2],
                title=name,
                quantity=n,
            )
            for name, n in sorted(self.quantities.items())
        ]

    async def read(self, refs: Sequence[ListingRef]) -> dict[str, int | None]:
        return {r.external_id: self.quantities[r.external_id] for r in refs}

    async def push(self, updates: Sequence[StockUpdate]) -> list[PushResult]:
        touched = {u.ref.external_id.partition(":")[0] for u in updates}
        for listing in touched:
            self.in_flight[listing] += 1
        self.most_in_flight = max(self.most_in_flight, *self.in_flight.values())
        self.pushes.append([(u.ref.external_id, u.quantity) for u in updates])
        self.entered.set()
        await self.gate.wait()
        for u in updates:
            self.quantities[u.ref.external_id] = u.quantity
        for listing in touched:
            self.in_flight[listing] -= 1
        return [PushResult(u.ref.external_id, "ok", channel_quantity=u.quantity) for u in updates]

    async def orders_since(self, cursor: str | None) -> OrdersPage:
        return OrdersPage(orders=(), cursor=cursor)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookDelivery | None:
        return None


async def test_pushes_of_one_etsy_listing_never_run_at_once(
    database: Database, clock: FrozenClock, settings: Settings
) -> None:
    """Two products of one Etsy listing: while a worker writes the listing (a
    read-modify-write of the whole inventory, no compare-and-set), a change to the other
    product queues nothing a second worker could run beside it; it is written right after,
    by the same item."""
    shop = EtsyShopFake({"100:MUG-R": 10, "100:MUG-G": 10, "200:BOWL": 10})

    def connect(*args: Any) -> EtsyShopFake:
        return shop

    async def refresh(*args: Any) -> Tokens | None:
        return None

    engine = sync.Engine(connect=connect, refresh=refresh, vault=Vault(KEY))  # type: ignore[arg-type]
    now = clock.now()
    async with database.unit_of_work() as session:
        creator = await create_creator(session, now=now)
        await catalog.create_product(
            session,
            creator_id=creator.id,
            kind="physical",
            name="Moon mug",
            description="",
            status="published",
            variants=[
                catalog.VariantSpec(sku="MUG-R"),
                catalog.VariantSpec(sku="MUG-G"),
                catalog.VariantSpec(sku="BOWL"),
            ],
            now=now,
        )
        location = await stock.create_location(
            session, creator_id=creator.id, name="Workshop", now=now
        )
        for sku, on_hand in (("MUG-R", 9), ("MUG-G", 10), ("BOWL", 8)):
            await stock.adjust(
                session,
                creator_id=creator.id,
                sku=sku,
                location_id=location.id,
                delta=on_hand,
                set_to=None,
                kind="received",
                reason="first firing",
                actor="test",
                now=now,
            )
    async with database.unit_of_work() as session:
        await store(
            session,
            engine,
            NewChannel(
                kind="etsy",
                name="Etsy",
                url="https://etsy.example/shops/1",
                credentials={},
                rules=Rules(),
            ),
            Found(webhooks=[], listings=await shop.listings()),
            channel_id="chn_etsy",
            creator_id=creator.id,
            settings=settings,
            now=now,
        )
        live = list(
            (
                await session.execute(
                    select(work.WorkItem.dedupe_key, work.WorkItem.payload)
                    .where(work.WorkItem.kind == sync.push_kind_name("etsy"))
                    .order_by(work.WorkItem.dedupe_key)
                )
            ).all()
        )
    # MUG-R and BOWL are behind (9 and 8 against 10): one item per Etsy listing.
    assert [key for key, _ in live] == [
        "channels.push:chn_etsy:etsy:100",
        "channels.push:chn_etsy:etsy:200",
    ]
    assert [payload["etsy_listing_id"] for _, payload in live] == ["100", "200"]

    kinds = sync.kinds(engine, settings=settings)
    first = Worker(database, clock, settings=settings, kinds=kinds)
    second = Worker(database, clock, settings=settings, kinds=kinds)
    running = asyncio.create_task(first.run_once())
    await asyncio.wait_for(shop.entered.wait(), timeout=10)
    assert shop.pushes == [[("100:MUG-R", 9), ("200:BOWL", 8)]]

    # MUG-G sells on the creator's own store while listing 100 is being written.
    async with database.unit_of_work() as session:
        await stock.adjust(
            session,
            creator_id=creator.id,
            sku="MUG-G",
            location_id=location.id,
            delta=-3,
            set_to=None,
            kind="adjusted",
            reason="count",
            actor="test",
            now=clock.now(),
        )
    await _sweep(database, clock, settings)  # finds MUG-G; its Etsy listing's item is live
    async with database.unit_of_work() as session:
        states = list(
            (
                await session.execute(
                    select(work.WorkItem.state).where(
                        work.WorkItem.kind == sync.push_kind_name("etsy")
                    )
                )
            ).scalars()
        )
    assert states == [work.RUNNING, work.RUNNING]  # nothing new queued
    await second.run_once()  # nothing of listing 100 for a second worker
    assert len(shop.pushes) == 1
    shop.gate.set()
    await asyncio.wait_for(running, timeout=10)
    for _ in range(5):
        if not await first.run_once():
            break

    assert shop.most_in_flight == 1
    # The same item wrote MUG-G at once after (MUG-R was in step by then).
    assert shop.pushes == [[("100:MUG-R", 9), ("200:BOWL", 8)], [("100:MUG-G", 7)]]
    assert shop.quantities == {"100:MUG-R": 9, "100:MUG-G": 7, "200:BOWL": 8}
    async with database.unit_of_work() as session:
        assert (
            await session.scalar(
                select(func.count())
                .select_from(work.WorkItem)
                .where(
                    work.WorkItem.kind == sync.push_kind_name("etsy"),
                    work.WorkItem.state.in_(work.LIVE_STATES),
                )
            )
            == 0
        )


async def _deliver(database: Database, clock: FrozenClock, delivery: WebhookDelivery) -> None:
    """A delivery as the inbox keeps it and the worker hands it on."""
    stored = sync.delivery_from(sync.delivery_payload("chn_a", delivery), delivery.delivery_id)
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        await sync.handle_delivery(session, channel=channel, delivery=stored, now=clock.now())


async def test_an_uninstall_delivery_pauses_an_active_channel_once(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(database, clock, settings, engine, fakes)
    uninstalled = WebhookDelivery(delivery_id="d1", topic="app/uninstalled", uninstalled=True)

    await _deliver(database, clock, uninstalled)
    await _deliver(database, clock, uninstalled)

    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        assert (channel.status, channel.paused_reason) == (
            "paused",
            "the app was uninstalled from the shop (app/uninstalled)",
        )
        events = (
            (await session.execute(select(Event).where(Event.type == "channel.paused")))
            .scalars()
            .all()
        )
        assert [e.data["paused_reason"] for e in events] == [channel.paused_reason]
        logged = (await session.execute(select(SyncLogEntry.kind, SyncLogEntry.outcome))).all()
        assert [tuple(row) for row in logged] == [("push", "paused")]


async def test_an_uninstall_delivery_leaves_a_paused_or_disconnected_channel_as_it_is(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(database, clock, settings, engine, fakes)
    uninstalled = WebhookDelivery(delivery_id="d1", topic="app/uninstalled", uninstalled=True)
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        channel.status, channel.paused_reason = "paused", "paused by the creator"

    await _deliver(database, clock, uninstalled)
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        assert (channel.status, channel.paused_reason) == ("paused", "paused by the creator")
        await service.disconnect(
            session,
            channel=channel,
            sealed_nothing=engine.vault.seal({}),
            webhooks_removed=True,
            detail="disconnected",
            now=clock.now(),
        )
    await _deliver(database, clock, uninstalled)

    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        assert (channel.status, channel.paused_reason) == ("disconnected", None)
        assert await session.scalar(select(func.count()).select_from(Event)) == 0


async def test_a_cancellation_delivery_gives_the_units_back_unless_placed_before_connecting(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    await _setup(database, clock, settings, engine, fakes, on_hand=3)
    clock.advance(timedelta(minutes=5))
    line = (OrderLine(sku="MUG-1", quantity=2),)
    placed = ChannelOrder("9", clock.now(), line, name="#1009")
    before = ChannelOrder("8", clock.now() - timedelta(hours=1), line, cancelled=True)

    await _deliver(database, clock, WebhookDelivery("d1", "orders/create", order=placed))
    async with database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        assert level.on_hand == 1
    cancelled = ChannelOrder("9", clock.now(), line, name="#1009", cancelled=True)
    await _deliver(database, clock, WebhookDelivery("d2", "orders/cancelled", order=cancelled))
    await _deliver(database, clock, WebhookDelivery("d3", "orders/cancelled", order=before))

    async with database.unit_of_work() as session:
        level = (await session.execute(select(StockLevel))).scalar_one()
        assert level.on_hand == 3
        rows = (await session.execute(select(OrderRow.external_id, OrderRow.status))).all()
        assert [tuple(row) for row in rows] == [("9", "cancelled")]
        kinds = (
            await session.execute(
                select(StockMovement.kind, StockMovement.quantity).order_by(StockMovement.id)
            )
        ).all()
        assert [tuple(k) for k in kinds] == [("received", 3), ("sold", -2), ("returned", 2)]


async def _with_webhooks(database: Database) -> None:
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        channel.webhooks = [{"id": "1", "topic": "orders/create"}]


async def test_removing_webhooks_calls_the_channel_with_no_transaction_open(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
) -> None:
    creator_id, _ = await _setup(database, clock, settings, engine, fakes)
    await _with_webhooks(database)

    async def write_the_channel() -> None:
        # Another unit of work writes the channel's row meanwhile: it would wait (and this
        # test time out) if the disconnect held a transaction on it.
        async with database.unit_of_work() as session:
            channel = (
                await session.execute(
                    select(Channel).where(Channel.id == "chn_a").with_for_update()
                )
            ).scalar_one()
            channel.name = "renamed meanwhile"

    fakes["a"].on_remove = write_the_channel
    removal = await asyncio.wait_for(
        connect_module.remove_webhooks(
            database,
            engine,
            creator_id=creator_id,
            channel_id="chn_a",
            settings=settings,
            clock=clock,
        ),
        timeout=10,
    )

    assert removal == connect_module.Removal(
        removed=True, detail="disconnected; webhooks removed from the channel (orders/create)"
    )
    assert fakes["a"].removals == [
        (
            f"{settings.base_url.rstrip('/')}/hooks/channels/chn_a",
            [RegisteredWebhook(external_id="1", topic="orders/create")],
        )
    ]


async def test_removing_webhooks_that_time_out_or_fail_says_why_and_a_disconnected_one_is_left(
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    engine: sync.Engine,
    fakes: dict[str, FakeChannel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    creator_id, _ = await _setup(database, clock, settings, engine, fakes)
    await _with_webhooks(database)
    monkeypatch.setattr(connect_module, "REMOVE_WEBHOOKS_TIMEOUT", 0.2)

    async def hang() -> None:
        await asyncio.sleep(5)

    async def remove() -> connect_module.Removal | None:
        return await connect_module.remove_webhooks(
            database,
            engine,
            creator_id=creator_id,
            channel_id="chn_a",
            settings=settings,
            clock=clock,
        )

    fakes["a"].on_remove = hang
    hung = await remove()
    fakes["a"].on_remove = None
    fakes["a"].fail = ChannelUnavailable("503: Shopify: try again later")
    down = await remove()
    async with database.unit_of_work() as session:
        channel = await session.get_one(Channel, "chn_a")
        channel.status = "disconnected"
    gone = await remove()

    assert hung is not None
    assert hung.removed is False
    assert hung.detail.startswith(
        "disconnected; the webhooks could not be removed from the channel: no answer within 0.2 s."
    )
    assert down == connect_module.Removal(
        removed=False,
        detail="disconnected; the webhooks could not be removed from the channel: 503: "
        "Shopify: try again later. The channel keeps sending them, refused (401), until it "
        "gives up on them; delete them in the channel's admin",
    )
    assert gone is None
    assert fakes["a"].removals == []
