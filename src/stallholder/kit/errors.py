"""Errors are types, rendered once as RFC 9457 problem+json.

A ``DomainError`` subclass lives next to the code that raises it and says its status,
``type`` slug and title; the handler in ``app.py`` renders it.
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://stallholder.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"


def problem_type(slug: str) -> str:
    return PROBLEM_BASE + slug


class DomainError(Exception):
    """An expected business outcome that the client must hear about."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"
    # Set on errors that say "not yet": the response carries ``Retry-After`` and is not
    # the request's outcome (an ``Idempotency-Key`` does not keep it).
    retry_after_seconds: ClassVar[int | None] = None

    def __init__(self, detail: str, **extensions: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extensions = extensions

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the problem."""
        if self.retry_after_seconds is None:
            return {}
        return {"Retry-After": str(self.retry_after_seconds)}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": problem_type(self.slug),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


class NotFound(DomainError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Unauthenticated(DomainError):
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"


class Forbidden(DomainError):
    status = 403
    slug = "forbidden"
    title = "Not allowed with this key"


class Conflict(DomainError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class InvalidRequest(DomainError):
    status = 400
    slug = "invalid-request"
    title = "Invalid request"


class ValidationFailed(DomainError):
    status = 422
    slug = "validation-error"
    title = "The request body or parameters are invalid"

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail, errors=errors)
