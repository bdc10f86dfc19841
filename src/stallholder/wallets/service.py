"""Prepaid wallets (ADR 0011): top-ups charged to the buyer's card, payments to creators
from the balance, and auto top-up below a threshold.

A top-up is a charge for the purpose ``wallet_top_up`` in the three steps of
``payments.service``: the top-up, its attempt and the work that settles a crash are
recorded together; the gateway is called with no transaction open; the outcome is
recorded and, on success, the wallet credited and the ledger posted in one transaction
(``complete_top_up``, also the worker's completer), by whoever records the outcome first.

A payment from the wallet (``pay_from_wallet``) is one conditional atomic update
(``balance = balance - :amount WHERE balance >= :amount``), never read-decide-write, in the
caller's transaction; at most one per purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Customer
from stallholder.kit import work
from stallholder.kit.db import (
    Database,
    is_unique_violation,
    session_or_unit_of_work,
    transaction_memo,
)
from stallholder.kit.errors import Conflict, DomainError, InvalidRequest
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeePolicy, Split, payment_split, platform_fee, refund_split
from stallholder.ledger.models import JournalLine, JournalTransaction
from stallholder.payments import methods
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult, Gateway
from stallholder.payments.models import PaymentAttempt
from stallholder.payments.service import Purpose
from stallholder.wallets.models import Wallet, WalletTopUp, WalletTransaction

PURPOSE: Purpose = "wallet_top_up"
# The due work that tops a wallet up after a payment left it below its threshold.
AUTO_TOP_UP_KIND = "wallets.auto_top_up"


class InsufficientWalletBalance(DomainError):
    status = 402
    slug = "wallet-balance-insufficient"
    title = "The wallet's balance does not cover the amount"


class TopUpInProgress(Conflict):
    slug = "wallet-top-up-in-progress"
    title = "A top-up with this Idempotency-Key is being made"
    retry_after_seconds = 2


class WalletPaymentConflict(Conflict):
    slug = "wallet-payment-conflict"
    title = "This purpose was paid from the wallet already, or is being paid"


class InvalidAutoTopUp(InvalidRequest):
    slug = "invalid-auto-top-up"
    title = "The auto top-up settings cannot work"


@dataclass(frozen=True, slots=True)
class TopUpOutcome:
    """A top-up and how it went: ``error`` is the problem for a failed charge (402) or
    one still waiting for the gateway's answer (409, retry), None when it succeeded."""

    top_up: WalletTopUp
    attempt: PaymentAttempt | None
    error: DomainError | None = None


@dataclass(frozen=True, slots=True)
class WalletPayment:
    """A payment from a wallet: its movement, and how the amount split in the ledger."""

    transaction: WalletTransaction
    split: Split


async def ensure_wallet(
    session: AsyncSession, *, buyer_id: str, currency: str, now: datetime
) -> Wallet:
    """The buyer's wallet in ``currency``, created empty on first use (``ON CONFLICT DO
    NOTHING``: two first top-ups at once find the same wallet)."""
    transaction_memo(session).get(_WITHOUT_WALLET, set()).discard((buyer_id, currency))
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(Wallet)
        .values(
            id=new_id("wal"),
            buyer_id=buyer_id,
            currency=currency,
            balance=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=[Wallet.buyer_id, Wallet.currency])
    )
    return (
        await session.execute(
            select(Wallet)
            .where(Wallet.buyer_id == buyer_id, Wallet.currency == currency)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()


async def find_wallet(session: AsyncSession, *, buyer_id: str, currency: str) -> Wallet | None:
    return (
        await session.execute(
            select(Wallet)
            .where(Wallet.buyer_id == buyer_id, Wallet.currency == currency)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


# Top-ups ---------------------------------------------------------------------------------


async def _outcome_of(session: AsyncSession, top_up: WalletTopUp) -> TopUpOutcome:
    attempt = await payments.latest_attempt(session, purpose=PURPOSE, purpose_id=top_up.id)
    if top_up.status == "succeeded" or attempt is None:
        return TopUpOutcome(top_up=top_up, attempt=attempt)
    if top_up.status == "processing":
        return TopUpOutcome(
            top_up=top_up, attempt=attempt, error=payments.in_progress_error(attempt)
        )
    return TopUpOutcome(top_up=top_up, attempt=attempt, error=payments.failure_error(attempt))


async def top_up(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    customer_id: str,
    amount: int,
    currency: str,
    payment_method_id: str | None,
    request_key: str | None,
    resolve_after: datetime,
    now: datetime,
    is_automatic: bool = False,
    session: AsyncSession | None = None,
) -> TopUpOutcome:
    """Charge the buyer's card ``amount`` off-session and credit the buyer's wallet with
    all of it. The card is ``payment_method_id`` or the customer's default, and must be
    granted to this creator's customer. The charge is the platform's (no connected
    account): the platform holds the money for the buyer. With ``request_key`` a retry
    finds the first top-up and its outcome instead of charging again. The outcome is
    recorded on ``session`` when given.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, PaymentMethodNotGranted,
        NoDefaultPaymentMethod, TopUpInProgress.
    """
    async with database.unit_of_work() as starting:
        customer = await accounts.get_customer(
            starting, creator_id=creator_id, customer_id=customer_id
        )
        if request_key is not None:
            existing = (
                await starting.execute(
                    select(WalletTopUp).where(
                        WalletTopUp.creator_id == creator_id,
                        WalletTopUp.request_key == request_key,
                    )
                )
            ).scalar_one_or_none()
            if existing is not None:
                return await _outcome_of(starting, existing)
        method = await methods.charge_target(
            starting,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
        wallet = await ensure_wallet(
            starting, buyer_id=customer.buyer_id, currency=currency, now=now
        )
        pending = WalletTopUp(
            id=new_id("wtu"),
            creator_id=creator_id,
            customer_id=customer_id,
            wallet_id=wallet.id,
            payment_method_id=method.id,
            amount=amount,
            currency=currency,
            status="processing",
            is_automatic=is_automatic,
            request_key=request_key,
            created_at=now,
            updated_at=now,
        )
        starting.add(pending)
        try:
            await starting.flush()
        except IntegrityError as error:
            if is_unique_violation(error, "uq_wallet_top_ups_creator_id_request_key"):
                raise TopUpInProgress(
                    "a top-up with this Idempotency-Key is being made at this moment; send "
                    "the same request again in a few seconds to get its outcome",
                    retryable=True,
                ) from error
            raise
        attempt = await payments.begin_attempt(
            starting,
            gateway,
            creator_id=creator_id,
            purpose=PURPOSE,
            purpose_id=pending.id,
            amount=amount,
            currency=currency,
            payment_method=method.gateway_reference,
            platform_fee=0,
            estimated_processor_fee=gateway.estimate_processor_fee(
                amount=amount, currency=currency
            ),
            resolve_after=resolve_after,
            now=now,
            gateway_customer=method.gateway_customer,
            saved_payment_method_id=method.id,
            latest_number=0,
            is_for_platform=True,
        )
        call = payments.gateway_call_for(attempt)
    result = await payments.call_gateway(gateway, call)
    async with session_or_unit_of_work(database, session) as recording:
        await complete_top_up(recording, call, result, now)
        finished = await recording.get(WalletTopUp, call.purpose_id, populate_existing=True)
        assert finished is not None
        return await _outcome_of(recording, finished)


async def complete_top_up(
    session: AsyncSession, call: payments.GatewayCall, result: ChargeResult, now: datetime
) -> WalletTopUp | None:
    """Step 3 of a top-up (the request's, or the worker's as the completer of the purpose
    ``wallet_top_up``): record the gateway's answer and, when the charge succeeded,
    credit the wallet, record the movement and post the ledger, all in ``session``. Only
    the caller whose conditional update recorded the outcome gets here, so the wallet is
    credited once; any other gets None."""
    recorded = await payments.record_outcome(session, call=call, result=result)
    if recorded is None:
        return None
    pending = (
        await session.execute(
            select(WalletTopUp)
            .where(WalletTopUp.id == call.purpose_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    pending.updated_at = now
    if recorded.status != "succeeded":
        pending.status = "failed"
        pending.decline_code = recorded.decline_code
        pending.failure_message = recorded.failure_message
        await session.flush()
        return pending
    buyer_id, balance = (
        await session.execute(
            update(Wallet)
            .where(Wallet.id == pending.wallet_id)
            .values(balance=Wallet.balance + pending.amount, updated_at=now)
            .returning(Wallet.buyer_id, Wallet.balance)
        )
    ).one()
    session.add(
        WalletTransaction(
            id=new_id("wtx"),
            wallet_id=pending.wallet_id,
            creator_id=pending.creator_id,
            type="top_up",
            amount=pending.amount,
            currency=pending.currency,
            purpose=PURPOSE,
            reference_id=pending.id,
            balance_after=balance,
            created_at=now,
        )
    )
    await ledger.post(
        session,
        creator_id=None,
        kind="wallet_top_up",
        reference_id=pending.id,
        currency=pending.currency,
        lines=ledger.wallet_top_up_lines(
            buyer_id, amount=pending.amount, processor_fee=recorded.processor_fee
        ),
        description=f"wallet top-up {pending.id}",
        now=now,
    )
    pending.status = "succeeded"
    await session.flush()
    return pending


# Payments from the wallet ------------------------------------------------------------------


_WITHOUT_WALLET = "wallets.buyers_without_wallet"


async def read_wallets(
    session: AsyncSession, *, buyer_ids: Iterable[str], currencies: Iterable[str]
) -> None:
    """For a batch of payments: which of these buyers have no wallet in these currencies,
    one statement, for the rest of this transaction, so that ``pay_from_wallet`` asks no
    more for them (with no wallet there is nothing to pay from, nor a payment made). A
    wallet opened by another transaction meanwhile is as if opened just after."""
    buyers = sorted(set(buyer_ids))
    wanted = sorted(set(currencies))
    if not buyers or not wanted:
        return
    rows = await session.execute(
        select(Wallet.buyer_id, Wallet.currency).where(
            Wallet.buyer_id.in_(buyers), Wallet.currency.in_(wanted)
        )
    )
    having = {(buyer, currency) for buyer, currency in rows}
    without: set[tuple[str, str]] = transaction_memo(session).setdefault(_WITHOUT_WALLET, set())
    without.update(
        (buyer, currency)
        for buyer in buyers
        for currency in wanted
        if (buyer, currency) not in having
    )


async def pay_from_wallet(
    session: AsyncSession,
    *,
    buyer_id: str,
    creator_id: str,
    amount: int,
    currency: str,
    purpose: str,
    purpose_id: str,
    fee_policy: FeePolicy,
    now: datetime,
) -> WalletPayment:
    """Pay ``amount`` from the buyer's wallet to the creator for ``purpose_id`` (an
    invoice), in the caller's transaction: a conditional atomic debit (``WHERE balance >=
    :amount``), so two payments at once can never take the balance below zero; the
    ledger moves the amount from the wallet liability to the creator's balance, less the
    platform's fee by ``fee_policy`` (no processor fee: no card is charged). A purpose is
    paid once: asking again returns the first payment. When the balance is left (or
    found) below the auto top-up threshold, an auto top-up is enqueued, in this
    transaction.

    Raises:
        InsufficientWalletBalance: no wallet, or its balance is less than ``amount``;
            nothing changed but the auto top-up (the caller may charge a card instead).
        WalletPaymentConflict: the purpose was paid from the wallet with another amount
            or to another creator, or is being paid by a concurrent transaction (that one
            must roll back).
    """
    if amount <= 0:
        raise ValueError("a wallet payment is a positive amount")
    if (buyer_id, currency) in transaction_memo(session).get(_WITHOUT_WALLET, set()):
        raise InsufficientWalletBalance(
            f"the buyer's {currency} wallet holds 0, less than {amount}", balance=0, amount=amount
        )
    # The buyer's wallet and the purpose's payment, if any, in one statement. A payment
    # is made from the buyer's wallet in this currency, and wallets are never deleted:
    # with no wallet there is no payment to find and nothing to debit.
    found = (
        await session.execute(
            select(Wallet.id, WalletTransaction)
            .select_from(Wallet)
            .outerjoin(
                WalletTransaction,
                and_(
                    WalletTransaction.type == "payment",
                    WalletTransaction.purpose == purpose,
                    WalletTransaction.reference_id == purpose_id,
                ),
            )
            .where(Wallet.buyer_id == buyer_id, Wallet.currency == currency)
        )
    ).one_or_none()
    if found is None:
        raise InsufficientWalletBalance(
            f"the buyer's {currency} wallet holds 0, less than {amount}", balance=0, amount=amount
        )
    existing: WalletTransaction | None = found[1]
    split = payment_split(
        amount, platform_fee=platform_fee(amount, fee_policy, processor_fee=0), processor_fee=0
    )
    if existing is not None:
        if (existing.amount, existing.creator_id, existing.currency) != (
            -amount,
            creator_id,
            currency,
        ):
            raise WalletPaymentConflict(
                f"{purpose} {purpose_id} was paid from the wallet already, with "
                f"{-existing.amount} {existing.currency} to another payee or amount"
            )
        return WalletPayment(transaction=existing, split=split)
    debited = (
        await session.execute(
            update(Wallet)
            .where(
                Wallet.buyer_id == buyer_id,
                Wallet.currency == currency,
                Wallet.balance >= amount,
            )
            .values(balance=Wallet.balance - amount, updated_at=now)
            .returning(Wallet.id, Wallet.balance)
        )
    ).one_or_none()
    if debited is None:
        wallet = await find_wallet(session, buyer_id=buyer_id, currency=currency)
        if wallet is not None:
            await _top_up_if_low(session, wallet=wallet, balance=wallet.balance, now=now)
        raise InsufficientWalletBalance(
            f"the buyer's {currency} wallet holds {0 if wallet is None else wallet.balance}, "
            f"less than {amount}",
            balance=0 if wallet is None else wallet.balance,
            amount=amount,
        )
    wallet_id, balance = debited
    transaction = WalletTransaction(
        id=new_id("wtx"),
        wallet_id=wallet_id,
        creator_id=creator_id,
        type="payment",
        amount=-amount,
        currency=currency,
        purpose=purpose,
        reference_id=purpose_id,
        balance_after=balance,
        created_at=now,
    )
    session.add(transaction)
    try:
        await session.flush()
    except IntegrityError as error:
        if is_unique_violation(error, "uq_wallet_transactions_type_purpose_reference_id"):
            raise WalletPaymentConflict(
                f"{purpose} {purpose_id} is being paid from the wallet by another transaction"
            ) from error
        raise
    await ledger.post(
        session,
        creator_id=creator_id,
        kind="wallet_payment",
        reference_id=purpose_id,
        currency=currency,
        lines=ledger.wallet_payment_lines(buyer_id, creator_id, split),
        description=f"{purpose} {purpose_id} paid from the wallet",
        now=now,
    )
    wallet = await session.get(Wallet, wallet_id, populate_existing=True)
    assert wallet is not None
    await _top_up_if_low(session, wallet=wallet, balance=balance, now=now)
    return WalletPayment(transaction=transaction, split=split)


async def _paid_split(session: AsyncSession, *, purpose_id: str, amount: int) -> Split:
    """How the wallet payment for ``purpose_id`` split when it was made, read back from its
    journal transaction (the creator's terms may have changed since)."""
    lines = (
        await session.execute(
            select(JournalLine.account, JournalLine.amount)
            .join(JournalTransaction, JournalTransaction.id == JournalLine.transaction_id)
            .where(
                JournalTransaction.kind == "wallet_payment",
                JournalTransaction.reference_id == purpose_id,
            )
        )
    ).all()
    fee = sum(line.amount for line in lines if line.account == ledger.PLATFORM_FEES)
    return payment_split(amount, platform_fee=fee, processor_fee=0)


async def refund_to_wallet(
    session: AsyncSession, *, purpose: str, purpose_id: str, amount: int, now: datetime
) -> WalletTransaction:
    """Give ``amount`` of what the wallet paid for ``purpose_id`` back to the wallet, in
    the caller's transaction: the balance grows by an atomic update and the ledger moves
    the creator's share and the platform's fee back to the wallet liability, pro rata
    (``refund_split``). Once per purpose: asking again returns the first refund.

    Raises:
        ValueError: nothing was paid from the wallet for it, or ``amount`` is not within
            (0, what was paid] (a programming error).
    """
    existing = (
        await session.execute(
            select(WalletTransaction).where(
                WalletTransaction.type.in_(("payment", "refund")),
                WalletTransaction.purpose == purpose,
                WalletTransaction.reference_id == purpose_id,
            )
        )
    ).scalars()
    by_type = {transaction.type: transaction for transaction in existing}
    if "refund" in by_type:
        return by_type["refund"]
    payment = by_type.get("payment")
    if payment is None:
        raise ValueError(f"{purpose} {purpose_id} was not paid from a wallet")
    paid = -payment.amount
    split = refund_split(
        await _paid_split(session, purpose_id=purpose_id, amount=paid),
        refunded_before=0,
        amount=amount,
    )
    buyer_id, balance = (
        await session.execute(
            update(Wallet)
            .where(Wallet.id == payment.wallet_id)
            .values(balance=Wallet.balance + amount, updated_at=now)
            .returning(Wallet.buyer_id, Wallet.balance)
        )
    ).one()
    refund = WalletTransaction(
        id=new_id("wtx"),
        wallet_id=payment.wallet_id,
        creator_id=payment.creator_id,
        type="refund",
        amount=amount,
        currency=payment.currency,
        purpose=purpose,
        reference_id=purpose_id,
        balance_after=balance,
        created_at=now,
    )
    session.add(refund)
    await session.flush()
    await ledger.post(
        session,
        creator_id=payment.creator_id,
        kind="wallet_refund",
        reference_id=purpose_id,
        currency=payment.currency,
        lines=[
            ledger.Line(line.account, -line.amount)
            for line in ledger.wallet_payment_lines(buyer_id, payment.creator_id, split)
        ],
        description=f"{purpose} {purpose_id} refunded to the wallet",
        now=now,
    )
    return refund


async def _top_up_if_low(
    session: AsyncSession, *, wallet: Wallet, balance: int, now: datetime
) -> None:
    """Enqueue an auto top-up when the wallet has one set and ``balance`` is below its
    threshold. One at a time: the work's dedupe key is the wallet's."""
    threshold = wallet.auto_top_up_threshold
    if threshold is None or wallet.auto_top_up_amount is None or balance >= threshold:
        return
    customer = await session.get(Customer, wallet.auto_top_up_customer_id)
    await work.enqueue(
        session,
        kind=AUTO_TOP_UP_KIND,
        payload={"wallet": wallet.id},
        due_at=now,
        now=now,
        dedupe_key=f"{AUTO_TOP_UP_KIND}:{wallet.id}",
        creator_id=None if customer is None else customer.creator_id,
    )


# Settings and reading ----------------------------------------------------------------------


async def set_auto_top_up(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    currency: str,
    threshold: int | None,
    amount: int | None,
    payment_method_id: str | None,
    now: datetime,
) -> Wallet:
    """Turn auto top-up on (``threshold`` and ``amount``) or off (both None) for the
    buyer's wallet in ``currency``. It charges ``payment_method_id`` (or the customer's
    default, fixed now) through this creator's grant. The last creator to set it wins: the
    wallet is the buyer's, one setting per currency. If the balance is already below the
    threshold, a top-up is enqueued at once.

    Raises:
        CustomerNotFound, PaymentMethodNotFound, PaymentMethodNotGranted,
        NoDefaultPaymentMethod, InvalidAutoTopUp.
    """
    customer = await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    wallet = await ensure_wallet(session, buyer_id=customer.buyer_id, currency=currency, now=now)
    if threshold is None and amount is None:
        wallet.auto_top_up_threshold = None
        wallet.auto_top_up_amount = None
        wallet.auto_top_up_customer_id = None
        wallet.auto_top_up_payment_method_id = None
    else:
        if threshold is None or amount is None or amount <= 0:
            raise InvalidAutoTopUp(
                "give both threshold and amount (a positive amount) to turn auto top-up on, "
                "or neither to turn it off"
            )
        method = await methods.charge_target(
            session,
            creator_id=creator_id,
            customer_id=customer_id,
            payment_method_id=payment_method_id,
        )
        wallet.auto_top_up_threshold = threshold
        wallet.auto_top_up_amount = amount
        wallet.auto_top_up_customer_id = customer_id
        wallet.auto_top_up_payment_method_id = method.id
    wallet.updated_at = now
    await session.flush()
    await _top_up_if_low(session, wallet=wallet, balance=wallet.balance, now=now)
    return wallet


@dataclass(frozen=True, slots=True)
class WalletView:
    """A buyer's wallet as one creator's customer sees it."""

    customer_id: str
    wallets: list[Wallet]


async def get_wallets(session: AsyncSession, *, creator_id: str, customer_id: str) -> WalletView:
    """The buyer's wallets (one per currency used), through the creator's customer.

    Raises:
        CustomerNotFound.
    """
    customer = await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    wallets = (
        (
            await session.execute(
                select(Wallet)
                .where(Wallet.buyer_id == customer.buyer_id)
                .order_by(Wallet.currency)
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )
    return WalletView(customer_id=customer_id, wallets=list(wallets))


async def list_transactions(
    session: AsyncSession,
    *,
    creator_id: str,
    customer_id: str,
    limit: int,
    starting_after: str | None,
) -> Page[WalletTransaction]:
    """The movements of the buyer's wallets this creator may see, newest first: every
    top-up (never saying through which creator) and the payments to this creator. A
    payment to another creator is not shown, so the balance includes spending this
    creator cannot see.

    Raises:
        CustomerNotFound.
    """
    customer = await accounts.get_customer(session, creator_id=creator_id, customer_id=customer_id)
    return await paginate(
        session,
        select(WalletTransaction)
        .join(Wallet, Wallet.id == WalletTransaction.wallet_id)
        .where(
            Wallet.buyer_id == customer.buyer_id,
            (WalletTransaction.type == "top_up") | (WalletTransaction.creator_id == creator_id),
        ),
        id_column=WalletTransaction.id,
        limit=limit,
        starting_after=starting_after,
    )


@dataclass(frozen=True, slots=True)
class WalletMismatch:
    wallet_id: str
    account: str
    currency: str
    wallet_balance: int
    ledger_balance: int


async def mismatched_wallets(session: AsyncSession) -> tuple[int, list[WalletMismatch]]:
    """How many wallets there are, and those whose ``balance`` is not the balance of their
    ledger account (``wallet:<buyer>`` in that currency): both move in one transaction, so
    any difference is a bug. Part of ``stallholder ledger verify``."""
    rows = (
        await session.execute(
            select(Wallet.id, Wallet.buyer_id, Wallet.currency, Wallet.balance).order_by(Wallet.id)
        )
    ).all()
    accounts = {ledger.wallet_account(buyer) for _, buyer, _, _ in rows}
    balances = await ledger.balances_by_account(session, accounts=sorted(accounts))
    mismatched = [
        WalletMismatch(
            wallet_id=wallet_id,
            account=ledger.wallet_account(buyer),
            currency=currency,
            wallet_balance=balance,
            ledger_balance=balances.get((ledger.wallet_account(buyer), currency), 0),
        )
        for wallet_id, buyer, currency, balance in rows
        if balance != balances.get((ledger.wallet_account(buyer), currency), 0)
    ]
    return len(rows), mismatched
