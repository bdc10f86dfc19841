"""Outgoing webhooks against a real receiver on localhost that verifies every delivery
with the ``standardwebhooks`` library: retries with backoff until it is back, the
delivery log, duplicates with one ``webhook-id``, secret rotation, and disabling."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from stallholder.events.models import WebhookDelivery, WebhookEndpoint
from stallholder.events.webhooks import MAX_ATTEMPTS, RETRY_DELAYS, latest_deliveries
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.notifications.models import Email
from stallholder.settings import Settings
from tests.conftest import Api, bearer
from tests.webhook_receiver import Receiver, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def worker(database: Database, clock: FrozenClock, settings: Settings) -> Worker:
    return Worker(database, clock, settings=settings)


async def _endpoint(api: Api, key: str, url: str, events: list[str] | None = None) -> Any:
    response = await api.http.post(
        "/v1/webhook_endpoints",
        headers=bearer(key),
        json={"url": url, "events": events or ["*"], "description": "my shop"},
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _sell(api: Api, key: str, price: str, times: int) -> None:
    for _ in range(times):
        session = await api.session(key, price=price)
        assert (await api.confirm(key, session["id"])).status_code == 200


async def _event_ids(api: Api, key: str) -> set[str]:
    listed = await api.http.get("/v1/events?limit=100", headers=bearer(key))
    return {e["id"] for e in listed.json()["data"]}


async def _log(api: Api, key: str, endpoint: str) -> list[dict[str, Any]]:
    listed = await api.http.get(
        f"/v1/webhook_endpoints/{endpoint}/deliveries?limit=100", headers=bearer(key)
    )
    assert listed.status_code == 200, listed.text
    data: list[dict[str, Any]] = listed.json()["data"]
    return data


async def test_a_receiver_that_is_down_gets_every_event_once_it_is_back(
    api: Api, worker: Worker, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[], answer=503)) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url)
        receiver.secrets.append(endpoint["secret"])
        await _sell(api, sk, price["id"], times=3)
        events = await _event_ids(api, sk)
        assert len(events) == 6  # checkout.session.completed + order.paid, three times

        await worker.run_once()  # dispatch, first attempts: 503
        clock.advance(RETRY_DELAYS[0])
        await worker.run_once()  # second attempts: 503
        clock.advance(RETRY_DELAYS[1] - timedelta(seconds=1))
        await worker.run_once()  # not due yet: nothing sent
        assert len(receiver.received) == 12

        receiver.answer = 200
        clock.advance(timedelta(seconds=1))
        await worker.run_once()  # third attempts: delivered
        clock.advance(timedelta(days=4))
        await worker.run_once()  # nothing left to send

    assert len(receiver.received) == 18
    assert all(r.verified_with == [endpoint["secret"]] for r in receiver.received)
    assert {r.webhook_id for r in receiver.received if r.answered == 200} == events
    bodies = {r.webhook_id: json.loads(r.body) for r in receiver.received}
    assert all(body["id"] == event for event, body in bodies.items())
    log = await _log(api, sk, endpoint["id"])
    assert {d["event"] for d in log} == events
    for delivery in log:
        assert delivery["status"] == "succeeded"
        assert [a["status_code"] for a in delivery["attempts"]] == [503, 503, 200]
        assert [a["number"] for a in delivery["attempts"]] == [1, 2, 3]
        assert delivery["attempts"][0]["response_excerpt"] == "not now"
        assert delivery["attempts"][2]["response_excerpt"] == '{"received": true}'
    # One webhook-id per event, whatever the number of attempts.
    per_event = [receiver.ids().count(event) for event in sorted(events)]
    assert per_event == [3] * 6


async def test_a_receiver_that_fails_after_processing_sees_the_same_webhook_id_again(
    api: Api, worker: Worker, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[], answer=lambda n: 500 if n == 1 else 200)) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        receiver.secrets.append(endpoint["secret"])
        await _sell(api, sk, price["id"], times=1)
        await worker.run_once()
        clock.advance(RETRY_DELAYS[0])
        await worker.run_once()

    [first, second] = receiver.received
    assert first.webhook_id == second.webhook_id
    assert json.loads(first.body) == json.loads(second.body)
    assert json.loads(first.body)["type"] == "order.paid"
    assert (first.answered, second.answered) == (500, 200)


async def test_redeliver_sends_an_event_again_with_its_webhook_id(api: Api, worker: Worker) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[])) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        receiver.secrets.append(endpoint["secret"])
        await _sell(api, sk, price["id"], times=1)
        await worker.run_once()
        [event_id] = receiver.ids()
        again = await api.http.post(
            f"/v1/events/{event_id}/redeliver",
            headers=bearer(sk),
            json={"endpoint": endpoint["id"]},
        )
        assert again.status_code == 200, again.text
        assert [d["status"] for d in again.json()["data"]] == ["pending"]
        await worker.run_once()

    assert receiver.ids() == [event_id, event_id]
    assert all(r.verified_with for r in receiver.received)
    other = await api.creator(name="Other", email="o@example.com")
    foreign = await api.http.post(
        f"/v1/events/{event_id}/redeliver", headers=bearer(other["secret_key"])
    )
    assert (foreign.status_code, foreign.json()["type"]) == (
        404,
        "https://stallholder.dev/problems/event-not-found",
    )


async def test_during_a_rotation_both_secrets_sign_and_afterwards_only_the_new_one(
    api: Api, worker: Worker, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[])) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        old = endpoint["secret"]
        rotated = await api.http.post(
            f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret",
            headers=bearer(sk),
            json={"expire_previous_in_seconds": 3600},
        )
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        assert new.startswith("whsec_")
        receiver.secrets.extend([old, new])

        await _sell(api, sk, price["id"], times=1)
        await worker.run_once()
        clock.advance(timedelta(hours=1))
        await _sell(api, sk, price["id"], times=1)
        await worker.run_once()

    during, after = receiver.received
    assert during.verified_with == [old, new]
    assert len(during.signature.split(" ")) == 2
    assert after.verified_with == [new]
    shown = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(sk))
    assert "secret" not in shown.json()


async def test_a_410_disables_the_endpoint_at_once(
    api: Api, worker: Worker, database: Database
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[], answer=410)) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        await _sell(api, sk, price["id"], times=2)
        await worker.run_once()
        await worker.run_once()

    shown = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(sk))
    assert (shown.json()["status"], shown.json()["disabled_reason"]) == (
        "disabled",
        "the endpoint answered 410 Gone",
    )
    log = await _log(api, sk, endpoint["id"])
    assert sorted(d["status"] for d in log) == ["failed", "failed"]
    events = await api.http.get("/v1/events?type=webhook_endpoint.disabled", headers=bearer(sk))
    [disabled] = events.json()["data"]
    assert disabled["data"]["object"]["id"] == endpoint["id"]
    assert "secret" not in json.dumps(disabled)


async def test_a_long_run_of_failures_disables_the_endpoint_and_emails_the_creator(
    api: Api, database: Database, clock: FrozenClock, settings: Settings
) -> None:
    worker = Worker(
        database,
        clock,
        settings=settings.model_copy(
            update={"webhook_disable_after_failures": 3, "webhook_disable_after_seconds": 300}
        ),
    )
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[], answer=500)) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        watcher = await _endpoint(api, sk, receiver.url, events=["webhook_endpoint.disabled"])
        await _sell(api, sk, price["id"], times=3)
        await worker.run_once()  # three failures, but not yet for five minutes
        shown = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(sk))
        assert shown.json()["status"] == "enabled"
        clock.advance(timedelta(minutes=5))
        await worker.run_once()  # second attempts, a run of six over five minutes
        shown = await api.http.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=bearer(sk))
        assert shown.json()["status"] == "disabled"
        assert shown.json()["disabled_reason"].startswith("4 deliveries in a row failed")
        receiver.answer = 200
        await worker.run_once()  # the disabled event reaches the other endpoint only
        clock.advance(timedelta(hours=1))
        await worker.run_once()  # the disabled endpoint's retries wait

    last = receiver.received[-1]
    assert json.loads(last.body)["type"] == "webhook_endpoint.disabled"
    assert json.loads(last.body)["data"]["object"]["id"] == endpoint["id"]
    async with database.unit_of_work() as session:
        emails = (await session.execute(select(Email))).scalars().all()
        kinds = sorted(e.kind for e in emails)
        pending = (
            await session.execute(
                select(WebhookDelivery.status).where(WebhookDelivery.endpoint_id == endpoint["id"])
            )
        ).scalars()
        assert sorted(pending) == ["pending", "pending", "pending"]
    assert "webhook_endpoint_disabled" in kinds
    assert watcher["id"] != endpoint["id"]

    enabled = await api.http.patch(
        f"/v1/webhook_endpoints/{endpoint['id']}",
        headers=bearer(sk),
        json={"status": "enabled"},
    )
    assert (enabled.status_code, enabled.json()["status"]) == (200, "enabled")
    async with database.unit_of_work() as session:
        row = await session.get(WebhookEndpoint, endpoint["id"])
        assert row is not None
        assert (row.consecutive_failures, row.failing_since) == (0, None)


async def test_every_attempt_used_ends_the_delivery_as_failed(
    api: Api, worker: Worker, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    with serve(Receiver(secrets=[], answer=503)) as receiver:
        endpoint = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        await _sell(api, sk, price["id"], times=1)
        await worker.run_once()
        for delay in RETRY_DELAYS:
            clock.advance(delay)
            await worker.run_once()
        clock.advance(timedelta(days=7))
        await worker.run_once()

    assert len(receiver.received) == MAX_ATTEMPTS == 11
    [delivery] = await _log(api, sk, endpoint["id"])
    assert delivery["status"] == "failed"
    assert len(delivery["attempts"]) == 11
    assert sum(RETRY_DELAYS, timedelta()) == timedelta(hours=71, minutes=35, seconds=5)


async def test_the_latest_deliveries_of_many_endpoints_are_read_in_one_statement(
    api: Api, worker: Worker, database: Database
) -> None:
    """The dashboard's webhooks page shows each endpoint's 10 newest deliveries: the same
    ones, in the same order, as the first page of each endpoint's delivery log, and never
    another creator's."""
    creator, price = await api.shop()
    sk = creator["secret_key"]
    other = await api.creator(email="other@example.com")
    other_product = await api.product(other["secret_key"])
    other_price = await api.price(other["secret_key"], product=other_product["id"])
    with serve(Receiver(secrets=[])) as receiver:
        everything = await _endpoint(api, sk, receiver.url)
        paid_only = await _endpoint(api, sk, receiver.url, events=["order.paid"])
        theirs = await _endpoint(api, other["secret_key"], receiver.url)
        await _sell(api, sk, price["id"], times=7)
        await _sell(api, other["secret_key"], other_price["id"], times=1)
        await worker.run_once()
    ids = [everything["id"], paid_only["id"], theirs["id"]]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    async with database.read() as session:
        engine = session.get_bind()
        event.listen(engine, "before_cursor_execute", count)
        try:
            latest = await latest_deliveries(
                session, creator_id=creator["id"], endpoint_ids=ids, per_endpoint=10
            )
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert [s.split()[0] for s in statements if s != "BEGIN"] == ["SELECT"]
    logged = [d["id"] for d in await _log(api, sk, everything["id"])]
    assert len(logged) == 14  # two events a sale
    assert [d.id for d in latest[everything["id"]]] == logged[:10]
    assert [d.id for d in latest[paid_only["id"]]] == [
        d["id"] for d in await _log(api, sk, paid_only["id"])
    ]
    assert len(latest[paid_only["id"]]) == 7
    assert latest[theirs["id"]] == []
