"""The error matrix of the core sale: every sandbox outcome, expiry, double confirms,
idempotency, cross-creator access, missing keys and malformed input each get an exact
status and problem ``type``, and none of them leaves a side effect behind."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger.models import JournalLine
from stallholder.orders.models import Order
from stallholder.payments.models import PaymentAttempt
from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio

PROBLEMS = "https://stallholder.dev/problems/"


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def problem(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/problem+json", response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert body["title"]
    assert body["detail"]
    return response.status_code, body["type"].removeprefix(PROBLEMS)


async def count(database: Database, model: type[Any]) -> int:
    async with database.unit_of_work() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def attempts(database: Database) -> list[tuple[str, str | None]]:
    async with database.unit_of_work() as session:
        rows = (await session.execute(select(PaymentAttempt).order_by(PaymentAttempt.id))).scalars()
        return [(a.status, a.decline_code) for a in rows]


@pytest.mark.parametrize(
    ("token", "decline_code", "slug"),
    [
        ("tok_chargeDeclined", "generic_decline", "payment-declined"),
        ("tok_insufficientFunds", "insufficient_funds", "payment-declined"),
        ("tok_processingError", "processing_error", "payment-processing-error"),
    ],
)
async def test_a_failed_payment_is_a_402_and_leaves_the_session_open_for_another_card(
    api: Api, database: Database, token: str, decline_code: str, slug: str
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"], quantity=2)

    failed = await api.confirm(sk, session["id"], token)

    assert problem(failed) == (402, slug)
    assert failed.json()["decline_code"] == decline_code
    reread = await api.http.get(f"/v1/checkout/sessions/{session['id']}", headers=bearer(sk))
    assert (reread.json()["status"], reread.json()["payment_status"]) == ("open", "unpaid")
    assert (await count(database, Order), await count(database, JournalLine)) == (0, 0)
    assert await attempts(database) == [("failed", decline_code)]

    paid = await api.confirm(sk, session["id"], "tok_visa")
    assert (paid.status_code, paid.json()["status"]) == (200, "complete")
    assert await attempts(database) == [("failed", decline_code), ("succeeded", None)]
    assert await count(database, Order) == 1


async def test_authentication_required_then_confirmed_completes_the_sale(
    api: Api, database: Database
) -> None:
    creator, price = await api.shop(unit_amount=1000)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])

    pending = await api.confirm(sk, session["id"], "tok_authenticationRequired")
    assert pending.status_code == 200
    assert (pending.json()["status"], pending.json()["payment_status"]) == (
        "open",
        "requires_action",
    )
    assert await count(database, Order) == 0

    done = await api.confirm(sk, session["id"], "tok_visa_3ds_confirmed")
    assert (done.status_code, done.json()["status"], done.json()["payment_status"]) == (
        200,
        "complete",
        "paid",
    )
    order = await api.http.get(f"/v1/orders/{done.json()['order']}", headers=bearer(sk))
    assert (order.json()["status"], order.json()["amount_total"]) == ("paid", 1000)
    assert [status for status, _ in await attempts(database)] == [
        "requires_action",
        "succeeded",
    ]


@pytest.mark.parametrize(
    ("payment_method", "slug"),
    [
        ("tok_unknown", "invalid-payment-method"),
        ("4242 4242 4242 4242", "card-number-rejected"),
        ("4242424242424242", "card-number-rejected"),
        ("4000-0000-0000-0002", "card-number-rejected"),
    ],
)
async def test_an_unknown_token_or_a_card_number_is_a_400_and_charges_nothing(
    api: Api, database: Database, payment_method: str, slug: str
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])

    response = await api.confirm(sk, session["id"], payment_method)

    assert problem(response) == (400, slug)
    if slug == "card-number-rejected":
        # Refused before the gateway: nothing is recorded, and the number is not echoed.
        assert "token" in response.json()["detail"]
        assert payment_method not in response.text
        assert await attempts(database) == []
    else:
        # The gateway saw the token and refused it: a failed attempt, as with a decline.
        assert [status for status, _ in await attempts(database)] == ["failed"]
    assert await count(database, Order) == 0


async def test_an_expired_session_cannot_be_paid(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])

    clock.advance(timedelta(minutes=31))
    response = await api.confirm(sk, session["id"])

    assert problem(response) == (409, "checkout-session-expired")
    reread = await api.http.get(f"/v1/checkout/sessions/{session['id']}", headers=bearer(sk))
    assert reread.json()["status"] == "expired"
    assert (await count(database, PaymentAttempt), await count(database, Order)) == (0, 0)


async def test_an_archived_price_cannot_be_bought(api: Api) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    archived = await api.http.patch(
        f"/v1/prices/{price['id']}", headers=bearer(sk), json={"active": False}
    )
    assert archived.status_code == 200

    response = await api.http.post(
        "/v1/checkout/sessions",
        headers=bearer(sk),
        json={"line_items": [{"price": price["id"], "quantity": 1}], "customer_email": "b@x.io"},
    )

    assert problem(response) == (400, "price-not-purchasable")


async def test_confirming_twice_in_a_row_charges_once_and_answers_the_same_order(
    api: Api, database: Database
) -> None:
    creator, price = await api.shop()
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])

    first = await api.confirm(sk, session["id"])
    second = await api.confirm(sk, session["id"])

    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["order"] == first.json()["order"]
    assert second.json()["status"] == "complete"
    assert await attempts(database) == [("succeeded", None)]
    assert await count(database, Order) == 1
    # Concurrent confirms: tests/integration/test_confirm_races.py


async def test_an_idempotency_key_replays_and_refuses_another_body(
    api: Api, database: Database
) -> None:
    creator, _ = await api.shop()
    headers = {**bearer(creator["secret_key"]), "Idempotency-Key": "order-42"}
    body = {"email": "ada@example.com", "name": "Ada"}

    first = await api.http.post("/v1/customers", headers=headers, json=body)
    replay = await api.http.post("/v1/customers", headers=headers, json=body)
    other = await api.http.post(
        "/v1/customers", headers=headers, json={**body, "email": "eve@example.com"}
    )
    too_long = await api.http.post(
        "/v1/customers", headers={**headers, "Idempotency-Key": "k" * 256}, json=body
    )

    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.json() == first.json()
    assert replay.headers["idempotent-replayed"] == "true"
    assert problem(other) == (409, "idempotency-key-reused")
    assert problem(too_long) == (400, "invalid-idempotency-key")
    listed = await api.http.get("/v1/customers", headers=bearer(creator["secret_key"]))
    assert [c["email"] for c in listed.json()["data"]] == ["ada@example.com"]

    # Keys belong to their caller: another creator's same key is another request.
    stranger = await api.creator(name="Other", email="o@example.com")
    theirs = await api.http.post(
        "/v1/customers",
        headers={**bearer(stranger["secret_key"]), "Idempotency-Key": "order-42"},
        json=body,
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]


JUNK: list[Any] = [
    None,
    [],
    "a string",
    12,
    {"line_items": "x"},
    {"line_items": [None]},
    {"line_items": [{"price": {"$gt": ""}, "quantity": 1}]},
    {"a": {"b": {"c": {"d": {"e": {"f": [[[[[[1]]]]]]}}}}}},
    {"display_name": "\u0000\U0001f600", "email": "a@b.c"},
    {"email": "x@example.com", "name": "n" * 100_000},
    {"order": None, "amount": "NaN"},
    {"unit_amount": 1e308, "currency": "usd", "product": "prod_x"},
    {"payment_method": ["tok_visa"]},
]
POST_ROUTES = [
    "/v1/creators",
    "/v1/customers",
    "/v1/products",
    "/v1/prices",
    "/v1/collections",
    "/v1/checkout/sessions",
    "/v1/checkout/sessions/cs_missing/confirm",
    "/v1/checkout/links",
    "/v1/refunds",
]


async def test_junk_bodies_never_cause_a_500(api: Api) -> None:
    """On both databases: PostgreSQL refuses some strings SQLite keeps (NUL)."""
    creator = await api.creator()
    for path in POST_ROUTES:
        key = ADMIN_KEY if path == "/v1/creators" else creator["secret_key"]
        for body in JUNK:
            response = await api.http.post(path, headers=bearer(key), json=body)
            assert response.status_code < 500, (path, body, response.text)
            problem(response)
        raw = await api.http.post(
            path,
            headers={**bearer(key), "Content-Type": "application/json"},
            content=b"\xff\xfe not json",
        )
        assert raw.status_code == 400, (path, raw.text)


async def test_a_nul_character_in_the_url_is_a_400(api: Api) -> None:
    creator = await api.creator()
    for path in ("/v1/products/prod_%00", "/v1/products?starting_after=prod_%00"):
        response = await api.http.get(path, headers=bearer(creator["secret_key"]))
        assert problem(response) == (400, "invalid-characters")
