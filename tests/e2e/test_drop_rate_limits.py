"""Rate limits on drop entry and on checkout sessions for drops, on SQLite (in-process
counters) and PostgreSQL (a shared table): 429 with Retry-After past the limit, accepted
again once the window passes (the frozen clock, no sleeps), per buyer across IPs, and the
client address from the trusted proxy header only when one is configured."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from stallholder.app import create_app
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.test_drops import OPENS, PROBLEM, DropShop

pytestmark = pytest.mark.anyio
# OPENS is 13:00:00 UTC, the start of a 60-second window.
WINDOW = 60


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "drop_rate_limit_per_ip": 4,
            "drop_rate_limit_per_buyer": 2,
            "drop_rate_limit_window_seconds": WINDOW,
            "trusted_proxy_header": "X-Forwarded-For",
        }
    )


@pytest.fixture
async def shop(api: Api) -> DropShop:
    creator = await api.creator(name="Kiln & Clay")
    product = await api.product(creator["secret_key"], name="Winter mug")
    price = await api.price(creator["secret_key"], product=product["id"], unit_amount=4800)
    return DropShop(api, creator, price["id"])


async def open_session(
    shop: DropShop, price: str, email: str, ip: str | None = None
) -> httpx.Response:
    headers = bearer(shop.pk) | ({"X-Forwarded-For": ip} if ip else {})
    return await shop.api.http.post(
        "/v1/checkout/sessions",
        headers=headers,
        json={"line_items": [{"price": price, "quantity": 1}], "customer_email": email},
    )


def assert_limited(response: httpx.Response, retry_after: int) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["Retry-After"] == str(retry_after)
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM + "rate-limited"
    assert body["retry_after"] == retry_after
    return body


async def test_a_buyer_past_the_limit_gets_429_until_the_window_passes_from_any_address(
    shop: DropShop, clock: FrozenClock
) -> None:
    drop = await shop.drop(per_customer_limit=None, items=[{"price": shop.price, "quantity": 50}])
    assert drop.status_code == 201, drop.text
    clock.set(OPENS + timedelta(seconds=15))
    first = await open_session(shop, shop.price, "fan@gmail.com", ip="10.0.0.1")
    # The same person by another spelling and from another address: one buyer.
    second = await open_session(shop, shop.price, "F.an+tab2@Gmail.com", ip="10.0.0.2")
    assert (first.status_code, second.status_code) == (201, 201)
    third = await open_session(shop, shop.price, "fan+tab3@googlemail.com", ip="10.0.0.3")
    body = assert_limited(third, retry_after=45)
    assert (body["limit"], body["window_seconds"]) == (2, WINDOW)
    assert "for this buyer" in body["detail"]
    # Another buyer from the same address is still let in.
    other = await open_session(shop, shop.price, "friend@example.com", ip="10.0.0.3")
    assert other.status_code == 201

    clock.set(OPENS + timedelta(seconds=WINDOW))
    again = await open_session(shop, shop.price, "fan@gmail.com", ip="10.0.0.4")
    assert again.status_code == 201, again.text


async def test_an_address_past_the_limit_gets_429_and_only_drop_requests_count(
    shop: DropShop, clock: FrozenClock, api: Api
) -> None:
    drop = (
        await shop.drop(per_customer_limit=None, items=[{"price": shop.price, "quantity": 50}])
    ).json()
    product = await api.product(shop.sk, name="Zine")
    plain = (await api.price(shop.sk, product=product["id"], unit_amount=500))["id"]
    clock.set(OPENS)
    # A checkout for prices in no drop is not limited.
    for _ in range(6):
        assert (await open_session(shop, plain, "zine@example.com")).status_code == 201
    answers = [
        await open_session(shop, shop.price, f"buyer{n}@example.com", ip="203.0.113.7")
        for n in range(3)
    ]
    signed = await shop.api.http.post(
        f"/v1/drops/{drop['id']}/waitlist",
        headers=bearer(shop.pk) | {"X-Forwarded-For": "203.0.113.7"},
        json={"email": "buyer9@example.com"},
    )
    # The fourth counted request (a waitlist signup, refused as the drop is not sold out)
    # is within the limit; the fifth is not.
    assert [a.status_code for a in answers] + [signed.status_code] == [201, 201, 201, 409]
    fifth = await open_session(shop, shop.price, "buyer5@example.com", ip="203.0.113.7")
    body = assert_limited(fifth, retry_after=WINDOW)
    assert "from this address" in body["detail"]
    # The proxy's own address is the last one; what the client put before it is ignored.
    spoofed = await open_session(
        shop, shop.price, "buyer6@example.com", ip="198.51.100.1, 203.0.113.7"
    )
    assert_limited(spoofed, retry_after=WINDOW)
    elsewhere = await open_session(shop, shop.price, "buyer7@example.com", ip="198.51.100.1")
    assert elsewhere.status_code == 201

    clock.advance(timedelta(seconds=WINDOW))
    back = await open_session(shop, shop.price, "buyer8@example.com", ip="203.0.113.7")
    assert back.status_code == 201


async def test_raffle_entries_are_limited_per_buyer(shop: DropShop, clock: FrozenClock) -> None:
    raffle = (await shop.drop(mode="raffle", per_customer_limit=None)).json()
    clock.set(OPENS)

    async def enter(email: str, ip: str) -> httpx.Response:
        return await shop.api.http.post(
            f"/v1/drops/{raffle['id']}/entries",
            headers=bearer(shop.pk) | {"X-Forwarded-For": ip},
            json={"email": email},
        )

    entries = [await enter("fan@example.com", f"10.1.0.{n}") for n in range(3)]
    assert [e.status_code for e in entries[:2]] == [201, 201]
    assert_limited(entries[2], retry_after=WINDOW)


async def test_without_a_trusted_header_the_peer_address_counts(
    shop: DropShop, clock: FrozenClock, settings: Settings, database: Database, api: Api
) -> None:
    plain = settings.model_copy(update={"trusted_proxy_header": "", "drop_rate_limit_per_buyer": 0})
    app = create_app(plain, database=database, clock=clock, run_worker=False)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 5000))
    drop = (
        await shop.drop(per_customer_limit=None, items=[{"price": shop.price, "quantity": 50}])
    ).json()
    assert drop["id"]
    clock.set(OPENS)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        answers = [
            await http.post(
                "/v1/checkout/sessions",
                # A header naming other addresses changes nothing without the setting.
                headers=bearer(shop.pk) | {"X-Forwarded-For": f"10.9.0.{n}"},
                json={
                    "line_items": [{"price": shop.price, "quantity": 1}],
                    "customer_email": f"b{n}@example.com",
                },
            )
            for n in range(5)
        ]
    assert [a.status_code for a in answers] == [201, 201, 201, 201, 429]


async def test_the_store_buy_button_for_a_drop_is_limited_per_address(
    shop: DropShop, clock: FrozenClock
) -> None:
    drop = await shop.drop(per_customer_limit=None, items=[{"price": shop.price, "quantity": 50}])
    assert drop.status_code == 201, drop.text
    clock.set(OPENS)
    visits = [
        await shop.api.http.get(f"/buy/{shop.price}", headers={"X-Forwarded-For": "10.2.0.1"})
        for _ in range(5)
    ]
    assert [visit.status_code for visit in visits] == [303, 303, 303, 303, 429]
    assert visits[4].headers["Retry-After"] == str(WINDOW)


async def test_a_drop_session_counts_on_the_limiters_own_pool_and_a_plain_one_not_at_all(
    shop: DropShop, clock: FrozenClock, settings: Settings, database: Database
) -> None:
    """A session learns from its price read that it is for a drop and only then counts,
    while its own unit of work holds a connection: the count must not wait for that pool.
    With a pool of one connection, drop sessions are still answered (201, then 429), and
    sessions for a price outside any drop write no counter at all."""
    product = await shop.api.product(shop.sk, name="Zine")
    plain = (await shop.api.price(shop.sk, product=product["id"], unit_amount=500))["id"]
    drop = (
        await shop.drop(per_customer_limit=None, items=[{"price": shop.price, "quantity": 50}])
    ).json()
    assert drop["id"]
    clock.set(OPENS)
    tight = Database(database.url, pool_size=1, max_overflow=0, pool_timeout=5)
    app = create_app(settings, database=tight, clock=clock, run_worker=False)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.20", 5000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:

            async def open_one(price: str, n: int) -> int:
                response = await http.post(
                    "/v1/checkout/sessions",
                    headers=bearer(shop.pk),
                    json={
                        "line_items": [{"price": price, "quantity": 1}],
                        "customer_email": f"p{n}@example.com",
                    },
                )
                return response.status_code

            plain_answers = [await open_one(plain, n) for n in range(6)]
            async with tight.read() as session:
                counters = (
                    await session.execute(text("SELECT count(*) FROM rate_limit_counters"))
                ).scalar_one()
            drop_answers = [await open_one(shop.price, n) for n in range(5)]
    finally:
        await app.state.rate_limiter.aclose()
        await tight.dispose()
    assert plain_answers == [201] * 6
    # SQLite counts in memory; PostgreSQL's table has no row for the plain sessions.
    assert counters == 0
    assert drop_answers == [201, 201, 201, 201, 429]
