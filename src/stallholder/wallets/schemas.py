"""API input and output of wallets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt

from stallholder.kit.schemas import Amount, Currency, Input
from stallholder.wallets.models import Wallet, WalletTopUp, WalletTransaction

PositiveAmount = Annotated[StrictInt, Field(ge=1, le=99_999_999_999)]


class TopUpCreate(Input):
    amount: PositiveAmount = Field(description="Minor units to add to the wallet, e.g. 2000.")
    currency: Currency
    payment_method: str | None = Field(
        default=None,
        max_length=40,
        description="A saved method granted to this customer (pm_…); the customer's default "
        "when left out.",
    )


class AutoTopUpSet(Input):
    currency: Currency
    threshold: Amount | None = Field(
        default=None,
        description="When a payment leaves the balance below this, the wallet is topped up. "
        "Leave out threshold and amount to turn auto top-up off.",
    )
    amount: PositiveAmount | None = Field(default=None, description="How much each top-up adds.")
    payment_method: str | None = Field(default=None, max_length=40)


class TopUpOut(BaseModel):
    object: Literal["wallet_top_up"] = "wallet_top_up"
    id: str
    customer: str
    amount: int
    currency: str
    status: str
    payment_method: str
    automatic: bool
    decline_code: str | None
    failure_message: str | None
    created: datetime


class AutoTopUpOut(BaseModel):
    threshold: int
    amount: int
    payment_method: str | None


class BalanceOut(BaseModel):
    currency: str
    amount: int
    auto_top_up: AutoTopUpOut | None


class WalletTransactionOut(BaseModel):
    object: Literal["wallet_transaction"] = "wallet_transaction"
    id: str
    type: Literal["top_up", "payment", "refund"]
    amount: int
    currency: str
    balance_after: int
    # What a payment paid for, or a refund gave back (purpose and its id); None for a
    # top-up.
    purpose: str | None
    reference: str | None
    created: datetime


class WalletTransactionsOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[WalletTransactionOut]
    has_more: bool


class WalletOut(BaseModel):
    object: Literal["wallet"] = "wallet"
    customer: str
    balances: list[BalanceOut]
    transactions: WalletTransactionsOut


def top_up_out(top_up: WalletTopUp) -> TopUpOut:
    return TopUpOut(
        id=top_up.id,
        customer=top_up.customer_id,
        amount=top_up.amount,
        currency=top_up.currency,
        status=top_up.status,
        payment_method=top_up.payment_method_id,
        automatic=top_up.is_automatic,
        decline_code=top_up.decline_code,
        failure_message=top_up.failure_message,
        created=top_up.created_at,
    )


def balance_out(wallet: Wallet) -> BalanceOut:
    auto = (
        AutoTopUpOut(
            threshold=wallet.auto_top_up_threshold,
            amount=wallet.auto_top_up_amount,
            payment_method=wallet.auto_top_up_payment_method_id,
        )
        if wallet.auto_top_up_threshold is not None and wallet.auto_top_up_amount is not None
        else None
    )
    return BalanceOut(currency=wallet.currency, amount=wallet.balance, auto_top_up=auto)


def transaction_out(transaction: WalletTransaction) -> WalletTransactionOut:
    kind: Literal["top_up", "payment", "refund"] = (
        "payment"
        if transaction.type == "payment"
        else "refund"
        if transaction.type == "refund"
        else "top_up"
    )
    is_for_purpose = kind != "top_up"
    return WalletTransactionOut(
        id=transaction.id,
        type=kind,
        amount=transaction.amount,
        currency=transaction.currency,
        balance_after=transaction.balance_after,
        purpose=transaction.purpose if is_for_purpose else None,
        reference=transaction.reference_id if is_for_purpose else None,
        created=transaction.created_at,
    )
