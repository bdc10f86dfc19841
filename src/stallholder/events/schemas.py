from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from stallholder.events.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
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


# Presenters: rows as the API and event payloads show them.


def endpoint_payload(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The endpoint as events and the API show it, without its secrets."""
    return {
        "object": "webhook_endpoint",
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.events),
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "created": endpoint.created_at.isoformat().replace("+00:00", "Z"),
    }


def event_out(event: Event) -> EventOut:
    return EventOut(
        id=event.id,
        type=event.type,
        api_version=event.api_version,
        created=event.created_at,
        data=DataOut(object=event.data),
    )


def endpoint_out(endpoint: WebhookEndpoint) -> WebhookEndpointOut:
    payload = endpoint_payload(endpoint)
    return WebhookEndpointOut(
        **{k: v for k, v in payload.items() if k not in ("object", "created")},
        created=endpoint.created_at,
        secret_rotation_ends=endpoint.previous_secret_expires_at,
    )


def endpoint_with_secret(endpoint: WebhookEndpoint) -> WebhookEndpointWithSecret:
    return WebhookEndpointWithSecret(
        **endpoint_out(endpoint).model_dump(exclude={"object"}), secret=endpoint.secret
    )


def delivery_out(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        endpoint=delivery.endpoint_id,
        event=delivery.event_id,
        status=delivery.status,
        attempts=[
            AttemptOut(
                number=a.number,
                attempted_at=a.attempted_at,
                status_code=a.status_code,
                error=a.error,
                latency_ms=a.latency_ms,
                response_excerpt=a.response_excerpt,
            )
            for a in attempts
        ],
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        created=delivery.created_at,
        completed_at=delivery.completed_at,
    )
