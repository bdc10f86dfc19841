from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from stallholder.kit.schemas import Input


class DataOut(BaseModel):
    object: dict[str, Any]


class EventOut(BaseModel):
    object: Literal["event"] = "event"
    id: str
    type: str
    api_version: str
    created: datetime
    data: DataOut


class WebhookEndpointCreate(Input):
    url: str = Field(min_length=1, max_length=2048)
    events: list[str] = Field(min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointUpdate(Input):
    """Only the fields sent change. `description: null` clears the description; `url`,
    `events` and `status` may be left out, but not sent as null."""

    url: Annotated[str, Field(min_length=1, max_length=2048)] | SkipJsonSchema[None] = None
    events: Annotated[list[str], Field(min_length=1, max_length=100)] | SkipJsonSchema[None] = None
    description: str | None = Field(default=None, max_length=500)
    status: Literal["enabled", "disabled"] | SkipJsonSchema[None] = None

    @field_validator("url", "events", "status")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("leave the field out to keep it; it cannot be null")
        return value


class RotateSecret(Input):
    expire_previous_in_seconds: int = Field(default=24 * 3600, ge=0, le=7 * 24 * 3600)


class Redeliver(Input):
    endpoint: str | None = Field(default=None, max_length=40)


class WebhookEndpointOut(BaseModel):
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str
    url: str
    description: str | None
    events: list[str]
    status: str
    disabled_reason: str | None
    created: datetime
    secret_rotation_ends: datetime | None = None


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str


class AttemptOut(BaseModel):
    number: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    latency_ms: int
    response_excerpt: str | None


class DeliveryOut(BaseModel):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str
    endpoint: str
    event: str
    status: str
    attempts: list[AttemptOut]
    next_attempt_at: datetime | None
    created: datetime
    completed_at: datetime | None
