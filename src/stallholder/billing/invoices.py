"""Reading invoices (they are made by ``subscriptions`` and ``renewal``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.billing.models import Invoice
from stallholder.kit.errors import NotFound
from stallholder.kit.pagination import Page, paginate


class InvoiceNotFound(NotFound):
    slug = "invoice-not-found"
    title = "No such invoice"


async def get_invoice(session: AsyncSession, *, creator_id: str, invoice_id: str) -> Invoice:
    """Raises InvoiceNotFound, for another creator's invoice too."""
    invoice = await session.get(Invoice, invoice_id, populate_existing=True)
    if invoice is None or invoice.creator_id != creator_id:
        raise InvoiceNotFound(f"no invoice {invoice_id!r}")
    return invoice


async def list_invoices(
    session: AsyncSession,
    *,
    creator_id: str,
    subscription_id: str | None,
    customer_id: str | None,
    status: str | None,
    limit: int,
    starting_after: str | None,
) -> Page[Invoice]:
    """The creator's invoices, newest first, filtered."""
    statement = select(Invoice).where(Invoice.creator_id == creator_id)
    if subscription_id is not None:
        statement = statement.where(Invoice.subscription_id == subscription_id)
    if customer_id is not None:
        statement = statement.where(Invoice.customer_id == customer_id)
    if status is not None:
        statement = statement.where(Invoice.status == status)
    return await paginate(
        session, statement, id_column=Invoice.id, limit=limit, starting_after=starting_after
    )
