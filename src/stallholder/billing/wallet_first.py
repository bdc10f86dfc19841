"""Invoices paid from the buyer's wallet before any card is charged (ADR 0016).

When an invoice's charge comes due, the buyer's prepaid wallet in the invoice's currency
pays it if it holds the **whole** amount: one conditional debit (``wallets.service.
pay_from_wallet``) in the transaction that holds the invoice's lock, with the ledger
moving the amount from the wallet liability to the creator (less the platform's fee; no
processor fee, as no card is charged). A wallet that holds less pays nothing and the card
is charged the whole amount, as before.

Why not part of it, as Stripe applies a customer balance partially: the point of the
wallet is to spare a small amount the card's fixed fee, and a card charge for the rest
pays that fixed fee all the same (30 cents on a 50-cent remainder is 60%). A wallet that
runs low asks for its auto top-up instead (``pay_from_wallet`` enqueues it), and the
next renewal is paid from it. It also keeps one invoice paid by one means, so a refund
or a failure never has to be unwound across two.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Creator, Customer
from stallholder.billing.models import Invoice
from stallholder.ledger.fees import FeeSchedule
from stallholder.orders import service as orders
from stallholder.wallets import service as wallets

PURPOSE = "invoice"


async def pay_invoice(
    session: AsyncSession, *, invoice: Invoice, fees: FeeSchedule, at: datetime
) -> wallets.WalletPayment | None:
    """Pay the (locked, open) invoice's whole amount from its buyer's wallet, recording
    the movement on the invoice; None when the wallet does not hold it (nothing changed,
    but an auto top-up may have been enqueued). Paying an invoice twice is impossible:
    a wallet payment is unique per invoice."""
    if invoice.amount_due <= 0:
        return None
    customer = await session.get(Customer, invoice.customer_id)
    creator = await session.get(Creator, invoice.creator_id)
    assert customer is not None
    assert creator is not None
    try:
        payment = await wallets.pay_from_wallet(
            session,
            buyer_id=customer.buyer_id,
            creator_id=invoice.creator_id,
            amount=invoice.amount_due,
            currency=invoice.currency,
            purpose=PURPOSE,
            purpose_id=invoice.id,
            fee_policy=orders.fee_policy_for(creator, fees, currency=invoice.currency),
            now=at,
        )
    except wallets.InsufficientWalletBalance:
        return None
    invoice.wallet_transaction_id = payment.transaction.id
    return payment


async def read_wallets(session: AsyncSession, *, invoices: Sequence[Invoice]) -> None:
    """For a batch of invoices to charge: which of their buyers have no wallet in the
    invoices' currencies, one statement (``wallets.read_wallets``); their customers are
    read already."""
    buyer_ids = []
    for invoice in invoices:
        customer = await session.get(Customer, invoice.customer_id)
        if customer is not None:
            buyer_ids.append(customer.buyer_id)
    await wallets.read_wallets(
        session, buyer_ids=buyer_ids, currencies=[invoice.currency for invoice in invoices]
    )


async def refund_invoice(
    session: AsyncSession, *, invoice: Invoice, amount: int, at: datetime
) -> None:
    """Give ``amount`` of a wallet-paid invoice back to the buyer's wallet (an immediate
    cancellation inside the cooling-off window), once per invoice."""
    await wallets.refund_to_wallet(
        session, purpose=PURPOSE, purpose_id=invoice.id, amount=amount, now=at
    )
