"""Money as integer minor units beside an ISO 4217 currency (ADR 0001).

Currency exponents and formatting come from babel; a float never touches an amount.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache

from babel.numbers import format_currency, get_currency_precision, list_currencies

# Codes ISO 4217 reserves for funds, metals and testing; nobody sells in them.
_NOT_SELLABLE = frozenset(
    {
        "XAU",
        "XAG",
        "XPT",
        "XPD",
        "XTS",
        "XXX",
        "XBA",
        "XBB",
        "XBC",
        "XBD",
        "XDR",
        "XSU",
        "XUA",
        "BOV",
        "CHE",
        "CHW",
        "CLF",
        "COU",
        "MXV",
        "USN",
        "USS",
        "UYI",
        "UYW",
    }
)


@cache
def _sellable_currencies() -> frozenset[str]:
    return frozenset(code for code in list_currencies() if code not in _NOT_SELLABLE)


def is_currency(code: str) -> bool:
    """Whether ``code`` (any case) is an ISO 4217 currency one can sell in."""
    return len(code) == 3 and code.upper() in _sellable_currencies()


def normalize_currency(code: str) -> str:
    """Lower-case ISO code, as the API shows it. Raises ``ValueError`` when unknown."""
    if not is_currency(code):
        raise ValueError(f"unknown currency {code!r}; use an ISO 4217 code such as 'usd'")
    return code.lower()


def exponent(currency: str) -> int:
    """Digits after the decimal point: 2 for usd, 0 for jpy, 3 for kwd."""
    return int(get_currency_precision(currency.upper()))


# A fixed fee (platform or processor) is at most this many minor units of its currency.
MAX_FIXED_FEE = 99_999_999

# The fixed part of a typical card fee in each currency's own minor units (Stripe's published
# pricing in those markets): the sandbox charges it, and the Stripe gateway estimates with it
# unless STALLHOLDER_STRIPE_FEE_FIXED says otherwise. JPY cards carry no fixed part; a
# currency not listed has none.
CARD_FIXED_FEES: dict[str, int] = {
    "usd": 30,
    "eur": 25,
    "gbp": 20,
    "cad": 30,
    "aud": 30,
    "chf": 30,
    "jpy": 0,
}


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount, bool) or not isinstance(self.amount, int):
            raise TypeError("Money.amount must be an int of minor units")

    def major(self) -> Decimal:
        """The amount in major units, exactly: ``1500 usd`` is ``Decimal("15.00")``."""
        return Decimal(self.amount).scaleb(-exponent(self.currency))

    def format(self, locale: str = "en_US") -> str:
        return _formatted(self.amount, self.currency, locale)


@functools.lru_cache(maxsize=4096)
def _formatted(amount: int, currency: str, locale: str) -> str:
    """``Money.format``, remembered: Babel takes a fifth of a millisecond per call, and the
    same prices are formatted again and again (receipts, presenters, pages)."""
    major = Decimal(amount).scaleb(-exponent(currency))
    return str(format_currency(major, currency.upper(), locale=locale))


def apply_basis_points(amount: int, bps: int) -> int:
    """``amount × bps / 10 000``, rounded half up, in integers."""
    if amount < 0 or bps < 0:
        raise ValueError("amount and basis points must be non-negative")
    return (amount * bps + 5_000) // 10_000


def prorate(part: int, whole: int, total: int) -> int:
    """``total × part / whole`` rounded down: the share of ``total`` that ``part`` of ``whole`` is.

    Used cumulatively (share of everything refunded so far minus share refunded before),
    so the shares of parts that add up to ``whole`` add up to exactly ``total``.
    """
    if whole <= 0:
        raise ValueError("whole must be positive")
    if not 0 <= part <= whole:
        raise ValueError("part must lie within [0, whole]")
    return total * part // whole


def parse_major(text: str, currency: str) -> int:
    """A typed amount in major units ("5", "5.00", "1,250.5") as minor units of
    ``currency`` (500, 500, 125050 in usd). Raises ``ValueError`` for anything else, or
    for more decimals than the currency has."""
    cleaned = text.strip().replace(",", "")
    try:
        major = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not an amount; type it as 5 or 5.00") from None
    if not major.is_finite():
        raise ValueError(f"{text!r} is not an amount; type it as 5 or 5.00")
    minor = major.scaleb(exponent(currency))
    if minor != minor.to_integral_value():
        raise ValueError(
            f"{text!r} has more decimals than {currency.upper()} has ({exponent(currency)})"
        )
    return int(minor)
