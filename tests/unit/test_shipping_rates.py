"""Choosing a shipping rate and pricing it: exact amounts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stallholder.fulfilment.rates import Quote, Rate, WeightBand, choose_rate, rate_amount

UK = Rate(
    id="shr_uk", display_name="Royal Mail", currency="gbp", countries=frozenset({"GB"}), amount=395
)
EU_BY_WEIGHT = Rate(
    id="shr_eu",
    display_name="EU parcel",
    currency="gbp",
    countries=frozenset({"DE", "FR", "IE"}),
    weight_bands=(WeightBand(500, 900), WeightBand(2000, 1500), WeightBand(5000, 2400)),
)
WORLD = Rate(
    id="shr_world", display_name="International", currency="gbp", countries=None, amount=1800
)
UK_FREE_FROM_50 = Rate(
    id="shr_uk_free",
    display_name="UK tracked",
    currency="gbp",
    countries=frozenset({"GB"}),
    amount=495,
    free_shipping_threshold=5000,
)
WORLD_USD = Rate(
    id="shr_world_usd", display_name="Worldwide", currency="usd", countries=None, amount=2500
)
ALL = (UK, EU_BY_WEIGHT, WORLD, WORLD_USD)


def test_a_flat_rate_charges_its_amount_whatever_the_weight() -> None:
    assert rate_amount(UK, subtotal=4000, weight_grams=0) == 395
    assert rate_amount(UK, subtotal=4000, weight_grams=30_000) == 395


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (0, 900),
        (1, 900),
        (500, 900),
        (501, 1500),
        (2000, 1500),
        (2001, 2400),
        (5000, 2400),
        (5001, None),
    ],
)
def test_weight_bands_are_inclusive_upper_limits(weight: int, expected: int | None) -> None:
    assert rate_amount(EU_BY_WEIGHT, subtotal=1000, weight_grams=weight) == expected


def test_free_from_the_threshold_inclusive() -> None:
    assert rate_amount(UK_FREE_FROM_50, subtotal=4999, weight_grams=350) == 495
    assert rate_amount(UK_FREE_FROM_50, subtotal=5000, weight_grams=350) == 0
    assert rate_amount(UK_FREE_FROM_50, subtotal=12_000, weight_grams=350) == 0


def test_free_shipping_does_not_stretch_a_weight_limit() -> None:
    capped = Rate(
        id="shr_c",
        display_name="Small parcel",
        currency="gbp",
        countries=None,
        weight_bands=(WeightBand(1000, 700),),
        free_shipping_threshold=2000,
    )
    assert rate_amount(capped, subtotal=9000, weight_grams=1000) == 0
    assert rate_amount(capped, subtotal=9000, weight_grams=1001) is None


def test_the_zone_naming_the_country_wins_over_rest_of_world() -> None:
    assert choose_rate(ALL, country="GB", currency="gbp", subtotal=4000, weight_grams=350) == Quote(
        "shr_uk", "Royal Mail", 395
    )
    assert choose_rate(ALL, country="DE", currency="gbp", subtotal=4000, weight_grams=700) == Quote(
        "shr_eu", "EU parcel", 1500
    )
    assert choose_rate(ALL, country="JP", currency="gbp", subtotal=4000, weight_grams=700) == Quote(
        "shr_world", "International", 1800
    )


def test_only_rates_in_the_session_currency_count() -> None:
    assert choose_rate(ALL, country="GB", currency="usd", subtotal=4000, weight_grams=350) == Quote(
        "shr_world_usd", "Worldwide", 2500
    )
    assert choose_rate(ALL, country="GB", currency="eur", subtotal=4000, weight_grams=350) is None


def test_a_named_zone_that_cannot_take_the_weight_does_not_fall_back_to_rest_of_world() -> None:
    assert choose_rate(ALL, country="FR", currency="gbp", subtotal=4000, weight_grams=6000) is None


def test_the_cheapest_rate_of_the_zone_wins_and_ties_go_to_the_first() -> None:
    express = Rate(
        id="shr_x", display_name="Express", currency="gbp", countries=frozenset({"GB"}), amount=995
    )
    same = Rate(
        id="shr_same",
        display_name="Also 3.95",
        currency="gbp",
        countries=frozenset({"GB"}),
        amount=395,
    )
    assert choose_rate(
        (express, UK, same), country="GB", currency="gbp", subtotal=100, weight_grams=1
    ) == Quote("shr_uk", "Royal Mail", 395)
    assert choose_rate(
        (express, UK_FREE_FROM_50, UK), country="GB", currency="gbp", subtotal=5000, weight_grams=1
    ) == Quote("shr_uk_free", "UK tracked", 0)


def test_no_rates_no_quote() -> None:
    assert choose_rate((), country="GB", currency="gbp", subtotal=100, weight_grams=1) is None


def test_a_rate_is_priced_one_way_and_its_bands_go_up() -> None:
    with pytest.raises(ValueError, match="not both"):
        Rate(id="r", display_name="x", currency="gbp", countries=None)
    with pytest.raises(ValueError, match="not both"):
        Rate(
            id="r",
            display_name="x",
            currency="gbp",
            countries=None,
            amount=1,
            weight_bands=(WeightBand(1, 1),),
        )
    with pytest.raises(ValueError, match="go up"):
        Rate(
            id="r",
            display_name="x",
            currency="gbp",
            countries=None,
            weight_bands=(WeightBand(500, 1), WeightBand(500, 2)),
        )


COUNTRIES = ["GB", "DE", "FR", "US", "JP"]


@st.composite
def rate_sets(draw: st.DrawFn) -> list[Rate]:
    rates = []
    for index in range(draw(st.integers(0, 6))):
        countries = draw(
            st.one_of(st.none(), st.frozensets(st.sampled_from(COUNTRIES), min_size=1))
        )
        if draw(st.booleans()):
            limits = sorted(draw(st.sets(st.integers(1, 5000), min_size=1, max_size=4)))
            bands = tuple(WeightBand(limit, draw(st.integers(0, 5000))) for limit in limits)
            rate = Rate(
                id=f"shr_{index}",
                display_name=f"rate {index}",
                currency=draw(st.sampled_from(["gbp", "usd"])),
                countries=countries,
                weight_bands=bands,
                free_shipping_threshold=draw(st.one_of(st.none(), st.integers(0, 20_000))),
            )
        else:
            rate = Rate(
                id=f"shr_{index}",
                display_name=f"rate {index}",
                currency=draw(st.sampled_from(["gbp", "usd"])),
                countries=countries,
                amount=draw(st.integers(0, 5000)),
                free_shipping_threshold=draw(st.one_of(st.none(), st.integers(0, 20_000))),
            )
        rates.append(rate)
    return rates


@given(
    rates=rate_sets(),
    country=st.sampled_from(COUNTRIES),
    currency=st.sampled_from(["gbp", "usd"]),
    subtotal=st.integers(0, 30_000),
    weight=st.integers(0, 6000),
)
def test_the_choice_is_the_first_cheapest_rate_of_the_country_zone(
    rates: list[Rate], country: str, currency: str, subtotal: int, weight: int
) -> None:
    chosen = choose_rate(
        rates, country=country, currency=currency, subtotal=subtotal, weight_grams=weight
    )
    in_currency = [r for r in rates if r.currency == currency]
    named = [r for r in in_currency if r.countries is not None and country in r.countries]
    zone = named or [r for r in in_currency if r.countries is None]
    priced = [
        (amount, position, rate)
        for position, rate in enumerate(zone)
        if (amount := rate_amount(rate, subtotal=subtotal, weight_grams=weight)) is not None
    ]
    if not priced:
        assert chosen is None
        return
    amount, _, rate = min(priced, key=lambda item: (item[0], item[1]))
    assert chosen == Quote(rate.id, rate.display_name, amount)
    assert chosen.amount >= 0
    if rate.free_shipping_threshold is not None and subtotal >= rate.free_shipping_threshold:
        assert chosen.amount == 0
