"""Two confirms of one session make one charge and one order, on SQLite and PostgreSQL;
concurrent refunds never exceed the capture; after a crash between the charge and its
outcome the worker asks the gateway again with the same idempotency key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.app import create_app
from stallholder.checkout.models import CheckoutSession
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.models import JournalTransaction
from stallholder.orders import service as orders
from stallholder.orders.models import Order
from stallholder.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    MemoryChargeStore,
    RefundResult,
    SandboxGateway,
    TransferReversal,
)
from stallholder.payments.models import PaymentAttempt
from stallholder.settings import Settings
from tests.conftest import ADMIN_KEY, Api, bearer

pytestmark = pytest.mark.anyio


class HeldGateway(SandboxGateway):
    """The sandbox, remembering every call; while ``hold`` is set, the first charge and the
    first refund wait for ``release`` (an open race window, without sleeping)."""

    def __init__(self) -> None:
        super().__init__()
        self.charges: list[ChargeRequest] = []
        self.refunds: list[str] = []
        self.hold = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def _wait_if_held(self) -> None:
        if self.hold and not self.entered.is_set():
            self.entered.set()
            await self.release.wait()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        self.charges.append(request)
        await self._wait_if_held()
        return await super().charge(request)

    async def refund(
        self,
        *,
        charge_reference: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        transfer_reversal: TransferReversal | None = None,
        is_platform_charge: bool = False,
    ) -> RefundResult:
        self.refunds.append(idempotency_key)
        await self._wait_if_held()
        return await super().refund(
            charge_reference=charge_reference,
            amount=amount,
            currency=currency,
            idempotency_key=idempotency_key,
            transfer_reversal=transfer_reversal,
            is_platform_charge=is_platform_charge,
        )


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


@pytest.fixture
def gateway() -> HeldGateway:
    return HeldGateway()


@pytest.fixture
async def client(
    settings: Settings, database: Database, clock: FrozenClock, gateway: HeldGateway
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, database=database, clock=clock, gateway=gateway, run_worker=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def _count(database: Database, model: type[object], **filters: str) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        for name, value in filters.items():
            statement = statement.where(getattr(model, name) == value)
        return int((await session.execute(statement)).scalar_one())


async def _until_at_gateway(entered: asyncio.Event, request: asyncio.Task[Any]) -> None:
    """Wait until the request is inside the gateway call; a request that ends first (it
    failed before reaching the gateway) fails the test instead of hanging it."""
    at_gateway = asyncio.create_task(entered.wait())
    await asyncio.wait({at_gateway, request}, return_when=asyncio.FIRST_COMPLETED)
    at_gateway.cancel()
    assert entered.is_set(), f"the request ended before the gateway call: {request.result()}"


async def test_concurrent_confirms_charge_once(
    api: Api, database: Database, gateway: HeldGateway
) -> None:
    """Behaviour changed with ADR 0007: a confirm that finds the first one's charge still
    at the gateway answers 409 payment-in-progress instead of waiting for it."""
    creator, price = await api.shop(unit_amount=2500)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    gateway.hold = True

    first = asyncio.create_task(api.confirm(sk, session["id"]))
    await _until_at_gateway(gateway.entered, first)
    others = await asyncio.gather(*(api.confirm(sk, session["id"]) for _ in range(3)))
    gateway.release.set()
    completed = await first
    again = await api.confirm(sk, session["id"])

    assert [r.status_code for r in others] == [409, 409, 409]
    assert {r.json()["type"] for r in others} == {
        "https://stallholder.dev/problems/payment-in-progress"
    }
    assert (completed.status_code, completed.json()["status"]) == (200, "complete")
    assert (again.status_code, again.json()["order"]) == (200, completed.json()["order"])
    assert len(gateway.charges) == 1
    assert await _count(database, Order) == 1
    assert await _count(database, PaymentAttempt, status="succeeded") == 1
    assert await _count(database, PaymentAttempt) == 1
    assert await _count(database, JournalTransaction, kind="payment") == 1
    async with database.unit_of_work() as db:
        assert (await ledger.verify(db)).is_clean


async def test_payment_in_progress_is_not_kept_as_an_idempotency_keys_outcome(
    api: Api, database: Database, gateway: HeldGateway
) -> None:
    creator, price = await api.shop(unit_amount=2500)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    gateway.hold = True

    first = asyncio.create_task(api.confirm(sk, session["id"]))
    await _until_at_gateway(gateway.entered, first)
    not_yet = await api.confirm(sk, session["id"], **{"Idempotency-Key": "buyer-retry"})
    gateway.release.set()
    completed = await first
    retried = await api.confirm(sk, session["id"], **{"Idempotency-Key": "buyer-retry"})

    assert (not_yet.status_code, not_yet.headers["retry-after"]) == (409, "2")
    assert not_yet.json()["retryable"] is True
    assert (retried.status_code, retried.json()["order"]) == (200, completed.json()["order"])
    assert len(gateway.charges) == 1


async def test_concurrent_refunds_never_exceed_the_capture(
    api: Api, database: Database, gateway: HeldGateway
) -> None:
    creator, price = await api.shop(unit_amount=1000)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    order_id = (await api.confirm(sk, session["id"])).json()["order"]
    gateway.hold = True

    def refund() -> Coroutine[Any, Any, httpx.Response]:
        return api.http.post(
            "/v1/refunds", headers=bearer(sk), json={"order": order_id, "amount": 600}
        )

    first = asyncio.create_task(refund())
    await _until_at_gateway(gateway.entered, first)
    # The first refund is at the gateway: its pending 600 already counts.
    others = await asyncio.gather(refund(), refund())
    gateway.release.set()
    created = await first

    assert [r.status_code for r in others] == [400, 400]
    assert {r.json()["remaining"] for r in others} == {400}
    assert (created.status_code, created.json()["status"]) == (201, "succeeded")
    assert len(gateway.refunds) == 1
    order = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))).json()
    assert (order["amount_refunded"], order["status"]) == (600, "partially_refunded")
    async with database.unit_of_work() as db:
        assert (await ledger.verify(db)).is_clean


async def test_concurrent_requests_with_one_idempotency_key_execute_once(
    api: Api, database: Database
) -> None:
    creator, price = await api.shop()
    headers = {**bearer(creator["secret_key"]), "Idempotency-Key": "same-key"}
    body = {
        "line_items": [{"price": price["id"], "quantity": 1}],
        "customer_email": "buyer@example.com",
    }

    responses = await asyncio.gather(
        *(api.http.post("/v1/checkout/sessions", headers=headers, json=body) for _ in range(5))
    )

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert len(created) == 1
    for response in responses:
        if response.status_code == 409:
            assert response.json()["type"].endswith("/idempotency-key-in-use")
    assert await _count(database, CheckoutSession) == 1


async def test_crash_after_charge_is_resolved_by_the_worker_with_the_same_key(
    api: Api,
    database: Database,
    gateway: HeldGateway,
    clock: FrozenClock,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Behaviour changed with ADR 0007: after a failure between the charge and its outcome
    the attempt stays ``processing``; a retry is a 409 payment-in-progress, and the worker
    completes the sale by asking the gateway again under the same key."""
    creator, price = await api.shop(unit_amount=1200)
    sk = creator["secret_key"]
    session = await api.session(sk, price=price["id"])
    real = orders.create_paid_order
    calls = 0

    async def crash_once(*args: object, **kwargs: object) -> Order:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away after the charge")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(orders, "create_paid_order", crash_once)
    worker = Worker(database, clock, settings=settings, gateway=gateway)

    first = await api.confirm(sk, session["id"])
    assert first.status_code == 500
    assert first.json()["type"].endswith("/internal-error")
    retried = await api.confirm(sk, session["id"])
    assert retried.status_code == 409
    assert retried.json()["type"].endswith("/payment-in-progress")
    await worker.run_once()  # not due yet: the buyer's request may still be finishing
    assert await _count(database, Order) == 0

    clock.advance(timedelta(seconds=settings.payment_resolve_after_seconds))
    await worker.run_once()

    done = await api.confirm(sk, session["id"])
    assert (done.status_code, done.json()["status"]) == (200, "complete")
    # Both gateway calls carried one key, so the processor returned the first charge
    # instead of taking the money twice.
    assert [c.idempotency_key for c in gateway.charges] == [f"{session['id']}:attempt:1"] * 2
    assert gateway.store is not None
    assert isinstance(gateway.store, MemoryChargeStore)
    assert list(gateway.store.charges) == [f"{session['id']}:attempt:1"]
    assert await _count(database, Order) == 1
    assert await _count(database, PaymentAttempt) == 1
    async with database.unit_of_work() as db:
        assert (await ledger.verify(db)).is_clean


async def test_admin_key_is_not_a_creator(api: Api) -> None:
    response = await api.http.post(
        "/v1/products", headers=bearer(ADMIN_KEY), json={"kind": "digital", "name": "x"}
    )
    assert response.status_code == 403
