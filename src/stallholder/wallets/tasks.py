"""Due work of wallets: auto top-ups, and settling a top-up a crash left half done."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Customer
from stallholder.kit.errors import DomainError
from stallholder.kit.work import Claimed, Context, GiveUp, Kind
from stallholder.payments.gateway import ChargeResult, Gateway, GatewayUnavailable
from stallholder.payments.service import GatewayCall, PaymentInProgress
from stallholder.settings import Settings
from stallholder.wallets import service
from stallholder.wallets.models import Wallet

log = logging.getLogger("stallholder.wallets.tasks")


class WalletResources(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def gateway(self) -> Gateway: ...


async def settle_top_up_attempt(
    session: AsyncSession, call: GatewayCall, result: ChargeResult, now: datetime
) -> str:
    """The worker's step 3 for a top-up's attempt (``payments.tasks``): record the
    gateway's answer and credit the wallet, exactly as the request would have."""
    top_up = await service.complete_top_up(session, call, result, now)
    return "recorded elsewhere" if top_up is None else f"top-up {top_up.id} {top_up.status}"


async def auto_top_up(context: Context[WalletResources], item: Claimed) -> None:
    """The handler of ``wallets.auto_top_up``: if the wallet is still below its threshold,
    charge its auto top-up card. The top-up's request key is the work item's id, so a
    retry of this work (a crash, a lease that ran out) finds the same top-up and never
    charges twice. A declined card is recorded on the top-up and not retried here; the
    next payment that leaves the wallet low tries again."""
    wallet_id = item.payload["wallet"]
    async with context.database.unit_of_work() as session:
        wallet = await session.get(Wallet, wallet_id)
        if (
            wallet is None
            or wallet.auto_top_up_threshold is None
            or wallet.auto_top_up_amount is None
            or wallet.auto_top_up_customer_id is None
            or wallet.balance >= wallet.auto_top_up_threshold
        ):
            return
        customer = await session.get(Customer, wallet.auto_top_up_customer_id)
        assert customer is not None
        creator_id, customer_id = customer.creator_id, customer.id
        amount, currency = wallet.auto_top_up_amount, wallet.currency
        payment_method_id = wallet.auto_top_up_payment_method_id
    now = context.clock.now()
    try:
        outcome = await service.top_up(
            context.database,
            context.resources.gateway,
            creator_id=creator_id,
            customer_id=customer_id,
            amount=amount,
            currency=currency,
            payment_method_id=payment_method_id,
            request_key=f"auto:{item.id}",
            resolve_after=now + context.resources.settings.payment_resolve_after(),
            now=now,
            is_automatic=True,
        )
    except (GatewayUnavailable, service.TopUpInProgress):
        raise  # retried later with the same request key
    except DomainError as error:  # the card was detached, or its grant withdrawn
        raise GiveUp(f"auto top-up of wallet {wallet_id} cannot be made: {error.detail}") from error
    if outcome.error is not None and not isinstance(outcome.error, PaymentInProgress):
        log.warning(
            "auto top-up %s of wallet %s failed: %s",
            outcome.top_up.id,
            wallet_id,
            outcome.error.detail,
        )


AUTO_TOP_UP: Kind[WalletResources] = Kind(name=service.AUTO_TOP_UP_KIND, handler=auto_top_up)
