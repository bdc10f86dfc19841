from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, Field, StrictInt, model_validator

from stallholder.fulfilment.addresses import ShippingAddress, is_country
from stallholder.fulfilment.models import Shipment, ShippingRate
from stallholder.kit.schemas import Amount, Currency, Input


def _country_code(value: str) -> str:
    if not is_country(value):
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code (e.g. GB, US)")
    return value.upper()


Country = Annotated[str, Field(min_length=2, max_length=2), AfterValidator(_country_code)]


class ShippingAddressIn(Input):
    """Where a parcel goes. Which of ``city``, ``postal_code`` and ``state`` an address
    needs depends on its country (checked against Google's address data)."""

    name: str = Field(min_length=1, max_length=200)
    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str | None = Field(default=None, max_length=100)
    postal_code: str | None = Field(default=None, max_length=20)
    state: str | None = Field(default=None, max_length=100)
    country: Country = Field(description="ISO 3166-1 alpha-2: GB, US")

    def to_address(self) -> ShippingAddress:
        return ShippingAddress(
            name=self.name,
            line1=self.line1,
            line2=self.line2 or None,
            city=self.city or None,
            postal_code=self.postal_code or None,
            state=self.state or None,
            country=self.country.upper(),
        )


class Zone(Input):
    """``countries``: the countries this rate ships to; ``rest_of_world``: every country
    none of the creator's other zones names."""

    type: Literal["countries", "rest_of_world"]
    countries: list[Country] | None = Field(default=None, min_length=1, max_length=250)

    @model_validator(mode="after")
    def _countries_match_type(self) -> Self:
        if self.type == "countries" and not self.countries:
            raise ValueError("a 'countries' zone lists at least one country")
        if self.type == "rest_of_world" and self.countries is not None:
            raise ValueError("a 'rest_of_world' zone lists no countries")
        return self


class WeightBandIn(Input):
    up_to_grams: StrictInt = Field(gt=0, le=1_000_000)
    amount: Amount


def _check_bands(bands: list[WeightBandIn] | None) -> None:
    if bands is None:
        return
    limits = [band.up_to_grams for band in bands]
    if limits != sorted(set(limits)):
        raise ValueError("weight_bands must be in strictly increasing up_to_grams")


class ShippingRateCreate(Input):
    display_name: str = Field(min_length=1, max_length=100)
    zone: Zone
    currency: Currency
    type: Literal["flat", "by_weight"]
    amount: Amount | None = Field(default=None, description="flat rates: the price")
    weight_bands: list[WeightBandIn] | None = Field(
        default=None,
        min_length=1,
        max_length=50,
        description="by_weight rates: parcels up to each band's weight cost its amount; "
        "a parcel heavier than the last band is not taken by this rate",
    )
    free_shipping_threshold: Amount | None = Field(
        default=None, description="orders whose subtotal is at least this ship free"
    )

    @model_validator(mode="after")
    def _priced_by_type(self) -> Self:
        if self.type == "flat" and (self.amount is None or self.weight_bands is not None):
            raise ValueError("a flat rate has 'amount' and no 'weight_bands'")
        if self.type == "by_weight" and (self.weight_bands is None or self.amount is not None):
            raise ValueError("a by_weight rate has 'weight_bands' and no 'amount'")
        _check_bands(self.weight_bands)
        return self


class ShippingRateUpdate(Input):
    """What may change on a rate. Its zone, currency and type stay: make a new rate and
    deactivate this one. Sessions keep the price they were quoted."""

    display_name: str | None = Field(default=None, min_length=1, max_length=100)
    active: bool | None = None
    amount: Amount | None = None
    weight_bands: list[WeightBandIn] | None = Field(default=None, min_length=1, max_length=50)
    # Send null to remove the threshold.
    free_shipping_threshold: Amount | None = None

    @model_validator(mode="after")
    def _bands_ascend(self) -> Self:
        _check_bands(self.weight_bands)
        return self


class WeightBandOut(BaseModel):
    up_to_grams: int
    amount: int


class ZoneOut(BaseModel):
    type: Literal["countries", "rest_of_world"]
    countries: list[str] | None


class ShippingRateOut(BaseModel):
    object: Literal["shipping_rate"] = "shipping_rate"
    id: str
    display_name: str
    active: bool
    zone: ZoneOut
    currency: str
    type: str
    amount: int | None
    weight_bands: list[WeightBandOut] | None
    free_shipping_threshold: int | None
    created: datetime
    updated: datetime


def shipping_rate_out(rate: ShippingRate) -> ShippingRateOut:
    return ShippingRateOut(
        id=rate.id,
        display_name=rate.display_name,
        active=rate.is_active,
        zone=ZoneOut(
            type="rest_of_world" if rate.countries is None else "countries",
            countries=rate.countries,
        ),
        currency=rate.currency,
        type=rate.type,
        amount=rate.amount,
        weight_bands=None
        if rate.weight_bands is None
        else [WeightBandOut(**band) for band in rate.weight_bands],
        free_shipping_threshold=rate.free_shipping_threshold,
        created=rate.created_at,
        updated=rate.updated_at,
    )


class ShipmentCreate(Input):
    """How the parcel travels; every field is optional (a hand delivery has none)."""

    carrier: str | None = Field(default=None, min_length=1, max_length=80)
    tracking_number: str | None = Field(default=None, min_length=1, max_length=120)
    tracking_url: AnyHttpUrl | None = Field(
        default=None, description="Where the buyer follows the parcel (http or https)."
    )

    @model_validator(mode="after")
    def _url_fits(self) -> Self:
        if self.tracking_url is not None and len(str(self.tracking_url)) > 500:
            raise ValueError("tracking_url is longer than 500 characters")
        return self


class ShipmentItemOut(BaseModel):
    sku: str
    description: str
    quantity: int


class ShipmentOut(BaseModel):
    object: Literal["shipment"] = "shipment"
    id: str
    order: str
    carrier: str | None
    tracking_number: str | None
    tracking_url: str | None
    items: list[ShipmentItemOut]
    created: datetime


def shipment_out(shipment: Shipment) -> ShipmentOut:
    return ShipmentOut(
        id=shipment.id,
        order=shipment.order_id,
        carrier=shipment.carrier,
        tracking_number=shipment.tracking_number,
        tracking_url=shipment.tracking_url,
        items=[ShipmentItemOut.model_validate(item) for item in shipment.items],
        created=shipment.created_at,
    )
