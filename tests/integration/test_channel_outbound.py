"""Channel requests go only to addresses checked when they are made (``GuardedTransport``):
a WooCommerce store that was public when it was connected and whose DNS later answers
127.0.0.1 (DNS rebinding) is not written, through the connector or the worker. The store
is the WooCommerce double on 127.0.0.1; DNS is a table the test changes."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from stallholder.catalog import service as catalog
from stallholder.channels import sync
from stallholder.channels.buffers import Rules
from stallholder.channels.connect import Found, NewChannel, store
from stallholder.channels.connectors import (
    ChannelUnavailable,
    Listing,
    ListingRef,
    PushResult,
    StockUpdate,
)
from stallholder.channels.credentials import Vault
from stallholder.channels.registry import connector_for, refresh_tokens
from stallholder.channels.woocommerce import WooCommerceConnector
from stallholder.inventory import stock
from stallholder.jobs.worker import Worker
from stallholder.kit.addresses import IPAddress
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.outbound import GuardedTransport
from stallholder.kit.work import WorkItem
from stallholder.settings import Settings
from tests.doubles.woocommerce import WooCommerceDouble, serve_woocommerce
from tests.factories import create_creator

pytestmark = pytest.mark.anyio

KEY = b"3q2-7wX4d9vJ0m1n2b3v4c5x6z7a8s9d0f1g2h3j4k4="
STORE = "woo.shop.example"
PUBLIC = "93.184.215.14"
REFUSED = (
    f"{STORE} resolves to 127.0.0.1, which is not a public address; outbound requests go "
    "to public addresses only (an operator can allow private ones with "
    "STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS=true)"
)


class Dns:
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.lookups: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append((host, port))
        return [ipaddress.ip_address(self.table[host])]


class Internet(httpx.AsyncBaseTransport):
    """The network as the store's owner set it up: ``PUBLIC`` is the double (on
    127.0.0.1, at the same port). Records (URL, Host header, TLS server name)."""

    def __init__(self) -> None:
        self.wire = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[str, str, object]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(
            (str(request.url), request.headers["host"], request.extensions.get("sni_hostname"))
        )
        assert request.url.host in (PUBLIC, "127.0.0.1")
        routed = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1"),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        return await self.wire.handle_async_request(routed)

    async def aclose(self) -> None:
        await self.wire.aclose()


class Monotonic:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def woo() -> Iterator[WooCommerceDouble]:
    double = WooCommerceDouble(consumer_key="ck_live", consumer_secret="cs_live")
    try:
        with serve_woocommerce(double):
            yield double
    finally:
        double.close()


def _port(double: WooCommerceDouble) -> int:
    port = httpx.URL(double.base_url).port
    assert port is not None
    return port


def _credentials(double: WooCommerceDouble) -> dict[str, str]:
    return {
        "store_url": f"http://{STORE}:{_port(double)}",
        "consumer_key": "ck_live",
        "consumer_secret": "cs_live",
        "webhook_secret": "whsec_stallholder_woo",
    }


async def test_a_push_goes_to_the_checked_address_and_not_after_the_host_is_rebound(
    woo: WooCommerceDouble,
) -> None:
    [mug] = woo.add_product("Moon mug", [("MUG-1", 5)])
    dns, internet, clock = Dns({STORE: PUBLIC}), Internet(), Monotonic()
    transport = GuardedTransport(internet, allow_private=False, resolve=dns, monotonic=clock)
    async with httpx.AsyncClient(transport=transport) as http:
        connector = WooCommerceConnector(http=http, credentials=_credentials(woo), rate_state={})
        first = await connector.push(
            [StockUpdate(ref=ListingRef(mug), quantity=4, expected=5, key="k1")]
        )
        dns.table[STORE] = "127.0.0.1"
        clock.now += 30
        with pytest.raises(ChannelUnavailable) as refused:
            await connector.push(
                [StockUpdate(ref=ListingRef(mug), quantity=3, expected=4, key="k2")]
            )

    assert first == [PushResult(external_id=mug, outcome="ok", channel_quantity=4)]
    assert str(refused.value) == f"POST /products/batch: RefusedAddress({REFUSED!r})"
    port = _port(woo)
    assert {(host, sni) for _, host, sni in internet.seen} == {(f"{STORE}:{port}", STORE)}
    assert all(url.startswith(f"http://{PUBLIC}:{port}/") for url, _, _ in internet.seen)
    assert woo.quantity_of("MUG-1") == 4  # the second write never left
    assert dns.lookups == [(STORE, port), (STORE, port)]


async def _connected_store(
    database: Database, clock: FrozenClock, settings: Settings, woo: WooCommerceDouble
) -> sync.Engine:
    """A creator with 10 mugs and the store, connected when it was public, showing 5."""
    [mug] = woo.add_product("Moon mug", [("MUG-1", 5)])
    engine = sync.Engine(connect=connector_for, refresh=refresh_tokens, vault=Vault(KEY))
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
            delta=10,
            set_to=None,
            kind="received",
            reason="first firing",
            actor="test",
            now=now,
        )
        credentials = _credentials(woo)
        await store(
            session,
            engine,
            NewChannel(
                kind="woocommerce",
                name="Moon shop",
                url=credentials["store_url"],
                credentials=credentials,
                rules=Rules(),
            ),
            Found(
                webhooks=[],
                listings=[Listing(ref=ListingRef(mug), sku="MUG-1", title="Moon mug", quantity=5)],
            ),
            channel_id="chn_woo",
            creator_id=creator.id,
            settings=settings,
            now=now,
        )
    return engine


async def _push_items(database: Database) -> list[WorkItem]:
    async with database.unit_of_work() as session:
        return list(
            (
                await session.execute(
                    select(WorkItem).where(WorkItem.kind == f"{sync.PUSH_KIND}.woocommerce")
                )
            ).scalars()
        )


async def test_the_worker_refuses_a_store_rebound_to_a_private_address(
    database: Database, clock: FrozenClock, settings: Settings, woo: WooCommerceDouble
) -> None:
    settings = settings.model_copy(update={"allow_private_webhook_targets": False})
    engine = await _connected_store(database, clock, settings, woo)
    dns = Dns({STORE: "127.0.0.1"})  # public when connected; 127.0.0.1 now
    worker = Worker(
        database, clock, settings=settings, kinds=sync.kinds(engine, settings=settings), resolve=dns
    )

    await worker.run_once()

    [item] = await _push_items(database)
    assert (item.state, item.attempts) == ("pending", 1)  # retried with backoff
    assert (
        item.last_error == f"ChannelUnavailable: POST /products/batch: RefusedAddress({REFUSED!r})"
    )
    assert woo.requests == []
    assert woo.quantity_of("MUG-1") == 5
    assert dns.lookups == [(STORE, _port(woo))]


async def test_the_worker_reaches_a_private_store_when_the_operator_allows_it(
    database: Database, clock: FrozenClock, settings: Settings, woo: WooCommerceDouble
) -> None:
    assert settings.allow_private_webhook_targets
    engine = await _connected_store(database, clock, settings, woo)
    dns = Dns({STORE: "127.0.0.1"})
    worker = Worker(
        database, clock, settings=settings, kinds=sync.kinds(engine, settings=settings), resolve=dns
    )

    await worker.run_once()

    assert await _push_items(database) == []  # done
    assert woo.quantity_of("MUG-1") == 10
    assert woo.requests == [("POST", "/wp-json/wc/v3/products/batch")]
    assert dns.lookups == [(STORE, _port(woo))]
