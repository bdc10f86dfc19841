"""A keyed POST's stored response commits in the same transaction as its effect, on SQLite
and PostgreSQL: a crash at either side of that one commit, a request taken over while it
still runs, and a raised error after a write each leave exactly one effect per key.
Callers are authenticated before anything is written.

The crash points are injected at the middleware's single commit
(``IdempotencyMiddleware._commit``); ``tests/e2e/test_idempotency_kill.py`` kills a real
server at random points instead."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select

from stallholder.accounts.service import KeyCache
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import READ_ONLY_OPTION, Database
from stallholder.kit.idempotency import IdempotencyKey, IdempotencyMiddleware
from stallholder.ledger import service as ledger
from stallholder.orders import service as orders
from stallholder.orders.models import Order, Refund
from stallholder.payments.gateway import SandboxGateway
from stallholder.payments.models import PaymentMethod
from stallholder.payments.service import PaymentInProgress
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio


class Crash(BaseException):
    """The process dies here: nothing after this point runs, not even ``except Exception``."""


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _count(database: Database, model: type[object]) -> int:
    async with database.read() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def _refunded(database: Database, order_id: str) -> tuple[int, list[int]]:
    async with database.read() as session:
        order = (await session.execute(select(Order).where(Order.id == order_id))).scalar_one()
        amounts = (
            await session.execute(
                select(Refund.amount).where(Refund.order_id == order_id).order_by(Refund.id)
            )
        ).scalars()
        return order.amount_refunded, list(amounts)


async def _keys(database: Database) -> list[tuple[str, bool, int | None]]:
    async with database.read() as session:
        rows = await session.execute(
            select(
                IdempotencyKey.key, IdempotencyKey.is_complete, IdempotencyKey.response_status
            ).order_by(IdempotencyKey.id)
        )
        return [(key, complete, status) for key, complete, status in rows]


async def _paid_order(api: Api) -> tuple[str, str]:
    """(secret key, order id) of a paid order of 1200."""
    creator, price = await api.shop(unit_amount=1200)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    confirmed = await api.confirm(sk, session["id"])
    assert confirmed.status_code == 200, confirmed.text
    return sk, confirmed.json()["order"]


def _refund(api: Api, sk: str, order_id: str, key: str, amount: int = 500) -> Any:
    return api.http.post(
        "/v1/refunds",
        headers={**bearer(sk), "Idempotency-Key": key},
        json={"order": order_id, "amount": amount},
    )


async def test_a_crash_right_after_the_commit_leaves_a_retry_that_replays(
    api: Api, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    sk, order_id = await _paid_order(api)
    real_commit = IdempotencyMiddleware._commit

    async def commit_then_die(self: IdempotencyMiddleware, session: Any) -> None:
        await real_commit(self, session)
        raise Crash

    monkeypatch.setattr(IdempotencyMiddleware, "_commit", commit_then_die)
    with pytest.raises(Crash):
        await _refund(api, sk, order_id, "refund-1")
    monkeypatch.undo()

    # The refund and its stored response committed together, so the record is complete.
    assert await _refunded(database, order_id) == (500, [500])
    assert await _keys(database) == [("refund-1", True, 201)]

    retry = await _refund(api, sk, order_id, "refund-1")
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    async with database.read() as session:
        refund_id = (await session.execute(select(Refund.id))).scalar_one()
        assert (await ledger.verify(session)).is_clean
    assert retry.json()["id"] == refund_id
    assert retry.json()["amount"] == 500
    assert await _refunded(database, order_id) == (500, [500])


async def test_a_crash_just_before_the_commit_leaves_nothing_and_the_retry_runs_once(
    api: Api, database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sk, order_id = await _paid_order(api)

    async def die(self: IdempotencyMiddleware, session: Any) -> None:
        raise Crash

    monkeypatch.setattr(IdempotencyMiddleware, "_commit", die)
    with pytest.raises(Crash):
        await _refund(api, sk, order_id, "refund-1")
    monkeypatch.undo()

    # The refund was recorded pending in its own short transaction before the gateway call
    # (ADR 0007); its outcome and the stored response never committed, so nothing moved on
    # our side and only the claim of the dead request is left. The retry must carry that
    # refund on (it is keyed by the request's Idempotency-Key), not begin a second one.
    assert await _refunded(database, order_id) == (0, [500])
    assert await _keys(database) == [("refund-1", False, None)]
    early = await _refund(api, sk, order_id, "refund-1")
    assert early.status_code == 409
    assert early.json()["type"].endswith("/idempotency-key-in-use")

    clock.advance(timedelta(seconds=61))  # the dead request's lock is stale: take it over
    retry = await _refund(api, sk, order_id, "refund-1")
    again = await _refund(api, sk, order_id, "refund-1")

    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == retry.json()
    assert await _refunded(database, order_id) == (500, [500])
    assert await _keys(database) == [("refund-1", True, 201)]


async def test_a_request_taken_over_while_it_runs_rolls_back_its_own_effect(
    api: Api, database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request stalls past the lock time before it refunds; a retry takes the key
    over and refunds. When the first one resumes, its refund is rolled back and it answers
    with the retry's response: one refund, whichever finishes first."""
    sk, order_id = await _paid_order(api)
    real = orders.create_refund
    answers: list[Any] = []
    calls = 0

    async def stall_then_refund(*args: Any, **kwargs: Any) -> Refund:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first request, before it touches its session
            clock.advance(timedelta(seconds=61))
            answers.append(await _refund(api, sk, order_id, "refund-1"))
        return await real(*args, **kwargs)

    monkeypatch.setattr(orders, "create_refund", stall_then_refund)
    first = await _refund(api, sk, order_id, "refund-1")

    [retry] = answers
    assert calls == 2
    assert retry.status_code == 201
    assert "idempotent-replayed" not in retry.headers
    assert first.status_code == 201
    assert first.headers["idempotent-replayed"] == "true"
    assert first.json() == retry.json()
    assert await _refunded(database, order_id) == (500, [500])
    assert await _keys(database) == [("refund-1", True, 201)]


def _open_session(api: Api, sk: str, price_id: str, key: str) -> Any:
    return api.http.post(
        "/v1/checkout/sessions",
        headers={**bearer(sk), "Idempotency-Key": key},
        json={
            "line_items": [{"price": price_id, "quantity": 1}],
            "customer_email": "b@example.com",
        },
    )


# A checkout session is created in the request's own transaction alone, so it shows what a
# raised error does to work done there. (A refund records itself pending in a short
# transaction of its own before the gateway call, ADR 0007, and is keyed by the request.)


async def test_an_error_raised_after_a_write_rolls_it_back_and_replays_the_problem(
    api: Api, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    creator, price = await api.shop(unit_amount=1200)
    sk = creator["secret_key"]
    real = checkout.create_session

    async def create_then_refuse(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise orders.OrderFullyRefunded("refused after the session was flushed")

    monkeypatch.setattr(checkout, "create_session", create_then_refuse)
    first = await _open_session(api, sk, price["id"], "session-1")
    monkeypatch.undo()
    replay = await _open_session(api, sk, price["id"], "session-1")

    assert first.status_code == 409
    assert first.json()["detail"] == "refused after the session was flushed"
    assert replay.status_code == 409
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json() == first.json()
    assert await _count(database, CheckoutSession) == 0
    assert await _keys(database) == [("session-1", True, 409)]


async def test_a_server_error_releases_the_key_and_keeps_no_effect(
    api: Api, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    creator, price = await api.shop(unit_amount=1200)
    sk = creator["secret_key"]
    real = checkout.create_session

    async def create_then_break(*args: Any, **kwargs: Any) -> Any:
        await real(*args, **kwargs)
        raise RuntimeError("a bug after the session was flushed")

    monkeypatch.setattr(checkout, "create_session", create_then_break)
    broken = await _open_session(api, sk, price["id"], "session-1")
    monkeypatch.undo()

    assert broken.status_code == 500
    assert await _keys(database) == []
    assert await _count(database, CheckoutSession) == 0
    retry = await _open_session(api, sk, price["id"], "session-1")
    assert retry.status_code == 201
    assert await _count(database, CheckoutSession) == 1


async def test_a_failed_commit_is_a_500_not_the_captured_2xx(
    api: Api, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    sk, order_id = await _paid_order(api)

    async def fail(self: IdempotencyMiddleware, session: Any) -> None:
        raise ConnectionError("the database went away at commit")

    monkeypatch.setattr(IdempotencyMiddleware, "_commit", fail)
    failed = await _refund(api, sk, order_id, "refund-1")
    monkeypatch.undo()

    assert failed.status_code == 500
    assert failed.json()["type"].endswith("/internal-error")
    assert await _keys(database) == []  # released: the retry runs the request
    # The refund recorded pending before its gateway call stays pending; nothing settled.
    assert await _refunded(database, order_id) == (0, [500])
    retry = await _refund(api, sk, order_id, "refund-1")
    assert retry.status_code == 201
    assert await _refunded(database, order_id) == (500, [500])


async def test_unauthenticated_posts_with_keys_write_no_rows(api: Api, database: Database) -> None:
    creator, price = await api.shop()
    body = {"line_items": [{"price": price["id"], "quantity": 1}]}
    for n in range(50):
        authorization = "Bearer sk_not_a_key" if n % 2 else f"Basic {n}"
        response = await api.http.post(
            "/v1/checkout/sessions",
            headers={"Authorization": authorization, "Idempotency-Key": f"key-{n}"},
            json=body,
        )
        assert response.status_code == 401, response.text
        assert response.json()["type"].endswith("/unauthenticated")
        assert response.headers["www-authenticate"] == 'Bearer realm="stallholder"'
    # A key that is too long is still a 400 for a caller with a valid key, and writes nothing.
    too_long = await api.http.post(
        "/v1/checkout/sessions",
        headers={**bearer(creator["secret_key"]), "Idempotency-Key": "k" * 256},
        json=body,
    )
    assert too_long.status_code == 400
    assert too_long.json()["type"].endswith("/invalid-idempotency-key")
    assert await _keys(database) == []


@pytest.mark.parametrize("idempotency_key", ["s-1", None])
async def test_no_transaction_of_the_request_begins_before_the_endpoint_uses_it(
    api: Api, database: Database, monkeypatch: pytest.MonkeyPatch, idempotency_key: str | None
) -> None:
    """Authenticating reads in a transaction of its own (DEFERRED on SQLite: no write
    lock). The request's unit of work begins at the endpoint's first statement, not
    before, so an endpoint may first work in short units of its own or call out with none
    open. With a key, that one unit also completes the key."""
    creator, price = await api.shop()
    begins: list[str] = []
    real = checkout.create_session

    def on_begin(connection: Any) -> None:
        is_read = connection.get_execution_options().get(READ_ONLY_OPTION)
        begins.append("read" if is_read else "write")

    async def endpoint_starts(*args: Any, **kwargs: Any) -> Any:
        begins.append("endpoint")
        return await real(*args, **kwargs)

    monkeypatch.setattr(checkout, "create_session", endpoint_starts)
    headers = bearer(creator["secret_key"])
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    # As on this process's first request with the key: it is read, not taken from the
    # process's key cache (ADR 0015).
    KeyCache.forget_creator_everywhere(creator["id"])
    event.listen(database.engine.sync_engine, "begin", on_begin)
    try:
        response = await api.http.post(
            "/v1/checkout/sessions",
            headers=headers,
            json={"line_items": [{"price": price["id"], "quantity": 1}]},
        )
    finally:
        event.remove(database.engine.sync_engine, "begin", on_begin)

    assert response.status_code == 201
    # Creating a session claims its key at the commit (ADR 0028): with a key as without,
    # authenticate, then the request's one unit of work, which also inserts the key's row.
    assert begins == ["read", "endpoint", "write"]
    if idempotency_key is not None:
        assert await _keys(database) == [("s-1", True, 201)]


async def test_a_route_that_claims_first_claims_in_the_transaction_that_authenticates(
    api: Api, database: Database
) -> None:
    """A route outside ``CLAIMS_KEY_AT_COMMIT`` (a product) authenticates the caller in the
    transaction that claims the key, then works in a unit of work that completes it."""
    creator, _ = await api.shop()
    begins: list[str] = []

    def on_begin(connection: Any) -> None:
        is_read = connection.get_execution_options().get(READ_ONLY_OPTION)
        begins.append("read" if is_read else "write")

    KeyCache.forget_creator_everywhere(creator["id"])
    event.listen(database.engine.sync_engine, "begin", on_begin)
    try:
        response = await api.http.post(
            "/v1/products",
            headers={**bearer(creator["secret_key"]), "Idempotency-Key": "p-1"},
            json={"kind": "digital", "name": "Zine"},
        )
    finally:
        event.remove(database.engine.sync_engine, "begin", on_begin)
    assert response.status_code == 201, response.text
    assert begins == ["write", "write"]
    assert await _keys(database) == [("p-1", True, 201)]


async def test_a_read_neither_waits_for_nor_sees_an_open_write(
    database: Database, clock: FrozenClock
) -> None:
    """Authentication's short read runs while another unit of work holds SQLite's one write
    lock (it begins deferred), and sees only committed rows."""
    async with database.unit_of_work() as writer:
        writer.add(
            IdempotencyKey(
                scope="caller",
                key="k",
                request_hash="h",
                created_at=clock.now(),
                locked_at=clock.now(),
            )
        )
        await writer.flush()  # the writer now holds the write lock (SQLite) and the row lock
        async with database.read() as reader:
            seen = (
                await reader.execute(select(func.count()).select_from(IdempotencyKey))
            ).scalar_one()
        assert seen == 0
    assert await _keys(database) == [("k", False, None)]


async def test_a_card_saved_again_after_a_crash_asks_the_gateway_with_the_same_key(
    api: Api, database: Database, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saving a card calls the gateway before the request's one commit; a retry after a
    crash there must not attach a second card at the gateway: its key comes from the
    request's Idempotency-Key, so a real gateway answers with the first attachment."""
    creator = await api.creator()
    sk = creator["secret_key"]
    customer = await api.http.post(
        "/v1/customers", headers=bearer(sk), json={"email": "reader@example.com"}
    )
    path = f"/v1/customers/{customer.json()['id']}/payment_methods"
    keys: list[str] = []
    real_save = SandboxGateway.save_payment_method

    async def recording(self: SandboxGateway, **kwargs: Any) -> Any:
        keys.append(kwargs["idempotency_key"])
        return await real_save(self, **kwargs)

    monkeypatch.setattr(SandboxGateway, "save_payment_method", recording)

    async def die(self: IdempotencyMiddleware, session: Any) -> None:
        raise Crash

    def save() -> Any:
        return api.http.post(
            path,
            headers={**bearer(sk), "Idempotency-Key": "card-1"},
            json={"token": "tok_visa"},
        )

    with monkeypatch.context() as crashing:
        crashing.setattr(IdempotencyMiddleware, "_commit", die)
        with pytest.raises(Crash):
            await save()
    clock.advance(timedelta(seconds=61))  # the dead request's lock is stale
    retry = await save()
    # Another card (a sandbox token is its own card: tok_visa again would be the same one).
    other = await api.http.post(
        path,
        headers={**bearer(sk), "Idempotency-Key": "card-2"},
        json={"token": "tok_chargeCustomerFail"},
    )

    assert (retry.status_code, other.status_code) == (201, 201)
    assert len(keys) == 3
    assert keys[0] == keys[1]
    assert keys[2] != keys[0]
    assert await _count(database, PaymentMethod) == 2


async def test_two_refunds_begun_under_one_request_key_at_once_make_one(
    api: Api, database: Database, clock: FrozenClock
) -> None:
    """The race a lock takeover allows: both requests under one key pass the lookup and
    begin a refund; the second is a retryable 409, not a 500, and only one is pending."""
    _, order_id = await _paid_order(api)
    async with database.read() as session:
        owner = (await session.execute(select(Order.creator_id))).scalar_one()

    async def begin() -> None:
        async with database.unit_of_work() as session:
            await orders.begin_refund(
                session,
                creator_id=owner,
                order_id=order_id,
                amount=300,
                reason=None,
                resolve_after=clock.now(),
                now=clock.now(),
                request_key="k" * 64,
            )

    await begin()
    with pytest.raises(PaymentInProgress) as raised:
        await begin()

    assert raised.value.status == 409
    assert raised.value.headers() == {"Retry-After": "2"}
    assert await _refunded(database, order_id) == (0, [300])


async def test_a_key_claimed_at_the_commit_makes_one_session_however_the_duplicates_arrive(
    api: Api, database: Database
) -> None:
    """Creating a session claims its key at the commit (ADR 0028): duplicates sent at once
    all run, but only the first commit counts; the others roll back and replay its
    response. A retry after it replays, and another body under the key is a 409."""
    creator, price = await api.shop()
    headers = {**bearer(creator["secret_key"]), "Idempotency-Key": "dup-1"}
    body = {"line_items": [{"price": price["id"], "quantity": 1}]}

    async def create(json: dict[str, Any]) -> Any:
        return await api.http.post("/v1/checkout/sessions", headers=headers, json=json)

    at_once = await asyncio.gather(*(create(body) for _ in range(4)))
    retried = await create(body)
    other = await create({"line_items": [{"price": price["id"], "quantity": 2}]})

    assert [r.status_code for r in at_once] == [201] * 4
    assert len({r.json()["id"] for r in at_once}) == 1
    assert sorted(r.headers.get("idempotent-replayed", "no") for r in at_once) == [
        "no",
        "true",
        "true",
        "true",
    ]
    assert (retried.status_code, retried.json()) == (201, at_once[0].json())
    assert retried.headers["idempotent-replayed"] == "true"
    assert (other.status_code, other.json()["type"]) == (
        409,
        "https://stallholder.dev/problems/idempotency-key-reused",
    )
    assert await _count(database, CheckoutSession) == 1
    assert await _keys(database) == [("dup-1", True, 201)]
