"""Shared pieces of API input and output schemas."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, field_validator

from stallholder.kit.money import normalize_currency


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple | set):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class Input(BaseModel):
    """Base of every request body: unknown fields are an error, not silently dropped.

    NUL characters are refused everywhere: PostgreSQL cannot store them in text, and no
    name, email or description needs one."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul_characters(cls, value: Any) -> Any:
        if _has_nul(value):
            raise ValueError("must not contain NUL (\\u0000) characters")
        return value


def _without_null(schema: dict[str, Any]) -> None:
    """A field's JSON schema without its ``null`` choice and ``null`` default."""
    choices = [choice for choice in schema.pop("anyOf", []) if choice.get("type") != "null"]
    if len(choices) == 1:
        schema.update(choices[0])
    elif choices:
        schema["anyOf"] = choices
    if schema.get("default", 0) is None:
        del schema["default"]


def omittable(**constraints: Any) -> Any:
    """A field of an update that may be left out (it then keeps its value) but not sent
    as null: declare it ``X | None = omittable(…)`` and refuse None with
    ``refuse_null``. The schema shows X alone, and an error's ``loc`` is the field's name
    (a union with a hidden None would add the union's branch names to it)."""
    return Field(default=None, json_schema_extra=_without_null, **constraints)


def refuse_null(value: Any) -> Any:
    """A field validator for ``omittable`` fields: an explicit null is refused."""
    if value is None:
        raise ValueError("leave the field out to keep it; it cannot be null")
    return value


def normalize_email(value: str) -> str:
    """The address as Stallholder stores and sends to it. Raises ``ValueError`` saying why
    ``value`` is not one.

    Syntax only (no DNS lookup: a slow or failing resolver must not stop a sale). Control
    characters, a second ``@``, a missing dot in the domain and non-ASCII local parts
    (which need SMTPUTF8, which not every relay speaks) are refused. The domain is
    lower-cased and kept in its ASCII (IDNA) form; the local part is kept as given, since
    only the receiving server may decide it is case-insensitive.
    """
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ValueError(f"not an email address: {error}") from None
    address = checked.ascii_email or checked.normalized
    if len(address) > 320:
        raise ValueError("not an email address: longer than 320 characters")
    return address


# Every address that enters (API bodies, the hosted page's form, the CLI) passes here.
Email = Annotated[str, AfterValidator(normalize_email)]
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
