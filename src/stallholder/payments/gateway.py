"""The payment gateway interface and the sandbox gateway.

A gateway moves money; it knows nothing of sessions or orders. Every call carries an
idempotency key derived from our own object and attempt number, so a retry after a crash
repeats the same charge instead of making a second one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

from stallholder.kit.money import apply_basis_points

ChargeStatus = Literal["succeeded", "requires_action", "failed"]


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    amount: int
    currency: str
    payment_method: str
    idempotency_key: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class ChargeResult:
    status: ChargeStatus
    reference: str | None
    processor_fee: int = 0
    decline_code: str | None = None
    message: str | None = None
    is_transient: bool = False


@dataclass(frozen=True, slots=True)
class RefundResult:
    reference: str


class Gateway(Protocol):
    name: str

    async def charge(self, request: ChargeRequest) -> ChargeResult: ...

    async def refund(
        self, *, charge_reference: str, amount: int, currency: str, idempotency_key: str
    ) -> RefundResult: ...


# The sandbox's processor fee, modelled on a typical card rate: 2.9% + 30 minor units.
SANDBOX_FEE_BPS = 290
SANDBOX_FEE_FIXED = 30


def sandbox_processor_fee(amount: int) -> int:
    return min(amount, apply_basis_points(amount, SANDBOX_FEE_BPS) + SANDBOX_FEE_FIXED)


_DECLINES: dict[str, tuple[str, str]] = {
    "tok_chargeDeclined": ("generic_decline", "The card was declined."),
    "tok_insufficientFunds": ("insufficient_funds", "The card has insufficient funds."),
}
SANDBOX_TOKENS = frozenset(
    {
        "tok_visa",
        "tok_visa_3ds_confirmed",
        "tok_authenticationRequired",
        "tok_processingError",
        *_DECLINES,
    }
)


def _reference(prefix: str, key: str) -> str:
    return f"{prefix}_{hashlib.sha256(key.encode()).hexdigest()[:24]}"


class SandboxGateway:
    """Deterministic test payments with the tokens of DESIGN.md §4.

    The same idempotency key always yields the same reference, as a real processor's
    idempotent replay would.
    """

    name = "sandbox"

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        token = request.payment_method
        reference = _reference("sbx_ch", request.idempotency_key)
        if token in ("tok_visa", "tok_visa_3ds_confirmed"):
            return ChargeResult(
                status="succeeded",
                reference=reference,
                processor_fee=sandbox_processor_fee(request.amount),
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

    async def refund(
        self, *, charge_reference: str, amount: int, currency: str, idempotency_key: str
    ) -> RefundResult:
        return RefundResult(reference=_reference("sbx_re", idempotency_key))
