from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from stallholder.kit.schemas import MoneyOut
from stallholder.ledger.models import JournalTransaction


class BalanceOut(BaseModel):
    object: Literal["balance"] = "balance"
    available: list[MoneyOut]


class LineOut(BaseModel):
    account: str
    amount: int
    currency: str


class EntryOut(BaseModel):
    object: Literal["ledger_entry"] = "ledger_entry"
    id: str
    kind: str
    reference: str
    description: str
    lines: list[LineOut]
    created: datetime


def balance_out(balances: Mapping[str, int]) -> BalanceOut:
    """Amounts per currency, in currency order."""
    return BalanceOut(
        available=[
            MoneyOut(amount=amount, currency=currency)
            for currency, amount in sorted(balances.items())
        ]
    )


def entry_out(transaction: JournalTransaction) -> EntryOut:
    return EntryOut(
        id=transaction.id,
        kind=transaction.kind,
        reference=transaction.reference_id,
        description=transaction.description,
        created=transaction.created_at,
        lines=[
            LineOut(account=line.account, amount=line.amount, currency=line.currency)
            for line in transaction.lines
        ],
    )
