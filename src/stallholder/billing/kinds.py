"""The kinds of due work billing enqueues, and their per-clock names (ADR 0010)."""

from __future__ import annotations

RENEW_KIND = "billing.renew"
CHARGE_KIND = "billing.charge_invoice"
REMIND_KIND = "billing.remind"
# Paying each creator its part of a consolidated charge by transfer (Stripe, ADR 0019):
# real-time work for the ordinary worker, whatever clock the buyer is billed on.
TRANSFER_KIND = "billing.transfer_consolidated"
BASE_KINDS = (RENEW_KIND, CHARGE_KIND, REMIND_KIND)
_CLOCK_SEPARATOR = "@"


def kind_for(base: str, *, test_clock_id: str | None) -> str:
    """The work kind of ``base`` for a customer: work bound to a test clock has a kind of
    its own per clock, which the real-time worker never registers; only advancing that
    clock runs it, at the clock's time (ADR 0010)."""
    return base if test_clock_id is None else f"{base}{_CLOCK_SEPARATOR}{test_clock_id}"


def clock_kinds(test_clock_id: str) -> list[str]:
    return [kind_for(base, test_clock_id=test_clock_id) for base in BASE_KINDS]
