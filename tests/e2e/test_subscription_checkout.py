"""Subscribing through a checkout session, over HTTP on SQLite and PostgreSQL: the
session of recurring prices shows its renewal terms, confirming needs consent, saves the
card to the buyer with a grant, creates the subscription with the consent record and
charges the first invoice once, however the confirm is retried; and the hosted page."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from stallholder import demo
from stallholder.billing.models import Subscription
from stallholder.catalog.models import Price
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger.service import platform_fee_policy
from stallholder.payments.config import gateway_from_settings
from stallholder.payments.models import PaymentMethodGrant, SandboxCharge
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.e2e.test_pages import csrf_token

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"
TERMS = (
    "$3.00 every month, first charged today (1 March 2026), renewing automatically until "
    "you cancel. Cancel any time before a renewal and you are not charged again; the "
    "subscription then ends at the end of the period you have paid for."
)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _plan(api: Api, **recurring: Any) -> tuple[str, str]:
    """A listed creator with a published $3/month zine plan: (secret key, price id)."""
    creator = await api.creator(listed=True)
    key = creator["secret_key"]
    product = await api.product(key, kind="digital", name="Zine club")
    price = await api.price(
        key, product=product["id"], unit_amount=300, recurring={"interval": "month", **recurring}
    )
    return key, price["id"]


async def _open(api: Api, key: str, price: str) -> Any:
    response = await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json={"line_items": [{"price": price}], "customer_email": "reader@example.com"},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _count(database: Database, statement: Any) -> int:
    async with database.unit_of_work() as session:
        return int((await session.execute(statement)).scalar_one())


async def test_subscribe_through_checkout_once_whatever_the_retries(
    api: Api, database: Database
) -> None:
    key, price = await _plan(api)
    opened = await _open(api, key, price)
    assert opened["mode"] == "subscription"
    assert opened["renewal_terms"] == TERMS
    assert opened["subscription"] is None
    confirm_url = f"/v1/checkout/sessions/{opened['id']}/confirm"

    refused = await api.http.post(
        confirm_url, headers=bearer(key), json={"payment_method": "tok_visa"}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["type"] == PROBLEMS + "consent-required"
    assert refused.json()["errors"][0]["loc"] == "consent"
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 0

    body = {"payment_method": "tok_visa", "consent": True}
    headers = {**bearer(key), "Idempotency-Key": "subscribe-1", "User-Agent": "Firefox/140"}
    first = await api.http.post(confirm_url, headers=headers, json=body)
    assert first.status_code == 200, first.text
    done = first.json()
    assert (done["status"], done["payment_status"], done["mode"]) == (
        "complete",
        "paid",
        "subscription",
    )
    subscription_id = done["subscription"]
    assert subscription_id.startswith("sub_")

    again = await api.http.post(confirm_url, headers=headers, json=body)
    assert again.status_code == 200, again.text
    assert again.json()["subscription"] == subscription_id
    unkeyed = await api.http.post(confirm_url, headers=bearer(key), json=body)
    assert unkeyed.status_code == 200, unkeyed.text
    assert unkeyed.json()["subscription"] == subscription_id
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 1
    assert await _count(database, select(func.count()).select_from(Subscription)) == 1

    subscription = (
        await api.http.get(f"/v1/subscriptions/{subscription_id}", headers=bearer(key))
    ).json()
    assert (subscription["status"], subscription["customer"]) == ("active", done["customer"])
    invoices = (
        await api.http.get(
            "/v1/invoices", headers=bearer(key), params={"subscription": subscription_id}
        )
    ).json()["data"]
    assert [(i["status"], i["amount_paid"]) for i in invoices] == [("paid", 300)]
    consent = (
        await api.http.get(f"/v1/subscriptions/{subscription_id}/consent", headers=bearer(key))
    ).json()
    assert {k: consent[k] for k in ("terms", "user_agent", "created")} == {
        "terms": TERMS,
        "user_agent": "Firefox/140",
        "created": "2026-03-01T12:00:00Z",
    }
    # The card is saved to the buyer, granted to this creator and the customer's default.
    async with database.unit_of_work() as session:
        grants = (await session.execute(select(PaymentMethodGrant))).scalars().all()
    assert [(g.customer_id, g.is_default) for g in grants] == [(done["customer"], True)]
    assert subscription["default_payment_method"] == grants[0].payment_method_id


async def test_a_trial_starts_without_a_charge(api: Api, database: Database) -> None:
    key, price = await _plan(api, trial_days=14)
    opened = await _open(api, key, price)
    assert opened["renewal_terms"].startswith(
        "Free for 14 days; then $3.00 every month, first charged on 15 March 2026, "
        "renewing automatically until you cancel."
    )
    confirmed = await api.http.post(
        f"/v1/checkout/sessions/{opened['id']}/confirm",
        headers=bearer(key),
        json={"payment_method": "tok_visa", "consent": True},
    )
    assert confirmed.status_code == 200, confirmed.text
    done = confirmed.json()
    assert (done["status"], done["payment_status"]) == ("complete", "no_payment_required")
    subscription = (
        await api.http.get(f"/v1/subscriptions/{done['subscription']}", headers=bearer(key))
    ).json()
    assert (subscription["status"], subscription["trial_end"]) == (
        "trialing",
        "2026-03-15T12:00:00Z",
    )
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 0


async def test_a_declined_first_charge_leaves_the_session_open(
    api: Api, database: Database
) -> None:
    key, price = await _plan(api)
    opened = await _open(api, key, price)
    url = f"/v1/checkout/sessions/{opened['id']}/confirm"
    body = {"payment_method": "tok_chargeCustomerFail", "consent": True}
    declined = await api.http.post(url, headers=bearer(key), json=body)
    assert declined.status_code == 402, declined.text
    again = await api.http.post(url, headers=bearer(key), json=body)
    assert again.status_code == 402, again.text
    session = (
        await api.http.get(f"/v1/checkout/sessions/{opened['id']}", headers=bearer(key))
    ).json()
    assert session["status"] == "open"
    assert session["subscription"] is not None
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 1
    assert await _count(database, select(func.count()).select_from(Subscription)) == 1


async def test_recurring_and_one_time_prices_do_not_mix(api: Api) -> None:
    key, recurring = await _plan(api)
    product = await api.product(key, kind="digital", name="Back issue")
    once = await api.price(key, product=product["id"], unit_amount=500)
    response = await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(key),
        json={"line_items": [{"price": recurring}, {"price": once["id"]}]},
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == PROBLEMS + "invalid-line-item"
    assert "line_items[1]" in response.json()["detail"]


async def test_subscribe_on_the_hosted_page(api: Api, database: Database) -> None:
    _, price = await _plan(api)
    index = await api.http.get("/")
    assert f'href="/buy/{price}">Subscribe</a>' in index.text
    opened = await api.http.get(f"/buy/{price}")
    page_url = opened.headers["location"]
    page = await api.http.get(page_url)
    assert TERMS.replace("'", "&#39;") in page.text
    assert 'name="consent"' in page.text
    secret = re.search(r'name="client_secret" value="([^"]+)"', page.text)
    assert secret is not None
    form = {
        "client_secret": secret.group(1),
        "customer_email": "reader@example.com",
        "payment_method": "tok_visa",
        "csrf_token": csrf_token(page.text),
    }
    unticked = await api.http.post(f"{page_url}/pay", data=form)
    assert unticked.status_code == 422
    assert "Tick the box to agree to the renewal terms before you subscribe." in unticked.text
    subscribed = await api.http.post(f"{page_url}/pay", data={**form, "consent": "yes"})
    assert (subscribed.status_code, subscribed.headers["location"]) == (303, page_url)
    assert "You are subscribed" in (await api.http.get(page_url)).text
    twice = await api.http.post(f"{page_url}/pay", data={**form, "consent": "yes"})
    assert (twice.status_code, twice.headers["location"]) == (303, page_url)
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 1
    assert await _count(database, select(func.count()).select_from(Subscription)) == 1


async def test_the_demo_zine_plan_is_subscribable(
    client: Any, database: Database, settings: Settings, clock: FrozenClock, tmp_path: Path
) -> None:
    await demo.seed(
        database,
        clock=clock,
        gateway=gateway_from_settings(settings, database=database),
        data_dir=tmp_path,
        fees=platform_fee_policy(settings),
        base_url=settings.base_url,
    )
    index = await client.get("/")
    assert "subscriptions open soon" not in index.text
    async with database.unit_of_work() as session:
        price = (
            await session.execute(
                select(Price.id).where(Price.nickname == "$3 / month", Price.unit_amount == 300)
            )
        ).scalar_one()
    assert f'href="/buy/{price}">Subscribe</a>' in index.text
    page = await client.get((await client.get(f"/buy/{price}")).headers["location"])
    assert "$3.00 every month, first charged today" in page.text
    assert 'name="consent"' in page.text


async def test_racing_confirms_subscribe_and_charge_once(api: Api, database: Database) -> None:
    key, price = await _plan(api)
    opened = await _open(api, key, price)
    url = f"/v1/checkout/sessions/{opened['id']}/confirm"
    body = {"payment_method": "tok_visa", "consent": True}
    answers = await asyncio.gather(
        *(api.http.post(url, headers=bearer(key), json=body) for _ in range(3))
    )
    # Each answer is the complete session, or the first invoice's charge still at the
    # gateway (409, retry for the outcome); never a second subscription or charge.
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    final = await api.http.post(url, headers=bearer(key), json=body)
    assert final.status_code == 200, final.text
    assert final.json()["status"] == "complete"
    assert {a.json()["subscription"] for a in answers if a.status_code == 200} <= {
        final.json()["subscription"]
    }
    assert await _count(database, select(func.count()).select_from(SandboxCharge)) == 1
    assert await _count(database, select(func.count()).select_from(Subscription)) == 1
