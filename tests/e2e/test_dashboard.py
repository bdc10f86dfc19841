"""The creator dashboard through the ASGI app, as a browser uses it: sign in with a
magic link (from a real SMTP server, or from the email outbox of the embedded default),
add a product and its price by form, see the order a buyer made through the API, refund
it; forms without the CSRF token are refused; one creator never reads another's data;
every empty page says what to do next."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from stallholder import demo
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger.service import platform_fee_policy
from stallholder.notifications.models import Email
from stallholder.payments.config import gateway_from_settings
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.portal_helpers import browser, csrf_of, submit
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.anyio
LINK = re.compile(r"http://testserver(/dashboard/sign-in/[A-Za-z0-9_\-]+)")
STUDIO = "studio@example.com"
OTHER = "other-shop@example.com"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def mail_settings(settings: Settings, smtp: SmtpServer) -> Settings:
    return settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{smtp.port}", "smtp_timeout_seconds": 5.0}
    )


def _mailed_links(smtp: SmtpServer, to: str) -> list[str]:
    found: list[str] = []
    for received in smtp.received:
        if to in received.rcpt_tos:
            body = received.message.get_body(preferencelist=("plain",))
            assert body is not None
            found.extend(LINK.findall(str(body.get_content())))
    return found


class _Controls(HTMLParser):
    """The form controls of a page and the labels that name them."""

    def __init__(self) -> None:
        super().__init__()
        self.label_depth = 0
        self.labelled_ids: set[str] = set()
        self.controls: list[tuple[str | None, bool]] = []  # (id, inside a label)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "label":
            self.label_depth += 1
            if values.get("for"):
                self.labelled_ids.add(str(values["for"]))
        elif tag in {"input", "select", "textarea"} and values.get("type") != "hidden":
            self.controls.append((values.get("id"), self.label_depth > 0))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.label_depth -= 1


def unlabelled_controls(page: str) -> list[str | None]:
    """Ids of visible inputs, selects and text areas that no label names."""
    parser = _Controls()
    parser.feed(page)
    return [
        control_id
        for control_id, inside in parser.controls
        if not inside and control_id not in parser.labelled_ids
    ]


async def _outbox_link(database: Database, to: str) -> str:
    """The newest sign-in link queued to ``to`` (unsent: the embedded default's outbox)."""
    async with database.unit_of_work() as session:
        bodies = (
            (
                await session.execute(
                    select(Email.text_body)
                    .where(Email.to_address == to, Email.kind == "sign_in_link")
                    .order_by(Email.created_at, Email.id)
                )
            )
            .scalars()
            .all()
        )
    links: list[str] = [link for body in bodies for link in LINK.findall(body)]
    assert links, bodies
    return links[-1]


async def _sign_in_from_outbox(phone: httpx.AsyncClient, database: Database, email: str) -> None:
    asked = await submit(phone, "/dashboard/sign-in", "/dashboard/sign-in", {"email": email})
    assert asked.status_code == 200, asked.text
    path = await _outbox_link(database, email)
    used = await submit(phone, path, path)
    assert (used.status_code, used.headers.get("location")) == (303, "/dashboard"), used.text


async def test_sign_in_add_a_product_see_its_order_and_refund_it(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    creator = await api.creator(name="Paper Lantern Zines", email=STUDIO)
    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as phone:
        home = await phone.get("/dashboard/orders")
        assert (home.status_code, home.headers["location"]) == (303, "/dashboard/sign-in")

        asked = await submit(
            phone, "/dashboard/sign-in", "/dashboard/sign-in", {"email": "Studio@Example.com"}
        )
        assert asked.status_code == 200
        assert "a sign-in link is on its way" in asked.text
        await worker.run_once()
        [path] = _mailed_links(smtp, STUDIO)
        [received] = smtp.received
        assert str(received.message["Subject"]) == "Sign in to the Paper Lantern Zines dashboard"
        # Opening the link signs nobody in; the button does, and goes where we were going.
        opened = await phone.get(path)
        assert opened.status_code == 200
        assert (await phone.get("/dashboard/orders")).status_code == 303
        used = await phone.post(path, data={"csrf_token": csrf_of(opened.text)})
        assert (used.status_code, used.headers["location"]) == (303, "/dashboard/orders")
        # It works once.
        again = await submit(phone, path, path)
        assert again.status_code == 410
        assert "it was used already (each link works once)" in again.text

        # Empty states say what to do next.
        overview = await phone.get("/dashboard")
        assert overview.status_code == 200
        assert "<strong>No orders yet</strong> — share your store link" in overview.text
        assert '<strong id="active-subscribers">0</strong>' in overview.text
        assert 'id="no-charts"' in overview.text
        for page, marker in [
            ("/dashboard/products", 'id="no-products"'),
            ("/dashboard/orders", 'id="no-orders"'),
            ("/dashboard/drops", 'id="no-drops"'),
            ("/dashboard/subscribers", 'id="no-subscribers"'),
            ("/dashboard/inventory", 'id="no-stock"'),
            ("/dashboard/balance", 'id="no-entries"'),
            ("/dashboard/webhooks", 'id="no-webhooks"'),
        ]:
            shown = await phone.get(page)
            assert shown.status_code == 200, page
            assert marker in shown.text, page
        # With an SMTP server configured, no outbox in the menu.
        assert 'href="/dashboard/mail"' not in overview.text

        # A product with its price, by form.
        made = await submit(
            phone,
            "/dashboard/products",
            "/dashboard/products",
            {
                "name": "Risograph print",
                "kind": "digital",
                "description": "A5, two colours",
                "amount": "12.50",
                "currency": "usd",
                "interval": "",
                "publish": "yes",
            },
        )
        assert made.status_code == 303
        assert made.headers["location"].startswith("/dashboard/products?created=prod_")
        listed = await phone.get(made.headers["location"])
        assert 'id="product-created"' in listed.text
        assert "<strong>Risograph print</strong>" in listed.text
        assert "$12.50" in listed.text
        [price_id] = re.findall(r'href="/buy/(price_[A-Za-z0-9]+)"', listed.text)

    # The same product through the API, and a buyer pays for it there.
    key = creator["secret_key"]
    [product] = (await api.http.get("/v1/products", headers=bearer(key))).json()["data"]
    assert (product["name"], product["kind"], product["status"]) == (
        "Risograph print",
        "digital",
        "published",
    )
    price = (await api.http.get(f"/v1/prices/{price_id}", headers=bearer(key))).json()
    assert (price["unit_amount"], price["currency"], price["product"]) == (
        1250,
        "usd",
        product["id"],
    )
    checkout = await api.session(key, price=price_id, email="reader@example.com")
    confirmed = await api.confirm(key, checkout["id"])
    assert confirmed.status_code == 200, confirmed.text
    order_id = confirmed.json()["order"]

    async with browser(mail_settings, database, clock) as phone:
        await submit(phone, "/dashboard/sign-in", "/dashboard/sign-in", {"email": STUDIO})
        await worker.run_once()
        path = _mailed_links(smtp, STUDIO)[-1]
        assert (await submit(phone, path, path)).status_code == 303

        orders_page = await phone.get("/dashboard/orders")
        assert f'href="/dashboard/orders/{order_id}"' in orders_page.text
        assert "reader@example.com" in orders_page.text
        assert "$12.50" in orders_page.text
        overview = await phone.get("/dashboard")
        assert '<strong class="revenue-this-month">$12.50</strong>' in overview.text
        assert f'href="/dashboard/orders/{order_id}"' in overview.text
        assert '<svg class="chart"' in overview.text
        assert "Mar $12.50" in overview.text  # the chart's text description

        order_page = await phone.get(f"/dashboard/orders/{order_id}")
        assert order_page.status_code == 200
        assert '<dd id="order-status">paid</dd>' in order_page.text
        assert "Risograph print" in order_page.text

        refunded = await submit(
            phone,
            f"/dashboard/orders/{order_id}",
            f"/dashboard/orders/{order_id}/refund",
            {"amount": "2.50"},
        )
        assert (refunded.status_code, refunded.headers["location"]) == (
            303,
            f"/dashboard/orders/{order_id}",
        )
        after = await phone.get(f"/dashboard/orders/{order_id}")
        assert '<dd id="order-status">partially refunded</dd>' in after.text
        assert '<dd id="order-refunded">$2.50</dd>' in after.text
        too_much = await submit(
            phone,
            f"/dashboard/orders/{order_id}",
            f"/dashboard/orders/{order_id}/refund",
            {"amount": "20.00"},
        )
        assert too_much.status_code == 400
        assert 'id="order-error"' in too_much.text

    api_order = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(key))).json()
    assert api_order["amount_refunded"] == 250


async def test_forms_without_the_csrf_token_are_refused(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    creator = await api.creator(email=STUDIO)
    async with browser(settings, database, clock) as phone:
        forged = await phone.post("/dashboard/sign-in", data={"email": STUDIO})
        assert forged.status_code == 403
        assert "This form has expired" in forged.text
        await _sign_in_from_outbox(phone, database, STUDIO)
        refused = await phone.post(
            "/dashboard/products",
            data={"name": "Forged", "kind": "digital", "amount": "1", "currency": "usd"},
        )
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("text/html")
        assert "This form has expired" in refused.text
        rolled = await phone.post("/dashboard/keys/roll", data={"csrf_token": "not-it"})
        assert rolled.status_code == 403
        # Signing out ends the session: the dashboard asks to sign in again.
        out = await submit(phone, "/dashboard", "/dashboard/sign-out")
        assert (out.status_code, out.headers["location"]) == (303, "/dashboard/sign-in")
        again = await phone.get("/dashboard")
        assert (again.status_code, again.headers["location"]) == (303, "/dashboard/sign-in")
    products = await api.http.get("/v1/products", headers=bearer(creator["secret_key"]))
    assert products.json()["data"] == []


async def test_a_creator_never_sees_another_creators_orders(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    first, price = await api.shop()
    checkout = await api.session(first["secret_key"], price=price["id"])
    confirmed = await api.confirm(first["secret_key"], checkout["id"])
    order_id = confirmed.json()["order"]
    await api.creator(name="Other shop", email=OTHER)
    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, OTHER)
        read = await phone.get(f"/dashboard/orders/{order_id}")
        assert read.status_code == 404
        assert read.headers["content-type"].startswith("text/html")
        assert f"no order {order_id!r}" in read.text.replace("&#39;", "'")
        assert 'href="/dashboard">Your dashboard' in read.text
        page = await phone.get("/dashboard/orders")
        token = csrf_of(page.text)
        refused = await phone.post(
            f"/dashboard/orders/{order_id}/refund", data={"csrf_token": token}
        )
        assert refused.status_code == 404
        assert 'id="no-orders"' in page.text
        overview = await phone.get("/dashboard")
        assert "buyer@example.com" not in overview.text
    order = await api.http.get(f"/v1/orders/{order_id}", headers=bearer(first["secret_key"]))
    assert (order.json()["status"], order.json()["amount_refunded"]) == ("paid", 0)


async def test_mistakes_in_the_product_form_show_the_form_again(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    creator = await api.creator(email=STUDIO)
    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, STUDIO)
        for amount, currency, message in [
            ("12.345", "usd", "price: &#39;12.345&#39; has more decimals than USD has (2)"),
            ("twelve", "usd", "price: &#39;twelve&#39; is not an amount; type it as 5 or 5.00"),
            ("5", "zzz", "unknown currency"),
            ("-1", "usd", "price: Input should be greater than or equal to 0"),
        ]:
            shown = await submit(
                phone,
                "/dashboard/products",
                "/dashboard/products",
                {"name": "Print", "kind": "digital", "amount": amount, "currency": currency},
            )
            assert shown.status_code == 422, amount
            assert 'id="product-errors"' in shown.text
            assert message in shown.text, shown.text
            assert f'value="{amount}"' in shown.text  # what was typed stays
        long_name = await submit(
            phone,
            "/dashboard/products",
            "/dashboard/products",
            {"name": "x" * 201, "kind": "digital", "amount": "5", "currency": "usd"},
        )
        assert long_name.status_code == 422
        assert "name: String should have at most 200 characters" in long_name.text
        odd_kind = await submit(
            phone,
            "/dashboard/products",
            "/dashboard/products",
            {"name": "Print", "kind": "vinyl", "amount": "5", "currency": "usd"},
        )
        assert odd_kind.status_code == 422
        assert (
            "kind: Input should be &#39;digital&#39;, &#39;physical&#39; or &#39;service&#39;"
            in (odd_kind.text)
        )
    products = await api.http.get("/v1/products", headers=bearer(creator["secret_key"]))
    assert products.json()["data"] == []


async def test_keys_page_rolls_the_keys_and_the_mail_outbox_shows_the_receipt(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    old_key = creator["secret_key"]
    checkout = await api.session(old_key, price=price["id"], email="reader@example.com")
    assert (await api.confirm(old_key, checkout["id"])).status_code == 200
    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, "hi@example.com")
        keys = await phone.get("/dashboard/keys")
        assert f"<code>{old_key[:3]}…{old_key[-4:]}</code>" in keys.text
        assert old_key not in keys.text

        unconfirmed = await submit(phone, "/dashboard/keys", "/dashboard/keys/roll")
        assert unconfirmed.status_code == 422
        assert 'id="roll-error"' in unconfirmed.text
        assert f"<code>{old_key[:3]}…{old_key[-4:]}</code>" in unconfirmed.text
        rolled = await submit(phone, "/dashboard/keys", "/dashboard/keys/roll", {"confirm": "yes"})
        assert rolled.status_code == 200
        [new_secret] = re.findall(r'<code id="new-secret-key">(sk_[^<]+)</code>', rolled.text)
        [new_publishable] = re.findall(
            r'<code id="new-publishable-key">(pk_[^<]+)</code>', rolled.text
        )
        # Shown once: the keys page shows their redacted forms after.
        assert new_secret not in (await phone.get("/dashboard/keys")).text

        # The embedded default has no SMTP server: its emails are on the outbox page
        # (and written to files by the worker).
        worker = Worker(database, clock, settings=settings)
        await worker.run_once()
        await worker.run_once()
        overview = await phone.get("/dashboard")
        assert 'href="/dashboard/mail"' in overview.text
        outbox = await phone.get("/dashboard/mail")
        assert outbox.status_code == 200
        receipts = re.findall(
            r"<strong>([^<]+)</strong><br><span class=\"muted\">to "
            r"reader@example.com · (\w+)",
            outbox.text,
        )
        assert receipts == [
            ("Your receipt from Paper Lantern Zines [PAPER-LANTERN-ZINES-000001]", "sent")
        ]
        # The sign-in link's text is removed once sent.
        assert "[removed after sending]" in outbox.text
    assert (await api.http.get("/v1/products", headers=bearer(old_key))).status_code == 401
    assert (await api.http.get("/v1/products", headers=bearer(new_secret))).status_code == 200
    assert new_publishable.startswith("pk_")


async def test_every_page_shows_the_demo(
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
    zines = next(entry for entry in keys.values() if entry["display_name"] == "Paper Lantern Zines")
    key = zines["secret_key"]
    # A reader subscribes to the $3 zine through the API.
    prices = (await api.http.get("/v1/prices", headers=bearer(key))).json()["data"]
    [plan] = [price for price in prices if price["recurring"] is not None]
    customer = await api.http.post(
        "/v1/customers", headers=bearer(key), json={"email": "subscriber@example.com"}
    )
    assert customer.status_code == 201, customer.text
    card = await api.http.post(
        f"/v1/customers/{customer.json()['id']}/payment_methods",
        headers=bearer(key),
        json={"token": "tok_visa"},
    )
    assert card.status_code == 201, card.text
    subscribed = await api.http.post(
        "/v1/subscriptions",
        headers=bearer(key),
        json={
            "customer": customer.json()["id"],
            "items": [{"price": plan["id"], "quantity": 2}],
            "default_payment_method": card.json()["id"],
        },
    )
    assert subscribed.status_code == 201, subscribed.text
    assert subscribed.json()["status"] == "active"

    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, "hello@paperlantern.example")
        overview = await phone.get("/dashboard")
        assert '<strong class="mrr">$9.00</strong>' in overview.text  # + the demo reader's $3 zine
        assert '<link rel="stylesheet" href="/static/dashboard.css">' in overview.text
        styles = await phone.get("/static/dashboard.css")
        assert styles.status_code == 200
        assert "svg.chart" in styles.text
        assert '<strong id="active-subscribers">2</strong>' in overview.text
        for path, label in NAV_PAGES:
            page = await phone.get(path)
            assert page.status_code == 200, path
            assert f'aria-current="page">{label}</a>' in page.text, path
            assert unlabelled_controls(page.text) == [], path
            assert '<meta name="viewport" content="width=device-width' in page.text
        subscribers = await phone.get("/dashboard/subscribers")
        assert "subscriber@example.com" in subscribers.text
        assert "$3 / month: $6.00" in subscribers.text
        canceled = await phone.get("/dashboard/subscribers?status=canceled")
        assert 'id="no-subscribers"' in canceled.text
        assert "No subscribers with status canceled yet" in canceled.text
        assert (
            "subscriber@example.com"
            in (await phone.get("/dashboard/subscribers?status=active")).text
        )
        orders_page = await phone.get("/dashboard/orders")
        assert "reader@example.com" in orders_page.text
        for order_id in re.findall(
            r'href="/dashboard/orders/(ord_[A-Za-z0-9]+)"', orders_page.text
        ):
            order_page = await phone.get(f"/dashboard/orders/{order_id}")
            assert order_page.status_code == 200
            assert 'id="refund-amount"' in order_page.text
            assert unlabelled_controls(order_page.text) == []

    async with browser(settings, database, clock) as laptop:
        await _sign_in_from_outbox(laptop, database, "studio@kilnandclay.example")
        drops_page = await laptop.get("/dashboard/drops")
        assert "<strong>Winter mug drop</strong>" in drops_page.text
        assert '<td class="amount">18 of 20</td>' in drops_page.text
        inventory = await laptop.get("/dashboard/inventory")
        assert "<code>KC-MOON-MUG</code>" in inventory.text


NAV_PAGES = [
    ("/dashboard", "Overview"),
    ("/dashboard/products", "Products"),
    ("/dashboard/drops", "Drops"),
    ("/dashboard/orders", "Orders"),
    ("/dashboard/subscribers", "Subscribers"),
    ("/dashboard/inventory", "Inventory"),
    ("/dashboard/balance", "Balance"),
    ("/dashboard/webhooks", "Webhooks"),
    ("/dashboard/keys", "API keys"),
    ("/dashboard/mail", "Mail outbox"),
]


async def test_one_address_with_two_shops_gets_a_link_to_each_and_strangers_none(
    api: Api, settings: Settings, database: Database, clock: FrozenClock
) -> None:
    await api.creator(name="Moth Press", email=STUDIO)
    await api.creator(name="Moth Records", email=STUDIO)
    async with browser(settings, database, clock) as phone:
        stranger = await submit(
            phone, "/dashboard/sign-in", "/dashboard/sign-in", {"email": "nobody@example.com"}
        )
        assert stranger.status_code == 200
        assert "If a shop on this platform belongs to <strong>nobody@example.com</strong>" in (
            stranger.text
        )
        # No mail server: the page says where the email is written and how to read it.
        assert "stallholder mail latest --to nobody@example.com" in stranger.text
        asked = await submit(phone, "/dashboard/sign-in", "/dashboard/sign-in", {"email": STUDIO})
        assert asked.status_code == 200
        assert unlabelled_controls(asked.text) == []
        # The checker finds a control without a label.
        assert unlabelled_controls('<label for="a">A</label><input id="a"><input id="b">') == ["b"]
    async with database.unit_of_work() as session:
        subjects = (
            (
                await session.execute(
                    select(Email.subject)
                    .where(Email.kind == "sign_in_link")
                    .order_by(Email.subject)
                )
            )
            .scalars()
            .all()
        )
    assert subjects == [
        "Sign in to the Moth Press dashboard",
        "Sign in to the Moth Records dashboard",
    ]


async def test_an_order_is_marked_shipped_from_its_page(
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
    kiln = next(entry for entry in keys.values() if entry["display_name"] == "Kiln & Clay")
    key = kiln["secret_key"]
    orders = (await api.http.get("/v1/orders", headers=bearer(key))).json()["data"]
    [mug] = [order for order in orders if order["shipping"] is not None]
    before = (await api.http.get("/v1/inventory/KC-MOON-MUG", headers=bearer(key))).json()

    async with browser(settings, database, clock) as phone:
        await _sign_in_from_outbox(phone, database, "studio@kilnandclay.example")
        page = await phone.get(f"/dashboard/orders/{mug['id']}")
        assert 'id="ship-form"' in page.text
        assert unlabelled_controls(page.text) == []
        shipped = await submit(
            phone,
            f"/dashboard/orders/{mug['id']}",
            f"/dashboard/orders/{mug['id']}/ship",
            {"carrier": "USPS", "tracking_number": "9400 1000 0000 0000 0000 00"},
        )
        assert (shipped.status_code, shipped.headers["location"]) == (
            303,
            f"/dashboard/orders/{mug['id']}",
        )
        after = await phone.get(f"/dashboard/orders/{mug['id']}")
        assert "with USPS, tracking 9400 1000 0000 0000 0000 00." in after.text
        assert 'id="ship-form"' not in after.text

    stock = (await api.http.get("/v1/inventory/KC-MOON-MUG", headers=bearer(key))).json()
    assert (stock["on_hand"], stock["allocated"]) == (before["on_hand"] - 1, 0)
    assert (before["allocated"], stock["available"]) == (1, before["available"])
    listed = (await api.http.get(f"/v1/orders/{mug['id']}/shipments", headers=bearer(key))).json()
    assert [(s["carrier"], s["tracking_number"]) for s in listed["data"]] == [
        ("USPS", "9400 1000 0000 0000 0000 00")
    ]
