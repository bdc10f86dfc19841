"""The Stripe gateway: Connect destination charges through PaymentIntents, with the SDK.

Decisions (docs/integrations.md, "Switching to Stripe", says them for operators):

- **Destination charges** (``transfer_data[destination]``). The PaymentIntent, the
  customer and its saved payment methods live on the platform account, so one buyer's
  saved card serves every creator (consolidated billing charges once across creators) and
  creators can be Express accounts that never run their own integration. Stripe debits its
  fee from the platform, so ``application_fee_amount`` is the platform fee *plus* the
  processor fee the creator bears: the creator's account receives exactly its ledger share.
- **Async calls**: the SDK's ``*_async`` methods over one httpx client (``_HttpxClient``:
  the SDK's own httpx client hands the form body to httpx as ``data=<str>``, which httpx
  0.28 deprecates with a warning on every request; ours sends it as ``content``).
- **Processor fee**: read from the charge's balance transaction (the create call expands
  ``latest_charge.balance_transaction``); only when Stripe has none yet, or it settled in
  another currency, the estimate (``fee_bps`` + ``fee_fixed`` of the charge's currency)
  stands in.
- **Consolidated charges** (ADR 0019) are *separate charges and transfers*: one platform
  PaymentIntent (no ``transfer_data``) with a ``transfer_group``, then one Transfer per
  creator of the group; a refund of one creator's part refunds the PaymentIntent and
  reverses that creator's transfer (``POST /v1/transfers/{id}/reversals``).
- Every mutating call carries the idempotency key the caller derived from our own object
  and attempt; the SDK's network retries reuse it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import stripe

from stallholder.kit.errors import InvalidRequest
from stallholder.kit.money import CARD_FIXED_FEES
from stallholder.payments.gateway import (
    CardSetup,
    ChargeRequest,
    ChargeResult,
    DisputeSnapshot,
    GatewayRefused,
    GatewayUnavailable,
    PaymentMethodDeclined,
    RefundResult,
    SavedPaymentMethod,
    SetupStatus,
    TransferReversal,
    card_rate_fee,
)

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams, SetupIntentCreateParams

WEBHOOK_TOLERANCE_SECONDS = 300
# The inbox's name for events from Stripe.
INBOX_SOURCE = "stripe"
# Stripe's standard card pricing; the operator sets their own (STALLHOLDER_STRIPE_FEE_*).
DEFAULT_FEE_BPS = 290
DEFAULT_FEE_FIXED: Mapping[str, int] = CARD_FIXED_FEES
_TRANSIENT = (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError)


class InvalidWebhookSignature(InvalidRequest):
    slug = "invalid-webhook-signature"
    title = "The webhook's Stripe-Signature does not verify"


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """An event the provider sent, verified, as it goes into the inbox."""

    external_id: str
    type: str
    payload: dict[str, Any]


class _HttpxClient(stripe.HTTPClient):
    """The SDK's asynchronous transport over one ``httpx.AsyncClient``."""

    name = "httpx"

    def __init__(self, *, timeout_seconds: float) -> None:
        super().__init__()
        self._client = httpx.AsyncClient(
            timeout=timeout_seconds, verify=ssl.create_default_context(cafile=stripe.ca_bundle_path)
        )

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        raise RuntimeError("the Stripe gateway makes asynchronous calls only")

    def close(self) -> None:
        raise RuntimeError("the Stripe gateway closes with 'await gateway.aclose()'")

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            response = await self._client.request(
                method, url, headers=dict(headers), content=post_data
            )
        except httpx.HTTPError as error:
            # The SDK retries APIConnectionError that ``should_retry`` (its constructor is
            # untyped in the stubs).
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"could not reach Stripe ({type(error).__name__})", should_retry=True
            ) from error
        return response.content, response.status_code, response.headers

    def sleep_async(self, secs: float) -> Awaitable[None]:
        return asyncio.sleep(secs)

    async def close_async(self) -> None:
        await self._client.aclose()


def _transient(error: stripe.StripeError) -> ChargeResult:
    return ChargeResult(
        status="failed",
        reference=None,
        decline_code="processing_error",
        message=f"Stripe could not process the payment now ({type(error).__name__}); try again.",
        is_transient=True,
    )


def _declined(error: stripe.CardError) -> ChargeResult:
    detail = error.error
    intent = detail.payment_intent if detail is not None else None
    decline_code = (detail.decline_code if detail is not None else None) or error.code
    if error.code == "processing_error":
        return ChargeResult(
            status="failed",
            reference=intent.id if intent is not None else None,
            decline_code="processing_error",
            message=error.user_message or "The card's issuer had an error; try again.",
            is_transient=True,
        )
    return ChargeResult(
        status="failed",
        reference=intent.id if intent is not None else None,
        decline_code=decline_code or "card_declined",
        message=error.user_message or "The card was declined.",
    )


def _rejected(error: stripe.InvalidRequestError) -> ChargeResult:
    """Stripe refused the request itself: an unknown payment method, or a creator account
    that cannot receive transfers yet."""
    about_payment_method = (error.param or "").startswith("payment_method")
    return ChargeResult(
        status="failed",
        reference=None,
        decline_code="invalid_payment_method"
        if about_payment_method
        else (error.code or "invalid_request"),
        message=error.user_message or "Stripe refused the payment.",
    )


class StripeGateway:
    """Payments through Stripe with the creator's Connect account as the destination."""

    name = "stripe"
    needs_connected_account = True

    def __init__(
        self,
        *,
        secret_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        fee_bps: int = DEFAULT_FEE_BPS,
        fee_fixed: Mapping[str, int] = DEFAULT_FEE_FIXED,
        max_network_retries: int = 2,
        timeout_seconds: float = 30.0,
    ) -> None:
        if not secret_key or not webhook_secret:
            raise ValueError("the Stripe gateway needs a secret key and a webhook signing secret")
        self.webhook_secret = webhook_secret
        self.fee_bps = fee_bps
        self.fee_fixed = fee_fixed
        self._http = _HttpxClient(timeout_seconds=timeout_seconds)
        self._stripe = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base, "connect": api_base} if api_base else None,
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    async def aclose(self) -> None:
        await self._http.close_async()

    def estimate_processor_fee(self, *, amount: int, currency: str) -> int:
        return card_rate_fee(
            amount, bps=self.fee_bps, fixed=self.fee_fixed.get(currency.lower(), 0)
        )

    # Payments ------------------------------------------------------------------------

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        return await self._create_intent(request, customer=None)

    async def charge_off_session(
        self, request: ChargeRequest, *, customer_reference: str
    ) -> ChargeResult:
        return await self._create_intent(request, customer=customer_reference)

    async def _create_intent(self, request: ChargeRequest, *, customer: str | None) -> ChargeResult:
        params: PaymentIntentCreateParams = {
            "amount": request.amount,
            "currency": request.currency,
            "payment_method": request.payment_method,
            "confirm": True,
            # Cards only: no redirect-based method, so no return_url; 3-D Secure is a
            # ``requires_action`` that Stripe.js completes on the buyer's page.
            "allowed_payment_method_types": ["card"],
            "metadata": dict(request.metadata),
            "expand": ["latest_charge.balance_transaction"],
        }
        if request.description:
            params["description"] = request.description
        if request.transfer_group is not None:
            params["transfer_group"] = request.transfer_group
        if request.connected_account is not None:
            params["transfer_data"] = {"destination": request.connected_account}
            if request.application_fee_amount:
                params["application_fee_amount"] = request.application_fee_amount
        if customer is not None:
            params["customer"] = customer
            params["off_session"] = True
        try:
            intent = await self._stripe.v1.payment_intents.create_async(
                params, {"idempotency_key": request.idempotency_key}
            )
        except stripe.CardError as error:
            return _declined(error)
        except stripe.InvalidRequestError as error:
            return _rejected(error)
        except _TRANSIENT as error:
            return _transient(error)
        return self._result(intent, request)

    async def refresh_charge(self, *, reference: str, amount: int, currency: str) -> ChargeResult:
        """The PaymentIntent as Stripe has it now: after 3-D Secure in Stripe.js it has
        ``succeeded``, still ``requires_action``, or is back at ``requires_payment_method``
        with the authentication failure in ``last_payment_error``."""
        try:
            intent = await self._stripe.v1.payment_intents.retrieve_async(
                reference, {"expand": ["latest_charge.balance_transaction"]}
            )
        except _TRANSIENT as error:
            _unavailable(error)
        request = ChargeRequest(
            amount=amount, currency=currency, payment_method="", idempotency_key=""
        )
        if intent.status in ("requires_payment_method", "canceled"):
            failure = intent.last_payment_error
            return ChargeResult(
                status="failed",
                reference=intent.id,
                decline_code=(
                    (failure.decline_code or failure.code) if failure is not None else None
                )
                or f"payment_intent_{intent.status}",
                message=(failure.message if failure is not None else None)
                or f"Stripe left the payment {intent.status}.",
            )
        return self._result(intent, request)

    def _result(self, intent: stripe.PaymentIntent, request: ChargeRequest) -> ChargeResult:
        if intent.status == "succeeded":
            return ChargeResult(
                status="succeeded",
                reference=intent.id,
                processor_fee=self._processor_fee(intent, request),
            )
        if intent.status == "requires_action":
            return ChargeResult(
                status="requires_action",
                reference=intent.id,
                decline_code="authentication_required",
                message="The card needs 3-D Secure authentication.",
                action_secret=intent.client_secret,
            )
        # With confirm=true on a card, Stripe answers succeeded, requires_action or a card
        # error; anything else is recorded as a failure that names the status.
        return ChargeResult(
            status="failed",
            reference=intent.id,
            decline_code=f"payment_intent_{intent.status}",
            message=f"Stripe left the payment {intent.status}.",
        )

    def _processor_fee(self, intent: stripe.PaymentIntent, request: ChargeRequest) -> int:
        charge = intent.latest_charge
        transaction = charge.balance_transaction if isinstance(charge, stripe.Charge) else None
        if isinstance(transaction, stripe.BalanceTransaction) and (
            transaction.currency == request.currency
        ):
            return sum(
                detail.amount
                for detail in transaction.fee_details
                if detail.type != "application_fee"
            )
        return self.estimate_processor_fee(amount=request.amount, currency=request.currency)

    async def save_payment_method(
        self,
        *,
        customer_reference: str | None,
        email: str,
        payment_method: str,
        idempotency_key: str,
    ) -> SavedPaymentMethod:
        try:
            customer = await self._customer(customer_reference, email, idempotency_key)
            method = await self._stripe.v1.payment_methods.attach_async(
                payment_method,
                {"customer": customer},
                {"idempotency_key": f"{idempotency_key}:attach"},
            )
        except stripe.CardError as error:
            detail = error.error
            raise PaymentMethodDeclined(
                error.user_message or "The card was declined.",
                decline_code=(detail.decline_code if detail is not None else None) or error.code,
            ) from error
        except stripe.InvalidRequestError as error:
            raise PaymentMethodDeclined(
                error.user_message or "Stripe refused the payment method.",
                decline_code=error.code or "invalid_request",
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        return SavedPaymentMethod(customer_reference=customer, payment_method=method.id)

    async def _customer(self, reference: str | None, email: str, idempotency_key: str) -> str:
        """The buyer's Stripe customer: ``reference``, or one created now (keyed, so a
        retry finds the same). Stripe's errors are the caller's to map."""
        if reference is not None:
            return reference
        created = await self._stripe.v1.customers.create_async(
            {"email": email}, {"idempotency_key": f"{idempotency_key}:customer"}
        )
        return str(created.id)

    async def create_card_setup(
        self,
        *,
        customer_reference: str | None,
        email: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> CardSetup:
        """A SetupIntent for ``payment_method`` on the buyer's Stripe customer, for
        off-session use, left for the buyer's browser to confirm with Stripe.js (which runs
        3-D Secure when the bank asks for it)."""
        try:
            customer = await self._customer(customer_reference, email, idempotency_key)
            params: SetupIntentCreateParams = {
                "customer": customer,
                "payment_method": payment_method,
                "usage": "off_session",
                # Cards only, as for payments: 3-D Secure runs on the buyer's page.
                "allowed_payment_method_types": ["card"],
                "metadata": metadata,
            }
            intent = await self._stripe.v1.setup_intents.create_async(
                params, {"idempotency_key": idempotency_key}
            )
        except stripe.InvalidRequestError as error:
            raise PaymentMethodDeclined(
                error.user_message or "Stripe refused the payment method.",
                decline_code=error.code or "invalid_request",
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        return _card_setup(intent)

    async def retrieve_card_setup(self, *, reference: str) -> CardSetup:
        try:
            intent = await self._stripe.v1.setup_intents.retrieve_async(reference)
        except stripe.InvalidRequestError as error:
            raise GatewayRefused(
                error.user_message or f"Stripe has no SetupIntent {reference!r}.",
                gateway_code=error.code,
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        return _card_setup(intent)

    async def detach_payment_method(self, *, payment_method: str) -> None:
        try:
            await self._stripe.v1.payment_methods.detach_async(payment_method)
        except stripe.InvalidRequestError as error:
            raise GatewayRefused(
                error.user_message or "Stripe refused to detach the payment method.",
                gateway_code=error.code,
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)

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
        is_destination_charge = transfer_reversal is None and not is_platform_charge
        try:
            refund = await self._stripe.v1.refunds.create_async(
                {
                    "payment_intent": charge_reference,
                    "amount": amount,
                    # A destination charge: the creator gives back its share, the platform
                    # its fee, in proportion. (Only destination charges take these.)
                    **(
                        {"refund_application_fee": True, "reverse_transfer": True}
                        if is_destination_charge
                        else {}
                    ),
                },
                {"idempotency_key": idempotency_key},
            )
            if refund.status not in ("failed", "canceled") and transfer_reversal is not None:
                # A platform charge paid the creator by a transfer: take its share back.
                await self._stripe.v1.transfers.reversals.create_async(
                    transfer_reversal.transfer_reference,
                    {"amount": transfer_reversal.amount, "metadata": {"refund": refund.id}},
                    {"idempotency_key": f"{idempotency_key}:reversal"},
                )
        except (stripe.InvalidRequestError, stripe.CardError) as error:
            raise GatewayRefused(
                error.user_message or "Stripe refused the refund.", gateway_code=error.code
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        if refund.status in ("failed", "canceled"):
            raise GatewayRefused(
                f"Stripe reports refund {refund.id} as {refund.status}",
                gateway_code=refund.failure_reason,
            )
        return RefundResult(reference=refund.id)

    async def transfer(
        self,
        *,
        amount: int,
        currency: str,
        destination: str,
        transfer_group: str,
        idempotency_key: str,
        metadata: dict[str, str],
    ) -> str:
        try:
            transfer = await self._stripe.v1.transfers.create_async(
                {
                    "amount": amount,
                    "currency": currency,
                    "destination": destination,
                    "transfer_group": transfer_group,
                    "metadata": metadata,
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as error:
            raise GatewayRefused(
                error.user_message or "Stripe refused the transfer.", gateway_code=error.code
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        return transfer.id

    # Connect -------------------------------------------------------------------------

    async def create_connected_account(
        self, *, email: str, country: str | None, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        try:
            account = await self._stripe.v1.accounts.create_async(
                {
                    "type": "express",
                    "email": email,
                    "capabilities": {
                        "card_payments": {"requested": True},
                        "transfers": {"requested": True},
                    },
                    "metadata": metadata,
                    **({"country": country} if country else {}),
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as error:
            raise GatewayRefused(
                error.user_message or "Stripe refused to create the account.",
                gateway_code=error.code,
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        return account.id

    async def onboarding_link(
        self, *, account_reference: str, return_url: str, refresh_url: str, idempotency_key: str
    ) -> str | None:
        try:
            link = await self._stripe.v1.account_links.create_async(
                {
                    "account": account_reference,
                    "type": "account_onboarding",
                    "return_url": return_url,
                    "refresh_url": refresh_url,
                },
                {"idempotency_key": idempotency_key},
            )
        except stripe.InvalidRequestError as error:
            raise GatewayRefused(
                error.user_message or "Stripe refused the onboarding link.",
                gateway_code=error.code,
            ) from error
        except _TRANSIENT as error:
            _unavailable(error)
        return link.url

    # Webhooks and current state -----------------------------------------------------

    def verify_webhook(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """The event in ``payload`` once ``Stripe-Signature`` verifies (300 s tolerance).

        Raises:
            InvalidWebhookSignature: a missing, wrong or stale signature, or a body that is
                not an event.
        """
        try:
            event = self._stripe.construct_event(
                payload, signature, self.webhook_secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            raise InvalidWebhookSignature(str(error)) from error
        except ValueError as error:
            raise InvalidWebhookSignature(f"the body is not a Stripe event: {error}") from error
        body: dict[str, Any] = json.loads(payload)
        return ProviderEvent(external_id=event.id, type=event.type, payload=body)

    async def retrieve_dispute(self, external_id: str) -> DisputeSnapshot:
        """The dispute as Stripe has it now (any StripeError propagates)."""
        dispute = await self._stripe.v1.disputes.retrieve_async(external_id)
        intent = dispute.payment_intent
        return DisputeSnapshot(
            external_id=dispute.id,
            payment_reference=intent if isinstance(intent, str) or intent is None else intent.id,
            amount=dispute.amount,
            currency=dispute.currency,
            reason=dispute.reason,
            status=dispute.status,
            fee=sum(
                getattr(transaction, "fee", 0) or 0
                for transaction in getattr(dispute, "balance_transactions", None) or ()
            ),
        )


def _card_setup(intent: stripe.SetupIntent) -> CardSetup:
    """A SetupIntent in our terms: ``requires_confirmation`` and ``requires_action`` wait
    for the buyer's browser (so does a new one without a payment method); after an
    attempt failed (authentication, a decline) ``requires_payment_method`` is a failure,
    as is ``canceled``."""
    customer = intent.customer
    method = intent.payment_method
    failure = intent.last_setup_error
    status: SetupStatus = "failed"
    if intent.status == "succeeded":
        status = "succeeded"
    elif intent.status in ("requires_confirmation", "requires_action") or (
        intent.status == "requires_payment_method" and failure is None
    ):
        status = "requires_action"
    return CardSetup(
        reference=intent.id,
        status=status,
        customer_reference=customer
        if isinstance(customer, str) or customer is None
        else customer.id,
        payment_method=method if isinstance(method, str) or method is None else method.id,
        metadata={
            str(key): str(value)
            for key, value in (intent.metadata.to_dict() if intent.metadata else {}).items()
        },
        action_secret=intent.client_secret if status == "requires_action" else None,
        # Stripe leaves out the error's fields that do not apply (no ``decline_code`` for
        # a failed authentication).
        decline_code=None
        if status != "failed"
        else getattr(failure, "decline_code", None)
        or getattr(failure, "code", None)
        or f"setup_intent_{intent.status}",
        message=None
        if status != "failed"
        else getattr(failure, "message", None) or f"Stripe left the SetupIntent {intent.status}.",
    )


def _unavailable(error: stripe.StripeError) -> NoReturn:
    raise GatewayUnavailable(
        f"Stripe could not be reached or had an error ({type(error).__name__}); nothing "
        "is lost by retrying: the retry carries the same idempotency key",
        retryable=True,
    ) from error
