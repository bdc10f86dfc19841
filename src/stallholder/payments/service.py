"""Taking payments through the configured gateway and recording every attempt."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.errors import DomainError, InvalidRequest
from stallholder.kit.ids import new_id
from stallholder.payments.gateway import ChargeRequest, Gateway, RefundResult
from stallholder.payments.models import PaymentAttempt

# 13 to 19 digits, optionally grouped by spaces or dashes: the shape of a card number.
_CARD_NUMBER = re.compile(r"^\s*\d(?:[ -]?\d){12,18}\s*$")
_TOKEN = re.compile(r"^(tok|pm)_[A-Za-z0-9_]{1,60}$")


class CardNumberRejected(InvalidRequest):
    slug = "card-number-rejected"
    title = "Raw card numbers are not accepted"


class InvalidPaymentMethod(InvalidRequest):
    slug = "invalid-payment-method"
    title = "Invalid payment method"


class PaymentDeclined(DomainError):
    status = 402
    slug = "payment-declined"
    title = "The payment was declined"


class PaymentProcessingError(DomainError):
    status = 402
    slug = "payment-processing-error"
    title = "The payment could not be processed; it is safe to retry"


def looks_like_card_number(value: str) -> bool:
    return bool(_CARD_NUMBER.match(value))


def check_payment_method(value: str) -> str:
    """The payment method token, or an error if it is a card number or not a token.

    Raises:
        CardNumberRejected: the value looks like a card number.
        InvalidPaymentMethod: the value is not a token.
    """
    if looks_like_card_number(value):
        raise CardNumberRejected(
            "payment_method looks like a card number; never send card data to this API. "
            "Tokenise the card with the payment gateway and send the token (e.g. 'tok_visa')"
        )
    if not _TOKEN.match(value):
        raise InvalidPaymentMethod(
            f"payment_method must be a token such as 'tok_visa' or 'pm_…', got {value[:20]!r}"
        )
    return value


def attempt_payload(attempt: PaymentAttempt) -> dict[str, Any]:
    """A payment attempt as event payloads show it (never card data: only the token name)."""
    return {
        "id": attempt.id,
        "object": "payment_attempt",
        "checkout_session": attempt.checkout_session_id,
        "attempt_number": attempt.attempt_number,
        "amount": attempt.amount,
        "currency": attempt.currency,
        "status": attempt.status,
        "decline_code": attempt.decline_code,
        "failure_message": attempt.failure_message,
        "gateway": attempt.gateway,
        "created": attempt.created_at.isoformat().replace("+00:00", "Z"),
    }


def failure_error(attempt: PaymentAttempt) -> DomainError:
    """The problem a client gets for a failed attempt."""
    message = attempt.failure_message or "The payment failed."
    if attempt.decline_code == "processing_error":
        return PaymentProcessingError(
            message, decline_code="processing_error", retryable=True, payment_attempt=attempt.id
        )
    if attempt.decline_code == "invalid_payment_method":
        return InvalidPaymentMethod(message, decline_code="invalid_payment_method")
    return PaymentDeclined(message, decline_code=attempt.decline_code, payment_attempt=attempt.id)


async def charge(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    checkout_session_id: str,
    amount: int,
    currency: str,
    payment_method: str,
    now: datetime,
) -> PaymentAttempt:
    """Charge through ``gateway`` and record the attempt, whatever its outcome.

    The caller holds the lock on the checkout session, so the attempt number (and with it
    the gateway idempotency key) is the same if this transaction is retried after a crash.
    """
    attempt_number = (
        1
        + (
            await session.execute(
                select(func.count())
                .select_from(PaymentAttempt)
                .where(PaymentAttempt.checkout_session_id == checkout_session_id)
            )
        ).scalar_one()
    )
    key = f"{checkout_session_id}:attempt:{attempt_number}"
    result = await gateway.charge(
        ChargeRequest(
            amount=amount, currency=currency, payment_method=payment_method, idempotency_key=key
        )
    )
    attempt = PaymentAttempt(
        id=new_id("pay"),
        creator_id=creator_id,
        checkout_session_id=checkout_session_id,
        attempt_number=attempt_number,
        gateway=gateway.name,
        idempotency_key=key,
        payment_method=payment_method,
        amount=amount,
        currency=currency,
        status=result.status,
        decline_code=result.decline_code,
        failure_message=result.message,
        gateway_reference=result.reference,
        processor_fee=result.processor_fee,
        created_at=now,
    )
    session.add(attempt)
    await session.flush()
    return attempt


async def refund(
    gateway: Gateway, *, charge_reference: str, amount: int, currency: str, idempotency_key: str
) -> RefundResult:
    return await gateway.refund(
        charge_reference=charge_reference,
        amount=amount,
        currency=currency,
        idempotency_key=idempotency_key,
    )
