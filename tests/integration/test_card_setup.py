"""Saving a card through a card setup (Stripe: a SetupIntent) with the buyer present, as
the portal does: through the real SDK against the Stripe test double, on SQLite and
PostgreSQL. The server saves a setup only when it read it from the gateway as this
customer's and succeeded; anything else saves nothing."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from stallholder.accounts import service as accounts
from stallholder.kit.db import Database
from stallholder.payments import methods
from stallholder.payments.gateway import ChargeRequest, PaymentMethodDeclined, SandboxGateway
from stallholder.payments.models import PaymentMethod, PaymentMethodGrant
from stallholder.payments.stripe_gateway import StripeGateway
from tests import factories
from tests.conftest import T0
from tests.doubles.stripe_api import StripeDouble

pytestmark = pytest.mark.anyio


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


async def _customers(database: Database, *emails: str) -> tuple[str, list[str]]:
    """A creator and one customer (each its own buyer) per address."""
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        made = [
            await accounts.create_customer(
                session,
                creator_id=creator.id,
                email=email,
                name=None,
                time_zone="Europe/Berlin",
                now=T0,
            )
            for email in emails
        ]
        return creator.id, [customer.id for customer in made]


def _confirm_in_browser(double: StripeDouble, reference: str, secret: str | None) -> str:
    """What Stripe.js ``confirmCardSetup`` sends: the publishable key and client secret."""
    answer = httpx.post(
        f"{double.base_url}/v1/setup_intents/{reference}/confirm",
        data={"key": double.publishable_key, "client_secret": secret or ""},
    )
    status: str = answer.json()["status"]
    return status


async def _saved_count(database: Database) -> tuple[int, int]:
    async with database.unit_of_work() as session:
        methods_ = (
            await session.execute(select(func.count()).select_from(PaymentMethod))
        ).scalar_one()
        grants = (
            await session.execute(select(func.count()).select_from(PaymentMethodGrant))
        ).scalar_one()
        return int(methods_), int(grants)


async def test_a_confirmed_setup_is_saved_as_the_customers_default(
    database: Database, stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    creator_id, [customer_id] = await _customers(database, "reader@example.com")

    setup = await methods.begin_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token="pm_card_visa",
    )
    [intent] = stripe_double.of_type("setup_intent")
    [customer] = stripe_double.of_type("customer")
    assert (setup.reference, setup.status, setup.action_secret) == (
        intent["id"],
        "requires_action",
        intent["client_secret"],
    )
    assert (intent["status"], intent["usage"], intent["customer"]) == (
        "requires_confirmation",
        "off_session",
        customer["id"],
    )
    assert _confirm_in_browser(stripe_double, setup.reference, setup.action_secret) == "succeeded"

    saved = await methods.finish_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        reference=setup.reference,
        now=T0,
    )

    [intent] = stripe_double.of_type("setup_intent")
    assert (saved.is_granted, saved.is_default) == (True, True)
    assert (
        saved.method.gateway,
        saved.method.gateway_reference,
        saved.method.gateway_customer,
    ) == (
        "stripe",
        intent["payment_method"],
        customer["id"],
    )
    assert stripe_double.objects[intent["payment_method"]]["customer"] == customer["id"]
    assert await _saved_count(database) == (1, 1)


async def test_a_second_submit_of_the_same_card_gets_the_same_setup_intent(
    database: Database, stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    creator_id, [customer_id] = await _customers(database, "reader@example.com")

    first = await methods.begin_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token="pm_card_visa",
    )
    second = await methods.begin_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token="pm_card_visa",
    )

    assert first == second
    assert len(stripe_double.of_type("setup_intent")) == 1
    assert len(stripe_double.of_type("customer")) == 1
    key = f"{creator_id}:setup:{customer_id}:pm_card_visa"
    assert [
        (r.idempotency_key, r.is_replay)
        for r in stripe_double.requests_to("POST", "/v1/setup_intents")
    ] == [(key, False), (key, True)]
    assert stripe_double.requests_to("POST", "/v1/setup_intents")[0].params == {
        "customer": stripe_double.of_type("customer")[0]["id"],
        "payment_method": "pm_card_visa",
        "usage": "off_session",
        "allowed_payment_method_types": ["card"],
        "metadata": {
            "creator": creator_id,
            "customer": customer_id,
            "buyer": first.metadata["buyer"],
        },
    }


async def test_a_setup_waiting_for_3ds_or_failed_is_not_saved(
    database: Database, stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    creator_id, [customer_id] = await _customers(database, "careful@example.com")
    setup = await methods.begin_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token="pm_card_authenticationRequired",
    )
    assert _confirm_in_browser(stripe_double, setup.reference, setup.action_secret) == (
        "requires_action"
    )

    # The buyer has not answered the bank's check yet (or posts the id without it).
    with pytest.raises(methods.CardSetupNotConfirmed) as waiting:
        await methods.finish_card_setup(
            database,
            stripe_gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            reference=setup.reference,
            now=T0,
        )
    assert waiting.value.status == 402
    assert waiting.value.detail == (
        "Your bank did not confirm this card, so it was not saved. Try again, or use another card."
    )
    assert waiting.value.extensions == {
        "setup": setup.reference,
        "decline_code": "setup_not_confirmed",
    }

    stripe_double.authenticate_setup(setup.reference, is_successful=False)
    with pytest.raises(methods.CardSetupNotConfirmed) as failed:
        await methods.finish_card_setup(
            database,
            stripe_gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            reference=setup.reference,
            now=T0,
        )
    assert failed.value.extensions["decline_code"] == "setup_intent_authentication_failure"
    assert await _saved_count(database) == (0, 0)
    [method] = stripe_double.of_type("payment_method")
    assert method["customer"] is None  # nothing attached at Stripe either


async def test_another_customers_setup_intent_is_refused(
    database: Database, stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    creator_id, [ana, bo] = await _customers(database, "ana@example.com", "bo@example.com")
    anas = await methods.begin_card_setup(
        database, stripe_gateway, creator_id=creator_id, customer_id=ana, token="pm_card_visa"
    )
    assert _confirm_in_browser(stripe_double, anas.reference, anas.action_secret) == "succeeded"

    # Bo posts Ana's SetupIntent (succeeded) as if it were his.
    with pytest.raises(methods.CardSetupNotFound) as refused:
        await methods.finish_card_setup(
            database,
            stripe_gateway,
            creator_id=creator_id,
            customer_id=bo,
            reference=anas.reference,
            now=T0,
        )
    assert refused.value.status == 404
    assert refused.value.detail == (
        f"customer {bo} has no card setup {anas.reference!r}; nothing was saved. Add the card again"
    )
    # And one Stripe does not know.
    with pytest.raises(methods.CardSetupNotFound):
        await methods.finish_card_setup(
            database,
            stripe_gateway,
            creator_id=creator_id,
            customer_id=bo,
            reference="seti_unknown",
            now=T0,
        )
    assert await _saved_count(database) == (0, 0)


async def test_a_setup_for_another_gateway_customer_of_the_buyer_is_refused(
    database: Database, stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    """Once the buyer has a Stripe customer, only setups on that customer are saved."""
    creator_id, [customer_id] = await _customers(database, "reader@example.com")
    first = await methods.save_payment_method(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        token="pm_card_visa",
        now=T0,
    )
    other_customer = stripe_double.objects[
        (
            await stripe_gateway.create_card_setup(
                customer_reference=None,
                email="someone@example.com",
                payment_method="pm_card_mastercard",
                metadata={
                    "creator": creator_id,
                    "customer": customer_id,
                    "buyer": first.method.buyer_id,
                },
                idempotency_key="forged",
            )
        ).reference
    ]
    _confirm_in_browser(stripe_double, other_customer["id"], other_customer["client_secret"])

    with pytest.raises(methods.CardSetupNotFound):
        await methods.finish_card_setup(
            database,
            stripe_gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            reference=other_customer["id"],
            now=T0,
        )
    assert await _saved_count(database) == (1, 1)


async def test_the_sandbox_sets_a_card_up_at_once(database: Database) -> None:
    gateway = SandboxGateway()
    creator_id, [customer_id] = await _customers(database, "reader@example.com")

    setup = await methods.begin_card_setup(
        database, gateway, creator_id=creator_id, customer_id=customer_id, token="tok_visa"
    )
    saved = await methods.finish_card_setup(
        database,
        gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        reference=setup.reference,
        now=T0,
    )

    assert (setup.status, setup.payment_method) == ("succeeded", "tok_visa")
    assert (saved.method.gateway_reference, saved.is_default) == ("tok_visa", True)
    with pytest.raises(PaymentMethodDeclined, match=r"^The card was declined\.$"):
        await methods.begin_card_setup(
            database,
            gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            token="tok_chargeDeclined",
        )
    assert await _saved_count(database) == (1, 1)


async def test_a_card_authenticated_at_setup_renews_off_session_and_one_attached_does_not(
    database: Database, stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    """Why the portal sets cards up: Stripe's "authenticate unless set up" card
    (4000 0025 0000 3155) is charged without the buyer after a SetupIntent authenticated
    it, and declined for authentication when it was only attached."""
    creator_id, [set_up, attached] = await _customers(
        database, "careful@example.com", "hasty@example.com"
    )
    setup = await methods.begin_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=set_up,
        token="pm_card_authenticationRequiredOnSetup",
    )
    assert _confirm_in_browser(stripe_double, setup.reference, setup.action_secret) == (
        "requires_action"
    )
    stripe_double.authenticate_setup(setup.reference)
    authenticated = await methods.finish_card_setup(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=set_up,
        reference=setup.reference,
        now=T0,
    )
    only_attached = await methods.save_payment_method(
        database,
        stripe_gateway,
        creator_id=creator_id,
        customer_id=attached,
        token="pm_card_authenticationRequiredOnSetup",
        now=T0,
    )

    outcomes = [
        await stripe_gateway.charge_off_session(
            ChargeRequest(
                amount=300,
                currency="usd",
                payment_method=saved.method.gateway_reference,
                idempotency_key=f"{saved.customer_id}:renewal:1",
            ),
            customer_reference=saved.method.gateway_customer,
        )
        for saved in (authenticated, only_attached)
    ]

    assert [(outcome.status, outcome.decline_code) for outcome in outcomes] == [
        ("succeeded", None),
        ("failed", "authentication_required"),
    ]
