"""Pure fee and split calculations. Integers only; every split adds back up exactly.

Sign convention of the journal (ADR 0001): each line is a signed amount; a transaction's
lines sum to zero per currency. A positive line on ``creator:<id>:balance`` is money the
platform owes the creator; ``external:buyer_funds`` goes negative as buyers pay in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stallholder.kit.money import apply_basis_points, prorate


@dataclass(frozen=True, slots=True)
class FeePolicy:
    """The platform's fee on a charge in one currency: basis points of the amount plus a
    fixed part in minor units *of that currency* (30 is $0.30, but ¥30 or 0.030 KWD)."""

    bps: int
    fixed: int


@dataclass(frozen=True, slots=True)
class FeeSchedule:
    """The platform's fee in every currency (ADR 0006).

    The basis points apply to any amount; a fixed part only means something beside its
    currency, so ``fixed`` maps a lower-case ISO code to minor units of that currency. A
    currency with no entry has no fixed part: the fee is never charged in a unit that
    was meant for another currency.
    """

    bps: int
    fixed: Mapping[str, int] = field(default_factory=dict)

    def for_currency(self, currency: str) -> FeePolicy:
        return FeePolicy(bps=self.bps, fixed=self.fixed.get(currency.lower(), 0))

    def overridden(self, *, bps: int | None, fixed: Mapping[str, int] | None) -> FeeSchedule:
        """This schedule with a creator's own terms on top: their basis points when set, and
        their fixed part in each currency they name (the rest keep this schedule's)."""
        return FeeSchedule(
            bps=self.bps if bps is None else bps,
            fixed={**self.fixed, **{code.lower(): value for code, value in (fixed or {}).items()}},
        )


def platform_fee(amount: int, policy: FeePolicy, *, processor_fee: int) -> int:
    """The platform's fee on ``amount``, never more than what is left after the processor fee."""
    return min(
        apply_basis_points(amount, policy.bps) + policy.fixed, max(0, amount - processor_fee)
    )


@dataclass(frozen=True, slots=True)
class ChargeFees:
    """The fees of a charge, fixed before it is made.

    The creator bears the processor's fee and pays the platform's, so the platform side
    keeps ``application_fee`` of the charge: with Stripe Connect that is the
    ``application_fee_amount``, and the creator's connected account receives exactly
    ``amount - application_fee``, the creator's share in the ledger.
    """

    platform_fee: int
    estimated_processor_fee: int

    @property
    def application_fee(self) -> int:
        return self.platform_fee + self.estimated_processor_fee


def fees_before_charge(
    amount: int, policy: FeePolicy, *, estimated_processor_fee: int
) -> ChargeFees:
    """The platform's fee on ``amount`` and the processor fee the creator bears, before
    charging: the platform fee is capped at what the estimated processor fee leaves."""
    processor = max(0, min(amount, estimated_processor_fee))
    return ChargeFees(
        platform_fee=platform_fee(amount, policy, processor_fee=processor),
        estimated_processor_fee=processor,
    )


@dataclass(frozen=True, slots=True)
class Split:
    """How ``gross`` divides: ``creator + platform_fee + processor_fee == gross``."""

    gross: int
    platform_fee: int
    processor_fee: int

    @property
    def creator(self) -> int:
        return self.gross - self.platform_fee - self.processor_fee


def payment_split(gross: int, *, platform_fee: int, processor_fee: int) -> Split:
    if not 0 <= platform_fee + processor_fee <= gross:
        raise ValueError("fees must be non-negative and at most the gross amount")
    return Split(gross=gross, platform_fee=platform_fee, processor_fee=processor_fee)


def _reversed_by(payment: Split, refunded: int) -> tuple[int, int, int]:
    """(creator, platform fee, processor fee) reversed once ``refunded`` of the payment is.

    The creator's share is prorated (rounded down); the rest is the fees' share, split
    between them the same way. Each part only grows as ``refunded`` grows and reaches its
    original amount exactly at a full refund, so no refund ever takes back more from a
    party than it received, and no part of a refund is negative.
    """
    creator = prorate(refunded, payment.gross, payment.creator)
    fees = refunded - creator
    fee_total = payment.platform_fee + payment.processor_fee
    platform = prorate(fees, fee_total, payment.platform_fee) if fee_total else 0
    return creator, platform, fees - platform


def creator_share_left(payment: Split, *, refunded: int) -> int:
    """The creator's share of ``payment`` that is left once ``refunded`` of it is refunded:
    its share less what the refunds reverse from it (cumulative, as ``refund_split``), so
    a payment paid to the creator later (a transfer) pays exactly the ledger's balance of it.
    """
    if not 0 <= refunded <= payment.gross:
        raise ValueError("refunded must be between 0 and the payment's gross amount")
    return payment.creator - _reversed_by(payment, refunded)[0]


def refund_split(payment: Split, *, refunded_before: int, amount: int) -> Split:
    """The share of ``payment`` that refunding ``amount`` reverses, after ``refunded_before``.

    Computed cumulatively (what everything refunded so far reverses, minus what earlier
    refunds reversed), so refunds that add up to the whole payment reverse exactly the
    whole payment, to the minor unit.
    """
    if amount <= 0 or refunded_before < 0 or refunded_before + amount > payment.gross:
        raise ValueError("refund must be positive and not exceed what remains")
    _, platform_before, processor_before = _reversed_by(payment, refunded_before)
    _, platform_after, processor_after = _reversed_by(payment, refunded_before + amount)
    return Split(
        gross=amount,
        platform_fee=platform_after - platform_before,
        processor_fee=processor_after - processor_before,
    )
