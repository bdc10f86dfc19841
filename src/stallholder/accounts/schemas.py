from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator

from stallholder.accounts.models import Creator
from stallholder.accounts.origins import MAX_ORIGINS, normalise_origin
from stallholder.kit.money import MAX_FIXED_FEE
from stallholder.kit.schemas import Currency, Email, Input, Output

FixedFee = Annotated[StrictInt, Field(ge=0, le=MAX_FIXED_FEE)]
SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"


class CreatorCreate(Input):
    display_name: str = Field(min_length=1, max_length=200)
    email: Email
    slug: str | None = Field(default=None, pattern=SLUG_PATTERN)
    platform_fee_bps: StrictInt | None = Field(default=None, ge=0, le=10_000)
    # Per currency, in minor units of that currency: {"usd": 30, "jpy": 0}.
    platform_fee_fixed: dict[Currency, FixedFee] | None = Field(default=None, max_length=50)
    # Whether the public store index lists the creator (docs/store.md); opt-in.
    listed: StrictBool = False


class CreatorUpdate(Input):
    """The fields a creator may change; a field left out keeps its value.
    ``allowed_origins`` replaces the whole list."""

    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    listed: StrictBool | None = None
    allowed_origins: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None, max_length=MAX_ORIGINS
    )

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else sorted({normalise_origin(value) for value in values})


class CreatorOut(Output):
    object: Literal["creator"] = "creator"
    id: str
    slug: str
    display_name: str
    email: str
    platform_fee_bps: int | None
    platform_fee_fixed: dict[str, int] | None = Field(validation_alias="platform_fee_fixed_amounts")
    # The sites that may embed this creator's checkout (docs/checkout-pages.md).
    allowed_origins: list[str]
    listed: bool
    created: datetime = Field(validation_alias="created_at")


class CreatorWithKeys(CreatorOut):
    secret_key: str
    publishable_key: str


class KeysOut(BaseModel):
    object: Literal["api_keys"] = "api_keys"
    creator: str
    secret_key: str
    publishable_key: str


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


@cache
def _countries() -> frozenset[str]:
    from babel import Locale

    codes = (str(code) for code in Locale("en").territories)
    return frozenset(code for code in codes if len(code) == 2 and code != "ZZ")


def check_country(value: str | None) -> str | None:
    """An ISO 3166-1 alpha-2 code, upper-cased."""
    if value is None:
        return None
    code = value.upper()
    if code not in _countries():
        raise ValueError(f"unknown country {value!r}; use an ISO 3166-1 alpha-2 code such as 'DE'")
    return code


def check_time_zone(value: str) -> str:
    if value not in _zones():
        raise ValueError(f"unknown IANA time zone {value!r}; use a name such as 'Europe/Berlin'")
    return value


class CustomerCreate(Input):
    email: Email
    name: str | None = Field(default=None, max_length=200)
    time_zone: str = "UTC"
    # Where the buyer lives (ISO 3166-1 alpha-2): a buyer in the EU or UK has the 14-day
    # right of withdrawal (docs/billing.md, "Cooling-off").
    country: str | None = Field(default=None, min_length=2, max_length=2)
    # A billing test clock (``clock_…``): the customer is billed at the clock's time.
    test_clock: str | None = Field(default=None, max_length=40)

    @field_validator("time_zone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        return check_time_zone(value)

    @field_validator("country")
    @classmethod
    def _valid_country(cls, value: str | None) -> str | None:
        return check_country(value)


class CustomerOut(Output):
    object: Literal["customer"] = "customer"
    id: str
    email: str
    name: str | None
    time_zone: str
    country: str | None = None
    test_clock: str | None = Field(default=None, validation_alias="test_clock_id")
    created: datetime = Field(validation_alias="created_at")


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:63].strip("-") or "creator"


def creator_with_keys(
    creator: Creator, *, secret_key: str, publishable_key: str
) -> CreatorWithKeys:
    """A new creator with its keys, shown this once."""
    return CreatorWithKeys(
        **CreatorOut.model_validate(creator).model_dump(),
        secret_key=secret_key,
        publishable_key=publishable_key,
    )
