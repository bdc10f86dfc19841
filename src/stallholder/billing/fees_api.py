"""HTTP route for the processing-fee report (ADR 0016)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request

from stallholder.accounts.auth import (
    ADMIN_KEY_SCHEME,
    SECRET_KEY_SCHEME,
    CreatorKeyRequired,
    PrincipalDep,
)
from stallholder.accounts.service import PublishableKeyNotAllowed
from stallholder.billing import fees_report
from stallholder.kit.http import SessionDep
from stallholder.kit.openapi import documents
from stallholder.kit.schemas import Output
from stallholder.payments.gateway import Gateway

router = APIRouter(prefix="/v1", tags=["reports"])


@documents(
    CreatorKeyRequired, PublishableKeyNotAllowed, accepts=(ADMIN_KEY_SCHEME, SECRET_KEY_SCHEME)
)
async def report_scope(principal: PrincipalDep) -> str | None:
    """The admin (None: every creator) or the creator of a secret key (its own only)."""
    if principal.is_admin:
        return None
    if principal.creator_id is None:
        raise CreatorKeyRequired("use the admin key or a creator's secret key (sk_…)")
    if principal.kind != "secret":
        raise PublishableKeyNotAllowed("reports need the secret key (sk_…) or the admin key")
    return principal.creator_id


ReportScopeDep = Annotated[str | None, Depends(report_scope)]


class CreatorFeesOut(Output):
    object: Literal["creator_fees"] = "creator_fees"
    creator: str
    currency: str
    invoices_paid: int
    paid_by_card: int
    paid_from_wallet: int
    gross: int
    processing_fees: int
    effective_fee_percent: str
    separate_charges_fees: int
    separate_charges_percent: str
    saved: int


class FeeReportOut(Output):
    object: Literal["fee_report"] = "fee_report"
    data: list[CreatorFeesOut]


@router.get("/reports/fees", response_model=FeeReportOut)
async def get_fee_report(
    scope: ReportScopeDep, request: Request, session: SessionDep
) -> FeeReportOut:
    """Each creator's paid invoices by currency: the processing fees they bore (card
    charges, and the wallet's share of its top-ups' fees) as amounts and as a percentage
    of gross, beside what charging each invoice on its own would have cost. A creator's
    key sees its own; the admin key every creator's."""
    gateway: Gateway = request.app.state.gateway
    rows = await fees_report.fee_report(
        session,
        creator_id=scope,
        estimate=lambda amount, currency: gateway.estimate_processor_fee(
            amount=amount, currency=currency
        ),
    )
    return FeeReportOut(
        data=[
            CreatorFeesOut(
                creator=row.creator_id,
                currency=row.currency,
                invoices_paid=row.invoices_paid,
                paid_by_card=row.paid_by_card,
                paid_from_wallet=row.paid_from_wallet,
                gross=row.gross,
                processing_fees=row.processing_fees,
                effective_fee_percent=row.effective_fee_percent,
                separate_charges_fees=row.separate_charges_fees,
                separate_charges_percent=row.separate_charges_percent,
                saved=row.saved,
            )
            for row in rows
        ]
    )
