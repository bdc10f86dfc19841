from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AnyHttpUrl, BaseModel, Field, StrictInt, UrlConstraints, model_validator

from stallholder.accounts.schemas import SLUG_PATTERN
from stallholder.catalog.models import Collection, Price
from stallholder.kit.schemas import Amount, Currency, Input, Output

ProductKind = Literal["digital", "physical", "service"]
ProductStatus = Literal["draft", "published", "archived"]
Interval = Literal["day", "week", "month", "year"]
# The longest billing cycle any interval may reach (Stripe's limit too): one year.
MAX_INTERVAL_COUNT = {"day": 365, "week": 52, "month": 12, "year": 1}


class Dimensions(Input):
    length_mm: StrictInt = Field(gt=0, le=10_000)
    width_mm: StrictInt = Field(gt=0, le=10_000)
    height_mm: StrictInt = Field(gt=0, le=10_000)


class VariantIn(Input):
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
    name: str | None = Field(default=None, max_length=200)
    weight_grams: StrictInt | None = Field(default=None, ge=0, le=1_000_000)
    dimensions: Dimensions | None = None


ImageUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2000)]


class ProductCreate(Input):
    kind: ProductKind
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    # Up to 8 image URLs (http/https); the checkout page shows the first.
    images: list[ImageUrl] = Field(default_factory=list, max_length=8)
    status: ProductStatus = "draft"
    variants: list[VariantIn] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _distinct_skus(self) -> Self:
        skus = [variant.sku for variant in self.variants]
        if len(skus) != len(set(skus)):
            raise ValueError("each variant needs its own sku")
        return self


class ProductUpdate(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=20_000)
    images: list[ImageUrl] | None = Field(default=None, max_length=8)
    status: ProductStatus | None = None


class VariantOut(Output):
    object: Literal["variant"] = "variant"
    id: str
    sku: str
    name: str
    is_default: bool
    weight_grams: int | None
    length_mm: int | None
    width_mm: int | None
    height_mm: int | None


class ProductOut(Output):
    object: Literal["product"] = "product"
    id: str
    kind: str
    name: str
    description: str
    images: list[str]
    status: str
    variants: list[VariantOut]
    created: datetime = Field(validation_alias="created_at")
    updated: datetime = Field(validation_alias="updated_at")


class Delivery(Input):
    """When each cycle is charged, closes for changes and ships (docs/billing.md)."""

    # Monthly plans: every subscriber is charged on this day of the month (clamped).
    charge_day: StrictInt | None = Field(default=None, ge=1, le=31)
    ship_days_after_charge: StrictInt = Field(default=0, ge=0, le=366)
    cutoff_days_before_ship: StrictInt = Field(default=0, ge=0, le=366)
    signup_after_cutoff: Literal["this_cycle", "next_cycle"] = "next_cycle"


class Recurring(Input):
    interval: Interval
    interval_count: StrictInt = Field(default=1, ge=1, le=365)
    trial_days: StrictInt = Field(default=0, ge=0, le=730)
    delivery: Delivery | None = None

    @model_validator(mode="after")
    def _at_most_a_year(self) -> Self:
        limit = MAX_INTERVAL_COUNT[self.interval]
        if self.interval_count > limit:
            raise ValueError(
                f"interval_count for {self.interval!r} may be at most {limit} (one year)"
            )
        if self.delivery is not None and self.delivery.charge_day is not None:
            if self.interval != "month":
                raise ValueError("delivery.charge_day is for monthly prices only")
            if self.trial_days:
                raise ValueError("a price with delivery.charge_day cannot have a trial")
        return self


class CustomUnitAmount(Input):
    """Pay what you want: the buyer chooses an amount of at least ``minimum``."""

    minimum: Amount
    maximum: Amount | None = None
    preset: Amount | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.maximum is not None and self.maximum < self.minimum:
            raise ValueError("maximum must not be below minimum")
        if self.preset is not None and (
            self.preset < self.minimum or (self.maximum is not None and self.preset > self.maximum)
        ):
            raise ValueError("preset must lie between minimum and maximum")
        return self


class PriceCreate(Input):
    product: str = Field(min_length=1, max_length=40)
    currency: Currency
    unit_amount: Amount | None = None
    custom_unit_amount: CustomUnitAmount | None = None
    recurring: Recurring | None = None
    nickname: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_way_to_charge(self) -> Self:
        if (self.unit_amount is None) == (self.custom_unit_amount is None):
            raise ValueError("give exactly one of unit_amount or custom_unit_amount")
        if self.custom_unit_amount is not None and self.recurring is not None:
            raise ValueError("pay-what-you-want prices are one-time; drop recurring")
        return self


class PriceUpdate(Input):
    active: bool | None = None
    nickname: str | None = Field(default=None, max_length=200)


class RecurringOut(BaseModel):
    interval: str
    interval_count: int
    trial_days: int
    delivery: dict[str, Any] | None = None


class CustomUnitAmountOut(BaseModel):
    minimum: int
    maximum: int | None
    preset: int | None


class PriceOut(BaseModel):
    object: Literal["price"] = "price"
    id: str
    product: str
    type: str
    currency: str
    unit_amount: int | None
    custom_unit_amount: CustomUnitAmountOut | None
    recurring: RecurringOut | None
    nickname: str | None
    active: bool
    created: datetime


class CollectionCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, pattern=SLUG_PATTERN)
    description: str = Field(default="", max_length=20_000)
    products: list[str] = Field(default_factory=list, max_length=500)


class CollectionUpdate(Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=20_000)
    products: list[str] | None = Field(default=None, max_length=500)


class CollectionOut(BaseModel):
    object: Literal["collection"] = "collection"
    id: str
    name: str
    slug: str
    description: str
    products: list[str]
    created: datetime


# Presenters: rows as the API shows them.


def price_out(price: Price) -> PriceOut:
    return PriceOut(
        id=price.id,
        product=price.product_id,
        type=price.type,
        currency=price.currency,
        unit_amount=price.unit_amount,
        custom_unit_amount=None
        if price.minimum_amount is None
        else CustomUnitAmountOut(
            minimum=price.minimum_amount, maximum=price.maximum_amount, preset=price.preset_amount
        ),
        recurring=None
        if price.recurring_interval is None
        else RecurringOut(
            interval=price.recurring_interval,
            interval_count=price.recurring_interval_count or 1,
            trial_days=price.trial_days or 0,
            delivery=price.delivery_calendar,
        ),
        nickname=price.nickname,
        active=price.is_active,
        created=price.created_at,
    )


def collection_out(collection: Collection, *, product_ids: list[str]) -> CollectionOut:
    return CollectionOut(
        id=collection.id,
        name=collection.name,
        slug=collection.slug,
        description=collection.description,
        created=collection.created_at,
        products=product_ids,
    )
