"""Public store pages over HTTP, on SQLite and PostgreSQL: only listed creators, product
pages with schema.org JSON-LD (read back with extruct), stock state from inventory, what a
subscription delivers and when (billing's calendar), drop countdowns and raffle entry."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import extruct
import pytest

from stallholder import demo
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger.service import platform_fee_policy
from stallholder.payments.config import gateway_from_settings
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, T0, Api, bearer
from tests.e2e.portal_helpers import csrf_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _json_ld(html: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = extruct.extract(
        html, base_url="http://testserver", syntaxes=["json-ld"], uniform=True
    )["json-ld"]
    return data


def _unlabelled_inputs(html: str) -> list[str]:
    """The ids of visible inputs that no ``<label for=…>`` names."""
    labelled = set(re.findall(r'<label[^>]* for="([^"]+)"', html))
    inputs = re.findall(r"<input\b[^>]*>", html)
    return [
        tag
        for tag in inputs
        if (
            'type="hidden"' not in tag
            and (match := re.search(r'id="([^"]+)"', tag)) is not None
            and match.group(1) not in labelled
        )
        or ('type="hidden"' not in tag and 'id="' not in tag)
    ]


def _text(html: str) -> str:
    """The page's visible words, tags removed and whitespace collapsed."""
    body = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


async def _stocked_shop(api: Api, *, on_hand: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A listed creator selling a tracked physical product: (creator, product, price id)."""
    creator = await api.creator(name="Kiln & Clay", listed=True)
    sk = creator["secret_key"]
    product = await api.product(
        sk,
        name="Moon mug",
        description="A speckled stoneware mug.",
        variants=[{"sku": "MUG-M", "name": "Moon mug"}],
    )
    price = await api.price(sk, product=product["id"], unit_amount=1500)
    location = await api.http.post("/v1/locations", headers=bearer(sk), json={"name": "Studio"})
    assert location.status_code == 201, location.text
    adjusted = await api.http.post(
        "/v1/inventory/adjustments",
        headers=bearer(sk),
        json={
            "sku": "MUG-M",
            "location": location.json()["id"],
            "set": on_hand,
            "reason": "counted",
        },
    )
    assert adjusted.status_code in (200, 201), adjusted.text
    return creator, product, price["id"]


async def test_the_index_lists_only_creators_who_chose_to_be_listed(api: Api) -> None:
    listed = await api.creator(name="Listed Studio", email="a@example.com", listed=True)
    hidden = await api.creator(name="Quiet Studio", email="b@example.com")
    assert (listed["listed"], hidden["listed"]) == (True, False)
    for creator in (listed, hidden):
        product = await api.product(creator["secret_key"], name=f"{creator['slug']} zine")
        await api.price(creator["secret_key"], product=product["id"])

    index = await api.http.get("/")
    assert 'href="/s/listed-studio"' in index.text
    assert "Quiet Studio" not in index.text
    unlisted_store = await api.http.get("/s/quiet-studio")
    assert unlisted_store.status_code == 404
    assert unlisted_store.headers["content-type"].startswith("text/html")
    assert "There is no store at /s/quiet-studio." in unlisted_store.text

    # The creator opts in with its secret key; the admin can opt a creator out.
    opted_in = await api.http.patch(
        f"/v1/creators/{hidden['id']}", headers=bearer(hidden["secret_key"]), json={"listed": True}
    )
    opted_out = await api.http.patch(
        f"/v1/creators/{listed['id']}", headers=bearer(ADMIN_KEY), json={"listed": False}
    )
    assert (opted_in.status_code, opted_in.json()["listed"]) == (200, True)
    assert (opted_out.status_code, opted_out.json()["listed"]) == (200, False)
    other = await api.http.patch(
        f"/v1/creators/{listed['id']}", headers=bearer(hidden["secret_key"]), json={"listed": True}
    )
    assert other.status_code == 404
    index = await api.http.get("/")
    assert 'href="/s/quiet-studio"' in index.text
    assert "Listed Studio" not in index.text
    assert (await api.http.get("/s/quiet-studio")).status_code == 200
    assert (await api.http.get("/s/listed-studio")).status_code == 404


async def test_a_product_page_shows_price_stock_and_json_ld(api: Api) -> None:
    creator, product, price_id = await _stocked_shop(api, on_hand=3)
    url = f"/s/{creator['slug']}/{product['id']}"

    store = await api.http.get(f"/s/{creator['slug']}")
    assert store.status_code == 200
    assert f'href="{url}"' in store.text
    assert "Only 3 left" in _text(store.text)

    page = await api.http.get(url)
    assert page.status_code == 200
    text = _text(page.text)
    assert "Moon mug" in text
    assert "$15.00" in text
    assert "Only 3 left" in text
    assert f'href="/buy/{price_id}"' in page.text
    assert _json_ld(page.text) == [
        {
            "@context": "https://schema.org",
            "@type": "Product",
            "name": "Moon mug",
            "description": "A speckled stoneware mug.",
            "url": f"http://testserver{url}",
            "brand": {"@type": "Brand", "name": "Kiln & Clay"},
            "offers": [
                {
                    "@type": "Offer",
                    "price": "15.00",
                    "priceCurrency": "USD",
                    "availability": "https://schema.org/InStock",
                    "url": f"http://testserver{url}",
                    "seller": {"@type": "Organization", "name": "Kiln & Clay"},
                }
            ],
        }
    ]

    sk = creator["secret_key"]
    location = (await api.http.get("/v1/locations", headers=bearer(sk))).json()["data"][0]["id"]
    emptied = await api.http.post(
        "/v1/inventory/adjustments",
        headers=bearer(sk),
        json={"sku": "MUG-M", "location": location, "set": 0, "reason": "broke"},
    )
    assert emptied.status_code in (200, 201), emptied.text
    sold_out = await api.http.get(url)
    assert "Sold out" in _text(sold_out.text)
    assert f'href="/buy/{price_id}"' not in sold_out.text
    [document] = _json_ld(sold_out.text)
    assert document["offers"][0]["availability"] == "https://schema.org/OutOfStock"


async def test_unknown_products_are_an_html_404_page(api: Api) -> None:
    creator = await api.creator(listed=True)
    draft = await api.product(creator["secret_key"], name="Unfinished", status="draft")
    await api.price(creator["secret_key"], product=draft["id"])
    for path in (
        f"/s/{creator['slug']}/prod_nope",
        f"/s/{creator['slug']}/{draft['id']}",
        f"/s/nobody/{draft['id']}",
    ):
        response = await api.http.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "text/html; charset=utf-8", path
        assert "<h1>Not found</h1>" in response.text, path


async def test_a_subscription_says_when_it_charges_closes_and_ships(api: Api) -> None:
    creator = await api.creator(listed=True)
    sk = creator["secret_key"]
    box = await api.product(sk, name="Zine box", kind="physical")
    calendar = await api.price(
        sk,
        product=box["id"],
        unit_amount=300,
        recurring={
            "interval": "month",
            "delivery": {
                "charge_day": 5,
                "ship_days_after_charge": 3,
                "cutoff_days_before_ship": 2,
            },
        },
    )
    plain = await api.price(sk, product=box["id"], unit_amount=500, recurring={"interval": "month"})

    page = await api.http.get(f"/s/{creator['slug']}/{box['id']}")
    text = _text(page.text)
    # 1 March 12:00 UTC is past the cut-off of the cycle charged on 5 February (6 February),
    # so a new subscriber joins the cycle charged on 5 March, which ships 3 days later.
    assert (
        "$3.00 / month In stock First charge $3.00 on March 5, 2026 "
        "Changes for this cycle close March 6, 2026 at 00:00 UTC "
        "Ships on March 8, 2026 Next charge $3.00 on April 5, 2026"
    ) in text
    assert (
        "$5.00 / month In stock First charge $5.00 today Next charge $5.00 on April 1, 2026"
    ) in text
    assert f'href="/buy/{calendar["id"]}"' in page.text
    assert f'href="/buy/{plain["id"]}"' in page.text
    assert page.text.count(">Subscribe</a>") == 2


async def test_a_drop_counts_down_and_a_raffle_takes_entries_from_the_page(
    api: Api, clock: FrozenClock
) -> None:
    creator = await api.creator(listed=True)
    sk = creator["secret_key"]
    mug = await api.product(sk, name="Drop mug")
    mug_price = await api.price(sk, product=mug["id"], unit_amount=4800)
    print_ = await api.product(sk, name="Raffle print")
    print_price = await api.price(sk, product=print_["id"], unit_amount=2000)
    opens = T0 + timedelta(hours=2, minutes=5)
    closes = T0 + timedelta(hours=5)
    drops = []
    for name, mode, price in (
        ("Spring mugs", "first_come", mug_price),
        ("Print raffle", "raffle", print_price),
    ):
        created = await api.http.post(
            "/v1/drops",
            headers=bearer(sk),
            json={
                "name": name,
                "mode": mode,
                "opens_at": opens.isoformat(),
                "closes_at": closes.isoformat(),
                "items": [{"price": price["id"], "quantity": 4}],
            },
        )
        assert created.status_code == 201, created.text
        drops.append(created.json())

    mug_url = f"/s/{creator['slug']}/{mug['id']}"
    page = await api.http.get(mug_url)
    text = _text(page.text)
    assert "Not on sale yet" in text
    assert "On sale March 1, 2026 at 14:05 UTC — in 2 hours 5 minutes ." in text
    assert '<time datetime="2026-03-01T14:05:00Z">' in page.text
    assert 'data-countdown="2026-03-01T14:05:00Z"' in page.text
    assert '<script src="/static/countdown.js" defer></script>' in page.text
    assert f"/buy/{mug_price['id']}" not in page.text
    [document] = _json_ld(page.text)
    assert document["offers"][0]["availability"] == "https://schema.org/PreOrder"
    assert (await api.http.get("/static/countdown.js")).status_code == 200

    clock.set(opens)
    open_page = await api.http.get(mug_url)
    assert "On sale until March 1, 2026 at 17:00 UTC — in 2 hours 55 minutes ." in _text(
        open_page.text
    )
    assert "Only 4 left" in _text(open_page.text)
    assert f'href="/buy/{mug_price["id"]}"' in open_page.text

    print_url = f"/s/{creator['slug']}/{print_['id']}"
    raffle_page = await api.http.get(print_url)
    assert 'for="raffle-email-' in raffle_page.text
    assert _unlabelled_inputs(raffle_page.text) == []
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in (
        raffle_page.text
    )
    assert f"/buy/{print_price['id']}" not in raffle_page.text
    entry = {"csrf_token": csrf_of(raffle_page.text), "drop_id": drops[1]["id"]}
    forged = await api.http.post(
        f"{print_url}/raffle", data={"drop_id": drops[1]["id"], "email": "fan@example.com"}
    )
    assert forged.status_code == 403  # no CSRF token: refused, nothing entered
    entered = await api.http.post(
        f"{print_url}/raffle",
        data={**entry, "email": "Fan@Example.com"},
    )
    assert entered.status_code == 200
    assert "You are entered in the raffle as Fan@example.com." in _text(entered.text)
    again = await api.http.post(
        f"{print_url}/raffle",
        data={**entry, "email": "fan@example.com"},
    )
    assert again.status_code == 200
    bad = await api.http.post(
        f"{print_url}/raffle",
        data={**entry, "email": "not-an-email"},
    )
    assert bad.status_code == 422
    assert "Enter your email address" in bad.text
    draw = await api.http.get(f"/v1/drops/{drops[1]['id']}/draw", headers=bearer(sk))
    assert len(draw.json()["entrants"]) == 1

    clock.set(closes)
    closed = await api.http.post(
        f"{print_url}/raffle",
        data={**entry, "email": "late@example.com"},
    )
    assert closed.status_code == 409
    assert "takes entries from" in closed.text
    assert "Raffle entries closed" in _text(closed.text)


async def test_a_sold_out_drop_takes_waitlist_signups_from_the_page(
    api: Api, settings: Settings, database: Database, clock: FrozenClock, tmp_path: Path
) -> None:
    keys = await demo.seed(
        database,
        clock=clock,
        gateway=gateway_from_settings(settings, database=database),
        data_dir=tmp_path,
        fees=platform_fee_policy(settings),
        base_url=settings.base_url,
    )
    sk = keys["kiln-and-clay"]["secret_key"]
    products = (await api.http.get("/v1/products", headers=bearer(sk))).json()["data"]
    [bowl] = [p for p in products if p["name"] == "Studio second — ash-glaze bowl"]
    url = f"/s/kiln-and-clay/{bowl['id']}"

    page = await api.http.get(url)
    assert page.status_code == 200
    assert f'action="{url}/waitlist"' in page.text
    assert _unlabelled_inputs(page.text) == []
    found = re.search(r'name="drop_id" value="(drop_\w+)"', page.text)
    assert found is not None
    drop_id = found.group(1)
    joined = await api.http.post(
        f"{url}/waitlist",
        data={
            "csrf_token": csrf_of(page.text),
            "drop_id": drop_id,
            "email": "Late@Example.com",
        },
    )

    assert joined.status_code == 200, joined.text
    assert "You are on the waitlist as Late@example.com." in _text(joined.text)
    waiting = await api.http.get(f"/v1/drops/{drop_id}/waitlist", headers=bearer(sk))
    emails = sorted(entry["email"] for entry in waiting.json()["data"])
    assert emails == ["Late@example.com", "first.in.line@example.com", "next.in.line@example.com"]
