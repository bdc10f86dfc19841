"""Shipping addresses checked per country against Google's address data."""

from __future__ import annotations

import pytest

from stallholder.fulfilment.addresses import (
    InvalidShippingAddress,
    ShippingAddress,
    address_lines,
    address_problems,
    is_country,
    validate_address,
)


def fields(address: ShippingAddress) -> dict[str, str]:
    return {p.field: p.message for p in address_problems(address)}


def test_a_us_address_gets_its_state_code() -> None:
    address = ShippingAddress(
        name="Ada",
        line1="1600 Amphitheatre Pkwy",
        city="Mountain View",
        state="California",
        postal_code="94043",
        country="us",
    )
    assert validate_address(address) == ShippingAddress(
        name="Ada",
        line1="1600 Amphitheatre Pkwy",
        city="Mountain View",
        state="CA",
        postal_code="94043",
        country="US",
    )


def test_a_us_zip_must_match_the_state() -> None:
    address = ShippingAddress(
        name="Ada",
        line1="1 Main St",
        city="New York",
        state="NY",
        postal_code="94043",
        country="US",
    )
    assert list(fields(address)) == ["postal_code"]
    assert fields(address)["postal_code"] == (
        "not a valid ZIP code for this address in United States (e.g. 95014, 22162-1010)"
    )


def test_a_us_address_needs_city_state_and_zip() -> None:
    problems = fields(ShippingAddress(name="Ada", line1="1 Main St", country="US"))
    assert problems == {
        "city": "required for an address in United States",
        "postal_code": "required for an address in United States",
        "state": "required for an address in United States",
    }


def test_an_unknown_state_lists_the_choices() -> None:
    problems = fields(
        ShippingAddress(
            name="A", line1="1 Main", city="X", state="Atlantis", postal_code="10001", country="US"
        )
    )
    assert problems["state"].startswith("not a state of United States; one of: AL, AK, AS, AZ")


def test_a_uk_postcode_is_checked_and_kept_upper_case() -> None:
    good = ShippingAddress(
        name="Bo", line1="10 Downing St", city="London", postal_code="sw1a 2aa", country="GB"
    )
    assert validate_address(good).postal_code == "SW1A 2AA"
    bad = ShippingAddress(
        name="Bo", line1="10 Downing St", city="London", postal_code="12345", country="GB"
    )
    assert list(fields(bad)) == ["postal_code"]


def test_german_postcodes_have_five_digits() -> None:
    base = {"name": "Cy", "line1": "Unter den Linden 1", "city": "Berlin", "country": "DE"}
    assert fields(ShippingAddress(**base, postal_code="10117")) == {}
    assert list(fields(ShippingAddress(**base, postal_code="1011"))) == ["postal_code"]


def test_hong_kong_needs_no_city_or_postal_code_but_a_region() -> None:
    assert (
        fields(ShippingAddress(name="Di", line1="1 Nathan Rd", state="Kowloon", country="HK")) == {}
    )
    assert list(fields(ShippingAddress(name="Di", line1="1 Nathan Rd", country="HK"))) == ["state"]


def test_a_city_the_country_does_not_use_is_kept_as_typed() -> None:
    address = ShippingAddress(
        name="Di", line1="1 Nathan Rd", city="Tsim Sha Tsui", state="Kowloon", country="HK"
    )
    assert validate_address(address).city == "Tsim Sha Tsui"


def test_an_unknown_country_and_a_blank_name() -> None:
    assert fields(ShippingAddress(name=" ", line1="x", country="XX")) == {
        "name": "required: who the parcel is for",
        "country": "not an ISO 3166-1 alpha-2 country code (e.g. GB, US, DE)",
    }


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("GB", True),
        ("gb", True),
        ("ZZ", False),
        ("XX", False),
        ("G", False),
        ("G1", False),
        ("ÄB", False),
    ],
)
def test_is_country(code: str, expected: bool) -> None:
    assert is_country(code) is expected


def test_the_error_names_every_field_at_once() -> None:
    with pytest.raises(InvalidShippingAddress) as caught:
        validate_address(ShippingAddress(name="Ada", line1="1 Main St", country="US"))
    assert caught.value.status == 422
    assert [e["loc"] for e in caught.value.extensions["errors"]] == [
        "shipping_address.city",
        "shipping_address.postal_code",
        "shipping_address.state",
    ]


def test_the_stored_form_round_trips() -> None:
    address = ShippingAddress(
        name="A", line1="1", line2="Flat 2", city="C", postal_code="P", state="S", country="GB"
    )
    assert ShippingAddress.from_dict(address.as_dict()) == address


def test_address_lines_follow_the_country_format() -> None:
    address = ShippingAddress(
        name="Mug Lover",
        line1="350 Fifth Avenue",
        line2="Floor 2",
        city="New York",
        state="NY",
        postal_code="10118",
        country="US",
    )
    assert address_lines(address) == [
        "Mug Lover",
        "350 Fifth Avenue",
        "Floor 2",
        "NEW YORK, NY 10118",
        "UNITED STATES",
    ]
