from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from stallholder.kit.schemas import MoneyOut


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
