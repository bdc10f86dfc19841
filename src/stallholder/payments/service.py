"""Taking payments through the configured gateway and recording every attempt."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Creator
from stallholder.accounts.service import CreatorNotFound
from stallholder.kit.errors import Conflict, DomainError, InvalidRequest
from stallholder.kit.ids import new_id
from stallholder.payments.gateway import ChargeRequest, Gateway, RefundResult
from stallholder.payments.models import ConnectedAccount, PaymentAttempt

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


class CreatorNotConnected(Conflict):
    slug = "creator-not-connected"
    title = "The creator has no account at the payment gateway yet"


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


async def connected_account_for(
    session: AsyncSession, gateway: Gateway, *, creator_id: str
) -> str | None:
    """The creator's account reference at ``gateway``, if it has one."""
    return (
        await session.execute(
            select(ConnectedAccount.external_id).where(
                ConnectedAccount.creator_id == creator_id,
                ConnectedAccount.gateway == gateway.name,
            )
        )
    ).scalar_one_or_none()


async def charge(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    checkout_session_id: str,
    amount: int,
    currency: str,
    payment_method: str,
    platform_fee: int,
    estimated_processor_fee: int,
    now: datetime,
) -> PaymentAttempt:
    """Charge through ``gateway`` and record the attempt, whatever its outcome.

    The platform side keeps ``platform_fee + estimated_processor_fee`` (the application
    fee); where the gateway pays creators directly the rest goes to the creator's
    connected account. The caller holds the lock on the checkout session, so the attempt
    number (and with it the gateway idempotency key) is the same if this transaction is
    retried after a crash.

    Raises:
        CreatorNotConnected: the gateway pays creators directly and this one has no account.
    """
    connected_account = await connected_account_for(session, gateway, creator_id=creator_id)
    if gateway.needs_connected_account and connected_account is None:
        raise CreatorNotConnected(
            f"creator {creator_id} cannot take payments through {gateway.name} yet: the "
            f"platform admin connects an account with POST /v1/creators/{creator_id}/"
            "stripe_account and the creator completes its onboarding",
            creator=creator_id,
        )
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
            amount=amount,
            currency=currency,
            payment_method=payment_method,
            idempotency_key=key,
            application_fee_amount=platform_fee + estimated_processor_fee,
            connected_account=connected_account,
            metadata={"checkout_session": checkout_session_id, "creator": creator_id},
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
        action_secret=result.action_secret,
        processor_fee=result.processor_fee,
        platform_fee=platform_fee,
        estimated_processor_fee=estimated_processor_fee,
        created_at=now,
    )
    session.add(attempt)
    await session.flush()
    return attempt


async def resume_pending_charge(
    session: AsyncSession, gateway: Gateway, *, checkout_session_id: str
) -> PaymentAttempt | None:
    """The session's latest attempt, brought up to date, when it was waiting for the buyer
    to authenticate and the gateway completes authentications on the same charge (Stripe).
    None when there is no such attempt, or the gateway wants a new charge (the sandbox).

    Re-reading the charge instead of charging again means a buyer who authenticated is
    never charged twice. The caller holds the checkout session's lock.

    Raises:
        GatewayUnavailable: the gateway could not be reached; nothing changed.
    """
    latest = (
        await session.execute(
            select(PaymentAttempt)
            .where(PaymentAttempt.checkout_session_id == checkout_session_id)
            .order_by(PaymentAttempt.attempt_number.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    if latest is None or latest.status != "requires_action" or latest.gateway_reference is None:
        return None
    result = await gateway.refresh_charge(
        reference=latest.gateway_reference, amount=latest.amount, currency=latest.currency
    )
    if result is None:
        return None
    latest.status = result.status
    latest.decline_code = result.decline_code
    latest.failure_message = result.message
    latest.processor_fee = result.processor_fee
    if result.status != "requires_action":
        latest.action_secret = None
    await session.flush()
    return latest


async def refund(
    gateway: Gateway, *, charge_reference: str, amount: int, currency: str, idempotency_key: str
) -> RefundResult:
    return await gateway.refund(
        charge_reference=charge_reference,
        amount=amount,
        currency=currency,
        idempotency_key=idempotency_key,
    )


@dataclass(frozen=True, slots=True)
class Connection:
    """A creator's connected account, and where the creator completes its onboarding."""

    account: ConnectedAccount
    onboarding_url: str | None
    is_new: bool


async def connect_creator(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    country: str | None,
    return_url: str,
    refresh_url: str,
    now: datetime,
) -> Connection:
    """The creator's connected account at ``gateway``, created on the first call, with a
    fresh onboarding link on every call (links expire within minutes).

    The creator row is locked, so two concurrent calls create one account; the creation
    carries the key ``<creator>:connected_account:1``, so a retry after a crash gets the
    account the first call created.

    Raises:
        CreatorNotFound, GatewayUnavailable, GatewayRefused.
    """
    creator = (
        await session.execute(select(Creator).where(Creator.id == creator_id).with_for_update())
    ).scalar_one_or_none()
    if creator is None:
        raise CreatorNotFound(f"no creator {creator_id!r}")
    account = (
        await session.execute(
            select(ConnectedAccount).where(
                ConnectedAccount.creator_id == creator.id,
                ConnectedAccount.gateway == gateway.name,
            )
        )
    ).scalar_one_or_none()
    is_new = account is None
    if account is None:
        reference = await gateway.create_connected_account(
            email=creator.email,
            country=country,
            metadata={"creator": creator.id},
            idempotency_key=f"{creator.id}:connected_account:1",
        )
        account = ConnectedAccount(
            id=new_id("ca"),
            creator_id=creator.id,
            gateway=gateway.name,
            external_id=reference,
            created_at=now,
        )
        session.add(account)
        await session.flush()
    url = await gateway.onboarding_link(
        account_reference=account.external_id,
        return_url=return_url,
        refresh_url=refresh_url,
        idempotency_key=f"{creator.id}:account_link:{int(now.timestamp())}",
    )
    return Connection(account=account, onboarding_url=url, is_new=is_new)
