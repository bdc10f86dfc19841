"""A consolidated charge with the Stripe gateway (separate charges and transfers, ADR 0019),
against the Stripe test double, on SQLite and PostgreSQL: a dispute of the whole charge is
split over its creators' orders in the ledger, and a refund made before a creator's
transfer is taken off that transfer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from stallholder.app import create_app
from stallholder.billing import consolidation
from stallholder.billing.models import Invoice
from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit import work
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.orders import service as orders
from stallholder.payments.gateway import GatewayRefused
from stallholder.payments.models import Dispute, PaymentMethod
from stallholder.payments.stripe_gateway import StripeGateway
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, T0, Api, bearer
from tests.doubles.stripe_api import StripeDouble

pytestmark = pytest.mark.anyio

RENEWED_AT = T0 + timedelta(days=31)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


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
class Part:
    """One creator of the consolidated charge and its renewal order."""

    creator: str
    key: str
    account: str
    invoice: str
    order: str


async def _consolidated(
    api: Api, double: StripeDouble, database: Database, amounts: list[int]
) -> tuple[str, list[Part]]:
    """One buyer's monthly plans at len(amounts) creators (each with a connected Stripe
    account), renewed on a test clock as one consolidated charge: (its id, the parts in
    the order of ``amounts``)."""
    clock = await api.http.post(
        "/v1/test_clocks", headers=bearer(ADMIN_KEY), json={"frozen_time": T0.isoformat()}
    )
    clock_id = clock.json()["id"]
    creators = []
    token = "pm_card_visa"
    for n, amount in enumerate(amounts):
        creator = await api.creator(name=f"Creator {n}", email=f"creator{n}@example.com")
        key = creator["secret_key"]
        product = await api.product(key, kind="digital", name=f"Club {n}")
        price = await api.price(
            key, product=product["id"], unit_amount=amount, recurring={"interval": "month"}
        )
        connected = await api.http.post(
            f"/v1/creators/{creator['id']}/stripe_account", headers=bearer(ADMIN_KEY)
        )
        account = connected.json()["account"]
        double.activate_account(account)
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
            token = method.gateway_reference  # the same card, granted to the next creator
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
        creators.append((creator["id"], key, account))
    advanced = await api.http.post(
        f"/v1/test_clocks/{clock_id}/advance",
        headers=bearer(ADMIN_KEY),
        json={"frozen_time": RENEWED_AT.isoformat()},
    )
    assert advanced.status_code == 200, advanced.text
    group = double.requests_to("POST", "/v1/payment_intents")[-1].params["transfer_group"]
    async with database.unit_of_work() as session:
        invoices = {
            invoice.creator_id: invoice
            for invoice in (
                await session.execute(
                    select(Invoice).where(Invoice.consolidated_charge_id == group)
                )
            ).scalars()
        }
    parts = []
    for creator_id, key, account in creators:
        invoice = invoices[creator_id]
        assert invoice.order_id is not None
        parts.append(Part(creator_id, key, account, invoice.id, invoice.order_id))
    return group, parts


def _intent_of(double: StripeDouble, group: str) -> str:
    [intent] = [i for i in double.of_type("payment_intent") if i["transfer_group"] == group]
    return str(intent["id"])


async def _available(api: Api, part: Part) -> int:
    [available] = (await api.http.get("/v1/balance", headers=bearer(part.key))).json()["available"]
    return int(available["amount"])


async def _latest_entry(api: Api, part: Part) -> tuple[str, dict[str, int]]:
    entries = (await api.http.get("/v1/ledger/entries", headers=bearer(part.key))).json()
    entry = entries["data"][0]
    return entry["kind"], {line["account"]: line["amount"] for line in entry["lines"]}


async def _deliver(api: Api, double: StripeDouble, type: str, obj: dict[str, Any]) -> None:
    body = double.event(type, obj)
    response = await api.http.post(
        "/v1/stripe/webhooks",
        content=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": double.sign(body)},
    )
    assert response.status_code == 200, response.text


async def _verify(database: Database) -> None:
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean


# Disputes -------------------------------------------------------------------------------------


async def test_a_dispute_of_a_consolidated_charge_is_split_over_its_creators_and_won_back(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    """Three creators' renewals of 300, 500 and 600 are one charge of 1,400. The buyer's
    bank disputes 1,000 of it and Stripe takes its 1,500 dispute fee: each creator bears
    the part it was paid of the charge (largest remainder): 214, 357 and 429 of the
    amount (1,000 × 3/14 = 214.29, × 5/14 = 357.14, × 6/14 = 428.57: the one unit left
    goes to the largest remainder) and 321, 536 and 643 of the fee (321.43, 535.71,
    642.86: two units left). Won, both come back."""
    group, parts = await _consolidated(api, stripe_double, database, [300, 500, 600])
    before = [await _available(api, part) for part in parts]
    worker = Worker(database, clock, settings=settings, gateway=stripe_gateway)

    opened = stripe_double.create_dispute(
        payment_intent=_intent_of(stripe_double, group), amount=1000, fee=1500
    )
    await _deliver(api, stripe_double, "charge.dispute.created", opened)
    await worker.run_once()

    expected = [(214, 321), (357, 536), (429, 643)]
    async with database.unit_of_work() as session:
        rows = {row.order_id: row for row in (await session.execute(select(Dispute))).scalars()}
    assert len(rows) == 3
    for part, (amount, fee), balance in zip(parts, expected, before, strict=True):
        row = rows[part.order]
        assert (row.creator_id, row.external_id, row.status) == (
            part.creator,
            opened["id"],
            "needs_response",
        )
        assert (row.amount, row.amount_withdrawn, row.fee, row.fee_withdrawn) == (
            amount,
            amount,
            fee,
            fee,
        )
        assert await _latest_entry(api, part) == (
            "dispute",
            {
                f"creator:{part.creator}:balance": -(amount + fee),
                "external:buyer_funds": amount,
                "processor:fees": fee,
            },
        )
        assert await _available(api, part) == balance - amount - fee
    # Each creator is told of its own part of the dispute, and only of that.
    async with database.unit_of_work() as session:
        events = (
            await session.execute(select(Event).where(Event.type == "dispute.created"))
        ).scalars()
        told = [(event.creator_id, event.data["amount"], event.data["fee"]) for event in events]
    assert sorted(told) == sorted(
        (part.creator, amount, fee) for part, (amount, fee) in zip(parts, expected, strict=True)
    )
    await _verify(database)

    won = stripe_double.update_dispute(opened["id"], status="won")
    await _deliver(api, stripe_double, "charge.dispute.closed", won)
    await worker.run_once()

    for part, (amount, fee), balance in zip(parts, expected, before, strict=True):
        assert await _latest_entry(api, part) == (
            "dispute_reversal",
            {
                f"creator:{part.creator}:balance": amount + fee,
                "external:buyer_funds": -amount,
                "processor:fees": -fee,
            },
        )
        assert await _available(api, part) == balance
    async with database.unit_of_work() as session:
        settled = (await session.execute(select(Dispute))).scalars().all()
    assert {(row.status, row.amount_withdrawn, row.fee_withdrawn) for row in settled} == {
        ("won", 0, 0)
    }
    await _verify(database)


# Refunds before the transfer -------------------------------------------------------------------


async def _transfer(database: Database, gateway: StripeGateway, group: str) -> int:
    return await consolidation.transfer_parts(database, gateway, charge_id=group, now=RENEWED_AT)


async def _balances_match(api: Api, double: StripeDouble, parts: list[Part]) -> None:
    for part in parts:
        assert double.connected_balance(part.account) == await _available(api, part)


async def test_a_refund_before_the_transfer_is_taken_off_it(
    api: Api, database: Database, stripe_double: StripeDouble, stripe_gateway: StripeGateway
) -> None:
    """Renewals of 300 and 500 are one charge of 800 (Stripe's estimated fee 53, split 20
    and 33; the platform's 5 %: 15 and 25), so the creators' shares are 265 and 442.
    Before the transfers are made, 100 of the first order is refunded (the creator's part
    of it: 265 × 100/300 = 88.33, rounded down) and the second order in full: the first
    creator is transferred 265 − 88 = 177, the second nothing, and nothing is reversed."""
    group, parts = await _consolidated(api, stripe_double, database, [300, 500])
    for part, amount in ((parts[0], 100), (parts[1], None)):
        refunded = await api.http.post(
            "/v1/refunds",
            headers=bearer(part.key),
            json={"order": part.order}
            if amount is None
            else {"order": part.order, "amount": amount},
        )
        assert refunded.status_code == 201, refunded.text
        assert refunded.json()["status"] == "succeeded"
    assert [
        r.params.get("reverse_transfer") for r in stripe_double.requests_to("POST", "/v1/refunds")
    ] == [None, None]

    assert await _transfer(database, stripe_gateway, group) == 1
    assert await _transfer(database, stripe_gateway, group) == 0  # a retried job

    [request] = stripe_double.requests_to("POST", "/v1/transfers")
    assert (request.idempotency_key, request.params["amount"], request.params["destination"]) == (
        f"{group}:transfer:{parts[0].invoice}",
        "177",
        parts[0].account,
    )
    assert stripe_double.of_type("transfer_reversal") == []
    await _balances_match(api, stripe_double, parts)
    await _verify(database)


async def test_a_transfer_waits_for_a_pending_refund_and_keeps_its_amount_and_key_on_retry(
    api: Api,
    database: Database,
    clock: FrozenClock,
    settings: Settings,
    stripe_double: StripeDouble,
    stripe_gateway: StripeGateway,
) -> None:
    """The second order's refund of 200 is pending (its gateway call not made yet) when
    the transfer job first runs: the first creator's transfer is fixed at its full share
    (265) and asked for, but Stripe refuses that request; the second waits. A refund of
    the first order now would not be counted in a transfer already fixed and not yet
    made, so it is refused for the moment. The job runs again: the same key and amount
    for the first; once the pending refund succeeds, the second creator is transferred
    its share less the refund's part (442 − 176 = 266, 442 × 200/500 = 176.8 rounded
    down). The first order's refund then reverses its transfer as usual."""
    group, parts = await _consolidated(api, stripe_double, database, [300, 500])
    async with database.unit_of_work() as session:
        pending = await orders.begin_refund(
            session,
            creator_id=parts[1].creator,
            order_id=parts[1].order,
            amount=200,
            reason=None,
            resolve_after=clock.now() + timedelta(minutes=5),
            now=clock.now(),
        )

    stripe_double.fail_next_request(400)
    with pytest.raises(GatewayRefused):
        await _transfer(database, stripe_gateway, group)
    refused = await api.http.post(
        "/v1/refunds", headers=bearer(parts[0].key), json={"order": parts[0].order, "amount": 100}
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/payment-in-progress")

    with pytest.raises(work.Retry):
        await _transfer(database, stripe_gateway, group)
    result = await orders.call_refund(stripe_gateway, pending)
    async with database.unit_of_work() as session:
        await orders.finish_refund(session, call=pending, result=result, now=clock.now())
    assert await _transfer(database, stripe_gateway, group) == 1
    assert await _transfer(database, stripe_gateway, group) == 0

    requests = stripe_double.requests_to("POST", "/v1/transfers")
    assert [(r.idempotency_key, r.params["amount"], r.status) for r in requests] == [
        (f"{group}:transfer:{parts[0].invoice}", "265", 400),
        (f"{group}:transfer:{parts[0].invoice}", "265", 200),
        (f"{group}:transfer:{parts[1].invoice}", "266", 200),
    ]
    refunded = await api.http.post(
        "/v1/refunds", headers=bearer(parts[0].key), json={"order": parts[0].order, "amount": 100}
    )
    assert refunded.status_code == 201, refunded.text
    [reversal] = stripe_double.of_type("transfer_reversal")
    assert reversal["amount"] == 88
    await _balances_match(api, stripe_double, parts)
    await _verify(database)
