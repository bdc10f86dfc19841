"""Shared pieces of API input and output schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from stallholder.kit.money import normalize_currency


class Input(BaseModel):
    """Base of every request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or "." not in domain or " " in value or len(value) > 320:
        raise ValueError("not an email address")
    return value


Email = Annotated[str, AfterValidator(_check_email)]
Currency = Annotated[str, AfterValidator(normalize_currency)]
# Minor units. Strict: 10.5, 10.0 and "10" are all refused, so a float never becomes money.
Amount = Annotated[StrictInt, Field(ge=0, le=99_999_999_999)]


class Output(BaseModel):
    """Base of every response body; built from ORM objects by attribute."""

    model_config = ConfigDict(from_attributes=True, validate_by_name=True, validate_by_alias=True)


class MoneyOut(BaseModel):
    amount: int
    currency: str


class ListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
