"""The buyer portal over HTTP through the ASGI app, signed in with a magic link taken from
a real SMTP server (aiosmtpd): subscriptions of two creators, cancel in two clicks with
the receipt on screen and by email, a retention offer taken instead, the right of
withdrawal for EU buyers only, and a past-due subscription recovered by a new card."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, Api, bearer
from tests.e2e.portal_helpers import browser, csrf_of, links_in, sign_in, submit
from tests.smtp_server import SmtpServer

pytestmark = pytest.mark.anyio
BUYER = "reader@example.com"
BOX = {
    "charge_day": 1,
    "ship_days_after_charge": 14,
    "cutoff_days_before_ship": 5,
    "signup_after_cutoff": "next_cycle",
}


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def settings(settings: Settings, smtp: SmtpServer) -> Settings:
    """Every email goes to the SMTP server, also those a test clock's advance sends."""
    return settings.model_copy(
        update={"smtp_url": f"smtp://127.0.0.1:{smtp.port}", "smtp_timeout_seconds": 5.0}
    )


@pytest.fixture
def mail_settings(settings: Settings) -> Settings:
    return settings


@dataclass
class Shop:
    api: Api
    name: str
    key: str
    price: str

    async def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = await self.api.http.request(method, path, headers=bearer(self.key), json=body)
        assert response.status_code == status, response.text
        return response.json()

    async def subscribe(
        self, clock: str, *, token: str = "tok_visa", country: str | None = None
    ) -> str:
        body: dict[str, Any] = {"email": BUYER, "test_clock": clock}
        if country is not None:
            body["country"] = country
        customer = await self.call("POST", "/v1/customers", body, status=201)
        method = await self.call(
            "POST", f"/v1/customers/{customer['id']}/payment_methods", {"token": token}, 201
        )
        subscription = await self.call(
            "POST",
            "/v1/subscriptions",
            {
                "customer": customer["id"],
                "items": [{"price": self.price}],
                "default_payment_method": method["id"],
            },
            status=201,
        )
        assert subscription["status"] == "active", subscription
        subscription_id: str = subscription["id"]
        return subscription_id


async def _shop(
    api: Api, name: str, *, product: str = "Zine club", unit_amount: int = 300, **recurring: Any
) -> Shop:
    creator = await api.creator(name=name, email=f"{name.split()[0].lower()}@example.com")
    key = creator["secret_key"]
    made = await api.product(key, kind="digital", name=product)
    price = await api.price(
        key,
        product=made["id"],
        unit_amount=unit_amount,
        recurring={"interval": "month", **recurring},
    )
    return Shop(api=api, name=name, key=key, price=price["id"])


async def _clock(api: Api, frozen_time: str = "2026-03-01T12:00:00Z") -> str:
    """A test clock made with the admin key: every creator's customers may use it."""
    response = await api.http.post(
        "/v1/test_clocks", headers=bearer(ADMIN_KEY), json={"frozen_time": frozen_time}
    )
    assert response.status_code == 201, response.text
    clock_id: str = response.json()["id"]
    return clock_id


async def _advance(api: Api, clock: str, frozen_time: str) -> None:
    response = await api.http.post(
        f"/v1/test_clocks/{clock}/advance",
        headers=bearer(ADMIN_KEY),
        json={"frozen_time": frozen_time},
    )
    assert response.status_code == 200, response.text


def _section(page: str, subscription_id: str) -> str:
    """The subscription's card on the list."""
    match = re.search(
        rf'<section class="card subscription" id="{subscription_id}".*?</section>', page, re.S
    )
    assert match is not None, page
    return match.group(0)


async def test_a_buyer_sees_both_creators_and_each_creators_api_only_its_own(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    kiln = await _shop(api, "Kiln & Clay", product="Seasonal box", unit_amount=3000, delivery=BOX)
    test_clock = await _clock(api)
    zine_sub = await zines.subscribe(test_clock)
    box_sub = await kiln.subscribe(test_clock)
    worker = Worker(database, clock, settings=mail_settings)

    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email=BUYER, smtp=smtp, worker=worker)
        page = (await phone.get("/portal")).text

    zine = _section(page, zine_sub)
    assert "Paper Lantern Zines — Zine club" in zine
    assert '<strong class="status status-active">Active</strong> · $3.00 every month' in zine
    assert "<dt>Next charge</dt><dd>$3.00 on April 1, 2026</dd>" in zine
    assert "Expected delivery" not in zine  # a digital zine has no delivery calendar
    box = _section(page, box_sub)
    assert "Kiln &amp; Clay — Seasonal box" in box
    assert "<dt>Next charge</dt><dd>$30.00 on April 1, 2026</dd>" in box
    assert "<dt>Changes until</dt><dd>April 10, 2026, 00:00 (UTC)</dd>" in box
    assert "<dt>Expected delivery</dt><dd>April 15, 2026</dd>" in box
    for subscription_id in (zine_sub, box_sub):
        section = _section(page, subscription_id)
        for action in ("skip", "pause"):
            assert f'action="/portal/subscriptions/{subscription_id}/{action}"' in section
        assert f'href="/portal/subscriptions/{subscription_id}/cancel"' in section
        assert f'href="/portal/subscriptions/{subscription_id}/payment-method"' in section
    # Both first payments, as receipts.
    assert page.count('href="/portal/orders/ord_') == 2
    assert "PAPER-LANTERN-ZINES-000001" in page
    assert "KILN-CLAY-000001" in page

    # Each creator's API still sees only its own subscription and customer.
    for shop, own, other in ((zines, zine_sub, box_sub), (kiln, box_sub, zine_sub)):
        listed = await shop.call("GET", "/v1/subscriptions")
        assert [s["id"] for s in listed["data"]] == [own]
        customers = await shop.call("GET", "/v1/customers")
        assert len(customers["data"]) == 1
        await shop.call("GET", f"/v1/subscriptions/{other}", status=404)


async def test_cancel_in_two_clicks_shows_the_receipt_and_emails_it(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    subscription = await zines.subscribe(await _clock(api), country="US")
    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email=BUYER, smtp=smtp, worker=worker)
        listed = await phone.get("/portal")
        cancel_url = f"/portal/subscriptions/{subscription}/cancel"
        assert f'href="{cancel_url}" id="cancel-{subscription}">Cancel</a>' in listed.text

        # Click 1: Cancel on the list opens the one confirmation page.
        confirm = await phone.get(cancel_url)
        assert confirm.status_code == 200
        assert "It stays active until <strong>April 1, 2026</strong>" in confirm.text
        assert 'id="offer-form"' not in confirm.text  # the plan has no retention offer
        assert 'value="now"' not in confirm.text  # no right of withdrawal in the US
        # Click 2: Cancel subscription, and the receipt.
        canceled = await phone.post(
            cancel_url, data={"csrf_token": csrf_of(confirm.text), "when": "period_end"}
        )
        assert (canceled.status_code, canceled.headers["location"]) == (
            303,
            f"/portal/subscriptions/{subscription}/canceled",
        )
        receipt = await phone.get(canceled.headers["location"])
        assert receipt.status_code == 200
        assert "<h1>Your Paper Lantern Zines subscription is canceled</h1>" in receipt.text
        assert "<dt>Canceled on</dt><dd>March 1, 2026</dd>" in receipt.text
        assert (
            "<dt>Active until</dt><dd>April 1, 2026; you will not be charged again</dd>"
            in receipt.text
        )
        assert "<dt>Refund</dt><dd>None</dd>" in receipt.text
        assert f"emailed to <strong>{BUYER}</strong>" in receipt.text
        after = _section((await phone.get("/portal")).text, subscription)
        assert "Cancels on April 1, 2026" in after
        assert "/cancel" not in after

    await worker.run_once()
    [email] = [r for r in smtp.received if "canceled" in str(r.message["Subject"])]
    assert email.rcpt_tos == [BUYER]
    assert str(email.message["Subject"]) == "Your Paper Lantern Zines subscription is canceled"
    body = email.message.get_body(preferencelist=("plain",))
    assert body is not None
    assert "Your subscription stays active until April 1, 2026" in str(body.get_content())
    seen = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    assert (seen["status"], seen["cancel_at_period_end"], seen["cancel_at"]) == (
        "active",
        True,
        "2026-04-01T12:00:00Z",
    )


async def test_an_eu_buyer_may_withdraw_at_once_with_a_refund(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines", unit_amount=3100)
    test_clock = await _clock(api)
    subscription = await zines.subscribe(test_clock, country="FR")
    await _advance(api, test_clock, "2026-03-04T12:00:00Z")  # 3 of 31 days used
    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email=BUYER, smtp=smtp, worker=worker)
        cancel_url = f"/portal/subscriptions/{subscription}/cancel"
        confirm = await phone.get(cancel_url)
        assert (
            "Now, with $28.00 refunded for the unused days (your 14-day right of withdrawal)"
            in confirm.text
        )
        done = await phone.post(
            cancel_url, data={"csrf_token": csrf_of(confirm.text), "when": "now"}
        )
        receipt = await phone.get(done.headers["location"])
    assert "<dt>Ended</dt><dd>March 4, 2026, at once" in receipt.text
    assert "<dt>Refund</dt><dd>$28.00 for the unused part of the period</dd>" in receipt.text
    seen = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    assert (seen["status"], seen["cancellation"]["refunded_amount"]) == ("canceled", 2800)


async def test_a_retention_offer_taken_instead_of_canceling(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    offer = await zines.call(
        "POST",
        f"/v1/prices/{zines.price}/retention_offer",
        {"kind": "discount", "percent_off": 50, "duration_cycles": 2},
    )
    assert (offer["kind"], offer["description"]) == (
        "discount",
        "50% off your next 2 payments if you stay",
    )
    test_clock = await _clock(api)
    subscription = await zines.subscribe(test_clock)
    shown = await zines.call("GET", f"/v1/subscriptions/{subscription}/retention_offer")
    assert shown["id"] == offer["id"]

    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email=BUYER, smtp=smtp, worker=worker)
        cancel_url = f"/portal/subscriptions/{subscription}/cancel"
        confirm = await phone.get(cancel_url)
        assert '<p id="offer-text">50% off your next 2 payments if you stay.</p>' in confirm.text
        # The offer and the cancellation are each one equally plain button.
        assert '<button type="submit" id="confirm-cancel">Cancel subscription</button>' in (
            confirm.text
        )
        assert '<button type="submit" id="accept-offer">Stay with the discount</button>' in (
            confirm.text
        )
        stayed = await phone.post(
            f"/portal/subscriptions/{subscription}/retention-offer",
            data={"csrf_token": csrf_of(confirm.text)},
        )
        assert (stayed.status_code, stayed.headers["location"]) == (303, f"/portal#{subscription}")
        page = (await phone.get("/portal")).text
        assert "Thank you for staying: 50% off your next 2 payments." in page
        card = _section(page, subscription)
        assert "<dt>Next charge</dt><dd>$1.50 on April 1, 2026</dd>" in card
        assert "<dt>Discount</dt><dd>50% off your next 2 payments</dd>" in card
        # Shown once: canceling now goes straight on, with no offer.
        again = await phone.get(cancel_url)
        assert 'id="offer-form"' not in again.text

    seen = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    assert (seen["status"], seen["cancel_at"], seen["discount"]) == (
        "active",
        None,
        {"percent_off": 50, "cycles_remaining": 2},
    )
    assert seen["retention_offer"]["outcome"] == "accepted"
    await zines.call("GET", f"/v1/subscriptions/{subscription}/retention_offer", status=409)
    events = await zines.call("GET", "/v1/events", None)
    assert "customer.subscription.retention_offer_accepted" in [e["type"] for e in events["data"]]

    await _advance(api, test_clock, "2026-06-01T12:00:01Z")
    invoices = await zines.call("GET", f"/v1/invoices?subscription={subscription}&limit=10")
    amounts = [(i["amount_due"], i["status"]) for i in reversed(invoices["data"])]
    assert amounts == [(300, "paid"), (150, "paid"), (150, "paid"), (300, "paid")]
    discounted = list(reversed(invoices["data"]))[1]
    assert discounted["lines"][0]["description"] == "Zine club (50% off)"
    order = await zines.call("GET", f"/v1/orders/{discounted['order']}")
    assert (order["amount_total"], order["line_items"][0]["unit_amount"]) == (150, 150)
    assert (await zines.call("GET", f"/v1/subscriptions/{subscription}"))["discount"] is None


async def test_a_pause_offer_through_the_api_is_taken_once(api: Api) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    refused = await api.http.post(
        f"/v1/prices/{zines.price}/retention_offer",
        headers=bearer(zines.key),
        json={"kind": "pause", "percent_off": 10},
    )
    assert refused.status_code == 422
    await zines.call("POST", f"/v1/prices/{zines.price}/retention_offer", {"kind": "pause"})
    subscription = await zines.subscribe(await _clock(api))
    paused = await zines.call("POST", f"/v1/subscriptions/{subscription}/retention_offer/accept")
    assert (paused["status"], paused["retention_offer"]["outcome"]) == ("paused", "accepted")
    again = await api.http.post(
        f"/v1/subscriptions/{subscription}/retention_offer/accept", headers=bearer(zines.key)
    )
    assert again.status_code == 409
    assert again.json()["type"] == "https://stallholder.dev/problems/retention-offer-unavailable"
    removed = await zines.call("DELETE", f"/v1/prices/{zines.price}/retention_offer")
    assert removed["kind"] == "pause"
    await zines.call("GET", f"/v1/prices/{zines.price}/retention_offer", status=404)


async def test_a_new_card_on_the_payment_page_recovers_a_past_due_subscription(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    test_clock = await _clock(api)
    subscription = await zines.subscribe(test_clock)
    seen = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    failing = await zines.call(
        "POST",
        f"/v1/customers/{seen['customer']}/payment_methods",
        {"token": "tok_chargeCustomerFail"},
        status=201,
    )
    await zines.call(
        "POST", f"/v1/subscriptions/{subscription}", {"default_payment_method": failing["id"]}
    )
    await _advance(api, test_clock, "2026-04-01T12:00:01Z")
    assert (await zines.call("GET", f"/v1/subscriptions/{subscription}"))["status"] == "past_due"

    # The failure email was queued at the test clock's time; the real clock catches up.
    clock.set(datetime(2026, 4, 1, 12, 1, tzinfo=UTC))
    worker = Worker(database, clock, settings=mail_settings)
    await worker.run_once()
    [failed_email] = [r for r in smtp.received if "did not go through" in str(r.message["Subject"])]
    text = failed_email.message.get_body(preferencelist=("plain",))
    assert text is not None
    update_url = f"http://testserver/portal/subscriptions/{subscription}/payment-method"
    assert f"update your payment method: {update_url}" in str(text.get_content())

    async with browser(mail_settings, database, clock) as phone:
        # The email's link, before signing in: sign in first, then back to the page.
        path = update_url.removeprefix("http://testserver")
        first = await phone.get(path)
        assert (first.status_code, first.headers["location"]) == (303, "/portal/sign-in")
        await submit(phone, "/portal/sign-in", "/portal/sign-in", {"email": BUYER})
        await worker.run_once()
        link = links_in(smtp, BUYER)[-1]
        used = await submit(phone, link, link)
        assert (used.status_code, used.headers["location"]) == (303, path)

        page = await phone.get(path)
        assert "Your payment of $3.00 did not go through." in page.text
        assert '<button type="submit">Save card and pay $3.00</button>' in page.text
        paid = await submit(phone, path, path, {"token": "tok_visa"})
        assert (paid.status_code, paid.headers["location"]) == (303, f"/portal#{subscription}")
        home = (await phone.get("/portal")).text
        assert "Card updated and your payment went through. Thank you!" in home
        assert '<strong class="status status-active">Active</strong>' in _section(
            home, subscription
        )

    recovered = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    assert recovered["status"] == "active"
    # In the sandbox a token is one card: tok_visa again is the card saved at signup.
    assert recovered["default_payment_method"] == seen["default_payment_method"]
    invoices = await zines.call("GET", f"/v1/invoices?subscription={subscription}&limit=10")
    latest = invoices["data"][0]
    assert (latest["status"], latest["attempt_count"], latest["amount_paid"]) == ("paid", 2, 300)
    # The worker's scheduled retry finds the attempt made and charges nothing more.
    await worker.run_once()
    again = await zines.call("GET", f"/v1/invoices/{latest['id']}")
    assert (again["status"], again["attempt_count"]) == ("paid", 2)


async def test_another_buyers_subscription_is_not_found(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    theirs = await zines.subscribe(await _clock(api))
    made = await zines.call("POST", "/v1/customers", {"email": "other@example.com"}, status=201)
    assert made["email"] == "other@example.com"
    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as stranger:
        await sign_in(stranger, email="other@example.com", smtp=smtp, worker=worker)
        assert "You have no subscriptions." in (await stranger.get("/portal")).text
        page = await stranger.get(f"/portal/subscriptions/{theirs}/cancel")
        assert page.status_code == 404
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert f"you have no subscription &#39;{theirs}&#39;" in page.text
        forged = await stranger.post(
            f"/portal/subscriptions/{theirs}/pause",
            data={"csrf_token": csrf_of((await stranger.get("/portal")).text)},
        )
        assert forged.status_code == 404
    assert (await zines.call("GET", f"/v1/subscriptions/{theirs}"))["status"] == "active"


async def test_a_card_setup_that_is_not_the_buyers_saves_nothing(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    """The page posts the card setup's id back after Stripe.js confirmed it; the server
    reads it from the gateway and refuses one that is not this customer's."""
    zines = await _shop(api, "Paper Lantern Zines")
    subscription = await zines.subscribe(await _clock(api))
    before = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    worker = Worker(database, clock, settings=mail_settings)
    path = f"/portal/subscriptions/{subscription}/payment-method"
    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email=BUYER, smtp=smtp, worker=worker)
        refused = await submit(phone, path, path, {"setup_intent": "seti_someone_elses"})
        assert refused.status_code == 404
        assert '<div class="notice bad" role="alert" id="payment-error">' in refused.text
        assert (
            f"customer {before['customer']} has no card setup &#39;seti_someone_elses&#39;; "
            "nothing was saved. Add the card again"
        ) in refused.text
    after = await zines.call("GET", f"/v1/subscriptions/{subscription}")
    assert after["default_payment_method"] == before["default_payment_method"]
    saved = await zines.call("GET", f"/v1/customers/{before['customer']}/payment_methods")
    assert [method["id"] for method in saved["data"]] == [before["default_payment_method"]]


async def test_a_renewal_paid_from_the_wallet_is_a_receipt_too(
    api: Api, mail_settings: Settings, database: Database, clock: FrozenClock, smtp: SmtpServer
) -> None:
    zines = await _shop(api, "Paper Lantern Zines")
    test_clock = await _clock(api)
    first = await zines.subscribe(test_clock)
    customer = (await zines.call("GET", f"/v1/subscriptions/{first}"))["customer"]
    await zines.call(
        "POST",
        f"/v1/customers/{customer}/wallet/top_ups",
        {"amount": 1000, "currency": "usd"},
        status=201,
    )
    await _advance(api, test_clock, "2026-04-01T12:00:01Z")  # April's $3 from the wallet
    invoices = await zines.call("GET", f"/v1/invoices?subscription={first}")
    april = invoices["data"][0]
    assert (april["amount_paid"], april["order"]) == (300, None)
    assert april["wallet_transaction"] is not None

    worker = Worker(database, clock, settings=mail_settings)
    async with browser(mail_settings, database, clock) as phone:
        await sign_in(phone, email=BUYER, smtp=smtp, worker=worker)
        page = (await phone.get("/portal")).text
        assert f'href="/portal/invoices/{april["id"]}"' in page
        assert f"{april['id']} · paid from your wallet" in page
        assert page.count('href="/portal/orders/ord_') == 1  # March's charge (a top-up is none)
        receipt = await phone.get(f"/portal/invoices/{april['id']}")
        assert receipt.status_code == 200
        assert "Zine club (April 1, 2026 to May 1, 2026)" in receipt.text
        assert "paid from your wallet" in receipt.text
