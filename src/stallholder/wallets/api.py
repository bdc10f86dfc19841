"""HTTP routes of wallets: a customer's view of its buyer's prepaid balance."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.kit.http import NowDep, RequestKeyDep, SessionDep, SettingsDep, problem_response
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.wallets import service
from stallholder.wallets.schemas import (
    AutoTopUpSet,
    BalanceOut,
    TopUpCreate,
    TopUpOut,
    WalletOut,
    WalletTransactionsOut,
    balance_out,
    top_up_out,
    transaction_out,
)

router = APIRouter(prefix="/v1", tags=["wallets"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


@router.post(
    "/customers/{customer_id}/wallet/top_ups",
    status_code=201,
    response_model=TopUpOut,
    responses={
        400: {"description": "No default payment method, or none named"},
        402: {"description": "The card was declined; nothing was added"},
        403: {"description": "The buyer saved that payment method with another creator only"},
        409: {"description": "The charge is still waiting for the gateway; retry"},
    },
)
async def create_top_up(
    customer_id: str,
    body: TopUpCreate,
    request: Request,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    request_key: RequestKeyDep,
) -> Any:
    """Charge the buyer's saved card off-session and add the whole amount to the buyer's
    wallet in that currency, which pays any creator the buyer supports. Send an
    ``Idempotency-Key``: a retry gets the first top-up's outcome, never a second charge."""
    outcome = await service.top_up(
        request.app.state.database,
        request.app.state.gateway,
        creator_id=creator_id,
        customer_id=customer_id,
        amount=body.amount,
        currency=body.currency,
        payment_method_id=body.payment_method,
        request_key=request_key,
        resolve_after=now + settings.payment_resolve_after(),
        now=now,
        session=session,
    )
    if outcome.error is not None:
        return problem_response(
            outcome.error, instance=f"/v1/customers/{customer_id}/wallet/top_ups"
        )
    return top_up_out(outcome.top_up)


@router.get("/customers/{customer_id}/wallet", response_model=WalletOut)
async def get_wallet(
    customer_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> WalletOut:
    """The buyer's balance in each currency, auto top-up settings, and the latest
    movements this creator may see: every top-up and this creator's own payments
    (payments to the buyer's other creators are left out, though they are in the
    balance)."""
    view = await service.get_wallets(session, creator_id=creator_id, customer_id=customer_id)
    page = await service.list_transactions(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        limit=DEFAULT_LIMIT,
        starting_after=None,
    )
    return WalletOut(
        customer=customer_id,
        balances=[balance_out(wallet) for wallet in view.wallets],
        transactions=WalletTransactionsOut(
            data=[transaction_out(t) for t in page.data], has_more=page.has_more
        ),
    )


@router.get("/customers/{customer_id}/wallet/transactions", response_model=WalletTransactionsOut)
async def list_wallet_transactions(
    customer_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> WalletTransactionsOut:
    """The wallet movements this creator may see, newest first (see the wallet)."""
    page = await service.list_transactions(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        limit=limit,
        starting_after=starting_after,
    )
    return WalletTransactionsOut(
        data=[transaction_out(t) for t in page.data], has_more=page.has_more
    )


@router.post(
    "/customers/{customer_id}/wallet/auto_top_up",
    response_model=BalanceOut,
    responses={
        400: {"description": "Only one of threshold and amount, or no default payment method"},
        403: {"description": "The buyer saved that payment method with another creator only"},
    },
)
async def set_auto_top_up(
    customer_id: str,
    body: AutoTopUpSet,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> BalanceOut:
    """Top the wallet up by ``amount`` whenever a payment leaves it below ``threshold``,
    charging the named (or default) card through this creator. Leave out both to turn it
    off. One setting per currency: the wallet is the buyer's, and the last creator to
    set it wins."""
    wallet = await service.set_auto_top_up(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        currency=body.currency,
        threshold=body.threshold,
        amount=body.amount,
        payment_method_id=body.payment_method,
        now=now,
    )
    return balance_out(wallet)
