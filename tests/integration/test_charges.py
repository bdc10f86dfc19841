"""Charges as their own thing (ADR 0007), on SQLite and PostgreSQL: off-session charges on
saved methods, ``tok_chargeCustomerFail``, a crash between the gateway call and its
outcome that the worker resolves with the same key, and a slow gateway for one creator
that holds up no other creator's sale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.app import create_app
from stallholder.checkout import service as checkout
from stallholder.checkout.models import CheckoutSession
from stallholder.events.models import Event
from stallholder.jobs.worker import Worker
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeeSchedule
from stallholder.orders import service as orders
from stallholder.orders.models import Order, Refund
from stallholder.payments import methods
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeRequest, ChargeResult, SandboxGateway
from stallholder.payments.models import PaymentAttempt, SandboxCharge
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.settings import Settings
from tests import factories
from tests.conftest import T0, Api, bearer

pytestmark = pytest.mark.anyio

FEES = FeeSchedule(bps=500)
RESOLVE_AFTER = T0 + timedelta(minutes=2)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _customer(database: Database) -> tuple[str, str]:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        customer = await accounts.create_customer(
            session,
            creator_id=creator.id,
            email="buyer@example.com",
            name=None,
            time_zone="UTC",
            now=T0,
        )
        return creator.id, customer.id


async def _sandbox_charges(database: Database) -> list[tuple[str, str, bool, int]]:
    async with database.unit_of_work() as session:
        rows = await session.execute(
            select(
                SandboxCharge.idempotency_key,
                SandboxCharge.status,
                SandboxCharge.is_off_session,
                SandboxCharge.calls,
            ).order_by(SandboxCharge.idempotency_key)
        )
        return [(key, status, off, calls) for key, status, off, calls in rows]


async def _count(database: Database, model: type[Any], *where: Any) -> int:
    async with database.unit_of_work() as session:
        statement = select(func.count()).select_from(model)
        for condition in where:
            statement = statement.where(condition)
        return int((await session.execute(statement)).scalar_one())


# Off-session charges on saved methods -----------------------------------------------------


async def _until_at_gateway(entered: asyncio.Event, request: asyncio.Task[Any]) -> None:
    """Wait until the request is inside the gateway call; a request that ends first (it
    failed before reaching the gateway) fails the test instead of hanging it."""
    at_gateway = asyncio.create_task(entered.wait())
    await asyncio.wait({at_gateway, request}, return_when=asyncio.FIRST_COMPLETED)
    at_gateway.cancel()
    assert entered.is_set(), f"the request ended before the gateway call: {request.result()}"


async def test_an_off_session_charge_on_the_saved_default_method(
    database: Database, gateway: SandboxGateway
) -> None:
    creator_id, customer_id = await _customer(database)
    saved = await methods.save_payment_method(
        database, gateway, creator_id=creator_id, customer_id=customer_id, token="tok_visa", now=T0
    )
    method = saved.method

    attempt = await methods.charge_saved_method(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=None,
        purpose="invoice",
        purpose_id="in_test_1",
        amount=2500,
        currency="usd",
        platform_fee=125,
        estimated_processor_fee=103,
        resolve_after=RESOLVE_AFTER,
        now=T0,
    )

    assert (saved.is_default, saved.is_granted) == (True, True)
    assert (
        attempt.status,
        attempt.purpose,
        attempt.purpose_id,
        attempt.idempotency_key,
        attempt.is_off_session,
        attempt.saved_payment_method_id,
        attempt.gateway_customer,
        attempt.processor_fee,
        attempt.resolve_after,
    ) == (
        "succeeded",
        "invoice",
        "in_test_1",
        "in_test_1:attempt:1",
        True,
        method.id,
        method.gateway_customer,
        103,
        None,
    )
    assert method.gateway_customer.startswith("sbx_cus_")
    assert await _sandbox_charges(database) == [("in_test_1:attempt:1", "succeeded", True, 1)]


async def test_an_order_can_come_from_an_invoice_paid_off_session(
    database: Database, gateway: SandboxGateway
) -> None:
    creator_id, customer_id = await _customer(database)
    async with database.unit_of_work() as session:
        price = await factories.create_price(
            session, creator_id=creator_id, now=T0, unit_amount=1200
        )
    await methods.save_payment_method(
        database, gateway, creator_id=creator_id, customer_id=customer_id, token="tok_visa", now=T0
    )
    attempt = await methods.charge_saved_method(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=None,
        purpose="invoice",
        purpose_id="in_test_3",
        amount=2400,
        currency="usd",
        platform_fee=120,
        estimated_processor_fee=100,
        resolve_after=RESOLVE_AFTER,
        now=T0,
    )
    line = orders.LineSpec(
        price_id=price.id,
        product_id=price.product_id,
        variant_id="var_x",
        sku="MUG",
        description="Moon mug",
        quantity=2,
        unit_amount=1200,
    )

    async with database.unit_of_work() as session:
        with pytest.raises(ValueError, match="one checkout session or one invoice"):
            await orders.create_paid_order(
                session,
                creator_id=creator_id,
                customer_id=customer_id,
                customer_email="buyer@example.com",
                attempt=attempt,
                lines=[line],
                now=T0,
            )
        order = await orders.create_paid_order(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            customer_email="buyer@example.com",
            attempt=attempt,
            lines=[line],
            now=T0,
            invoice_id="in_test_3",
        )
    async with database.unit_of_work() as session:
        assert (order.invoice_id, order.checkout_session_id, order.amount_total) == (
            "in_test_3",
            None,
            2400,
        )
        assert (order.platform_fee, order.processor_fee) == (120, 100)
        assert (await ledger.verify(session)).is_clean


async def test_charge_customer_fail_saves_fine_and_every_off_session_charge_is_declined(
    database: Database, gateway: SandboxGateway
) -> None:
    creator_id, customer_id = await _customer(database)
    saved = await methods.save_payment_method(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token="tok_chargeCustomerFail",
        now=T0,
    )
    method = saved.method

    attempts = [
        await methods.charge_saved_method(
            database,
            gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=method.id,
            purpose="wallet_top_up",
            purpose_id="wtu_1",
            amount=1000,
            currency="usd",
            platform_fee=0,
            estimated_processor_fee=59,
            resolve_after=RESOLVE_AFTER,
            now=T0,
        )
        for _ in range(2)
    ]

    assert (method.gateway_reference, saved.is_default) == ("tok_chargeCustomerFail", True)
    assert [(a.status, a.decline_code, a.idempotency_key) for a in attempts] == [
        ("failed", "card_declined", "wtu_1:attempt:1"),
        ("failed", "card_declined", "wtu_1:attempt:2"),
    ]
    assert payments.failure_error(attempts[0]).problem()["decline_code"] == "card_declined"
    assert await _sandbox_charges(database) == [
        ("wtu_1:attempt:1", "failed", True, 1),
        ("wtu_1:attempt:2", "failed", True, 1),
    ]


async def test_a_customer_without_a_default_or_a_detached_method_cannot_be_charged(
    database: Database, gateway: SandboxGateway
) -> None:
    creator_id, customer_id = await _customer(database)
    saved = await methods.save_payment_method(
        database, gateway, creator_id=creator_id, customer_id=customer_id, token="tok_visa", now=T0
    )
    method = saved.method
    await methods.detach_payment_method(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        payment_method_id=method.id,
        now=T0,
    )

    def charge(payment_method_id: str | None) -> Any:
        return methods.charge_saved_method(
            database,
            gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
            purpose="invoice",
            purpose_id="in_test_2",
            amount=500,
            currency="usd",
            platform_fee=0,
            estimated_processor_fee=45,
            resolve_after=RESOLVE_AFTER,
            now=T0,
        )

    with pytest.raises(methods.NoDefaultPaymentMethod):
        await charge(None)
    with pytest.raises(methods.PaymentMethodNotFound):
        await charge(method.id)
    assert await _count(database, PaymentAttempt) == 0
    assert await _sandbox_charges(database) == []


# A crash between the gateway call and the outcome ---------------------------------------


async def _open_sale(database: Database) -> tuple[str, str]:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        price = await factories.create_price(session, creator_id=creator.id, now=T0)
        sale = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0
        )
        return creator.id, sale.id


async def test_a_crash_after_the_charge_is_completed_by_the_worker_with_one_charge(
    database: Database, gateway: SandboxGateway, clock: FrozenClock, settings: Settings
) -> None:
    creator_id, session_id = await _open_sale(database)
    # Steps 1 and 2 of a confirm, then the process dies before step 3.
    async with database.unit_of_work() as session:
        start = await checkout.begin_confirm(
            session,
            gateway,
            creator_id=creator_id,
            session_id=session_id,
            payment_method="tok_visa",
            client_secret=None,
            customer_email=None,
            default_fees=FEES,
            resolve_after=T0 + settings.payment_resolve_after(),
            now=T0,
        )
    assert start.call is not None
    charged = await payments.call_gateway(gateway, start.call)
    assert charged.status == "succeeded"

    # After the restart: a new gateway object, the same database.
    restarted = SandboxGateway(DatabaseChargeStore(database))
    with pytest.raises(payments.PaymentInProgress):
        await checkout.confirm_session(
            database,
            restarted,
            creator_id=creator_id,
            session_id=session_id,
            payment_method="tok_visa",
            client_secret=None,
            customer_email=None,
            default_fees=FEES,
            base_url="http://testserver",
            resolve_after=T0 + settings.payment_resolve_after(),
            now=T0,
        )
    worker = Worker(database, clock, settings=settings, gateway=restarted)
    await worker.run_once()
    assert await _count(database, Order) == 0  # not due yet
    clock.advance(settings.payment_resolve_after())
    await worker.run_once()
    await worker.run_once()  # nothing more to do

    async with database.unit_of_work() as session:
        sale = await session.get(CheckoutSession, session_id)
        assert sale is not None
        assert (sale.status, sale.payment_status) == ("complete", "paid")
        attempt = (await session.execute(select(PaymentAttempt))).scalar_one()
        assert (attempt.status, attempt.gateway_reference, attempt.resolve_after) == (
            "succeeded",
            charged.reference,
            None,
        )
        order = (await session.execute(select(Order))).scalar_one()
        assert (order.checkout_session_id, order.payment_attempt_id, order.amount_total) == (
            session_id,
            attempt.id,
            4800,
        )
        report = await ledger.verify(session)
        assert report.is_clean, report
        completed = await session.execute(
            select(func.count()).where(Event.type == "checkout.session.completed")
        )
        assert completed.scalar_one() == 1
    # One charge at the gateway, asked for twice under one key.
    assert await _sandbox_charges(database) == [(f"{session_id}:attempt:1", "succeeded", False, 2)]


async def test_a_crash_after_the_refund_call_is_finished_by_the_worker(
    database: Database, gateway: SandboxGateway, clock: FrozenClock, settings: Settings
) -> None:
    creator_id, session_id = await _open_sale(database)
    outcome = await checkout.confirm_session(
        database,
        gateway,
        creator_id=creator_id,
        session_id=session_id,
        payment_method="tok_visa",
        client_secret=None,
        customer_email=None,
        default_fees=FEES,
        base_url="http://testserver",
        resolve_after=RESOLVE_AFTER,
        now=T0,
    )
    assert outcome.session.order_id is not None
    async with database.unit_of_work() as session:
        call = await orders.begin_refund(
            session,
            creator_id=creator_id,
            order_id=outcome.session.order_id,
            amount=1000,
            reason=None,
            resolve_after=RESOLVE_AFTER,
            now=T0,
        )
    await orders.call_refund(gateway, call)  # the process dies before recording it

    with pytest.raises(orders.RefundTooLarge):  # the pending 1000 counts against 4800
        await orders.create_refund(
            database,
            gateway,
            creator_id=creator_id,
            order_id=outcome.session.order_id,
            amount=4000,
            reason=None,
            resolve_after=RESOLVE_AFTER,
            now=T0,
        )
    clock.advance(timedelta(minutes=2))
    await Worker(database, clock, settings=settings, gateway=gateway).run_once()

    async with database.unit_of_work() as session:
        refund = (await session.execute(select(Refund))).scalar_one()
        assert (refund.status, refund.amount, refund.idempotency_key, refund.resolve_after) == (
            "succeeded",
            1000,
            f"{outcome.session.order_id}:refund:1",
            None,
        )
        order = await session.get(Order, outcome.session.order_id)
        assert order is not None
        assert (order.amount_refunded, order.status) == (1000, "partially_refunded")
        assert (await ledger.verify(session)).is_clean


# A slow gateway for one creator ----------------------------------------------------------


class OneSlowCreatorGateway(SandboxGateway):
    """The sandbox, but a charge for ``slow_creator`` waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.slow_creator: str | None = None
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        if request.metadata.get("creator") == self.slow_creator:
            self.entered.set()
            await self.release.wait()
        return await super().charge(request)


@pytest.fixture
def slow_gateway() -> OneSlowCreatorGateway:
    return OneSlowCreatorGateway()


@pytest.fixture
async def client(
    settings: Settings,
    database: Database,
    clock: FrozenClock,
    slow_gateway: OneSlowCreatorGateway,
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings, database=database, clock=clock, gateway=slow_gateway, run_worker=False
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_a_gateway_stuck_on_one_creators_charge_holds_up_no_other_creators_sale(
    api: Api, slow_gateway: OneSlowCreatorGateway, database: Database
) -> None:
    slow, slow_price = await api.shop(unit_amount=1500)
    fast, fast_price = await api.shop(unit_amount=2200)
    slow_gateway.slow_creator = slow["id"]
    slow_session = await api.session(slow["secret_key"], price=slow_price["id"])

    stuck = asyncio.create_task(api.confirm(slow["secret_key"], slow_session["id"]))
    await _until_at_gateway(slow_gateway.entered, stuck)
    # While creator A's charge is at the gateway, creator B sells from start to finish.
    fast_session = await api.session(fast["secret_key"], price=fast_price["id"])
    fast_confirm = await api.confirm(fast["secret_key"], fast_session["id"])
    waiting = await api.http.get(
        f"/v1/checkout/sessions/{slow_session['id']}", headers=bearer(slow["secret_key"])
    )
    assert not stuck.done()
    slow_gateway.release.set()
    slow_confirm = await stuck

    assert (fast_confirm.status_code, fast_confirm.json()["status"]) == (200, "complete")
    assert (waiting.json()["status"], waiting.json()["payment_status"]) == ("open", "processing")
    assert (slow_confirm.status_code, slow_confirm.json()["status"]) == (200, "complete")
    assert await _count(database, Order) == 2
    async with database.unit_of_work() as session:
        assert (await ledger.verify(session)).is_clean


# Many outcomes at once (a charge batch's step 3) ---------------------------------------------


async def test_many_outcomes_are_recorded_at_once_and_only_over_the_status_they_replace(
    database: Database,
) -> None:
    creator_id, _customer_id = await _customer(database)
    gateway = SandboxGateway()
    async with database.unit_of_work() as session:
        attempts = [
            await payments.begin_attempt(
                session,
                gateway,
                creator_id=creator_id,
                purpose="invoice",
                purpose_id=f"in_{n}",
                amount=300 + n,
                currency="usd",
                payment_method="pm_card_visa",
                platform_fee=0,
                estimated_processor_fee=39,
                resolve_after=RESOLVE_AFTER,
                now=T0,
            )
            for n in range(4)
        ]
        calls = [payments.gateway_call_for(attempt) for attempt in attempts]
    answers = [
        ChargeResult(status="succeeded", reference="ch_0", processor_fee=39),
        ChargeResult(
            status="failed", reference=None, decline_code="card_declined", message="Declined."
        ),
        ChargeResult(
            status="requires_action",
            reference="ch_2",
            decline_code="authentication_required",
            action_secret="secret_2",
        ),
        ChargeResult(status="succeeded", reference="ch_3", processor_fee=40),
    ]
    # The settling worker recorded the last one first: the batch must not record it again.
    async with database.unit_of_work() as session:
        first = await payments.record_outcome(
            session,
            call=calls[3],
            result=ChargeResult(status="failed", reference=None, message="Gone."),
        )
        assert first is not None
    async with database.unit_of_work() as session:
        recorded = await payments.record_outcomes(session, list(zip(calls, answers, strict=True)))
        assert sorted(recorded) == sorted(attempt.id for attempt in attempts[:3])
        assert recorded[attempts[0].id].status == "succeeded"
        # An attempt named twice is refused, not answered by either answer at random.
        with pytest.raises(ValueError, match="more than once"):
            await payments.record_outcomes(session, [(calls[3], answers[3])] * 2)
    async with database.unit_of_work() as session:
        rows = (
            await session.execute(
                select(
                    PaymentAttempt.purpose_id,
                    PaymentAttempt.status,
                    PaymentAttempt.gateway_reference,
                    PaymentAttempt.decline_code,
                    PaymentAttempt.failure_message,
                    PaymentAttempt.processor_fee,
                    PaymentAttempt.action_secret,
                    PaymentAttempt.resolve_after,
                ).order_by(PaymentAttempt.purpose_id)
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("in_0", "succeeded", "ch_0", None, None, 39, None, None),
        ("in_1", "failed", None, "card_declined", "Declined.", 0, None, None),
        (
            "in_2",
            "requires_action",
            "ch_2",
            "authentication_required",
            None,
            0,
            "secret_2",
            None,
        ),
        ("in_3", "failed", None, None, "Gone.", 0, None, None),
    ]
