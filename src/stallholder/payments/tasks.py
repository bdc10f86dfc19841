"""Due work of the payments domain: attempts a crash left ``processing``.

Run by the periodic sweep ``payments.settle_attempts`` (ADR 0029): nothing is enqueued
per attempt; each run takes the attempts past their ``resolve_after``. Each due attempt
is rebuilt into the very gateway call it stood for and sent again with the same
idempotency key, with no transaction open: the gateway answers with the charge it
already made (or makes the one it never got), so money moves once. The outcome is then
recorded, and the purpose completed, by the purpose's owner (``completers``: checkout
completes the sale), in a transaction of its own. Recording is a conditional update, so
a buyer's request that gets there first wins and the worker does nothing again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.clock import Clock
from stallholder.kit.db import Database
from stallholder.payments import service
from stallholder.payments.gateway import ChargeResult, Gateway
from stallholder.payments.models import PaymentAttempt

log = logging.getLogger("stallholder.payments.tasks")

# Records the outcome of ``call`` and completes its purpose, in the caller's transaction.
Completer = Callable[[AsyncSession, service.GatewayCall, ChargeResult, datetime], Awaitable[object]]
# How long to wait before asking the gateway again after it could not answer.
RETRY_AFTER = timedelta(minutes=1)


async def _record_only(
    session: AsyncSession, call: service.GatewayCall, result: ChargeResult, now: datetime
) -> object:
    return await service.record_outcome(session, call=call, result=result)


async def resolve_stale_attempts(
    database: Database,
    clock: Clock,
    *,
    gateway: Gateway,
    completers: Mapping[str, Completer],
    batch: int = 20,
    retry_after: timedelta = RETRY_AFTER,
) -> int:
    """Resolve up to ``batch`` attempts of ``gateway`` still ``processing`` past their
    ``resolve_after``; returns how many were due. An attempt the gateway cannot answer for
    now is tried again after ``retry_after``."""
    async with database.unit_of_work() as session:
        due = (
            (
                await session.execute(
                    select(PaymentAttempt)
                    .where(
                        PaymentAttempt.status == "processing",
                        PaymentAttempt.resolve_after <= clock.now(),
                        PaymentAttempt.gateway == gateway.name,
                    )
                    .order_by(PaymentAttempt.resolve_after, PaymentAttempt.id)
                    .limit(batch)
                )
            )
            .scalars()
            .all()
        )
        calls = [service.gateway_call_for(attempt) for attempt in due]
    for call in calls:
        try:
            result = await service.call_gateway(gateway, call)
        except Exception:
            log.exception("payment attempt %s: the gateway could not answer", call.attempt_id)
            later = clock.now() + retry_after
            async with database.unit_of_work() as session:
                await session.execute(
                    update(PaymentAttempt)
                    .where(
                        PaymentAttempt.id == call.attempt_id,
                        PaymentAttempt.status == "processing",
                    )
                    .values(resolve_after=later)
                )
            continue
        complete = completers.get(call.purpose, _record_only)
        async with database.unit_of_work() as session:
            await complete(session, call, result, clock.now())
        log.info("payment attempt %s resolved: %s", call.attempt_id, result.status)
    return len(calls)
