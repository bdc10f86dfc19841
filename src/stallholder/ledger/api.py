"""HTTP routes for a creator's balance and journal."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.kit.http import SessionDep
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut
from stallholder.ledger import service
from stallholder.ledger.schemas import BalanceOut, balance_out, entry_out

router = APIRouter(prefix="/v1", tags=["ledger"])


@router.get("/balance", response_model=BalanceOut)
async def get_balance(creator_id: SecretCreatorDep, session: SessionDep) -> BalanceOut:
    """What the platform owes the creator, per currency, after fees and refunds."""
    balances = await service.balances_of(session, account=service.creator_account(creator_id))
    return balance_out(balances)


@router.get("/ledger/entries", response_model=ListOut)
async def list_entries(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """Journal transactions about the creator's sales, newest first, with every line."""
    page = await service.list_transactions(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(has_more=page.has_more, data=[entry_out(txn) for txn in page.data])
