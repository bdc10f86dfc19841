"""Selling through the Stripe gateway, end to end over HTTP, against the Stripe test double.

The real ``stripe`` SDK talks to the double; disputes arrive as webhooks signed the way
Stripe signs them, go into the inbox and are handled by the worker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.app import create_app
from stallholder.billing import consolidation
from stallholder.events import inbox
from stallholder.events.models import Event, InboxEvent
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.kit.work import WorkItem
from stallholder.ledger import service as ledger
from stallholder.orders import service as orders
from stallholder.orders.models import Order
from stallholder.payments import methods
from stallholder.payments.models import ConnectedAccount, Dispute, PaymentAttempt, PaymentMethod
from stallholder.payments.stripe_gateway import StripeGateway
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, T0, Api, bearer
from tests.doubles.stripe_api import StripeDouble

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"


@pytest.fixture
async def client(
    settings: Settings, database: Database, clock: FrozenClock, stripe_gateway: StripeGateway
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings, database=database, clock=clock, gateway=stripe_gateway, run_worker=False
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass(frozen=True)
class Shop:
    creator: str
    secret_key: str
    account: str
    price: str


async def _shop(api: Api, double: StripeDouble, *, unit_amount: int = 1500) -> Shop:
    """A creator whose Stripe account is connected and onboarded, with one price."""
    creator, price = await api.shop(unit_amount=unit_amount)
    connected = await api.http.post(
        f"/v1/creators/{creator['id']}/stripe_account", headers=bearer(ADMIN_KEY)
    )
    assert connected.status_code == 201, connected.text
    account = connected.json()["account"]
    double.activate_account(account)
    return Shop(creator["id"], creator["secret_key"], account, price["id"])


async def _sell(api: Api, shop: Shop, *, quantity: int = 2) -> dict[str, Any]:
    session = await api.session(shop.secret_key, price=shop.price, quantity=quantity)
    confirmed = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    assert confirmed.status_code == 200, confirmed.text
    order: dict[str, Any] = (
        await api.http.get(
            f"/v1/orders/{confirmed.json()['order']}", headers=bearer(shop.secret_key)
        )
    ).json()
    return order


async def _balance(api: Api, shop: Shop) -> list[dict[str, Any]]:
    available: list[dict[str, Any]] = (
        await api.http.get("/v1/balance", headers=bearer(shop.secret_key))
    ).json()["available"]
    return available


async def _payment_intent_of(database: Database, order_id: str) -> str:
    async with database.unit_of_work() as session:
        order = await session.get(Order, order_id)
        assert order is not None
        attempt = await session.get(PaymentAttempt, order.payment_attempt_id)
        assert attempt is not None
        assert attempt.gateway_reference is not None
        return attempt.gateway_reference


async def _count(database: Database, model: type[Any], *where: Any) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        for condition in where:
            statement = statement.where(condition)
        return int((await session.execute(statement)).scalar_one())


async def _verify(database: Database) -> ledger.VerifyReport:
    async with database.unit_of_work() as session:
        return await ledger.verify(session)


async def _deliver(api: Api, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await api.http.post("/v1/stripe/webhooks", content=body, headers=headers)


async def _dispute(database: Database) -> Dispute:
    async with database.unit_of_work() as session:
        return (await session.execute(select(Dispute))).scalar_one()


async def _event_types(database: Database, prefix: str) -> list[str]:
    async with database.unit_of_work() as session:
        rows = await session.execute(
            select(Event.type).where(Event.type.startswith(prefix)).order_by(Event.id)
        )
        return list(rows.scalars())


# The sale ----------------------------------------------------------------------------


async def test_a_sale_is_a_destination_charge_whose_creator_share_matches_the_ledger(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price, quantity=2)

    confirmed = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")

    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["status"], confirmed.json()["payment_status"]) == ("complete", "paid")
    order = (
        await api.http.get(
            f"/v1/orders/{confirmed.json()['order']}", headers=bearer(shop.secret_key)
        )
    ).json()
    # Platform fee 5% = 150; Stripe's fee 2.9% + 30 = 117, read from the balance transaction.
    assert (order["amount_total"], order["platform_fee"], order["processor_fee"]) == (
        3000,
        150,
        117,
    )
    [create] = stripe_double.requests_to("POST", "/v1/payment_intents")
    assert create.idempotency_key == f"{session['id']}:attempt:1"
    assert create.params == {
        "amount": "3000",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "allowed_payment_method_types": ["card"],
        "metadata": {"checkout_session": session["id"], "creator": shop.creator},
        "expand": ["latest_charge.balance_transaction"],
        "transfer_data": {"destination": shop.account},
        # The platform side of the charge: its fee plus the Stripe fee the creator bears.
        "application_fee_amount": "267",
    }
    [intent] = stripe_double.of_type("payment_intent")
    assert await _payment_intent_of(database, order["id"]) == intent["id"]
    assert await _balance(api, shop) == [{"amount": 2733, "currency": "usd"}]
    assert stripe_double.connected_balance(shop.account) == 2733
    entries = (await api.http.get("/v1/ledger/entries", headers=bearer(shop.secret_key))).json()
    assert [entry["kind"] for entry in entries["data"]] == ["payment"]
    assert {line["account"]: line["amount"] for line in entries["data"][0]["lines"]} == {
        "external:buyer_funds": -3000,
        f"creator:{shop.creator}:balance": 2733,
        "platform:fees": 150,
        "processor:fees": 117,
    }
    assert (await _verify(database)).is_clean


async def test_a_partial_refund_reverses_the_transfer_and_the_application_fee_in_proportion(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    shop = await _shop(api, stripe_double)
    order = await _sell(api, shop)
    intent = await _payment_intent_of(database, order["id"])

    refund = await api.http.post(
        "/v1/refunds",
        headers=bearer(shop.secret_key),
        json={"order": order["id"], "amount": 1000},
    )

    assert refund.status_code == 201, refund.text
    [request] = stripe_double.requests_to("POST", "/v1/refunds")
    assert request.idempotency_key == f"{order['id']}:refund:1"
    assert request.params == {
        "payment_intent": intent,
        "amount": "1000",
        "refund_application_fee": "true",
        "reverse_transfer": "true",
    }
    [stripe_refund] = stripe_double.of_type("refund")
    async with database.unit_of_work() as session:
        order_row = await session.get(Order, order["id"])
        assert order_row is not None
        assert [r.gateway_reference for r in order_row.refunds] == [stripe_refund["id"]]
    # The creator gives back 1000 less 1000/3000 of the 267 application fee: 911.
    assert await _balance(api, shop) == [{"amount": 1822, "currency": "usd"}]
    assert stripe_double.connected_balance(shop.account) == 1822
    assert (await _verify(database)).is_clean


async def test_a_refund_stripe_refuses_is_recorded_failed_and_an_outage_is_finished_later(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    shop = await _shop(api, stripe_double)
    order = await _sell(api, shop)
    stripe_double.fail_next_request(400)

    refused = await api.http.post(
        "/v1/refunds", headers=bearer(shop.secret_key), json={"order": order["id"]}
    )
    stripe_double.fail_next_request(503)
    unreachable = await api.http.post(
        "/v1/refunds", headers=bearer(shop.secret_key), json={"order": order["id"]}
    )
    # While the second refund is pending at Stripe, it counts against what remains.
    meanwhile = await api.http.post(
        "/v1/refunds", headers=bearer(shop.secret_key), json={"order": order["id"]}
    )
    clock.advance(timedelta(seconds=settings.payment_resolve_after_seconds))
    await Worker(database, clock, settings=settings, gateway=stripe_gateway).run_once()

    assert (refused.status_code, refused.json()["type"]) == (
        409,
        PROBLEMS + "payment-gateway-refused",
    )
    assert (unreachable.status_code, unreachable.json()["type"]) == (
        503,
        PROBLEMS + "payment-gateway-unavailable",
    )
    assert (meanwhile.status_code, meanwhile.json()["remaining"]) == (400, 0)
    reread = (
        await api.http.get(f"/v1/orders/{order['id']}", headers=bearer(shop.secret_key))
    ).json()
    refunds = sorted(reread["refunds"], key=lambda r: str(r["id"]))  # ids sort by creation
    assert [(r["id"], r["status"], r["amount"]) for r in refunds] == [
        (refused.json()["refund"], "failed", 3000),
        (refunds[1]["id"], "succeeded", 3000),
    ]
    assert (reread["status"], reread["amount_refunded"]) == ("refunded", 3000)
    assert [
        (r.idempotency_key, r.status) for r in stripe_double.requests_to("POST", "/v1/refunds")
    ] == [
        (f"{order['id']}:refund:1", 400),
        (f"{order['id']}:refund:2", 503),
        (f"{order['id']}:refund:2", 200),
    ]
    assert len(stripe_double.of_type("refund")) == 1
    assert await _event_types(database, "refund.") == ["refund.created"]
    assert (await _verify(database)).is_clean


async def test_the_platform_absorbs_a_processor_fee_other_than_the_estimate(
    api: Api,
    database: Database,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    stripe_gateway.fee_bps = 300  # expects 3% + 30 = 120; Stripe charges 117
    shop = await _shop(api, stripe_double)

    order = await _sell(api, shop)

    assert (order["platform_fee"], order["processor_fee"]) == (150, 120)
    [create] = stripe_double.requests_to("POST", "/v1/payment_intents")
    assert create.params["application_fee_amount"] == "270"
    assert await _balance(api, shop) == [{"amount": 2730, "currency": "usd"}]
    assert stripe_double.connected_balance(shop.account) == 2730
    entries = (await api.http.get("/v1/ledger/entries", headers=bearer(shop.secret_key))).json()
    assert [entry["kind"] for entry in entries["data"]] == ["processor_fee_adjustment", "payment"]
    assert {line["account"]: line["amount"] for line in entries["data"][0]["lines"]} == {
        "platform:fees": 3,
        "processor:fees": -3,
    }
    async with database.unit_of_work() as session:
        assert await ledger.balances_of(session, account=ledger.PROCESSOR_FEES) == {"usd": 117}
        assert await ledger.balances_of(session, account=ledger.PLATFORM_FEES) == {"usd": 153}
        assert (await ledger.verify(session)).is_clean


async def test_three_d_secure_is_surfaced_as_requires_action(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price)

    confirmed = await api.confirm(shop.secret_key, session["id"], "pm_card_authenticationRequired")

    assert confirmed.status_code == 200, confirmed.text
    assert (confirmed.json()["status"], confirmed.json()["payment_status"]) == (
        "open",
        "requires_action",
    )
    [intent] = stripe_double.of_type("payment_intent")
    assert (intent["status"], intent["next_action"]["type"]) == (
        "requires_action",
        "use_stripe_sdk",
    )
    async with database.unit_of_work() as db:
        attempt = (await db.execute(select(PaymentAttempt))).scalar_one()
    assert (attempt.status, attempt.gateway_reference) == ("requires_action", intent["id"])
    assert await _count(database, Order) == 0


async def test_after_3d_secure_confirming_again_completes_the_same_payment_intent(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price, quantity=2)
    pending = await api.confirm(shop.secret_key, session["id"], "pm_card_authenticationRequired")
    [intent] = stripe_double.of_type("payment_intent")
    assert pending.json()["next_action"] == {
        "type": "use_stripe_sdk",
        "detail": "The card needs 3-D Secure. Call Stripe.js handleNextAction with "
        "payment_intent_client_secret, then confirm this session again.",
        "payment_intent_client_secret": intent["client_secret"],
    }

    # Still waiting: another card does not start a second charge.
    waiting = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    assert (waiting.status_code, waiting.json()["payment_status"]) == (200, "requires_action")
    assert len(stripe_double.of_type("payment_intent")) == 1

    stripe_double.authenticate(intent["id"])
    done = await api.confirm(shop.secret_key, session["id"], "pm_card_authenticationRequired")

    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["payment_status"], done.json()["next_action"]) == (
        "complete",
        "paid",
        None,
    )
    assert len(stripe_double.of_type("payment_intent")) == 1
    assert await _payment_intent_of(database, done.json()["order"]) == intent["id"]
    order = (
        await api.http.get(f"/v1/orders/{done.json()['order']}", headers=bearer(shop.secret_key))
    ).json()
    assert (order["status"], order["amount_total"], order["platform_fee"]) == ("paid", 3000, 150)
    assert order["processor_fee"] == 117  # read from Stripe's balance transaction
    async with database.unit_of_work() as db:
        attempts = (await db.execute(select(PaymentAttempt))).scalars().all()
        assert [(a.status, a.action_secret) for a in attempts] == [("succeeded", None)]
    assert (await _verify(database)).is_clean
    again = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    assert again.json()["order"] == done.json()["order"]
    assert len(stripe_double.of_type("payment_intent")) == 1


async def test_after_3d_secure_the_webhook_completes_the_sale_even_past_expiry(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    """The buyer authenticates and closes the tab: Stripe has the money, so the
    ``payment_intent.succeeded`` webhook completes the sale, once."""
    shop = await _shop(api, stripe_double)
    worker = Worker(database, clock, settings=settings, gateway=stripe_gateway)
    session = await api.session(shop.secret_key, price=shop.price, quantity=2)
    await api.confirm(shop.secret_key, session["id"], "pm_card_authenticationRequired")
    [intent] = stripe_double.of_type("payment_intent")
    stripe_double.authenticate(intent["id"])
    clock.advance(timedelta(hours=1))
    await worker.run_once()  # the session's expiry work stores it as expired

    succeeded = stripe_double.event("payment_intent.succeeded", stripe_double.objects[intent["id"]])
    assert (await _deliver(api, succeeded, stripe_double.sign(succeeded))).status_code == 200
    await worker.run_once()  # the inbox hands the charge to the settling work, due now
    await worker.run_once()  # which re-reads it from Stripe and completes the sale

    reread = await api.http.get(
        f"/v1/checkout/sessions/{session['id']}", headers=bearer(shop.secret_key)
    )
    assert (reread.json()["status"], reread.json()["payment_status"]) == ("complete", "paid")
    assert await _count(database, Order) == 1
    assert await _payment_intent_of(database, reread.json()["order"]) == intent["id"]
    replayed = await _deliver(api, succeeded, stripe_double.sign(succeeded))
    assert replayed.json() == {"received": True, "duplicate": True}
    late = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    assert (late.status_code, late.json()["order"]) == (200, reread.json()["order"])
    await worker.run_once()
    assert await _count(database, Order) == 1
    assert len(stripe_double.of_type("payment_intent")) == 1
    assert (await _verify(database)).is_clean
    async with database.unit_of_work() as db:
        notes = (await db.execute(select(InboxEvent.last_error))).scalars().all()
        attempt = (await db.execute(select(PaymentAttempt))).scalar_one()
    # The inbox hands the waiting charge to the attempt resolver (ADR 0007), which re-reads
    # the PaymentIntent with no transaction open and completes the sale in the same pass.
    assert notes == [
        f"payment attempt {attempt.id} (checkout_session {session['id']}) is re-read now"
    ]
    assert (attempt.status, attempt.resolve_after) == ("succeeded", None)


async def test_a_failed_3d_secure_is_a_402_and_another_card_can_pay(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price)
    await api.confirm(shop.secret_key, session["id"], "pm_card_authenticationRequired")
    [intent] = stripe_double.of_type("payment_intent")
    stripe_double.authenticate(intent["id"], is_successful=False)

    failed = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")

    assert failed.status_code == 402, failed.text
    assert failed.json()["type"] == PROBLEMS + "payment-declined"
    assert failed.json()["decline_code"] == "payment_intent_authentication_failure"
    reread = await api.http.get(
        f"/v1/checkout/sessions/{session['id']}", headers=bearer(shop.secret_key)
    )
    assert (reread.json()["status"], reread.json()["next_action"]) == ("open", None)
    assert await _count(database, Order) == 0

    paid = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    assert (paid.status_code, paid.json()["status"]) == (200, "complete")
    assert len(stripe_double.of_type("payment_intent")) == 2
    assert await _event_types(database, "payment.") == ["payment.failed"]


@pytest.mark.parametrize(
    ("payment_method", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
    ],
)
async def test_a_decline_is_a_402_with_stripes_decline_code(
    api: Api,
    database: Database,
    stripe_double: StripeDouble,
    payment_method: str,
    decline_code: str,
) -> None:
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price)

    declined = await api.confirm(shop.secret_key, session["id"], payment_method)

    assert declined.status_code == 402
    problem = declined.json()
    assert (problem["type"], problem["decline_code"]) == (
        PROBLEMS + "payment-declined",
        decline_code,
    )
    [intent] = stripe_double.of_type("payment_intent")
    async with database.unit_of_work() as db:
        attempt = (await db.execute(select(PaymentAttempt))).scalar_one()
    assert (attempt.status, attempt.decline_code, attempt.gateway_reference) == (
        "failed",
        decline_code,
        intent["id"],
    )
    assert await _count(database, Order) == 0
    assert await _balance(api, shop) == []


async def test_a_stripe_outage_is_a_retryable_402_and_the_retry_is_a_new_attempt(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price)
    stripe_double.fail_next_request(500)

    failed = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    retried = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")

    assert failed.status_code == 402
    assert (failed.json()["type"], failed.json()["retryable"]) == (
        PROBLEMS + "payment-processing-error",
        True,
    )
    assert retried.status_code == 200, retried.text
    assert [
        r.idempotency_key for r in stripe_double.requests_to("POST", "/v1/payment_intents")
    ] == [
        f"{session['id']}:attempt:1",
        f"{session['id']}:attempt:2",
    ]
    assert len(stripe_double.of_type("payment_intent")) == 1


async def test_a_crash_after_the_charge_replays_the_same_payment_intent(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Changed with ADR 0007: the retry is a 409 payment-in-progress and the worker, not the
    retry, asks Stripe again with the same key once the attempt is due."""
    shop = await _shop(api, stripe_double)
    session = await api.session(shop.secret_key, price=shop.price)
    real = orders.create_paid_order
    calls = 0

    async def crash_once(*args: Any, **kwargs: Any) -> Order:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away after the charge")
        return await real(*args, **kwargs)

    monkeypatch.setattr(orders, "create_paid_order", crash_once)

    assert (await api.confirm(shop.secret_key, session["id"], "pm_card_visa")).status_code == 500
    retried = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")
    assert (retried.status_code, retried.json()["type"]) == (409, PROBLEMS + "payment-in-progress")
    clock.advance(timedelta(seconds=settings.payment_resolve_after_seconds))
    await Worker(database, clock, settings=settings, gateway=stripe_gateway).run_once()
    done = await api.confirm(shop.secret_key, session["id"], "pm_card_visa")

    assert (done.status_code, done.json()["status"]) == (200, "complete")
    requests = stripe_double.requests_to("POST", "/v1/payment_intents")
    assert [(r.idempotency_key, r.is_replay) for r in requests] == [
        (f"{session['id']}:attempt:1", False),
        (f"{session['id']}:attempt:1", True),
    ]
    assert len(stripe_double.of_type("payment_intent")) == 1
    # 1500 less the 75 platform fee and Stripe's 2.9% + 30 = 74.
    assert stripe_double.connected_balance(shop.account) == 1351
    assert await _count(database, Order) == 1
    assert (await _verify(database)).is_clean


async def test_a_saved_payment_method_is_charged_off_session_and_detached_through_stripe(
    api: Api, database: Database, stripe_double: StripeDouble, stripe_gateway: StripeGateway
) -> None:
    shop = await _shop(api, stripe_double)
    created = await api.http.post(
        "/v1/customers", headers=bearer(shop.secret_key), json={"email": "buyer@example.com"}
    )
    customer = created.json()["id"]
    saved = await api.http.post(
        f"/v1/customers/{customer}/payment_methods",
        headers=bearer(shop.secret_key),
        json={"token": "pm_card_visa"},
    )
    assert saved.status_code == 201, saved.text
    assert (saved.json()["gateway"], saved.json()["default"]) == ("stripe", True)

    attempt = await methods.charge_saved_method(
        database,
        stripe_gateway,
        creator_id=shop.creator,
        customer_id=customer,
        payment_method_id=None,
        purpose="invoice",
        purpose_id="in_test_1",
        amount=3000,
        currency="usd",
        platform_fee=150,
        estimated_processor_fee=117,
        resolve_after=T0 + timedelta(minutes=2),
        now=T0,
    )

    [stripe_customer] = stripe_double.of_type("customer")
    [intent] = stripe_double.of_type("payment_intent")
    assert (attempt.status, attempt.gateway_reference, attempt.processor_fee) == (
        "succeeded",
        intent["id"],
        117,
    )
    create = stripe_double.requests_to("POST", "/v1/payment_intents")[0]
    assert (
        create.idempotency_key,
        create.params["customer"],
        create.params["off_session"],
        create.params["metadata"],
        create.params["transfer_data"]["destination"],
    ) == (
        "in_test_1:attempt:1",
        stripe_customer["id"],
        "true",
        {"invoice": "in_test_1", "creator": shop.creator},
        shop.account,
    )
    assert stripe_double.connected_balance(shop.account) == 3000 - 267

    detached = await api.http.delete(
        f"/v1/customers/{customer}/payment_methods/{saved.json()['id']}",
        headers=bearer(shop.secret_key),
    )
    assert detached.status_code == 200, detached.text
    [method] = [
        m for m in stripe_double.of_type("payment_method") if m["id"] == intent["payment_method"]
    ]
    assert method["customer"] is None
    listed = await api.http.get(
        f"/v1/customers/{customer}/payment_methods", headers=bearer(shop.secret_key)
    )
    assert listed.json()["data"] == []


async def test_one_buyer_is_one_stripe_customer_and_a_top_up_is_a_platform_charge(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    """ADR 0011: the buyer behind two creators' customers is one platform Customer with
    every card on it; a wallet top-up charges it for the platform (no transfer, no
    application fee), so no creator's account receives the buyer's prepaid money."""
    shops = [await _shop(api, stripe_double), await _shop(api, stripe_double)]
    customers = []
    for shop in shops:
        created = await api.http.post(
            "/v1/customers", headers=bearer(shop.secret_key), json={"email": "ana@example.com"}
        )
        customers.append(created.json()["id"])
        saved = await api.http.post(
            f"/v1/customers/{created.json()['id']}/payment_methods",
            headers=bearer(shop.secret_key),
            json={"token": "pm_card_visa"},
        )
        assert saved.status_code == 201, saved.text

    topped = await api.http.post(
        f"/v1/customers/{customers[1]}/wallet/top_ups",
        headers=bearer(shops[1].secret_key),
        json={"amount": 2000, "currency": "usd"},
    )

    assert topped.status_code == 201, topped.text
    assert topped.json()["status"] == "succeeded"
    [stripe_customer] = stripe_double.of_type("customer")
    assert {m["customer"] for m in stripe_double.of_type("payment_method")} == {
        stripe_customer["id"]
    }
    [create] = stripe_double.requests_to("POST", "/v1/payment_intents")
    assert (create.params["customer"], create.params["off_session"]) == (
        stripe_customer["id"],
        "true",
    )
    assert "transfer_data" not in create.params
    assert "application_fee_amount" not in create.params
    assert [stripe_double.connected_balance(shop.account) for shop in shops] == [0, 0]
    wallet = await api.http.get(
        f"/v1/customers/{customers[0]}/wallet", headers=bearer(shops[0].secret_key)
    )
    assert wallet.json()["balances"][0]["amount"] == 2000
    assert (await _verify(database)).is_clean


# Connect -------------------------------------------------------------------------------


async def test_the_admin_connects_a_creator_once_and_gets_an_onboarding_link_each_time(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    creator = await api.creator(email="studio@example.com")
    path = f"/v1/creators/{creator['id']}/stripe_account"

    first = await api.http.post(path, headers=bearer(ADMIN_KEY), json={"country": "GB"})
    again = await api.http.post(path, headers=bearer(ADMIN_KEY))

    assert (first.status_code, again.status_code) == (201, 200)
    [account] = stripe_double.of_type("account")
    assert first.json()["account"] == again.json()["account"] == account["id"]
    assert first.json()["onboarding_url"].startswith(
        f"https://connect.stripe.com/setup/e/{account['id']}/"
    )
    [create] = stripe_double.requests_to("POST", "/v1/accounts")
    assert create.idempotency_key == f"{creator['id']}:connected_account:1"
    assert create.params == {
        "type": "express",
        "email": "studio@example.com",
        "capabilities": {
            "card_payments": {"requested": "true"},
            "transfers": {"requested": "true"},
        },
        "metadata": {"creator": creator["id"]},
        "country": "GB",
    }
    links = stripe_double.requests_to("POST", "/v1/account_links")
    assert [link.params["account"] for link in links] == [account["id"]] * 2
    assert links[0].params["return_url"] == "http://testserver"
    forbidden = await api.http.post(path, headers=bearer(creator["secret_key"]))
    assert forbidden.status_code == 403
    missing = await api.http.post("/v1/creators/cr_nope/stripe_account", headers=bearer(ADMIN_KEY))
    assert missing.status_code == 404


async def test_two_concurrent_first_connections_make_one_account(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    creator = await api.creator(email="studio@example.com")
    path = f"/v1/creators/{creator['id']}/stripe_account"

    responses = await asyncio.gather(
        *(api.http.post(path, headers=bearer(ADMIN_KEY)) for _ in range(2))
    )

    assert sorted(r.status_code for r in responses) == [200, 201]
    [account] = stripe_double.of_type("account")
    assert {r.json()["account"] for r in responses} == {account["id"]}
    assert await _count(database, ConnectedAccount) == 1


async def test_a_creator_without_a_stripe_account_cannot_take_payments_yet(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    creator, price = await api.shop()
    session = await api.session(creator["secret_key"], price=price["id"])

    refused = await api.confirm(creator["secret_key"], session["id"], "pm_card_visa")

    assert refused.status_code == 409
    assert refused.json()["type"] == PROBLEMS + "creator-not-connected"
    assert stripe_double.requests == []
    assert await _count(database, PaymentAttempt) == 0


async def test_an_account_that_has_not_finished_onboarding_refuses_the_charge(
    api: Api, database: Database, stripe_double: StripeDouble
) -> None:
    creator, price = await api.shop()
    await api.http.post(f"/v1/creators/{creator['id']}/stripe_account", headers=bearer(ADMIN_KEY))
    session = await api.session(creator["secret_key"], price=price["id"])

    refused = await api.confirm(creator["secret_key"], session["id"], "pm_card_visa")

    assert refused.status_code == 402
    assert refused.json()["decline_code"] == "insufficient_capabilities_for_transfer"
    assert stripe_double.of_type("payment_intent") == []


# Disputes by webhook ---------------------------------------------------------------------


async def test_a_dispute_arrives_out_of_order_and_the_newest_state_wins(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    shop = await _shop(api, stripe_double)
    order = await _sell(api, shop)
    worker = Worker(database, clock, settings=settings, gateway=stripe_gateway)
    opened = stripe_double.create_dispute(
        payment_intent=await _payment_intent_of(database, order["id"])
    )
    created_event = stripe_double.event("charge.dispute.created", opened)
    reviewing = stripe_double.update_dispute(opened["id"], status="under_review")

    # Stripe delivers the update first …
    response = await _deliver(
        api,
        body := stripe_double.event("charge.dispute.updated", reviewing),
        stripe_double.sign(body),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}
    await worker.run_once()

    dispute = await _dispute(database)
    assert (dispute.status, dispute.amount, dispute.amount_withdrawn, dispute.order_id) == (
        "under_review",
        3000,
        3000,
        order["id"],
    )
    assert await _balance(api, shop) == [{"amount": -267, "currency": "usd"}]

    # … and the older "created" event late: it re-reads the dispute and changes nothing.
    late = await _deliver(api, created_event, stripe_double.sign(created_event))
    assert late.status_code == 200
    await worker.run_once()

    assert (await _dispute(database)).status == "under_review"
    assert await _event_types(database, "dispute.") == ["dispute.created"]
    assert await _balance(api, shop) == [{"amount": -267, "currency": "usd"}]

    lost = stripe_double.update_dispute(opened["id"], status="lost")
    closed = stripe_double.event("charge.dispute.closed", lost)
    assert (await _deliver(api, closed, stripe_double.sign(closed))).status_code == 200
    await worker.run_once()

    assert ((await _dispute(database)).status, (await _dispute(database)).amount_withdrawn) == (
        "lost",
        3000,
    )
    assert await _event_types(database, "dispute.") == ["dispute.created", "dispute.updated"]
    entries = (await api.http.get("/v1/ledger/entries", headers=bearer(shop.secret_key))).json()
    assert [entry["kind"] for entry in entries["data"]] == ["dispute", "payment"]
    assert {line["account"]: line["amount"] for line in entries["data"][0]["lines"]} == {
        f"creator:{shop.creator}:balance": -3000,
        "external:buyer_funds": 3000,
    }
    async with database.unit_of_work() as session:
        rows = (await session.execute(select(InboxEvent).order_by(InboxEvent.id))).scalars()
        assert [(e.type, e.processed_at, e.last_error) for e in rows] == [
            ("charge.dispute.updated", clock.now(), None),
            ("charge.dispute.created", clock.now(), None),
            ("charge.dispute.closed", clock.now(), None),
        ]
        # Each was handled on its first attempt and its work is finished.
        handling = select(WorkItem.id).where(WorkItem.kind == "inbox.stripe")
        assert (await session.execute(handling)).scalars().all() == []
    assert [r.path for r in stripe_double.requests_to("GET", f"/v1/disputes/{opened['id']}")] == [
        f"/v1/disputes/{opened['id']}"
    ] * 3
    assert (await _verify(database)).is_clean


async def test_a_won_dispute_gives_the_funds_back_and_a_replayed_event_is_ignored(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    shop = await _shop(api, stripe_double)
    order = await _sell(api, shop)
    worker = Worker(database, clock, settings=settings, gateway=stripe_gateway)
    opened = stripe_double.create_dispute(
        payment_intent=await _payment_intent_of(database, order["id"]),
        reason="product_not_received",
    )
    created = stripe_double.event("charge.dispute.created", opened)
    assert (await _deliver(api, created, stripe_double.sign(created))).status_code == 200
    await worker.run_once()
    assert await _balance(api, shop) == [{"amount": -267, "currency": "usd"}]

    won = stripe_double.update_dispute(opened["id"], status="won")
    closed = stripe_double.event("charge.dispute.closed", won)
    assert (await _deliver(api, closed, stripe_double.sign(closed))).status_code == 200
    await worker.run_once()

    # Stripe retries a delivery it thinks failed: same event, signed again later.
    replay = await _deliver(
        api, closed, stripe_double.sign(closed, timestamp=int(time.time()) + 60)
    )
    await worker.run_once()

    assert replay.status_code == 200
    assert replay.json() == {"received": True, "duplicate": True}
    dispute = await _dispute(database)
    assert (dispute.status, dispute.reason, dispute.amount_withdrawn) == (
        "won",
        "product_not_received",
        0,
    )
    assert await _balance(api, shop) == [{"amount": 2733, "currency": "usd"}]
    entries = (await api.http.get("/v1/ledger/entries", headers=bearer(shop.secret_key))).json()
    assert [entry["kind"] for entry in entries["data"]] == [
        "dispute_reversal",
        "dispute",
        "payment",
    ]
    assert await _event_types(database, "dispute.") == ["dispute.created", "dispute.updated"]
    assert await _count(database, InboxEvent) == 2
    assert len(stripe_double.requests_to("GET", f"/v1/disputes/{opened['id']}")) == 2
    assert (await _verify(database)).is_clean


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(None, id="missing"),
        pytest.param("t=1,v1=00", id="garbage"),
        pytest.param("wrong-secret", id="wrong-secret"),
        pytest.param("stale", id="older-than-300-seconds"),
        pytest.param("tampered", id="tampered-body"),
    ],
)
async def test_a_bad_signature_is_a_400_and_changes_nothing(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
    signature: str | None,
) -> None:
    shop = await _shop(api, stripe_double)
    order = await _sell(api, shop)
    opened = stripe_double.create_dispute(
        payment_intent=await _payment_intent_of(database, order["id"])
    )
    body = stripe_double.event("charge.dispute.created", opened)
    header = {
        None: None,
        "t=1,v1=00": "t=1,v1=00",
        "wrong-secret": stripe_double.sign(body, secret="whsec_someone_else"),
        "stale": stripe_double.sign(body, timestamp=int(time.time()) - 301),
        "tampered": stripe_double.sign(body.replace(b"fraudulent", b"duplicate")),
    }[signature]

    response = await _deliver(api, body, header)
    await Worker(database, clock, settings=settings, gateway=stripe_gateway).run_once()

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == PROBLEMS + "invalid-webhook-signature"
    assert await _count(database, InboxEvent) == 0
    assert await _count(database, Dispute) == 0
    assert stripe_double.requests_to("GET", f"/v1/disputes/{opened['id']}") == []
    assert await _balance(api, shop) == [{"amount": 2733, "currency": "usd"}]


async def test_events_stallholder_does_not_act_on_are_kept_and_marked_handled(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    other = stripe_double.event("customer.created", {"id": "cus_1", "object": "customer"})
    assert (await _deliver(api, other, stripe_double.sign(other))).status_code == 200
    unknown = stripe_double.event(
        "charge.dispute.created",
        {"id": "dp_elsewhere", "object": "dispute"},
    )
    stripe_double.objects["dp_elsewhere"] = {
        "id": "dp_elsewhere",
        "object": "dispute",
        "amount": 500,
        "currency": "usd",
        "payment_intent": "pi_not_ours",
        "reason": "general",
        "status": "needs_response",
    }
    assert (await _deliver(api, unknown, stripe_double.sign(unknown))).status_code == 200

    await Worker(database, clock, settings=settings, gateway=stripe_gateway).run_once()

    async with database.unit_of_work() as session:
        rows = (await session.execute(select(InboxEvent).order_by(InboxEvent.id))).scalars()
        assert [(e.type, e.processed_at, e.last_error) for e in rows] == [
            (
                "customer.created",
                clock.now(),
                "ignored: Stallholder does not act on customer.created",
            ),
            (
                "charge.dispute.created",
                clock.now(),
                "ignored: no order was paid with payment 'pi_not_ours' that dispute "
                "dp_elsewhere names",
            ),
        ]
    assert await _count(database, Dispute) == 0


async def test_a_failed_read_is_retried_later(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    shop = await _shop(api, stripe_double)
    order = await _sell(api, shop)
    worker = Worker(database, clock, settings=settings, gateway=stripe_gateway)
    opened = stripe_double.create_dispute(
        payment_intent=await _payment_intent_of(database, order["id"])
    )
    body = stripe_double.event("charge.dispute.created", opened)
    assert (await _deliver(api, body, stripe_double.sign(body))).status_code == 200
    stripe_double.fail_next_request(503)

    await worker.run_once()

    retry_after = inbox.RETRY.delay(1)
    assert retry_after == timedelta(seconds=30)
    async with database.unit_of_work() as session:
        event = (await session.execute(select(InboxEvent))).scalar_one()
        assert event.processed_at is None
        assert event.last_error is not None
        assert event.last_error.startswith("APIError: ")
        item = (
            await session.execute(select(WorkItem).where(WorkItem.kind == "inbox.stripe"))
        ).scalar_one()
        assert (item.state, item.attempts, item.due_at) == (
            "pending",
            1,
            clock.now() + retry_after,
        )
        assert item.last_error == event.last_error
    await worker.run_once()  # not due yet
    assert await _count(database, Dispute) == 0

    clock.set(clock.now() + retry_after)
    await worker.run_once()

    assert (await _dispute(database)).status == "needs_response"
    assert await _balance(api, shop) == [{"amount": -267, "currency": "usd"}]


async def test_stripe_webhooks_are_not_found_on_a_sandbox_platform(
    settings: Settings, database: Database, clock: FrozenClock
) -> None:
    app = create_app(settings, database=database, clock=clock, run_worker=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.post("/v1/stripe/webhooks", content=b"{}")
    assert response.status_code == 404
    assert response.json()["type"] == PROBLEMS + "stripe-not-enabled"


# Consolidated charges: separate charges and transfers (ADR 0019) ------------------------


async def test_a_consolidated_renewal_is_one_platform_charge_and_a_transfer_per_creator(
    api: Api, database: Database, stripe_double: StripeDouble, stripe_gateway: StripeGateway
) -> None:
    """One buyer's two $3 renewals with two creators are one PaymentIntent on the platform
    with a ``transfer_group``, then one Transfer per creator of exactly its ledger share; a
    refund of one creator's part refunds the PaymentIntent without Connect flags and
    reverses that creator's transfer by its share of the refund."""
    clock = await api.http.post(
        "/v1/test_clocks", headers=bearer(ADMIN_KEY), json={"frozen_time": T0.isoformat()}
    )
    clock_id = clock.json()["id"]
    shops = []
    # The buyer's card, saved with the first creator; the second creator is granted the
    # same card (the buyer picks it again), as a consolidated charge needs one card.
    token = "pm_card_visa"
    for name in ("Kiln and Clay", "Seed Library"):
        creator = await api.creator(name=name, email=f"{name.split()[0].lower()}@example.com")
        key = creator["secret_key"]
        product = await api.product(key, kind="digital", name=f"{name} club")
        price = await api.price(
            key, product=product["id"], unit_amount=300, recurring={"interval": "month"}
        )
        connected = await api.http.post(
            f"/v1/creators/{creator['id']}/stripe_account", headers=bearer(ADMIN_KEY)
        )
        stripe_double.activate_account(connected.json()["account"])
        customer = await api.http.post(
            "/v1/customers",
            headers=bearer(key),
            json={"email": "reader@example.com", "time_zone": "UTC", "test_clock": clock_id},
        )
        saved = await api.http.post(
            f"/v1/customers/{customer.json()['id']}/payment_methods",
            headers=bearer(key),
            json={"token": token},
        )
        assert saved.status_code == 201, saved.text
        async with database.unit_of_work() as session:
            method = await session.get(PaymentMethod, saved.json()["id"])
            assert method is not None
            token = method.gateway_reference
        subscribed = await api.http.post(
            "/v1/subscriptions",
            headers=bearer(key),
            json={
                "customer": customer.json()["id"],
                "items": [{"price": price["id"], "quantity": 1}],
                "default_payment_method": saved.json()["id"],
            },
        )
        assert subscribed.json()["status"] == "active", subscribed.text
        shops.append(
            Shop(creator["id"], key, connected.json()["account"], price["id"]),
        )
    signups = {shop.account: stripe_double.connected_balance(shop.account) for shop in shops}
    assert len(stripe_double.requests_to("POST", "/v1/payment_intents")) == 2

    advanced = await api.http.post(
        f"/v1/test_clocks/{clock_id}/advance",
        headers=bearer(ADMIN_KEY),
        json={"frozen_time": (T0 + timedelta(days=31)).isoformat()},
    )
    assert advanced.status_code == 200, advanced.text

    # One more PaymentIntent: 600 for both renewals, on the platform, in a transfer group.
    creates = stripe_double.requests_to("POST", "/v1/payment_intents")
    assert len(creates) == 3
    renewal = creates[-1].params
    assert (renewal["amount"], "transfer_data" in renewal, "application_fee_amount" in renewal) == (
        "600",
        False,
        False,
    )
    group = renewal["transfer_group"]
    assert group.startswith("cc_")
    assert str(creates[-1].idempotency_key).endswith(":2026-04-01:usd:1:attempt:1")

    # The transfers are the ordinary worker's work; run it as the worker would.
    assert (
        await consolidation.transfer_parts(
            database, stripe_gateway, charge_id=group, now=T0 + timedelta(days=31)
        )
        == 2
    )
    # Run again (a retried job): the same keys, no new transfer.
    assert (
        await consolidation.transfer_parts(
            database, stripe_gateway, charge_id=group, now=T0 + timedelta(days=31)
        )
        == 0
    )
    transfers = stripe_double.of_type("transfer")
    assert sorted(t["destination"] for t in transfers) == sorted(s.account for s in shops)
    assert {t["transfer_group"] for t in transfers} == {group}
    for shop in shops:
        # Each connected account holds exactly the creator's ledger balance.
        [available] = await _balance(api, shop)
        assert stripe_double.connected_balance(shop.account) == available["amount"]
        assert available["amount"] > signups[shop.account]

    # Refund one creator's renewal order in full: the PaymentIntent is refunded (no
    # reverse_transfer on a platform charge) and that creator's transfer reversed.
    async with database.unit_of_work() as session:
        order = (
            await session.execute(
                select(Order).where(
                    Order.creator_id == shops[0].creator, Order.transfer_reference.is_not(None)
                )
            )
        ).scalar_one()
    refunded = await api.http.post(
        "/v1/refunds", headers=bearer(shops[0].secret_key), json={"order": order.id}
    )
    assert refunded.status_code == 201, refunded.text
    [refund] = stripe_double.requests_to("POST", "/v1/refunds")
    assert refund.params == {
        "payment_intent": renewal_intent(stripe_double, group),
        "amount": "300",
    }
    [reversal] = stripe_double.of_type("transfer_reversal")
    [transferred] = [t for t in transfers if t["id"] == order.transfer_reference]
    assert (reversal["transfer"], reversal["amount"]) == (transferred["id"], transferred["amount"])
    assert stripe_double.connected_balance(shops[0].account) == signups[shops[0].account]
    for shop in shops:
        [available] = await _balance(api, shop)
        assert stripe_double.connected_balance(shop.account) == available["amount"]
    assert (await _verify(database)).is_clean


def renewal_intent(double: StripeDouble, group: str) -> str:
    [intent] = [i for i in double.of_type("payment_intent") if i["transfer_group"] == group]
    return str(intent["id"])
