"""Raffle drops over HTTP, on SQLite and PostgreSQL: entries in the window, a committed
seed, a draw anyone can repeat, and a winner's unit passing on when they do not buy."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.notifications.models import Email
from tests.conftest import Api, bearer
from tests.e2e.test_drops import CLOSES, OPENS, PROBLEM, DropShop, winter_mug_shop

pytestmark = pytest.mark.anyio
EMAILS = [f"fan{n}@example.com" for n in range(7)]


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
async def shop(api: Api) -> DropShop:
    return await winter_mug_shop(api)


# The draw, written from docs/raffles.md alone: hashlib only, nothing of the project.
def published_entrant(drop_id: str, email: str) -> str:
    return hashlib.sha256(f"{drop_id}\n{email}".encode()).hexdigest()


def redraw(seed: str, entrants: list[str]) -> list[str]:
    def ticket(entrant: str) -> str:
        return hashlib.sha256(f"{seed}:{entrant}".encode("ascii")).hexdigest()

    return sorted(entrants, key=lambda entrant: (ticket(entrant), entrant))


async def enter(shop: DropShop, drop_id: str, email: str) -> Any:
    return await shop.api.http.post(
        f"/v1/drops/{drop_id}/entries", headers=bearer(shop.pk), json={"email": email}
    )


async def draw_record(shop: DropShop, drop_id: str) -> dict[str, Any]:
    response = await shop.api.http.get(f"/v1/drops/{drop_id}/draw", headers=bearer(shop.pk))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_raffle_is_drawn_from_its_committed_seed_and_anyone_can_redraw_it(
    shop: DropShop, clock: FrozenClock, api: Api, database: Database
) -> None:
    created = await shop.drop(
        mode="raffle",
        claim_minutes=30,
        per_customer_limit=None,
        items=[{"price": shop.price, "quantity": 2}],
    )
    assert created.status_code == 201, created.text
    drop = created.json()
    before = await draw_record(shop, drop["id"])
    assert (before["seed"], before["drawn_at"], before["entrants"], before["winners"]) == (
        None,
        None,
        [],
        [],
    )
    assert before["seed_hash"] == drop["seed_hash"]
    assert len(drop["seed_hash"]) == 64

    early = await enter(shop, drop["id"], EMAILS[0])
    assert (early.status_code, early.json()["type"]) == (409, PROBLEM + "raffle-entries-closed")

    clock.set(OPENS)
    entries = [await enter(shop, drop["id"], email) for email in EMAILS]
    assert [entry.status_code for entry in entries] == [201] * len(EMAILS)
    again = await enter(shop, drop["id"], EMAILS[3].upper())
    assert again.json()["id"] == entries[3].json()["id"]
    not_yet = await shop.session(EMAILS[0])
    assert (not_yet.status_code, not_yet.json()["type"]) == (409, PROBLEM + "raffle-not-drawn")

    clock.set(CLOSES)
    late = await enter(shop, drop["id"], "late@example.com")
    assert (late.status_code, late.json()["type"]) == (409, PROBLEM + "raffle-entries-closed")
    await Worker(database, clock).run_once()

    record = await draw_record(shop, drop["id"])
    # The seed revealed is the one committed to at creation.
    assert hashlib.sha256(record["seed"].encode("ascii")).hexdigest() == drop["seed_hash"]
    # The published entries are the entrants' pseudonyms, and the draw repeats exactly.
    by_entrant = {published_entrant(drop["id"], email): email for email in EMAILS}
    assert record["entrants"] == sorted(by_entrant)
    order = redraw(record["seed"], record["entrants"])
    assert record["winners"] == order[:2]
    assert record["offered"] == order[:2]
    assert (record["algorithm"], record["units"]) == ("sha256-rank-v1", 2)
    first, second, third, *losers = (by_entrant[entrant] for entrant in order)
    # Each winner is emailed (the outbox is dispatched on the worker's next pass).
    await Worker(database, clock).run_once()
    async with database.unit_of_work() as session:
        emails = (
            await session.execute(select(Email).where(Email.kind == "raffle_offer"))
        ).scalars()
        sent = sorted((email.to_address, email.subject) for email in emails)
    assert sent == sorted(
        (winner, "You can buy from Kiln & Clay's Winter mugs") for winner in (first, second)
    )

    lost = await shop.session(losers[0])
    assert (lost.status_code, lost.json()["type"]) == (409, PROBLEM + "raffle-offer-required")
    greedy = await shop.session(first, quantity=2)
    assert (greedy.status_code, greedy.json()["type"]) == (400, PROBLEM + "raffle-one-unit")
    won = await shop.session(first)
    assert won.status_code == 201, won.text
    assert (await api.confirm(shop.sk, won.json()["id"])).status_code == 200
    twice = await shop.session(first)
    assert (twice.status_code, twice.json()["type"]) == (409, PROBLEM + "raffle-offer-required")

    # The second winner does not buy within 30 minutes: the unit passes to the third.
    clock.advance(timedelta(minutes=30))
    await Worker(database, clock).run_once()
    record = await draw_record(shop, drop["id"])
    assert record["winners"] == order[:2]
    assert record["offered"] == order[:3]
    too_late = await shop.session(second)
    assert (too_late.status_code, too_late.json()["type"]) == (
        409,
        PROBLEM + "raffle-offer-required",
    )
    passed_on = await shop.session(third)
    assert passed_on.status_code == 201, passed_on.text
    assert (await shop.get(drop["id"]))["items"][0] | {"price": ""} == {
        "price": "",
        "quantity": 2,
        "held": 1,
        "sold": 1,
        "remaining": 0,
    }


async def test_a_winner_whose_session_expires_unpaid_after_the_window_passes_the_unit_on(
    shop: DropShop, clock: FrozenClock, database: Database
) -> None:
    drop = (
        await shop.drop(
            mode="raffle",
            claim_minutes=5,
            reservation_minutes=10,
            per_customer_limit=None,
            items=[{"price": shop.price, "quantity": 1}],
        )
    ).json()
    clock.set(OPENS)
    for email in EMAILS[:3]:
        await enter(shop, drop["id"], email)
    clock.set(CLOSES)
    await Worker(database, clock).run_once()
    record = await draw_record(shop, drop["id"])
    by_entrant = {published_entrant(drop["id"], email): email for email in EMAILS[:3]}
    order = [by_entrant[entrant] for entrant in redraw(record["seed"], record["entrants"])]

    clock.advance(timedelta(minutes=4))
    assert (await shop.session(order[0])).status_code == 201
    # The offer ran out while the session held the unit: nothing passes yet.
    clock.advance(timedelta(minutes=2))
    await Worker(database, clock).run_once()
    assert len((await draw_record(shop, drop["id"]))["offered"]) == 1
    # The session expires unpaid: the unit is back and offered to the next entrant.
    clock.advance(timedelta(minutes=8))
    await Worker(database, clock).run_once()
    record = await draw_record(shop, drop["id"])
    assert record["offered"] == [published_entrant(drop["id"], e) for e in order[:2]]
    assert (await shop.session(order[1])).status_code == 201


async def test_raffle_routes_name_what_to_fix(shop: DropShop, api: Api, clock: FrozenClock) -> None:
    first_come = (await shop.drop()).json()
    clock.set(OPENS)
    not_raffle = await enter(shop, first_come["id"], EMAILS[0])
    missing = await enter(shop, "drop_nope", EMAILS[0])
    bad_email = await enter(shop, first_come["id"], "not-an-email")
    no_draw = await api.http.get(f"/v1/drops/{first_come['id']}/draw", headers=bearer(shop.sk))
    assert (not_raffle.status_code, not_raffle.json()["type"]) == (
        409,
        PROBLEM + "drop-not-a-raffle",
    )
    assert (missing.status_code, missing.json()["type"]) == (404, PROBLEM + "drop-not-found")
    assert bad_email.status_code == 422
    assert (no_draw.status_code, no_draw.json()["type"]) == (409, PROBLEM + "drop-not-a-raffle")
