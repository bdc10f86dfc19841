"""Changes of note write events into the outbox in the same transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


async def test_sale_decline_and_refund_emit_versioned_events(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    creator, price = await api.shop(unit_amount=1500)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"], quantity=2)
    assert (await api.confirm(sk, session["id"], "tok_chargeDeclined")).status_code == 402
    order_id = (await api.confirm(sk, session["id"])).json()["order"]
    refund = await api.http.post(
        "/v1/refunds", headers=bearer(sk), json={"order": order_id, "amount": 500}
    )
    assert refund.status_code == 201

    listed = (await api.http.get("/v1/events", headers=bearer(sk))).json()
    assert [e["type"] for e in listed["data"]] == [
        "refund.created",
        "checkout.session.completed",
        "order.paid",
        "payment.failed",
    ]
    refund_event, session_event, order_event, failed_event = listed["data"]
    assert refund_event["api_version"] == "2026-11-01"
    assert refund_event["data"]["object"]["id"] == refund.json()["id"]
    assert refund_event["data"]["object"]["amount"] == 500
    assert order_event["data"]["object"]["id"] == order_id
    assert order_event["data"]["object"]["amount_total"] == 3000
    assert session_event["data"]["object"]["status"] == "complete"
    assert session_event["data"]["object"]["url"] == f"http://testserver/pay/{session['id']}"
    assert "client_secret" not in session_event["data"]["object"]
    assert failed_event["data"]["object"]["decline_code"] == "generic_decline"

    one = await api.http.get(f"/v1/events/{order_event['id']}", headers=bearer(sk))
    assert one.json() == order_event
    only_paid = (await api.http.get("/v1/events?type=order.paid", headers=bearer(sk))).json()
    assert [e["id"] for e in only_paid["data"]] == [order_event["id"]]

    other = await api.creator(name="Someone Else")
    assert (
        await api.http.get(f"/v1/events/{order_event['id']}", headers=bearer(other["secret_key"]))
    ).status_code == 404

    await Worker(database, clock).run_once()
    async with database.unit_of_work() as db:
        pending = (await db.execute(select(Event).where(Event.dispatched_at.is_(None)))).all()
    assert pending == []


async def test_a_rolled_back_change_leaves_no_event(api: Api, database: Database) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    expired = await api.http.post(
        f"/v1/checkout/sessions/{session['id']}/confirm",
        headers=bearer(sk),
        json={"payment_method": "4242424242424242"},
    )
    assert expired.status_code == 400
    async with database.unit_of_work() as db:
        assert (await db.execute(select(Event))).all() == []
