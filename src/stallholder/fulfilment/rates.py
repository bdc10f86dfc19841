"""Which shipping rate a parcel gets, and what it costs: pure functions, integers only.

A creator's rates each cover one zone: a set of ISO 3166-1 countries, or the rest of the
world (every country no zone of theirs names). A rate is flat, or priced by the parcel's
weight in bands; it may ship free once the order's subtotal reaches a threshold. Amounts
are minor units of the rate's one currency, so a rate only ever prices sessions in that
currency.

Choosing, as Shopify's shipping zones do: the zone is decided by the country first (a
zone that names the country wins over rest of world), and only that zone's rates are
candidates; a rate priced by weight takes a parcel only up to its heaviest band. The
cheapest candidate wins; on a tie the one listed first (the oldest) does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WeightBand:
    """Parcels weighing at most ``up_to_grams`` (and more than the band before) cost
    ``amount``."""

    up_to_grams: int
    amount: int


@dataclass(frozen=True, slots=True)
class Rate:
    """One shipping rate. Exactly one of ``amount`` (flat) and ``weight_bands`` (by weight,
    ascending ``up_to_grams``) prices it. ``countries`` None is the rest of the world."""

    id: str
    display_name: str
    currency: str
    countries: frozenset[str] | None
    amount: int | None = None
    weight_bands: tuple[WeightBand, ...] = ()
    free_shipping_threshold: int | None = None

    def __post_init__(self) -> None:
        if (self.amount is None) == (not self.weight_bands):
            raise ValueError("a rate is flat (amount) or by weight (weight_bands), not both")
        limits = [band.up_to_grams for band in self.weight_bands]
        if limits != sorted(set(limits)):
            raise ValueError("weight bands must go up strictly")

    @property
    def is_rest_of_world(self) -> bool:
        return self.countries is None


@dataclass(frozen=True, slots=True)
class Quote:
    """The rate chosen for a parcel and what it charges (0 when shipping is free)."""

    rate_id: str
    display_name: str
    amount: int


def rate_amount(rate: Rate, *, subtotal: int, weight_grams: int) -> int | None:
    """What ``rate`` charges for a parcel of ``weight_grams`` on an order of ``subtotal``,
    or None when the rate cannot take it (heavier than its heaviest band). An order whose
    subtotal is at least the free-shipping threshold ships free."""
    if rate.weight_bands:
        band = next((b for b in rate.weight_bands if weight_grams <= b.up_to_grams), None)
        if band is None:
            return None
        price = band.amount
    else:
        assert rate.amount is not None
        price = rate.amount
    if rate.free_shipping_threshold is not None and subtotal >= rate.free_shipping_threshold:
        return 0
    return price


def zone_rates(rates: Iterable[Rate], *, country: str, currency: str) -> list[Rate]:
    """The rates of the zone ``country`` falls in, in ``currency``: those naming the
    country if any do, else the rest-of-world ones."""
    priced = [rate for rate in rates if rate.currency == currency]
    named = [rate for rate in priced if rate.countries is not None and country in rate.countries]
    return named or [rate for rate in priced if rate.is_rest_of_world]


def choose_rate(
    rates: Sequence[Rate], *, country: str, currency: str, subtotal: int, weight_grams: int
) -> Quote | None:
    """The cheapest rate of ``country``'s zone that takes the parcel, or None when no rate
    ships there in ``currency`` (or none takes that weight). Ties go to the rate listed
    first."""
    best: Quote | None = None
    for rate in zone_rates(rates, country=country, currency=currency):
        amount = rate_amount(rate, subtotal=subtotal, weight_grams=weight_grams)
        if amount is not None and (best is None or amount < best.amount):
            best = Quote(rate_id=rate.id, display_name=rate.display_name, amount=amount)
    return best
