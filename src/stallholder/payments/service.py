"""Charges for a purpose, in three short steps, and every attempt recorded.

A charge is for an amount and a purpose: a checkout session, an invoice, a wallet
top-up. It runs in three steps so that no transaction or row lock is held while the
gateway is called (ADR 0007):

1. ``begin_attempt`` (a short transaction): the attempt is recorded as ``processing``
   with its number and gateway idempotency key ``<purpose id>:attempt:<n>`` fixed.
2. ``call_gateway`` (no transaction open): the gateway charges, on-session or
   off-session.
3. ``record_outcome`` (a short transaction): the outcome replaces ``processing`` by a
   conditional update, so only one caller ever completes an attempt; the purpose's owner
   completes the sale in the same transaction.

An attempt left ``processing`` (a crash between 2 and 3) is resolved by the worker
(``payments.tasks.resolve_stale_attempts``), which asks the gateway again with the same
key: the gateway answers with the first charge instead of charging twice.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningUpdate
from sqlalchemy.sql.selectable import TextualSelect

from stallholder.accounts.models import Creator
from stallholder.accounts.service import CreatorNotFound
from stallholder.kit import work
from stallholder.kit.db import Database, session_or_unit_of_work, transaction_memo
from stallholder.kit.errors import Conflict, DomainError, InvalidRequest
from stallholder.kit.ids import new_id
from stallholder.payments.gateway import (
    ChargeRequest,
    ChargeResult,
    Gateway,
    RefundResult,
    TransferReversal,
)
from stallholder.payments.models import ConnectedAccount, PaymentAttempt

Purpose = Literal["checkout_session", "invoice", "wallet_top_up", "consolidated_charge"]
PURPOSES: tuple[Purpose, ...] = (
    "checkout_session",
    "invoice",
    "wallet_top_up",
    "consolidated_charge",
)

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


class PaymentInProgress(Conflict):
    slug = "payment-in-progress"
    title = "A payment for this is already in progress"
    retry_after_seconds = 2


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


def in_progress_error(attempt: PaymentAttempt) -> PaymentInProgress:
    """The 409 for a charge whose gateway call has not been answered yet."""
    return PaymentInProgress(
        f"payment attempt {attempt.id} is waiting for the payment gateway's answer; nothing "
        "was charged again. Send the same request again in a few seconds: you get the "
        "outcome of this payment",
        payment_attempt=attempt.id,
        retryable=True,
    )


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


@dataclass(frozen=True, slots=True)
class Payee:
    """A creator with its account reference at a gateway (None where it has none)."""

    creator: Creator
    connected_account: str | None


_PAYEES = "payments.payees"


async def read_payees(
    session: AsyncSession, gateway: Gateway, *, creator_ids: Iterable[str]
) -> None:
    """Read the payees of many creators in one statement, for the rest of this
    transaction: ``get_payee`` then answers from them (a batch of charges)."""
    wanted = sorted(set(creator_ids))
    if not wanted:
        return
    rows = await session.execute(
        select(Creator, ConnectedAccount.external_id)
        .outerjoin(
            ConnectedAccount,
            (ConnectedAccount.creator_id == Creator.id)
            & (ConnectedAccount.gateway == gateway.name),
        )
        .where(Creator.id.in_(wanted))
    )
    read: dict[tuple[str, str], Payee] = transaction_memo(session).setdefault(_PAYEES, {})
    for creator, account in rows:
        read[(gateway.name, creator.id)] = Payee(creator=creator, connected_account=account)


_PAYEE = (
    select(Creator, ConnectedAccount.external_id)
    .outerjoin(
        ConnectedAccount,
        (ConnectedAccount.creator_id == Creator.id)
        & (ConnectedAccount.gateway == bindparam("gateway")),
    )
    .where(Creator.id == bindparam("creator_id"))
)


async def get_payee(session: AsyncSession, gateway: Gateway, *, creator_id: str) -> Payee:
    """The creator and its account at ``gateway``, in one statement (none when this
    transaction read it ahead with ``read_payees``).

    Raises:
        CreatorNotFound.
    """
    read: dict[tuple[str, str], Payee] = transaction_memo(session).get(_PAYEES, {})
    found = read.get((gateway.name, creator_id))
    if found is not None:
        return found
    row = (
        await session.execute(_PAYEE, {"creator_id": creator_id, "gateway": gateway.name})
    ).one_or_none()
    if row is None:
        raise CreatorNotFound(f"no creator {creator_id!r}")
    return Payee(creator=row[0], connected_account=row[1])


# Step 1: record the attempt -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayCall:
    """Everything step 2 needs, copied out of the attempt, so the gateway call holds no
    database object, session or lock. ``kind`` is ``refresh`` for re-reading a charge
    that waited for the buyer to authenticate (3-D Secure)."""

    attempt_id: str
    creator_id: str
    purpose: str
    purpose_id: str
    kind: Literal["charge", "charge_off_session", "refresh"]
    request: ChargeRequest
    customer_reference: str | None = None
    reference: str | None = None
    # The status step 3 replaces: ``processing``, or ``requires_action`` for a refresh.
    from_status: str = "processing"


def gateway_call_for(attempt: PaymentAttempt) -> GatewayCall:
    """The gateway call an attempt stands for, rebuilt identically from its row: a retry
    sends the gateway the same request under the same key (Stripe refuses a key reused
    with other parameters)."""
    request = ChargeRequest(
        amount=attempt.amount,
        currency=attempt.currency,
        payment_method=attempt.payment_method,
        idempotency_key=attempt.idempotency_key,
        application_fee_amount=attempt.platform_fee + attempt.estimated_processor_fee,
        connected_account=attempt.connected_account,
        metadata={attempt.purpose: attempt.purpose_id, "creator": attempt.creator_id},
        # A consolidated charge pays creators by transfers tied to it (ADR 0019).
        transfer_group=attempt.purpose_id if attempt.purpose == "consolidated_charge" else None,
    )
    if attempt.status == "requires_action" or (
        attempt.status == "processing" and attempt.gateway_reference is not None
    ):
        # A charge the gateway already has: it is re-read, never made again.
        return GatewayCall(
            attempt_id=attempt.id,
            creator_id=attempt.creator_id,
            purpose=attempt.purpose,
            purpose_id=attempt.purpose_id,
            kind="refresh",
            request=request,
            reference=attempt.gateway_reference,
            from_status=attempt.status,
        )
    return GatewayCall(
        attempt_id=attempt.id,
        creator_id=attempt.creator_id,
        purpose=attempt.purpose,
        purpose_id=attempt.purpose_id,
        kind="charge_off_session" if attempt.is_off_session else "charge",
        request=request,
        customer_reference=attempt.gateway_customer,
    )


_LATEST_ATTEMPT = (
    select(PaymentAttempt)
    .where(
        PaymentAttempt.purpose == bindparam("purpose"),
        PaymentAttempt.purpose_id == bindparam("purpose_id"),
    )
    .order_by(PaymentAttempt.attempt_number.desc())
    .limit(1)
)


async def latest_attempt(
    session: AsyncSession, *, purpose: str, purpose_id: str
) -> PaymentAttempt | None:
    return (
        await session.execute(_LATEST_ATTEMPT, {"purpose": purpose, "purpose_id": purpose_id})
    ).scalar_one_or_none()


async def begin_attempt(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    purpose: Purpose,
    purpose_id: str,
    amount: int,
    currency: str,
    payment_method: str,
    platform_fee: int,
    estimated_processor_fee: int,
    resolve_after: datetime,
    now: datetime,
    gateway_customer: str | None = None,
    saved_payment_method_id: str | None = None,
    payee: Payee | None = None,
    latest_number: int | None = None,
    is_for_platform: bool = False,
    idempotency_key: str | None = None,
    flush: bool = True,
) -> PaymentAttempt:
    """Step 1: record a ``processing`` attempt; the gateway has not been called yet.

    The attempt number is the count of the purpose's earlier attempts + 1 and the gateway
    idempotency key is ``<purpose id>:attempt:<n>``. The caller holds the purpose's lock
    (the checkout session row); the unique (purpose, purpose id, number) backs it. With
    ``gateway_customer`` the charge is off-session on a method saved to that customer.
    The platform side keeps ``platform_fee + estimated_processor_fee`` (the application
    fee); where the gateway pays creators directly the rest goes to the creator's
    connected account. After ``resolve_after`` the worker may resolve the attempt.
    A caller that has already read them passes ``payee`` (from ``get_payee`` with this
    gateway) and ``latest_number`` (the purpose's highest attempt number read under its
    lock, 0 for none; attempts are numbered 1, 2, … and never deleted, so it is their
    count), and they are not read again. With ``is_for_platform`` (a wallet top-up: the
    platform holds the buyer's money) the charge names no connected account, whatever the
    gateway: nothing goes to the creator, who is only the one the buyer was with.
    ``idempotency_key`` replaces the default key where the purpose derives its own (a
    consolidated charge: ``<buyer>:<day>:<currency>:<sequence>:attempt:<n>``, ADR 0019);
    it must end with the attempt number so that each attempt has a key of its own.
    With ``flush=False`` the attempt is left to the caller's flush (which may write it with
    the caller's own changes in one statement: ``kit.flush.flush_together``).

    Raises:
        CreatorNotConnected: the gateway pays creators directly and this one has no account.
    """
    connected_account = (
        None
        if is_for_platform
        else payee.connected_account
        if payee is not None
        else await connected_account_for(session, gateway, creator_id=creator_id)
    )
    if gateway.needs_connected_account and connected_account is None and not is_for_platform:
        raise CreatorNotConnected(
            f"creator {creator_id} cannot take payments through {gateway.name} yet: the "
            f"platform admin connects an account with POST /v1/creators/{creator_id}/"
            "stripe_account and the creator completes its onboarding",
            creator=creator_id,
        )
    if latest_number is None:
        latest_number = (
            await session.execute(
                select(func.count())
                .select_from(PaymentAttempt)
                .where(PaymentAttempt.purpose == purpose, PaymentAttempt.purpose_id == purpose_id)
            )
        ).scalar_one()
    attempt_number = 1 + latest_number
    attempt = PaymentAttempt(
        id=new_id("pay"),
        creator_id=creator_id,
        purpose=purpose,
        purpose_id=purpose_id,
        attempt_number=attempt_number,
        gateway=gateway.name,
        idempotency_key=idempotency_key or f"{purpose_id}:attempt:{attempt_number}",
        payment_method=payment_method,
        saved_payment_method_id=saved_payment_method_id,
        is_off_session=gateway_customer is not None,
        gateway_customer=gateway_customer,
        connected_account=connected_account,
        amount=amount,
        currency=currency,
        status="processing",
        resolve_after=resolve_after,
        platform_fee=platform_fee,
        estimated_processor_fee=estimated_processor_fee,
        created_at=now,
    )
    session.add(attempt)
    if flush:
        await session.flush()
    return attempt


# The sweep that settles attempts a crash left ``processing`` past their
# ``resolve_after`` (a periodic kind: ``payments.tasks``, ADR 0029).
SETTLE_KIND = "payments.settle_attempts"


# Step 2: the gateway call, with no transaction open ------------------------------------


async def call_gateway(gateway: Gateway, call: GatewayCall) -> ChargeResult:
    """Step 2. Never call this with a transaction or a row lock open.

    Raises:
        GatewayUnavailable: a refresh could not reach the gateway; nothing changed.
    """
    if call.kind == "refresh":
        assert call.reference is not None
        refreshed = await gateway.refresh_charge(
            reference=call.reference, amount=call.request.amount, currency=call.request.currency
        )
        if refreshed is not None:
            return refreshed
        # A gateway that completes authentications with a new charge (the sandbox): the
        # charge still waits.
        return ChargeResult(
            status="requires_action",
            reference=call.reference,
            decline_code="authentication_required",
            message="The card needs 3-D Secure authentication.",
        )
    if call.kind == "charge_off_session":
        assert call.customer_reference is not None
        return await gateway.charge_off_session(
            call.request, customer_reference=call.customer_reference
        )
    return await gateway.charge(call.request)


# Step 3: record the outcome --------------------------------------------------------------


async def record_outcome(
    session: AsyncSession, *, call: GatewayCall, result: ChargeResult
) -> PaymentAttempt | None:
    """Step 3: the gateway's answer replaces the attempt's ``call.from_status``.

    A conditional update: when the attempt is no longer in that status (another confirm
    or the worker recorded it first) nothing changes and None is returned, so whoever
    gets the attempt back is the one that completes the purpose, exactly once. The caller
    locks the purpose first (the checkout session), then calls this.
    """
    values: dict[str, Any] = {
        "b_id": call.attempt_id,
        "b_from_status": call.from_status,
        "b_status": result.status,
        "b_decline_code": result.decline_code,
        "b_failure_message": result.message,
        "b_processor_fee": result.processor_fee,
        "b_action_secret": result.action_secret if result.status == "requires_action" else None,
    }
    if result.reference is not None:
        values["b_gateway_reference"] = result.reference
    statement = _OUTCOME if result.reference is None else _OUTCOME_WITH_REFERENCE
    return (await session.execute(statement, values)).scalar_one_or_none()


async def record_outcomes(
    session: AsyncSession, outcomes: Sequence[tuple[GatewayCall, ChargeResult]]
) -> dict[str, PaymentAttempt]:
    """``record_outcome`` for many attempts at once (a charge batch's step 3, each purpose
    locked first): the attempts this recorded, by id. One statement on PostgreSQL, the
    same conditional update for every attempt; on SQLite one ``record_outcome`` each."""
    if not outcomes:
        return {}
    if len({call.attempt_id for call, _ in outcomes}) != len(outcomes):
        # One statement would apply either answer of an attempt named twice, where one
        # by one the first would win: the caller gives each attempt once.
        raise ValueError("record_outcomes: an attempt is named more than once")
    if session.get_bind().dialect.name != "postgresql" or len(outcomes) == 1:
        recorded = {}
        for call, result in outcomes:
            attempt = await record_outcome(session, call=call, result=result)
            if attempt is not None:
                recorded[attempt.id] = attempt
        return recorded
    params: dict[str, Any] = {}
    for n, (call, result) in enumerate(outcomes):
        params |= {
            f"id_{n}": call.attempt_id,
            f"from_status_{n}": call.from_status,
            f"status_{n}": result.status,
            f"decline_code_{n}": result.decline_code,
            f"failure_message_{n}": result.message,
            f"processor_fee_{n}": result.processor_fee,
            f"action_secret_{n}": result.action_secret
            if result.status == "requires_action"
            else None,
            f"gateway_reference_{n}": result.reference,
        }
    written = await session.execute(
        select(PaymentAttempt)
        .from_statement(_outcomes_statement(len(outcomes)))
        .execution_options(populate_existing=True),
        params,
    )
    return {attempt.id: attempt for attempt in written.scalars()}


# The columns ``record_outcomes`` sets from each outcome; ``gateway_reference`` only when
# the outcome has one (as ``record_outcome``'s two statements).
_OUTCOME_COLUMNS = (
    "id",
    "from_status",
    "status",
    "decline_code",
    "failure_message",
    "processor_fee",
    "action_secret",
    "gateway_reference",
)


@functools.lru_cache(maxsize=64)
def _outcomes_statement(count: int) -> TextualSelect:
    """``record_outcomes``' statement for ``count`` attempts, built once per count: the
    conditional update of each attempt from a ``VALUES`` list of typed parameters."""
    table = cast(Table, PaymentAttempt.__table__)
    types = {name: table.c[name].type for name in _OUTCOME_COLUMNS if name != "from_status"}
    types["from_status"] = table.c.status.type
    binds = [
        bindparam(f"{name}_{n}", type_=types[name])
        for n in range(count)
        for name in _OUTCOME_COLUMNS
    ]
    rows = ", ".join(
        "(" + ", ".join(f":{name}_{n}" for name in _OUTCOME_COLUMNS) + ")" for n in range(count)
    )
    returned = ", ".join(f'a."{column.name}"' for column in table.columns)
    # Only the table's column names and numbered parameters go into the text.
    return (
        text(
            "UPDATE payment_attempts AS a SET status = v.status, "  # noqa: S608
            "decline_code = v.decline_code, failure_message = v.failure_message, "
            "processor_fee = v.processor_fee, action_secret = v.action_secret, "
            "gateway_reference = coalesce(v.gateway_reference, a.gateway_reference), "
            f"resolve_after = NULL FROM (VALUES {rows}) AS v({', '.join(_OUTCOME_COLUMNS)}) "
            f"WHERE a.id = v.id AND a.status = v.from_status RETURNING {returned}"
        )
        .bindparams(*binds)
        .columns(*table.columns)
    )


def _outcome_statement(*, with_reference: bool) -> ReturningUpdate[PaymentAttempt]:
    """``record_outcome``'s conditional update, built once. The updated row comes back from
    the same statement (RETURNING), refreshing any copy of the attempt the session holds."""
    columns = cast(Table, PaymentAttempt.__table__).c
    names = ["status", "decline_code", "failure_message", "processor_fee", "action_secret"]
    if with_reference:
        names.append("gateway_reference")
    values: dict[str, Any] = {
        name: bindparam(f"b_{name}", type_=columns[name].type) for name in names
    }
    return (
        update(PaymentAttempt)
        .where(
            PaymentAttempt.id == bindparam("b_id"),
            PaymentAttempt.status == bindparam("b_from_status"),
        )
        .values(resolve_after=None, **values)
        .returning(PaymentAttempt)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


_OUTCOME = _outcome_statement(with_reference=False)
_OUTCOME_WITH_REFERENCE = _outcome_statement(with_reference=True)


async def get_attempt(session: AsyncSession, *, attempt_id: str) -> PaymentAttempt:
    attempt = await session.get(PaymentAttempt, attempt_id, populate_existing=True)
    assert attempt is not None, attempt_id
    return attempt


async def mark_for_resolution(session: AsyncSession, *, attempt_id: str, now: datetime) -> bool:
    """Hand a charge waiting for the buyer (``requires_action``) to the worker: it becomes
    ``processing``, due now, and the worker re-reads it from the gateway (a provider's
    event said the buyer finished authenticating). False when it was not waiting."""
    changed = await session.execute(
        update(PaymentAttempt)
        .where(PaymentAttempt.id == attempt_id, PaymentAttempt.status == "requires_action")
        .values(status="processing", resolve_after=now)
        .returning(PaymentAttempt.creator_id)
        .execution_options(synchronize_session=False)
    )
    if changed.scalar_one_or_none() is None:
        return False
    await work.run_soon(session, kind=SETTLE_KIND, now=now)
    return True


async def refund(
    gateway: Gateway,
    *,
    charge_reference: str,
    amount: int,
    currency: str,
    idempotency_key: str,
    transfer_reversal: TransferReversal | None = None,
    is_platform_charge: bool = False,
) -> RefundResult:
    return await gateway.refund(
        charge_reference=charge_reference,
        amount=amount,
        currency=currency,
        idempotency_key=idempotency_key,
        transfer_reversal=transfer_reversal,
        is_platform_charge=is_platform_charge,
    )


@dataclass(frozen=True, slots=True)
class Connection:
    """A creator's connected account, and where the creator completes its onboarding."""

    account: ConnectedAccount
    onboarding_url: str | None
    is_new: bool


async def _connected_account(
    session: AsyncSession, gateway: Gateway, *, creator_id: str
) -> ConnectedAccount | None:
    return (
        await session.execute(
            select(ConnectedAccount).where(
                ConnectedAccount.creator_id == creator_id,
                ConnectedAccount.gateway == gateway.name,
            )
        )
    ).scalar_one_or_none()


async def connect_creator(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    country: str | None,
    return_url: str,
    refresh_url: str,
    now: datetime,
    session: AsyncSession | None = None,
) -> Connection:
    """The creator's connected account at ``gateway``, created on the first call, with a
    fresh onboarding link on every call (links expire within minutes).

    No transaction is open while the gateway is called (ADR 0007): the creator is read
    first, the account created at the gateway with the key
    ``<creator>:connected_account:1`` (so two concurrent first calls, or a retry after a
    crash, get the same account back), and recorded under the creator's lock on
    ``session`` when given, where a concurrent call that recorded it first wins.

    Raises:
        CreatorNotFound, GatewayUnavailable, GatewayRefused.
    """
    async with database.unit_of_work() as reading:
        creator = await reading.get(Creator, creator_id)
        if creator is None:
            raise CreatorNotFound(f"no creator {creator_id!r}")
        email = creator.email
        existing = await _connected_account(reading, gateway, creator_id=creator_id)
        reference = existing.external_id if existing is not None else None
    if reference is None:
        reference = await gateway.create_connected_account(
            email=email,
            country=country,
            metadata={"creator": creator_id},
            idempotency_key=f"{creator_id}:connected_account:1",
        )
    url = await gateway.onboarding_link(
        account_reference=reference,
        return_url=return_url,
        refresh_url=refresh_url,
        idempotency_key=f"{creator_id}:account_link:{int(now.timestamp())}",
    )
    async with session_or_unit_of_work(database, session) as writing:
        await writing.execute(select(Creator.id).where(Creator.id == creator_id).with_for_update())
        account = await _connected_account(writing, gateway, creator_id=creator_id)
        if account is not None:  # recorded before, or by a concurrent first call
            return Connection(account=account, onboarding_url=url, is_new=False)
        account = ConnectedAccount(
            id=new_id("ca"),
            creator_id=creator_id,
            gateway=gateway.name,
            external_id=reference,
            created_at=now,
        )
        writing.add(account)
        await writing.flush()
        return Connection(account=account, onboarding_url=url, is_new=True)
