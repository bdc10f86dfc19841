"""The Stripe gateway through the real SDK against the Stripe test double, and the sandbox
gateway's matching behaviour for saved payment methods and off-session charges."""

from __future__ import annotations

import time

import pytest
import stripe

from stallholder.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    GatewayRefused,
    GatewayUnavailable,
    PaymentMethodDeclined,
    SandboxGateway,
    SavedPaymentMethod,
)
from stallholder.payments.stripe_gateway import InvalidWebhookSignature, StripeGateway
from tests.doubles.stripe_api import StripeDouble

pytestmark = pytest.mark.anyio


async def _account(gateway: StripeGateway, double: StripeDouble) -> str:
    account = await gateway.create_connected_account(
        email="studio@example.com",
        country=None,
        metadata={"creator": "cr_1"},
        idempotency_key="cr_1:connected_account:1",
    )
    double.activate_account(account)
    return account


def _request(
    account: str | None, *, payment_method: str = "pm_card_visa", key: str = "cs_1:attempt:1"
) -> ChargeRequest:
    return ChargeRequest(
        amount=3000,
        currency="usd",
        payment_method=payment_method,
        idempotency_key=key,
        application_fee_amount=267,
        connected_account=account,
        metadata={"checkout_session": "cs_1"},
    )


async def test_the_same_idempotency_key_replays_the_charge_instead_of_charging_again(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    account = await _account(stripe_gateway, stripe_double)

    first = await stripe_gateway.charge(_request(account))
    second = await stripe_gateway.charge(_request(account))

    assert first == second
    assert (first.status, first.processor_fee) == ("succeeded", 117)
    [intent] = stripe_double.of_type("payment_intent")
    assert first.reference == intent["id"]
    assert [
        (r.idempotency_key, r.is_replay)
        for r in stripe_double.requests_to("POST", "/v1/payment_intents")
    ] == [("cs_1:attempt:1", False), ("cs_1:attempt:1", True)]
    assert stripe_double.connected_balance(account) == 2733


async def test_the_same_key_with_other_parameters_is_refused_by_stripe(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    account = await _account(stripe_gateway, stripe_double)
    await stripe_gateway.charge(_request(account))

    # A bug of ours, not an outcome to record: it propagates.
    with pytest.raises(stripe.IdempotencyError, match="Keys for idempotent requests"):
        await stripe_gateway.charge(_request(account, payment_method="pm_card_mastercard"))

    assert len(stripe_double.of_type("payment_intent")) == 1


@pytest.mark.parametrize(
    ("payment_method", "expected"),
    [
        (
            "pm_card_chargeDeclined",
            ("failed", "generic_decline", "Your card was declined.", False),
        ),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            ("failed", "insufficient_funds", "Your card has insufficient funds.", False),
        ),
        (
            "pm_card_chargeDeclinedProcessingError",
            (
                "failed",
                "processing_error",
                "An error occurred while processing your card. Try again in a little bit.",
                True,
            ),
        ),
        (
            "pm_card_authenticationRequired",
            (
                "requires_action",
                "authentication_required",
                "The card needs 3-D Secure authentication.",
                False,
            ),
        ),
        (
            "pm_nope",
            ("failed", "invalid_payment_method", "No such payment_method: 'pm_nope'", False),
        ),
    ],
)
async def test_stripe_outcomes_map_to_charge_results(
    stripe_gateway: StripeGateway,
    stripe_double: StripeDouble,
    payment_method: str,
    expected: tuple[str, str, str, bool],
) -> None:
    account = await _account(stripe_gateway, stripe_double)

    result = await stripe_gateway.charge(_request(account, payment_method=payment_method))

    assert (result.status, result.decline_code, result.message, result.is_transient) == expected
    assert result.processor_fee == 0
    intents = stripe_double.of_type("payment_intent")
    assert result.reference == (intents[0]["id"] if intents else None)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_server_errors_and_rate_limits_are_transient_failures(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble, status: int
) -> None:
    account = await _account(stripe_gateway, stripe_double)
    stripe_double.fail_next_request(status)

    result = await stripe_gateway.charge(_request(account))

    assert (result.status, result.decline_code, result.is_transient, result.reference) == (
        "failed",
        "processing_error",
        True,
        None,
    )
    assert stripe_double.of_type("payment_intent") == []


async def test_an_unreachable_stripe_is_a_transient_failure(stripe_double: StripeDouble) -> None:
    gateway = StripeGateway(
        secret_key="sk_test_double",
        webhook_secret="whsec_double",
        api_base="http://127.0.0.1:9",  # discard port: nothing listens
        max_network_retries=0,
    )
    try:
        result = await gateway.charge(_request(None))
    finally:
        await gateway.aclose()

    assert (result.status, result.decline_code, result.is_transient) == (
        "failed",
        "processing_error",
        True,
    )
    assert result.message == (
        "Stripe could not process the payment now (APIConnectionError); try again."
    )


async def test_a_payment_method_saved_once_is_charged_off_session(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    account = await _account(stripe_gateway, stripe_double)

    saved = await stripe_gateway.save_payment_method(
        customer_reference=None,
        email="buyer@example.com",
        payment_method="pm_card_visa",
        idempotency_key="cus_1:payment_method:1",
    )
    renewal = _request(account, payment_method=saved.payment_method, key="sub_1:renewal:1")
    first = await stripe_gateway.charge_off_session(
        renewal, customer_reference=saved.customer_reference
    )
    replayed = await stripe_gateway.charge_off_session(
        renewal, customer_reference=saved.customer_reference
    )

    [customer] = stripe_double.of_type("customer")
    [method] = [m for m in stripe_double.of_type("payment_method") if m["customer"]]
    assert saved == SavedPaymentMethod(
        customer_reference=customer["id"], payment_method=method["id"]
    )
    assert [
        (r.path, r.idempotency_key, r.params)
        for r in stripe_double.requests
        if r.path in ("/v1/customers", "/v1/payment_methods/pm_card_visa/attach")
    ] == [
        ("/v1/customers", "cus_1:payment_method:1:customer", {"email": "buyer@example.com"}),
        (
            "/v1/payment_methods/pm_card_visa/attach",
            "cus_1:payment_method:1:attach",
            {"customer": customer["id"]},
        ),
    ]
    assert first == replayed
    assert (first.status, first.processor_fee) == ("succeeded", 117)
    [intent] = stripe_double.of_type("payment_intent")
    assert intent["customer"] == customer["id"]
    create = stripe_double.requests_to("POST", "/v1/payment_intents")[0]
    assert create.idempotency_key == "sub_1:renewal:1"
    assert (
        create.params["customer"],
        create.params["payment_method"],
        create.params["off_session"],
        create.params["confirm"],
        create.params["application_fee_amount"],
    ) == (customer["id"], method["id"], "true", "true", "267")


async def test_an_existing_customer_gets_another_payment_method(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    first = await stripe_gateway.save_payment_method(
        customer_reference=None,
        email="buyer@example.com",
        payment_method="pm_card_visa",
        idempotency_key="cus_1:payment_method:1",
    )
    second = await stripe_gateway.save_payment_method(
        customer_reference=first.customer_reference,
        email="buyer@example.com",
        payment_method="pm_card_mastercard",
        idempotency_key="cus_1:payment_method:2",
    )

    assert second.customer_reference == first.customer_reference
    assert second.payment_method != first.payment_method
    assert len(stripe_double.of_type("customer")) == 1


@pytest.mark.parametrize(
    ("payment_method", "decline_code"),
    [
        ("pm_card_authenticationRequired", "authentication_required"),
        ("pm_card_chargeCustomerFail", "generic_decline"),
    ],
)
async def test_an_off_session_charge_that_needs_the_buyer_fails(
    stripe_gateway: StripeGateway,
    stripe_double: StripeDouble,
    payment_method: str,
    decline_code: str,
) -> None:
    account = await _account(stripe_gateway, stripe_double)
    saved = await stripe_gateway.save_payment_method(
        customer_reference=None,
        email="buyer@example.com",
        payment_method=payment_method,
        idempotency_key="cus_1:payment_method:1",
    )

    result = await stripe_gateway.charge_off_session(
        _request(account, payment_method=saved.payment_method, key="sub_1:renewal:1"),
        customer_reference=saved.customer_reference,
    )

    [intent] = stripe_double.of_type("payment_intent")
    assert result == ChargeResult(
        status="failed",
        reference=intent["id"],
        decline_code=decline_code,
        message=intent["last_payment_error"]["message"],
    )
    assert intent["status"] == "requires_payment_method"


async def test_a_card_declined_when_saved_is_refused(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    with pytest.raises(PaymentMethodDeclined) as raised:
        await stripe_gateway.save_payment_method(
            customer_reference=None,
            email="buyer@example.com",
            payment_method="pm_card_chargeDeclined",
            idempotency_key="cus_1:payment_method:1",
        )

    assert raised.value.problem()["decline_code"] == "generic_decline"
    assert [m for m in stripe_double.of_type("payment_method") if m.get("customer")] == []


async def test_refunds_reverse_in_proportion_and_refusals_are_errors(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    account = await _account(stripe_gateway, stripe_double)
    charged = await stripe_gateway.charge(_request(account))
    assert charged.reference is not None

    refund = await stripe_gateway.refund(
        charge_reference=charged.reference,
        amount=1000,
        currency="usd",
        idempotency_key="ord_1:refund:1",
    )
    with pytest.raises(GatewayRefused) as too_much:
        await stripe_gateway.refund(
            charge_reference=charged.reference,
            amount=2001,
            currency="usd",
            idempotency_key="ord_1:refund:2",
        )
    stripe_double.fail_next_request(500)
    with pytest.raises(GatewayUnavailable):
        await stripe_gateway.refund(
            charge_reference=charged.reference,
            amount=2000,
            currency="usd",
            idempotency_key="ord_1:refund:2b",
        )

    [stripe_refund] = stripe_double.of_type("refund")
    assert refund.reference == stripe_refund["id"]
    assert stripe_refund["transfer_reversal"] is not None
    assert too_much.value.problem()["gateway_code"] == "amount_too_large"
    assert stripe_double.connected_balance(account) == 2733 - 1000 + 89


async def test_webhook_signatures_are_verified_as_stripe_signs_them(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    body = stripe_double.event("charge.dispute.created", {"id": "dp_1", "object": "dispute"})

    event = stripe_gateway.verify_webhook(body, stripe_double.sign(body))

    assert (event.type, event.payload["data"]["object"]["id"]) == (
        "charge.dispute.created",
        "dp_1",
    )
    assert event.external_id == event.payload["id"]
    for signature in (
        None,
        stripe_double.sign(body, secret="whsec_other"),
        stripe_double.sign(body, timestamp=int(time.time()) - 301),
        stripe_double.sign(body + b" "),
    ):
        with pytest.raises(InvalidWebhookSignature):
            stripe_gateway.verify_webhook(body, signature)
    not_json = b"not an event"
    with pytest.raises(InvalidWebhookSignature, match="not a Stripe event"):
        stripe_gateway.verify_webhook(not_json, stripe_double.sign(not_json))


def test_the_gateway_needs_its_secrets() -> None:
    with pytest.raises(ValueError, match="secret key and a webhook signing secret"):
        StripeGateway(secret_key="", webhook_secret="whsec_x")


# The sandbox keeps the same contract -----------------------------------------------------


async def test_the_sandbox_saves_tokens_and_charges_them_off_session() -> None:
    gateway = SandboxGateway()
    saved = await gateway.save_payment_method(
        customer_reference=None,
        email="buyer@example.com",
        payment_method="tok_visa",
        idempotency_key="cus_1:payment_method:1",
    )
    request = ChargeRequest(
        amount=3000,
        currency="usd",
        payment_method=saved.payment_method,
        idempotency_key="sub_1:renewal:1",
    )

    first = await gateway.charge_off_session(request, customer_reference=saved.customer_reference)
    second = await gateway.charge_off_session(request, customer_reference=saved.customer_reference)
    needs_buyer = await gateway.charge_off_session(
        ChargeRequest(
            amount=3000,
            currency="usd",
            payment_method="tok_authenticationRequired",
            idempotency_key="sub_1:renewal:2",
        ),
        customer_reference=saved.customer_reference,
    )

    assert saved.payment_method == "tok_visa"
    assert saved.customer_reference.startswith("sbx_cus_")
    assert first == second
    assert (first.status, first.processor_fee) == ("succeeded", 117)
    assert (needs_buyer.status, needs_buyer.decline_code) == ("failed", "authentication_required")
    with pytest.raises(PaymentMethodDeclined):
        await gateway.save_payment_method(
            customer_reference=saved.customer_reference,
            email="buyer@example.com",
            payment_method="tok_chargeDeclined",
            idempotency_key="cus_1:payment_method:2",
        )


async def test_a_detached_payment_method_cannot_be_charged_again(
    stripe_gateway: StripeGateway, stripe_double: StripeDouble
) -> None:
    account = await _account(stripe_gateway, stripe_double)
    saved = await stripe_gateway.save_payment_method(
        customer_reference=None,
        email="buyer@example.com",
        payment_method="pm_card_visa",
        idempotency_key="pm_1:save",
    )

    await stripe_gateway.detach_payment_method(payment_method=saved.payment_method)
    result = await stripe_gateway.charge_off_session(
        _request(account, payment_method=saved.payment_method, key="in_1:attempt:1"),
        customer_reference=saved.customer_reference,
    )

    assert stripe_double.objects[saved.payment_method]["customer"] is None
    assert (result.status, result.decline_code) == ("failed", "invalid_payment_method")
    assert stripe_double.of_type("payment_intent") == []
    with pytest.raises(GatewayRefused) as refused:
        await stripe_gateway.detach_payment_method(payment_method=saved.payment_method)
    assert "not attached to a customer" in refused.value.detail


async def test_the_sandbox_declines_every_charge_on_charge_customer_fail_once_saved() -> None:
    gateway = SandboxGateway()
    saved = await gateway.save_payment_method(
        customer_reference=None,
        email="buyer@example.com",
        payment_method="tok_chargeCustomerFail",
        idempotency_key="pm_1:save",
    )

    off_session = await gateway.charge_off_session(
        ChargeRequest(
            amount=3000,
            currency="usd",
            payment_method=saved.payment_method,
            idempotency_key="in_1:attempt:1",
        ),
        customer_reference=saved.customer_reference,
    )

    assert saved.payment_method == "tok_chargeCustomerFail"
    assert off_session == ChargeResult(
        status="failed",
        reference=None,
        decline_code="card_declined",
        message="The card was declined.",
    )
