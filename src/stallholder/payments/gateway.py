"""The payment gateway interface and the sandbox gateway.

A gateway moves money; it knows nothing of sessions or orders. Every call that changes
something carries an idempotency key derived from our own object and attempt number, so
a retry after a crash repeats the same call instead of making a second one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from stallholder.kit.errors import DomainError
from stallholder.kit.money import CARD_FIXED_FEES, apply_basis_points

ChargeStatus = Literal["succeeded", "requires_action", "failed"]


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    """One charge. ``application_fee_amount`` is what the platform side keeps of
    ``amount`` (its fee and the processing cost the creator bears); the rest goes to the
    creator's ``connected_account`` when the gateway pays creators directly (Stripe Connect).
    """

    amount: int
    currency: str
    payment_method: str
    idempotency_key: str
    description: str = ""
    application_fee_amount: int = 0
    connected_account: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # A platform charge whose money goes to creators by transfers afterwards (a
    # consolidated charge, ADR 0019): Stripe's ``transfer_group`` ties them together.
    transfer_group: str | None = None


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: ChargeStatus
    reference: str | None
    processor_fee: int = 0
    decline_code: str | None = None
    message: str | None = None
    is_transient: bool = False
    # With ``requires_action``: what the buyer's browser needs to authenticate (Stripe: the
    # PaymentIntent's client secret for Stripe.js ``handleNextAction``).
    action_secret: str | None = None


@dataclass(frozen=True, slots=True)
class RefundResult:
    reference: str


@dataclass(frozen=True, slots=True)
class TransferReversal:
    """With a refund of a platform charge that paid the creator by a transfer (a
    consolidated charge, ADR 0019): take ``amount`` back from that transfer."""

    transfer_reference: str
    amount: int


@dataclass(frozen=True, slots=True)
class SavedPaymentMethod:
    """A payment method kept at the gateway for charges without the buyer (renewals)."""

    customer_reference: str
    payment_method: str


SetupStatus = Literal["succeeded", "requires_action", "failed"]


@dataclass(frozen=True, slots=True)
class CardSetup:
    """Saving a payment method for off-session charges with the buyer present, so the
    bank can ask them to authenticate it once (Stripe: a SetupIntent).

    ``requires_action``: the buyer's browser confirms it with ``action_secret`` (Stripe.js
    ``confirmCardSetup``, 3-D Secure when the bank asks), then the server reads it again.
    ``succeeded``: ``payment_method`` is saved to ``customer_reference``. ``failed``: nothing
    is saved (``decline_code`` and ``message`` say why). ``metadata`` is what the server
    set at creation: whose setup it is.
    """

    reference: str
    status: SetupStatus
    customer_reference: str | None
    payment_method: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    action_secret: str | None = None
    decline_code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class DisputeSnapshot:
    """A dispute as the gateway reports it now."""

    external_id: str
    payment_reference: str | None
    amount: int
    currency: str
    reason: str
    status: str
    # The processor's dispute fee taken now (Stripe: the fees of the dispute's balance
    # transactions, net of any returned).
    fee: int = 0


class PaymentMethodDeclined(DomainError):
    status = 402
    slug = "payment-method-declined"
    title = "The payment method could not be saved"


class GatewayUnavailable(DomainError):
    status = 503
    slug = "payment-gateway-unavailable"
    title = "The payment gateway could not be reached; it is safe to retry"


class GatewayRefused(DomainError):
    status = 409
    slug = "payment-gateway-refused"
    title = "The payment gateway refused the request"


class Gateway(Protocol):
    name: str
    # Whether charges must name the creator's connected account (Stripe Connect).
    needs_connected_account: bool

    def estimate_processor_fee(self, *, amount: int, currency: str) -> int:
        """The processor's fee on ``amount``, known before charging (exact for the sandbox)."""
        ...

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge on-session: the buyer is present and may be asked to authenticate."""
        ...

    async def refresh_charge(
        self, *, reference: str, amount: int, currency: str
    ) -> ChargeResult | None:
        """The current outcome of a charge that was waiting for the buyer to authenticate
        (``requires_action``), or None where the gateway completes an authentication with a
        new charge instead (the sandbox: confirm again with ``tok_visa_3ds_confirmed``).

        Raises:
            GatewayUnavailable: the gateway could not be reached; nothing changed.
        """
        ...

    async def charge_off_session(
        self, request: ChargeRequest, *, customer_reference: str
    ) -> ChargeResult:
        """Charge a saved payment method without the buyer (renewals).

        A charge that would need the buyer to authenticate fails with the decline code
        ``authentication_required`` instead of waiting for an action.
        """
        ...

    async def save_payment_method(
        self,
        *,
        customer_reference: str | None,
        email: str,
        payment_method: str,
        idempotency_key: str,
    ) -> SavedPaymentMethod:
        """Keep ``payment_method`` for off-session charges, creating the gateway's customer
        when ``customer_reference`` is None.

        Raises:
            PaymentMethodDeclined: the gateway refused the payment method.
            GatewayUnavailable: the gateway could not be reached.
        """
        ...

    async def create_card_setup(
        self,
        *,
        customer_reference: str | None,
        email: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> CardSetup:
        """Begin saving ``payment_method`` with the buyer present (creating the gateway's
        customer when ``customer_reference`` is None). The same ``idempotency_key`` gives
        the same setup back.

        Raises:
            PaymentMethodDeclined: the gateway refused the payment method.
            GatewayUnavailable: the gateway could not be reached.
        """
        ...

    async def retrieve_card_setup(self, *, reference: str) -> CardSetup:
        """A setup as the gateway has it now.

        Raises:
            GatewayRefused: the gateway knows no such setup.
            GatewayUnavailable: the gateway could not be reached.
        """
        ...

    async def detach_payment_method(self, *, payment_method: str) -> None:
        """Stop keeping a saved payment method: it can no longer be charged.

        Raises:
            GatewayRefused: the gateway does not know it as a saved method.
            GatewayUnavailable: the gateway could not be reached.
        """
        ...

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
        """Refund ``amount`` of a charge. A destination charge takes the creator's part back
        with it; a platform charge that paid the creator by a transfer names that transfer
        and the creator's part in ``transfer_reversal`` (reversed after the refund); one
        that has not paid the creator yet (``is_platform_charge`` and no reversal) is
        refunded alone: the transfer, when it is made, is smaller by the creator's part.

        Raises GatewayRefused or GatewayUnavailable when the refund did not happen."""
        ...

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
        """Pay ``amount`` of the platform's balance to a creator's connected account (the
        creator's part of a consolidated charge); returns the transfer's reference.

        Raises:
            GatewayRefused: the gateway refused the transfer.
            GatewayUnavailable: the gateway could not be reached; nothing changed.
        """
        ...

    async def create_connected_account(
        self, *, email: str, country: str | None, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        """A new connected account for a creator, by its reference at the gateway."""
        ...

    async def onboarding_link(
        self, *, account_reference: str, return_url: str, refresh_url: str, idempotency_key: str
    ) -> str | None:
        """Where the creator completes the account's onboarding (None: nothing to do)."""
        ...

    async def retrieve_dispute(self, external_id: str) -> DisputeSnapshot:
        """The dispute as the gateway has it now (for its inbound events).

        Raises:
            GatewayRefused: the gateway has no disputes (the sandbox).
        """
        ...

    async def aclose(self) -> None:
        """Release the gateway's connections."""
        ...


# The sandbox's processor fee, modelled on a typical card rate: 2.9% plus the fixed part in
# the charge's own currency (30 cents in usd, 25 in eur, nothing in jpy: CARD_FIXED_FEES).
SANDBOX_FEE_BPS = 290
SANDBOX_FEE_FIXED: Mapping[str, int] = CARD_FIXED_FEES


def card_rate_fee(amount: int, *, bps: int, fixed: int) -> int:
    """``bps`` of ``amount`` plus ``fixed``, never more than ``amount``."""
    return min(amount, apply_basis_points(amount, bps) + fixed)


def sandbox_processor_fee(amount: int, currency: str) -> int:
    return card_rate_fee(
        amount, bps=SANDBOX_FEE_BPS, fixed=SANDBOX_FEE_FIXED.get(currency.lower(), 0)
    )


_DECLINES: dict[str, tuple[str, str]] = {
    "tok_chargeDeclined": ("generic_decline", "The card was declined."),
    "tok_insufficientFunds": ("insufficient_funds", "The card has insufficient funds."),
}
# Saves to a customer fine; every charge on it afterwards is declined (dunning tests).
CUSTOMER_FAIL_TOKEN = "tok_chargeCustomerFail"  # noqa: S105
SANDBOX_TOKENS = frozenset(
    {
        "tok_visa",
        "tok_visa_3ds_confirmed",
        "tok_authenticationRequired",
        "tok_processingError",
        CUSTOMER_FAIL_TOKEN,
        *_DECLINES,
    }
)


def _reference(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:24]}"


class ChargeStore(Protocol):
    """Where the sandbox keeps what it charged, by idempotency key (a processor's memory)."""

    async def remember(
        self, request: ChargeRequest, result: ChargeResult, *, is_off_session: bool
    ) -> ChargeResult:
        """Count a call with the request's key and return the result stored for it:
        ``result`` for a new key, the first stored result for a known one (also when two
        calls with one key race)."""
        ...


class MemoryChargeStore:
    """A ``ChargeStore`` in this process only (the default; tests that count charges)."""

    def __init__(self) -> None:
        self.charges: dict[str, ChargeResult] = {}
        self.calls: dict[str, int] = {}

    async def remember(
        self, request: ChargeRequest, result: ChargeResult, *, is_off_session: bool
    ) -> ChargeResult:
        key = request.idempotency_key
        self.calls[key] = self.calls.get(key, 0) + 1
        return self.charges.setdefault(key, result)


class SandboxGateway:
    """Deterministic test payments with the tokens of DESIGN.md §4.

    Like a real processor it remembers every charge by its idempotency key in its
    ``store`` and answers a repeated key with the first result, never charging twice;
    ``payments.sandbox.DatabaseChargeStore`` keeps that memory across a crash. Saved
    payment methods are the tokens themselves: a sandbox token can be charged any number
    of times.
    """

    name = "sandbox"
    needs_connected_account = False
    # Subclasses in tests may skip ``__init__``: they then charge without a memory.
    store: ChargeStore | None = None
    # Card setups made in this process (the sandbox sets a card up at once, in the
    # request that saves it).
    _setups: dict[str, CardSetup] | None = None

    def __init__(self, store: ChargeStore | None = None) -> None:
        self.store = store if store is not None else MemoryChargeStore()

    def estimate_processor_fee(self, *, amount: int, currency: str) -> int:
        return sandbox_processor_fee(amount, currency)

    async def refresh_charge(self, *, reference: str, amount: int, currency: str) -> None:
        return None

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        return await self._charge_once(request, is_off_session=False)

    async def _charge_once(self, request: ChargeRequest, *, is_off_session: bool) -> ChargeResult:
        if self.store is None:
            return self._outcome(request, is_off_session=is_off_session)
        # The outcome is a pure function of the request; the store answers a known key
        # with the first stored outcome instead.
        return await self.store.remember(
            request,
            self._outcome(request, is_off_session=is_off_session),
            is_off_session=is_off_session,
        )

    def _outcome(self, request: ChargeRequest, *, is_off_session: bool) -> ChargeResult:
        token = request.payment_method
        if is_off_session and token == "tok_authenticationRequired":  # noqa: S105
            # Nobody is there to authenticate: the renewal fails and dunning takes over.
            return ChargeResult(
                status="failed",
                reference=None,
                decline_code="authentication_required",
                message="The card needs the buyer to authenticate this payment.",
            )
        if token == CUSTOMER_FAIL_TOKEN:
            return ChargeResult(
                status="failed",
                reference=None,
                decline_code="card_declined",
                message="The card was declined.",
            )
        reference = _reference("sbx_ch", request.idempotency_key)
        if token in ("tok_visa", "tok_visa_3ds_confirmed"):
            return ChargeResult(
                status="succeeded",
                reference=reference,
                processor_fee=sandbox_processor_fee(request.amount, request.currency),
            )
        if token == "tok_authenticationRequired":  # noqa: S105
            return ChargeResult(
                status="requires_action",
                reference=None,
                decline_code="authentication_required",
                message="The card needs 3-D Secure authentication.",
            )
        if token == "tok_processingError":  # noqa: S105
            return ChargeResult(
                status="failed",
                reference=None,
                decline_code="processing_error",
                message="The processor had an error; try again.",
                is_transient=True,
            )
        if token in _DECLINES:
            code, message = _DECLINES[token]
            return ChargeResult(status="failed", reference=None, decline_code=code, message=message)
        return ChargeResult(
            status="failed",
            reference=None,
            decline_code="invalid_payment_method",
            message=f"{token!r} is not a sandbox test token.",
        )

    async def charge_off_session(
        self, request: ChargeRequest, *, customer_reference: str
    ) -> ChargeResult:
        return await self._charge_once(request, is_off_session=True)

    async def save_payment_method(
        self,
        *,
        customer_reference: str | None,
        email: str,
        payment_method: str,
        idempotency_key: str,
    ) -> SavedPaymentMethod:
        if payment_method not in SANDBOX_TOKENS:
            raise PaymentMethodDeclined(
                f"{payment_method!r} is not a sandbox test token", decline_code="invalid"
            )
        if payment_method in _DECLINES:
            code, message = _DECLINES[payment_method]
            raise PaymentMethodDeclined(message, decline_code=code)
        return SavedPaymentMethod(
            customer_reference=customer_reference or _reference("sbx_cus", idempotency_key),
            payment_method=payment_method,
        )

    async def create_card_setup(
        self,
        *,
        customer_reference: str | None,
        email: str,
        payment_method: str,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> CardSetup:
        """The sandbox asks for no authentication when a card is saved: a token that
        saves (``save_payment_method``) is set up at once; the setup is kept in this
        process for ``retrieve_card_setup``."""
        saved = await self.save_payment_method(
            customer_reference=customer_reference,
            email=email,
            payment_method=payment_method,
            idempotency_key=idempotency_key,
        )
        reference = _reference("sbx_seti", idempotency_key)
        if self._setups is None:
            self._setups = {}
        return self._setups.setdefault(
            reference,
            CardSetup(
                reference=reference,
                status="succeeded",
                customer_reference=saved.customer_reference,
                payment_method=saved.payment_method,
                metadata=dict(metadata),
            ),
        )

    async def retrieve_card_setup(self, *, reference: str) -> CardSetup:
        setup = (self._setups or {}).get(reference)
        if setup is None:
            raise GatewayRefused(f"the sandbox has no card setup {reference!r}")
        return setup

    async def detach_payment_method(self, *, payment_method: str) -> None:
        return None

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
        return RefundResult(reference=_reference("sbx_re", idempotency_key))

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
        # The sandbox pays creators from the platform's ledger; nothing moves anywhere.
        return _reference("sbx_tr", idempotency_key)

    async def create_connected_account(
        self, *, email: str, country: str | None, metadata: dict[str, str], idempotency_key: str
    ) -> str:
        return _reference("acct_sbx", idempotency_key)

    async def onboarding_link(
        self, *, account_reference: str, return_url: str, refresh_url: str, idempotency_key: str
    ) -> str | None:
        return None

    async def retrieve_dispute(self, external_id: str) -> DisputeSnapshot:
        raise GatewayRefused(f"the sandbox has no disputes; {external_id!r} is not one")

    async def aclose(self) -> None:
        return None
