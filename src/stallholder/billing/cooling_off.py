"""The right of withdrawal (cooling-off) by the buyer's country. Pure.

EU consumers (Directive 2011/83/EU, art. 9) and UK consumers (the Consumer Contracts
Regulations 2013, reg. 29) may withdraw from a distance contract within 14 days. For a
subscription, withdrawing is an immediate cancellation with the unused part of the
current period refunded pro rata (``cancellation.cancel``). Buyers elsewhere, or whose
country is not known, cancel as Stripe's API does: at the period's end by default, or at
once with no refund (docs/billing.md, "Cooling-off").
"""

from __future__ import annotations

WITHDRAWAL_DAYS = 14

# The 27 EU member states and the United Kingdom (ISO 3166-1 alpha-2; Greece is GR).
EU_UK_COUNTRIES = frozenset(
    {
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
        "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "GB",
    }
)  # fmt: skip


def cooling_off_days(country: str | None) -> int:
    """Days after signup in which an immediate cancellation is refunded pro rata: 14 for
    a buyer in the EU or the UK, else 0 (no statutory right; none is granted)."""
    if country is not None and country.upper() in EU_UK_COUNTRIES:
        return WITHDRAWAL_DAYS
    return 0
