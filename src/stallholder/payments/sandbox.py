"""The sandbox gateway's memory of charges in the database (``sandbox_charges``).

A real processor remembers a charge by its idempotency key on its own side, so asking
again after a crash returns the first charge instead of making a second. The sandbox
does the same in a table of its own, written in short transactions of its own: it is
only ever called with no transaction of ours open (ADR 0007).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Row, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from stallholder.kit.db import Database
from stallholder.payments.gateway import ChargeRequest, ChargeResult, ChargeStatus
from stallholder.payments.models import SandboxCharge


def _result(row: Row[Any]) -> ChargeResult:
    status: ChargeStatus = "succeeded"
    if row.status in ("requires_action", "failed"):
        status = "requires_action" if row.status == "requires_action" else "failed"
    return ChargeResult(
        status=status,
        reference=row.reference,
        processor_fee=row.processor_fee,
        decline_code=row.decline_code,
        message=row.message,
        is_transient=row.is_transient,
    )


class DatabaseChargeStore:
    """A ``ChargeStore`` that survives a crash of the process."""

    def __init__(self, database: Database) -> None:
        self.database = database
        # One statement, built once (Core, not an ORM entity: only the result is read
        # back): a new key stores the result; a known key only counts the call and
        # returns what was stored first.
        table = cast(Table, SandboxCharge.__table__)
        insert = sqlite.insert if database.is_sqlite else postgresql.insert
        self._remember = (
            insert(table)
            .on_conflict_do_update(
                index_elements=[table.c.idempotency_key], set_={"calls": table.c.calls + 1}
            )
            .returning(
                table.c.status,
                table.c.reference,
                table.c.processor_fee,
                table.c.decline_code,
                table.c.message,
                table.c.is_transient,
            )
        )

    async def remember(
        self, request: ChargeRequest, result: ChargeResult, *, is_off_session: bool
    ) -> ChargeResult:
        values = {
            "idempotency_key": request.idempotency_key,
            "creator_id": request.metadata.get("creator"),
            "amount": request.amount,
            "currency": request.currency,
            "payment_method": request.payment_method,
            "is_off_session": is_off_session,
            "status": result.status,
            "reference": result.reference,
            "processor_fee": result.processor_fee,
            "decline_code": result.decline_code,
            "message": result.message,
            "is_transient": result.is_transient,
            "calls": 1,
        }
        async with self.database.one_statement() as connection:
            row = (await connection.execute(self._remember, values)).one()
            return _result(row)

    async def count(self, *, status: str | None = None) -> int:
        """How many charges the sandbox has made (by distinct key), for tests and the CLI."""
        async with self.database.unit_of_work() as session:
            statement = select(func.count()).select_from(SandboxCharge)
            if status is not None:
                statement = statement.where(SandboxCharge.status == status)
            return int((await session.execute(statement)).scalar_one())
