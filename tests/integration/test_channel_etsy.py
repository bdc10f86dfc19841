"""The Etsy connector against the Etsy double served over HTTP (tests/doubles/etsy.py)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stallholder.channels.connectors import (
    ChannelOrder,
    ChannelRefused,
    ChannelUnavailable,
    Listing,
    ListingRef,
    OrderLine,
    PushResult,
    RateLimited,
    StockUpdate,
    Unauthorized,
)
from stallholder.channels.etsy import (
    DAY_RETRY_SECONDS,
    PARALLEL_WRITES,
    SCOPES,
    EtsyConnector,
    authorization_url,
    exchange_code,
    external_id_of,
    pkce_pair,
    refresh,
    user_id_of,
)
from tests.doubles.common import Chaos
from tests.doubles.etsy import EtsyDouble, serve_etsy

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
REDIRECT_URI = "https://stallholder.example/channels/etsy/callback"
Make = Callable[..., EtsyConnector]


@pytest.fixture
def double() -> Iterator[EtsyDouble]:
    double = EtsyDouble()
    with serve_etsy(double):
        yield double
    double.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def credentials(double: EtsyDouble, **changes: str) -> dict[str, str]:
    return {
        "api_base": double.base_url,
        "keystring": "etsy-keystring",
        "shared_secret": "etsy-secret",
        "shop_id": "5550001",
        "user_id": "777001",
        "access_token": "777001.etsy-token",
        **changes,
    }


@pytest.fixture
def make(double: EtsyDouble, http: httpx.AsyncClient) -> Make:
    def make(
        target: EtsyDouble | None = None,
        *,
        rate_state: dict[str, Any] | None = None,
        **options: Any,
    ) -> EtsyConnector:
        changes = options.pop("changes", {})
        return EtsyConnector(
            http=http,
            credentials=credentials(target or double, **changes),
            rate_state={} if rate_state is None else rate_state,
            **options,
        )

    return make


def update(external_id: str, quantity: int) -> StockUpdate:
    listing_id = external_id.split(":")[0]
    return StockUpdate(
        ref=ListingRef(external_id=external_id, extra={"listing_id": listing_id}),
        quantity=quantity,
        expected=None,
        key=f"push-{external_id}-{quantity}",
    )


def ref(external_id: str) -> ListingRef:
    return ListingRef(external_id=external_id, extra={"listing_id": external_id.split(":")[0]})


def listing_of(external_id: str) -> int:
    return int(external_id.split(":")[0])


def ids_of(products: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(product["product_id"], product["offerings"][0]["offering_id"]) for product in products]


def without_ids(products: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "sku": product["sku"],
            "property_values": product["property_values"],
            "offerings": [
                {key: value for key, value in offering.items() if key != "offering_id"}
                for offering in product["offerings"]
            ],
        }
        for product in products
    ]


# ---------------------------------------------------------------------- listings and reads


async def test_listings_reads_every_page_with_inventories(double: EtsyDouble, make: Make) -> None:
    first = double.add_product("Mug", [("MUG-1", 4)], price=1850)
    for number in range(2, 102):
        double.add_product(f"Bowl {number}", [(f"BOWL-{number}", number)])

    listings = await make().listings()

    assert len(listings) == 101
    assert listings[0] == Listing(
        ref=ListingRef(external_id=first[0], extra={"listing_id": first[0].split(":")[0]}),
        sku="MUG-1",
        title="Mug",
        quantity=4,
        price=1850,
        currency="USD",
    )
    assert listings[100].sku == "BOWL-101"
    assert listings[100].quantity == 101
    # 100 listings a page, inventories included: two requests for 101 listings.
    assert double.requests == [("GET", "/v3/application/shops/5550001/listings")] * 2


async def test_a_listing_with_variations_is_one_listing_per_variation(
    double: EtsyDouble, make: Make
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)], prices=[2500, 2700])

    listings = await make().listings()

    assert [(each.ref.external_id, each.sku, each.quantity, each.price) for each in listings] == [
        (ids[0], "MUG-R", 5, 2500),
        (ids[1], "MUG-G", 6, 2700),
    ]


def test_a_product_without_sku_is_named_by_its_property_values() -> None:
    product = {
        "sku": "",
        "property_values": [
            {"property_id": 200, "values": ["Blue"]},
            {"property_id": 100, "values": ["Large"]},
        ],
    }

    assert external_id_of(123, product) == "123:#Blue/Large"
    assert external_id_of(123, {"sku": None, "property_values": []}) == "123:#"
    assert external_id_of(123, {"sku": "MUG-1", "property_values": []}) == "123:MUG-1"


async def test_read_gets_every_listing_inventory_in_one_request(
    double: EtsyDouble, make: Make
) -> None:
    mugs = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)])
    bowl = double.add_product("Bowl", [("BOWL", 9)])

    quantities = await make().read([ref(mugs[0]), ref(mugs[1]), ref(bowl[0])])

    assert quantities == {mugs[0]: 5, mugs[1]: 6, bowl[0]: 9}
    assert double.requests == [("GET", "/v3/application/listings/batch/inventory")]
    assert double.inventory_reads == [[listing_of(mugs[0]), listing_of(bowl[0])]]
    assert len(double.served_at) == 1


async def test_a_gone_listing_makes_the_batch_404_and_each_listing_is_read_alone(
    double: EtsyDouble, make: Make
) -> None:
    mugs = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)])

    quantities = await make().read([ref(mugs[0]), ref(mugs[1]), ref("999:GONE")])

    assert quantities == {mugs[0]: 5, mugs[1]: 6}
    listing_id = listing_of(mugs[0])
    assert double.requests == [
        ("GET", "/v3/application/listings/batch/inventory"),
        ("GET", f"/v3/application/listings/{listing_id}"),
        ("GET", f"/v3/application/listings/{listing_id}/inventory"),
        ("GET", "/v3/application/listings/999"),
    ]
    assert double.inventory_reads == []


async def test_the_batch_read_follows_etsys_limits(
    double: EtsyDouble, http: httpx.AsyncClient
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 5)])
    base = f"{double.base_url}/v3/application/listings"
    headers = {
        "x-api-key": "etsy-keystring:etsy-secret",
        "authorization": "Bearer 777001.etsy-token",
    }

    too_many = await http.get(
        f"{base}/batch/inventory",
        params={"listing_ids": ",".join(str(n) for n in range(1, 102))},
        headers=headers,
    )
    repeated = await http.get(
        f"{base}/batch/inventory",
        params=[("listing_ids", str(listing_of(ids[0])))],
        headers=headers,
    )
    unauthorized = await http.get(
        f"{base}/batch/inventory",
        params={"listing_ids": str(listing_of(ids[0]))},
        headers={"x-api-key": "etsy-keystring:etsy-secret"},
    )
    no_inventory_include = await http.get(
        f"{base}/{listing_of(ids[0])}", params={"includes": "Inventory"}, headers=headers
    )

    assert too_many.status_code == 400
    assert too_many.json() == {"error": "listing_ids can have at most 100 ids"}
    assert repeated.status_code == 200
    body = repeated.json()
    assert body["count"] == 1
    [listing] = body["results"]
    assert (listing["listing_id"], listing["state"]) == (listing_of(ids[0]), "active")
    assert [p["sku"] for p in listing["inventory"]["products"]] == ["MUG-R"]
    assert listing["inventory"]["products"][0]["offerings"][0]["quantity"] == 5
    assert "x-remaining-this-second" in repeated.headers
    assert unauthorized.status_code == 401
    assert no_inventory_include.status_code == 400


# ---------------------------------------------------------------------- pushing


async def test_a_push_to_one_of_three_variations_keeps_all_three(
    double: EtsyDouble, make: Make
) -> None:
    ids = double.add_product(
        "Mug",
        [("MUG-R", 5), ("MUG-G", 6), ("MUG-B", 7)],
        prices=[2500, 2700, 2900],
        enabled=[True, True, False],
    )
    listing_id = listing_of(ids[0])
    before = double.products_of(listing_id)

    results = await make().push([update(ids[1], 2)])

    assert results == [PushResult(external_id=ids[1], outcome="ok", channel_quantity=2)]
    after = double.products_of(listing_id)
    expected = without_ids(before)
    expected[1]["offerings"][0]["quantity"] = 2
    assert without_ids(after) == expected
    assert [product["sku"] for product in after] == ["MUG-R", "MUG-G", "MUG-B"]
    assert [product["property_values"][0]["values"] for product in after] == [
        ["Glaze 1"],
        ["Glaze 2"],
        ["Glaze 3"],
    ]
    assert [product["offerings"][0]["price"]["amount"] for product in after] == [2500, 2700, 2900]
    assert [product["offerings"][0]["is_enabled"] for product in after] == [True, True, False]
    assert [double.quantity_of(sku) for sku in ("MUG-R", "MUG-G", "MUG-B")] == [5, 2, 7]
    assert double.requests == [
        ("GET", "/v3/application/listings/batch/inventory"),
        ("PUT", f"/v3/application/listings/{listing_id}/inventory"),
    ]


async def test_a_push_of_three_listings_reads_them_in_one_request_and_writes_each(
    double: EtsyDouble, make: Make
) -> None:
    mug = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)])
    bowl = double.add_product("Bowl", [("BOWL", 9)])
    vase = double.add_product("Vase", [("VASE", 3)])

    results = await make().push(
        [update(mug[1], 1), update(bowl[0], 2), update(mug[0], 4), update(vase[0], 3)]
    )

    assert results == [
        PushResult(external_id=mug[1], outcome="ok", channel_quantity=1),
        PushResult(external_id=bowl[0], outcome="ok", channel_quantity=2),
        PushResult(external_id=mug[0], outcome="ok", channel_quantity=4),
        PushResult(external_id=vase[0], outcome="ok", channel_quantity=3),
    ]
    assert [double.quantity_of(sku) for sku in ("MUG-R", "MUG-G", "BOWL", "VASE")] == [4, 1, 2, 3]
    assert double.inventory_reads == [
        [listing_of(mug[0]), listing_of(bowl[0]), listing_of(vase[0])]
    ]
    # The read, then the writes side by side (in whatever order they arrive).
    assert double.requests[0] == ("GET", "/v3/application/listings/batch/inventory")
    assert sorted(double.requests[1:]) == sorted(
        ("PUT", f"/v3/application/listings/{listing_of(each[0])}/inventory")
        for each in (mug, bowl, vase)
    )


async def test_a_push_writes_listings_side_by_side_within_the_per_second_limit(
    http: httpx.AsyncClient,
) -> None:
    """Each reply comes 0.3 s late: the writes overlap (PARALLEL_WRITES at most), and the
    limiter counts the ones in flight, so no second sees more than Etsy's 3 requests."""
    double = EtsyDouble(per_second=3, chaos=Chaos(delay=1.0, delay_seconds=0.3))
    with serve_etsy(double):
        listings = [double.add_product(f"Bowl {n}", [(f"B-{n}", n)])[0] for n in range(9)]
        connector = EtsyConnector(http=http, credentials=credentials(double), rate_state={})
        results = await connector.push(
            [update(listing, 20 + n) for n, listing in enumerate(listings)]
        )

    assert results == [
        PushResult(external_id=listing, outcome="ok", channel_quantity=20 + n)
        for n, listing in enumerate(listings)
    ]
    assert [double.quantity_of(f"B-{n}") for n in range(9)] == [20 + n for n in range(9)]
    assert double.throttled == 0
    assert len(double.served_at) == 10  # one read, nine writes
    assert max(Counter(int(moment) for moment in double.served_at).values()) <= 3
    assert 2 <= double.most_at_once <= PARALLEL_WRITES


async def test_a_rate_limit_in_one_write_stops_the_push_and_is_raised(
    http: httpx.AsyncClient,
) -> None:
    """A 429 on a write (another app of the seller spent the quota) is raised as it is
    alone; the writes already made stay made."""
    double = EtsyDouble()
    with serve_etsy(double):
        listings = [double.add_product(f"Cup {n}", [(f"C-{n}", n)])[0] for n in range(6)]
        connector = EtsyConnector(http=http, credentials=credentials(double), rate_state={})
        double.spend_quota_after(1)  # the read goes through; every write is refused
        with pytest.raises(RateLimited) as limited:
            await connector.push([update(listing, 7) for listing in listings])

    assert limited.value.retry_after == 1.0
    assert [double.quantity_of(f"C-{n}") for n in range(6)] == list(range(6))
    assert 1 <= double.throttled <= PARALLEL_WRITES


async def test_ids_change_on_every_write_and_the_next_push_still_finds_the_sku(
    double: EtsyDouble, make: Make
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)])
    listing_id = listing_of(ids[0])
    first_ids = ids_of(double.products_of(listing_id))
    connector = make()

    await connector.push([update(ids[0], 4)])
    second_ids = ids_of(double.products_of(listing_id))
    results = await connector.push([update(ids[0], 3), update(ids[1], 1)])

    third_ids = ids_of(double.products_of(listing_id))
    assert len({*first_ids, *second_ids, *third_ids}) == 6
    assert results == [
        PushResult(external_id=ids[0], outcome="ok", channel_quantity=3),
        PushResult(external_id=ids[1], outcome="ok", channel_quantity=1),
    ]
    assert (double.quantity_of("MUG-R"), double.quantity_of("MUG-G")) == (3, 1)


async def test_the_double_refuses_read_only_fields_in_a_put(
    double: EtsyDouble, http: httpx.AsyncClient
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)])
    path = f"{double.base_url}/v3/application/listings/{listing_of(ids[0])}/inventory"
    headers = {
        "x-api-key": "etsy-keystring:etsy-secret",
        "authorization": "Bearer 777001.etsy-token",
    }
    inventory = (await http.get(path, headers=headers)).json()
    as_read = {key: value for key, value in inventory.items() if key != "listing"}

    body = copy.deepcopy(as_read)
    refusals = []
    for strip in ("product", "property", "offering", "price"):
        reply = await http.put(path, headers=headers, json=body)
        refusals.append((reply.status_code, reply.json()))
        for product in body["products"]:
            if strip == "product":
                del product["product_id"], product["is_deleted"]
            if strip == "property":
                for value in product["property_values"]:
                    del value["scale_name"]
            if strip == "offering":
                for offering in product["offerings"]:
                    del offering["offering_id"], offering["is_deleted"]
            if strip == "price":
                for offering in product["offerings"]:
                    offering["price"] = offering["price"]["amount"] / 100
    accepted = await http.put(path, headers=headers, json=body)

    assert refusals == [
        (400, {"error": "Unexpected parameter: products[0].product_id"}),
        (400, {"error": "Unexpected parameter: products[0].property_values[0].scale_name"}),
        (400, {"error": "Unexpected parameter: products[0].offerings[0].offering_id"}),
        (400, {"error": "Expected a number for products[0].offerings[0].price"}),
    ]
    assert accepted.status_code == 200
    assert [double.quantity_of("MUG-R"), double.quantity_of("MUG-G")] == [5, 6]


async def test_the_connector_sends_no_read_only_field(double: EtsyDouble, make: Make) -> None:
    ids = double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)], prices=[2500, 2650])
    sent: list[bytes] = []

    async def record(request: httpx.Request) -> None:
        if request.method == "PUT":
            sent.append(request.content)

    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        connector = EtsyConnector(http=client, credentials=credentials(double), rate_state={})
        results = await connector.push([update(ids[0], 0)])

    assert results == [PushResult(external_id=ids[0], outcome="ok", channel_quantity=0)]
    assert len(sent) == 1
    for name in (b"product_id", b"offering_id", b"is_deleted", b"scale_name", b"amount"):
        assert name not in sent[0]
    assert b'"price":26.5' in sent[0].replace(b" ", b"")


async def test_variations_sharing_one_quantity_are_written_together(
    double: EtsyDouble, make: Make
) -> None:
    ids = double.add_product("Print", [("P-A", 4), ("P-B", 4)], is_quantity_shared=True)
    connector = make()

    first = await connector.push([update(ids[0], 3)])
    second = await connector.push([update(ids[0], 2), update(ids[1], 5)])

    assert first == [PushResult(external_id=ids[0], outcome="ok", channel_quantity=3)]
    assert second == [
        PushResult(external_id=ids[0], outcome="ok", channel_quantity=2),
        PushResult(
            external_id=ids[1],
            outcome="error",
            channel_quantity=2,
            error="the listing's variations share one quantity; 2 written for all",
        ),
    ]
    assert (double.quantity_of("P-A"), double.quantity_of("P-B")) == (2, 2)


async def test_zero_everywhere_deactivates_the_listing_and_stock_brings_it_back(
    double: EtsyDouble, make: Make
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 1), ("MUG-G", 2)])
    listing_id = listing_of(ids[0])
    state: dict[str, Any] = {}
    connector = make(rate_state=state)

    await connector.push([update(ids[0], 0)])
    emptied = await connector.push([update(ids[1], 0)])
    while_inactive = (double.state_of(listing_id), await connector.read([ref(ids[0]), ref(ids[1])]))
    requests_before = len(double.requests)
    restocked = await connector.push([update(ids[1], 4)])

    assert emptied == [PushResult(external_id=ids[1], outcome="ok", channel_quantity=0)]
    # Etsy would refuse an inventory of zeros: the listing was deactivated instead.
    assert while_inactive == ("inactive", {ids[0]: 0, ids[1]: 0})
    assert [product["offerings"][0]["quantity"] for product in double.products_of(listing_id)] == [
        0,
        4,
    ]
    assert restocked == [PushResult(external_id=ids[1], outcome="ok", channel_quantity=4)]
    assert double.state_of(listing_id) == "active"
    assert (double.quantity_of("MUG-R"), double.quantity_of("MUG-G")) == (0, 4)
    assert state["deactivated"] == []
    assert double.requests[requests_before:] == [
        ("GET", "/v3/application/listings/batch/inventory"),
        ("PUT", f"/v3/application/listings/{listing_id}/inventory"),
        ("PATCH", f"/v3/application/shops/5550001/listings/{listing_id}"),
    ]


async def test_a_lost_reply_to_the_deactivation_still_lets_stock_bring_it_back(
    http: httpx.AsyncClient,
) -> None:
    double = EtsyDouble()
    with serve_etsy(double):
        ids = double.add_product("Mug", [("MUG-R", 1)])
        listing_id = listing_of(ids[0])
        state: dict[str, Any] = {}
        connector = EtsyConnector(http=http, credentials=credentials(double), rate_state=state)

        async def lose_the_patch_reply(response: httpx.Response) -> None:
            if response.request.method == "PATCH":
                raise httpx.ReadError("connection reset", request=response.request)

        async with httpx.AsyncClient(event_hooks={"response": [lose_the_patch_reply]}) as lossy:
            unlucky = EtsyConnector(http=lossy, credentials=credentials(double), rate_state=state)
            with pytest.raises(ChannelUnavailable):
                await unlucky.push([update(ids[0], 0)])
        deactivated = (double.state_of(listing_id), list(state["deactivated"]))
        results = await connector.push([update(ids[0], 2)])

    assert deactivated == ("inactive", [str(listing_id)])
    assert results == [PushResult(external_id=ids[0], outcome="ok", channel_quantity=2)]
    assert (double.state_of(listing_id), double.quantity_of("MUG-R")) == ("active", 2)
    assert state["deactivated"] == []


async def test_a_listing_sold_out_on_etsy_is_not_relisted(double: EtsyDouble, make: Make) -> None:
    ids = double.add_product("Mug", [("MUG-R", 2)])
    double.sell("MUG-R", 2)

    results = await make().push([update(ids[0], 3)])

    assert results == [
        PushResult(
            external_id=ids[0],
            outcome="error",
            channel_quantity=0,
            error="the listing is sold_out on Etsy; the seller must relist it",
        )
    ]
    assert (double.state_of(listing_of(ids[0])), double.renewals) == ("sold_out", 0)
    assert double.quantity_of("MUG-R") == 0


async def test_the_double_refuses_an_inventory_of_zeros(
    double: EtsyDouble, http: httpx.AsyncClient
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 1)])
    reply = await http.put(
        f"{double.base_url}/v3/application/listings/{listing_of(ids[0])}/inventory",
        headers={
            "x-api-key": "etsy-keystring:etsy-secret",
            "authorization": "Bearer 777001.etsy-token",
        },
        json={
            "products": [
                {
                    "sku": "MUG-R",
                    "property_values": [],
                    "offerings": [{"price": 25.0, "quantity": 0, "is_enabled": True}],
                }
            ]
        },
    )

    assert (reply.status_code, reply.json()) == (
        400,
        {"error": "One offering must have quantity greater than 0"},
    )
    assert double.quantity_of("MUG-R") == 1


async def test_a_listing_etsy_refuses_is_an_error_and_the_others_are_written(
    double: EtsyDouble, make: Make
) -> None:
    priced = double.add_product("Mug", [("MUG-R", 5)])
    bowl = double.add_product("Bowl", [("BOWL", 5)])

    results = await make().push([update(priced[0], 1000), update(bowl[0], 3)])

    assert results == [
        PushResult(
            external_id=priced[0],
            outcome="error",
            error="400: Quantity must be between 0 and 999",
        ),
        PushResult(external_id=bowl[0], outcome="ok", channel_quantity=3),
    ]
    assert (double.quantity_of("MUG-R"), double.quantity_of("BOWL")) == (5, 3)


async def test_a_listing_gone_is_missing(double: EtsyDouble, make: Make) -> None:
    ids = double.add_product("Mug", [("MUG-R", 5)])

    results = await make().push([update("999:GONE", 1), update(ids[0], 1), update(f"{ids[0]}X", 1)])

    assert results == [
        PushResult(external_id="999:GONE", outcome="missing"),
        PushResult(external_id=ids[0], outcome="ok", channel_quantity=1),
        PushResult(external_id=f"{ids[0]}X", outcome="missing"),
    ]


# ---------------------------------------------------------------------- rate limits


async def test_a_burst_waits_for_the_next_second_and_never_exceeds_the_limit(
    http: httpx.AsyncClient,
) -> None:
    double = EtsyDouble(per_second=3)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    with serve_etsy(double):
        refs = [ref(double.add_product(f"Bowl {n}", [(f"B-{n}", n)])[0]) for n in range(7)]
        state: dict[str, Any] = {}
        connector = EtsyConnector(
            http=http, credentials=credentials(double), rate_state=state, sleep=sleep
        )
        quantities: dict[str, int | None] = {}
        for each in refs:  # a request each
            quantities |= await connector.read([each])

    assert quantities == {each.external_id: n for n, each in enumerate(refs)}
    assert double.throttled == 0
    assert len(double.served_at) == 7
    assert max(Counter(int(moment) for moment in double.served_at).values()) <= 3
    assert len(waits) >= 2
    assert all(0 < wait <= 1.0 for wait in waits)
    assert (state["second_limit"], state["day_limit"], state["day_remaining"]) == (3, 10_000, 9_993)


async def test_todays_quota_spent_raises_without_sending(
    http: httpx.AsyncClient,
) -> None:
    double = EtsyDouble(per_day=3)
    with serve_etsy(double):
        ids = double.add_product("Mug", [("MUG-R", 5)])
        state: dict[str, Any] = {}
        connector = EtsyConnector(
            http=http, credentials=credentials(double), rate_state=state, now=lambda: T0
        )
        for _ in range(3):
            assert await connector.read([ref(ids[0])]) == {ids[0]: 5}
        with pytest.raises(RateLimited) as spent:
            await connector.read([ref(ids[0])])
        assert len(double.requests) == 3

        # A worker without the state is refused by Etsy itself until the day frees.
        fresh = EtsyConnector(http=http, credentials=credentials(double), rate_state={})
        with pytest.raises(RateLimited) as refused:
            await fresh.read([ref(ids[0])])

    assert state["day_remaining"] == 0
    assert state["seen_at"] == T0.timestamp()
    assert spent.value.retry_after == DAY_RETRY_SECONDS
    assert refused.value.retry_after == 86_400.0
    assert str(refused.value) == "429: You have exceeded your quota of: 3 requests per day"
    assert double.throttled == 1


async def test_a_429_is_rate_limited_with_its_retry_after(
    http: httpx.AsyncClient,
) -> None:
    double = EtsyDouble(chaos=Chaos(throttle=1.0))
    with serve_etsy(double):
        connector = EtsyConnector(http=http, credentials=credentials(double), rate_state={})
        with pytest.raises(RateLimited) as throttled:
            await connector.listings()

    assert throttled.value.retry_after == 1.0
    assert str(throttled.value) == "429: You have exceeded your quota of: 10 requests per second"


async def test_a_lost_reply_is_unavailable(http: httpx.AsyncClient) -> None:
    double = EtsyDouble(chaos=Chaos(lose=1.0))
    with serve_etsy(double):
        connector = EtsyConnector(http=http, credentials=credentials(double), rate_state={})
        with pytest.raises(ChannelUnavailable):
            await connector.listings()


# ---------------------------------------------------------------------- credentials


async def test_a_revoked_token_is_unauthorized(double: EtsyDouble, make: Make) -> None:
    double.revoke()

    with pytest.raises(Unauthorized) as refused:
        await make().listings()

    assert str(refused.value) == "401: invalid_token"


async def test_the_keystring_alone_is_refused(
    double: EtsyDouble, http: httpx.AsyncClient, make: Make
) -> None:
    reply = await http.get(
        f"{double.base_url}/v3/application/shops/5550001/listings",
        headers={"x-api-key": "etsy-keystring", "authorization": "Bearer 777001.etsy-token"},
    )
    with pytest.raises(Unauthorized) as refused:
        await make(changes={"shared_secret": ""}).listings()

    assert (reply.status_code, reply.json()) == (
        403,
        {"error": "Shared secret is required in x-api-key header"},
    )
    assert str(refused.value) == "403: Shared secret is required in x-api-key header"


async def test_a_token_without_its_user_id_is_prefixed(double: EtsyDouble, make: Make) -> None:
    double.add_product("Mug", [("MUG-R", 5)])

    listings = await make(changes={"access_token": "etsy-token"}).listings()

    assert [each.sku for each in listings] == ["MUG-R"]


# ---------------------------------------------------------------------- orders


async def test_orders_since_pages_through_paid_receipts_oldest_change_first(
    double: EtsyDouble, make: Make
) -> None:
    ids = double.add_product("Mug", [("MUG-R", 500)])
    base = int(time.time()) - 3_600
    receipts = [double.sell("MUG-R", 1 + n % 2, at=base + n) for n in range(150)]
    unpaid = double.sell("MUG-R", 1, is_paid=False, at=base + 50)
    connector = make()

    first = await connector.orders_since(None)
    second = await connector.orders_since(first.cursor)
    double.cancel(receipts[0], at=base + 200)
    third = await connector.orders_since(second.cursor)

    assert [order.external_id for order in first.orders] == receipts[:100]
    assert (first.cursor, first.more) == (str(base + 99), True)
    assert [order.external_id for order in second.orders] == receipts[99:]
    assert (second.cursor, second.more) == (str(base + 149), False)
    assert unpaid not in {order.external_id for order in (*first.orders, *second.orders)}
    assert first.orders[1] == ChannelOrder(
        external_id=receipts[1],
        created_at=datetime.fromtimestamp(base + 1, UTC),
        updated_at=datetime.fromtimestamp(base + 1, UTC),
        lines=(OrderLine(sku="MUG-R", quantity=2, external_id=ids[0]),),
        name=f"Etsy receipt {receipts[1]}",
        cancelled=False,
    )
    assert [(order.external_id, order.cancelled) for order in third.orders] == [
        (receipts[149], False),
        (receipts[0], True),
    ]
    assert (third.cursor, third.more) == (str(base + 200), False)
    assert double.quantity_of("MUG-R") == 500 - 225 - 1


async def test_a_full_page_in_one_second_moves_the_cursor_by_offset(
    double: EtsyDouble, make: Make
) -> None:
    double.add_product("Mug", [("MUG-R", 500)])
    base = int(time.time()) - 60
    receipts = [double.sell("MUG-R", at=base) for _ in range(101)]
    connector = make()

    first = await connector.orders_since(None)
    second = await connector.orders_since(first.cursor)
    third = await connector.orders_since(second.cursor)

    assert (len(first.orders), first.cursor, first.more) == (100, str(base), True)
    assert (len(second.orders), second.cursor, second.more) == (100, f"{base}:100", True)
    assert [order.external_id for order in third.orders] == receipts[100:]
    assert (third.cursor, third.more) == (str(base), False)


async def test_the_control_routes_for_the_demo(
    double: EtsyDouble, http: httpx.AsyncClient, make: Make
) -> None:
    double.add_product("Mug", [("MUG-R", 5), ("MUG-G", 6)])

    sold = await http.post(f"{double.base_url}/_double/sell", json={"sku": "MUG-R", "quantity": 2})
    too_many = await http.post(
        f"{double.base_url}/_double/sell", json={"sku": "MUG-G", "quantity": 7}
    )
    set_to = await http.post(
        f"{double.base_url}/_double/quantity", json={"sku": "MUG-G", "quantity": 9}
    )
    state = await http.get(f"{double.base_url}/_double/state")
    page = await make().orders_since(None)

    assert sold.status_code == 200
    assert [order.external_id for order in page.orders] == [sold.json()["receipt_id"]]
    assert (too_many.status_code, too_many.json()) == (400, {"error": "MUG-G: 7 wanted, 6 left"})
    assert set_to.json() == {"sku": "MUG-G", "quantity": 9}
    assert state.json() == [
        {"sku": "MUG-R", "title": "Mug", "quantity": 3},
        {"sku": "MUG-G", "title": "Mug", "quantity": 9},
    ]
    # Control routes are not the API: neither counted nor logged.
    assert double.requests == [("GET", "/v3/application/shops/5550001/receipts")]


async def test_no_webhooks_on_etsy(make: Make) -> None:
    connector = make()

    assert await connector.register_webhooks("https://stallholder.example/hooks") == []
    assert connector.parse_webhook({}, b"{}") is None


# ---------------------------------------------------------------------- OAuth


def test_the_authorization_url_asks_for_a_s256_challenge() -> None:
    verifier, challenge = pkce_pair()

    url = authorization_url(
        client_id="etsy-keystring",
        redirect_uri=REDIRECT_URI,
        scopes=SCOPES,
        state="st4te",
        code_challenge=challenge,
    )

    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert 43 <= len(verifier) <= 128
    assert url == (
        "https://www.etsy.com/oauth/connect?response_type=code&client_id=etsy-keystring"
        "&redirect_uri=https%3A%2F%2Fstallholder.example%2Fchannels%2Fetsy%2Fcallback"
        "&scope=listings_r%20listings_w%20transactions_r%20shops_r&state=st4te"
        f"&code_challenge={challenge}&code_challenge_method=S256"
    )


async def test_the_connect_page_redirects_with_a_code_and_the_state(
    double: EtsyDouble, http: httpx.AsyncClient
) -> None:
    verifier, challenge = pkce_pair()
    url = authorization_url(
        client_id="etsy-keystring",
        redirect_uri=REDIRECT_URI,
        scopes=SCOPES,
        state="st4te",
        code_challenge=challenge,
        connect_url=f"{double.base_url}/oauth/connect",
    )

    reply = await http.get(url)
    callback = httpx.URL(reply.headers["location"])
    tokens = await exchange_code(
        http,
        api_base=double.base_url,
        client_id="etsy-keystring",
        redirect_uri=REDIRECT_URI,
        code=callback.params["code"],
        code_verifier=verifier,
    )

    assert reply.status_code == 302
    assert str(callback).partition("?")[0] == REDIRECT_URI
    assert callback.params["state"] == "st4te"
    assert user_id_of(tokens.access_token) == "777001"


async def test_exchange_checks_the_verifier_and_refresh_rotates(
    double: EtsyDouble, http: httpx.AsyncClient, make: Make
) -> None:
    verifier, challenge = pkce_pair()

    def code() -> str:
        return double.authorize(
            client_id="etsy-keystring",
            redirect_uri=REDIRECT_URI,
            scopes=SCOPES,
            code_challenge=challenge,
        )

    async def exchange(code: str, verifier: str) -> Any:
        return await exchange_code(
            http,
            api_base=double.base_url,
            client_id="etsy-keystring",
            redirect_uri=REDIRECT_URI,
            code=code,
            code_verifier=verifier,
            now=T0,
        )

    with pytest.raises(ChannelRefused) as wrong:
        await exchange(code(), pkce_pair()[0])
    tokens = await exchange(code(), verifier)
    assert tokens.refresh_token is not None
    renewed = await refresh(
        http,
        api_base=double.base_url,
        client_id="etsy-keystring",
        refresh_token=tokens.refresh_token,
        now=T0,
    )
    with pytest.raises(ChannelRefused) as reused:
        await refresh(
            http,
            api_base=double.base_url,
            client_id="etsy-keystring",
            refresh_token=tokens.refresh_token,
        )
    double.add_product("Mug", [("MUG-R", 5)])
    listings = await make(changes={"access_token": renewed.access_token}).listings()

    assert str(wrong.value) == "400: invalid_grant: code_verifier is not valid"
    assert str(reused.value) == "400: invalid_grant: refresh_token is not valid"
    assert tokens.access_token.startswith("777001.")
    assert tokens.expires_at == T0 + timedelta(seconds=3_600)
    assert renewed.refresh_token is not None
    assert renewed.refresh_token.startswith("777001.")
    assert renewed.refresh_token != tokens.refresh_token
    assert renewed.access_token != tokens.access_token
    assert renewed.expires_at == T0 + timedelta(seconds=3_600)
    assert [each.sku for each in listings] == ["MUG-R"]
