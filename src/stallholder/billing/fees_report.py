"""What processing costs each creator's subscription revenue, beside what charging each
invoice on its own would have cost (``GET /v1/reports/fees``, ADR 0016).

For every paid invoice, the processing fee it bore is:

- paid by a card charge: the processor's fee on that charge (the attempt's actual fee);
- paid by a consolidated charge with the buyer's other invoices of the day (ADR 0019):
  its part of that charge's actual fee, split pro rata by ``allocation.allocate``;
- paid from the buyer's wallet: its share of the fees on the buyer's top-ups in that
  currency, at the rate those top-ups cost (fees ÷ amount topped up), rounded down. The
  platform pays that fee (ADR 0011), but it is what card processing cost the money.

The counterfactual is the processor's fee schedule applied to each invoice's amount as
a charge of its own (for the sandbox 2.9% + 30 cents: 39 cents, 13%, on $3).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.models import Customer
from stallholder.billing.models import ConsolidatedChargePart, Invoice
from stallholder.payments.models import PaymentAttempt
from stallholder.wallets.models import Wallet, WalletTopUp

# The processor's fee on one charge of (amount, currency).
FeeEstimate = Callable[[int, str], int]


def percent_of(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole`` with two decimals, rounded half up ("4.33");
    "0.00" of nothing. Computed in decimals: a float never touches an amount."""
    if whole <= 0:
        return "0.00"
    return str((Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01"), ROUND_HALF_UP))


@dataclass(frozen=True, slots=True)
class CreatorFees:
    """One creator's paid invoices in one currency and what processing them cost."""

    creator_id: str
    currency: str
    invoices_paid: int
    paid_by_card: int
    paid_from_wallet: int
    gross: int
    processing_fees: int
    separate_charges_fees: int

    @property
    def effective_fee_percent(self) -> str:
        return percent_of(self.processing_fees, self.gross)

    @property
    def separate_charges_percent(self) -> str:
        return percent_of(self.separate_charges_fees, self.gross)

    @property
    def saved(self) -> int:
        return self.separate_charges_fees - self.processing_fees


async def _top_up_rates(
    session: AsyncSession, *, buyer_ids: set[str]
) -> dict[tuple[str, str], tuple[int, int]]:
    """(amount topped up, processor fees on it) by (buyer, currency), succeeded top-ups."""
    if not buyer_ids:
        return {}
    rows = await session.execute(
        select(
            Wallet.buyer_id,
            WalletTopUp.currency,
            func.sum(WalletTopUp.amount),
            func.sum(PaymentAttempt.processor_fee),
        )
        .join(Wallet, Wallet.id == WalletTopUp.wallet_id)
        .join(
            PaymentAttempt,
            (PaymentAttempt.purpose == "wallet_top_up")
            & (PaymentAttempt.purpose_id == WalletTopUp.id)
            & (PaymentAttempt.status == "succeeded"),
        )
        .where(WalletTopUp.status == "succeeded", Wallet.buyer_id.in_(sorted(buyer_ids)))
        .group_by(Wallet.buyer_id, WalletTopUp.currency)
    )
    return {(buyer, currency): (int(amount), int(fees)) for buyer, currency, amount, fees in rows}


async def fee_report(
    session: AsyncSession, *, creator_id: str | None, estimate: FeeEstimate
) -> list[CreatorFees]:
    """Each creator's (one creator's, with ``creator_id``) paid invoices by currency, in
    creator and currency order, with the processing fees they bore and those that one
    charge per invoice would have cost by ``estimate``."""
    statement = (
        select(
            Invoice.creator_id,
            Invoice.currency,
            Invoice.amount_paid,
            Invoice.wallet_transaction_id,
            func.coalesce(ConsolidatedChargePart.processor_fee, PaymentAttempt.processor_fee).label(
                "processor_fee"
            ),
            Customer.buyer_id,
        )
        .join(Customer, Customer.id == Invoice.customer_id)
        .outerjoin(PaymentAttempt, PaymentAttempt.id == Invoice.payment_attempt_id)
        .outerjoin(
            ConsolidatedChargePart,
            (ConsolidatedChargePart.invoice_id == Invoice.id)
            & (ConsolidatedChargePart.charge_id == Invoice.consolidated_charge_id),
        )
        .where(Invoice.status == "paid", Invoice.amount_paid > 0)
    )
    if creator_id is not None:
        statement = statement.where(Invoice.creator_id == creator_id)
    rows = (await session.execute(statement)).all()
    rates = await _top_up_rates(
        session, buyer_ids={row.buyer_id for row in rows if row.wallet_transaction_id}
    )
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for row in rows:
        total = totals[(row.creator_id, row.currency)]
        total[0] += 1
        if row.wallet_transaction_id is not None:
            topped_up, fees = rates.get((row.buyer_id, row.currency), (0, 0))
            total[2] += 1
            total[4] += row.amount_paid * fees // topped_up if topped_up else 0
        else:
            total[1] += 1
            total[4] += row.processor_fee or 0
        total[3] += row.amount_paid
        total[5] += estimate(row.amount_paid, row.currency)
    return [
        CreatorFees(
            creator_id=creator,
            currency=currency,
            invoices_paid=count,
            paid_by_card=by_card,
            paid_from_wallet=from_wallet,
            gross=gross,
            processing_fees=fees,
            separate_charges_fees=separate,
        )
        for (creator, currency), (count, by_card, from_wallet, gross, fees, separate) in sorted(
            totals.items()
        )
    ]
