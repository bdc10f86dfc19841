"""The OpenAPI document, completed in one place: every problem a route can answer, and the
keys it accepts.

FastAPI documents a route's success response and a 422. The rest is derived here from the
shape of each route, so a new route is documented without anyone remembering to:

- every route: 400 ``invalid-characters`` (a NUL in the URL) and 500 ``internal-error``;
- parameters or a body: 422 ``validation-error``;
- a path parameter or a body: 404 (an object it names does not exist, or is another
  creator's);
- a body: 400 ``malformed-json``; a body or any write: 413 ``payload-too-large``;
- ``starting_after``: 400 ``invalid-cursor``;
- ``POST``: 400 ``invalid-idempotency-key`` and the two 409s of ``Idempotency-Key``;
- any write: 409 ``conflict`` (a concurrent change);
- each dependency registered with :func:`documents` adds the problems it raises and,
  for authentication, the security schemes it accepts (several such dependencies on one
  route accept the keys all of them accept);
- a status a route lists in its own ``responses`` (402 on a payment) keeps its
  description and gets the problem schema.

Every 4xx and 5xx is ``application/problem+json`` with the ``Problem`` schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from stallholder.kit.errors import PROBLEM_MEDIA_TYPE, DomainError

F = TypeVar("F", bound=Callable[..., Any])

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error, as RFC 9457 problem details. Some types add members "
    "(`decline_code`, `remaining`, …); a 422 lists each invalid field in `errors`.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "https://stallholder.dev/problems/<slug>"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "string", "description": "dotted: line_items.0.quantity"},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem type a route can answer with."""

    status: int
    slug: str
    title: str

    @classmethod
    def of(cls, error: type[DomainError]) -> Problem:
        return cls(error.status, error.slug, error.title)


INVALID_CHARACTERS = Problem(400, "invalid-characters", "NUL character in the URL")
INTERNAL_ERROR = Problem(500, "internal-error", "Internal error")
VALIDATION_ERROR = Problem(422, "validation-error", "The request body or parameters are invalid")
NOT_FOUND = Problem(404, "not-found", "An object the path or body names does not exist")
MALFORMED_JSON = Problem(400, "malformed-json", "The body is not valid JSON")
PAYLOAD_TOO_LARGE = Problem(413, "payload-too-large", "Request body too large")
INVALID_CURSOR = Problem(400, "invalid-cursor", "Invalid pagination cursor")
CONFLICT = Problem(409, "conflict", "Conflicting concurrent change")
IDEMPOTENCY = (
    Problem(400, "invalid-idempotency-key", "Invalid Idempotency-Key header"),
    Problem(409, "idempotency-key-reused", "Idempotency key reused with a different request"),
    Problem(409, "idempotency-key-in-use", "A request with this key is still in progress"),
)


@dataclass(frozen=True, slots=True)
class _Documented:
    problems: tuple[Problem, ...]
    accepts: tuple[str, ...] | None


_DOCUMENTED: dict[Callable[..., Any], _Documented] = {}


def documents(
    *problems: type[DomainError] | Problem, accepts: Iterable[str] | None = None
) -> Callable[[F], F]:
    """Register what a FastAPI dependency adds to every route that uses it: the problems
    it raises and, for one that authenticates, the names of the security schemes whose
    credentials it accepts (an empty ``accepts`` is no credentials at all)."""

    def register(dependency: F) -> F:
        _DOCUMENTED[dependency] = _Documented(
            problems=tuple(p if isinstance(p, Problem) else Problem.of(p) for p in problems),
            accepts=None if accepts is None else tuple(accepts),
        )
        return dependency

    return register


def _tree(dependant: Dependant) -> Iterable[Dependant]:
    """The route's dependant and every dependency under it, however deep."""
    yield dependant
    for sub in dependant.dependencies:
        yield from _tree(sub)


def _dependencies(dependant: Dependant) -> Iterable[Callable[..., Any]]:
    return (sub.call for sub in _tree(dependant) if sub.call is not None)


def api_routes(app: FastAPI) -> Iterable[RouteContext]:
    """Every documented API route of ``app``, as mounted (with its router's prefix)."""
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute) and route.include_in_schema:
            yield route


def route_problems(route: RouteContext, method: str) -> list[Problem]:
    """Every problem ``route`` can answer ``method`` with, derived from its shape."""
    tree = list(_tree(route.dependant))
    path_params = [param for sub in tree for param in sub.path_params]
    query_params = [param for sub in tree for param in sub.query_params]
    has_body = route.body_field is not None
    has_parameters = bool(
        path_params or query_params or any(sub.header_params or sub.cookie_params for sub in tree)
    )
    problems = [INVALID_CHARACTERS, INTERNAL_ERROR]
    if has_body or has_parameters:
        problems.append(VALIDATION_ERROR)
    if path_params or has_body:
        problems.append(NOT_FOUND)
    if has_body:
        problems.append(MALFORMED_JSON)
    if has_body or method in WRITE_METHODS:  # a write without a body may still be sent one
        problems.append(PAYLOAD_TOO_LARGE)
    if any(param.name == "starting_after" for param in query_params):
        problems.append(INVALID_CURSOR)
    if method == "POST":
        problems += IDEMPOTENCY
    if method in WRITE_METHODS:
        problems.append(CONFLICT)
    for dependency in _dependencies(route.dependant):
        documented = _DOCUMENTED.get(dependency)
        if documented is not None:
            problems += documented.problems
    return problems


def route_security(route: RouteContext, scheme_names: Iterable[str]) -> list[str] | None:
    """The schemes whose keys every authenticating dependency of ``route`` accepts, in
    ``scheme_names`` order; None for a route that does not authenticate."""
    accepted: set[str] | None = None
    for dependency in _dependencies(route.dependant):
        documented = _DOCUMENTED.get(dependency)
        if documented is None or documented.accepts is None:
            continue
        accepted = (
            set(documented.accepts) if accepted is None else accepted & set(documented.accepts)
        )
    if accepted is None:
        return None
    return [name for name in scheme_names if name in accepted]


def _describe(problems: list[Problem], declared: str | None) -> str:
    """The route's own description of the status (if it gave one), then each problem type."""
    text = "\n".join(dict.fromkeys(f"- `{p.slug}`: {p.title}" for p in problems))
    if declared:
        return f"{declared}\n\n{text}" if text else declared
    return text or "A problem"


# A route outside ``/v1`` is one a browser visits (``/l/{link}``): its errors are pages,
# except what the transport refuses before routing (a NUL in the URL, a body too large).
PAGE_ERROR_CONTENT = {
    "text/html": {"schema": {"type": "string"}},
    PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF},
}


def _document_operation(
    operation: dict[str, Any],
    problems: list[Problem],
    security: list[str] | None,
    *,
    is_page: bool = False,
) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    by_status: dict[int, list[Problem]] = {}
    for problem in problems:
        by_status.setdefault(problem.status, []).append(problem)
    for status in sorted({*by_status, *(int(code) for code in responses if code.isdigit())}):
        if status < 400:
            continue
        # FastAPI's own 422 says "Validation Error"; a route's ``responses`` say more.
        declared = None if status == 422 else responses.get(str(status), {}).get("description")
        response: dict[str, Any] = {
            "description": _describe(by_status.get(status, []), declared),
            "content": PAGE_ERROR_CONTENT
            if is_page
            else {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        if status == 401:
            response["headers"] = {
                "WWW-Authenticate": {
                    "description": 'Bearer realm="stallholder"',
                    "schema": {"type": "string"},
                }
            }
        if status == 429:
            response["headers"] = {
                "Retry-After": {
                    "description": "seconds until the rate-limit window ends",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
        responses[str(status)] = response
    operation["responses"] = dict(sorted(responses.items()))
    if security is not None:
        operation["security"] = [{name: []} for name in security]


def _drop_unused_validation_schemas(document: dict[str, Any]) -> None:
    """FastAPI's own 422 schemas, which nothing uses once problems replace them."""
    schemas: dict[str, Any] = document["components"]["schemas"]
    if "#/components/schemas/HTTPValidationError" not in json.dumps(document["paths"]):
        schemas.pop("HTTPValidationError", None)
        if "#/components/schemas/ValidationError" not in json.dumps(schemas):
            schemas.pop("ValidationError", None)


def install(app: FastAPI, *, security_schemes: Mapping[str, dict[str, Any]]) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            openapi_version=app.openapi_version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
            servers=app.servers,
        )
        for route in api_routes(app):
            security = route_security(route, security_schemes)
            for method in route.methods or ():
                path = document["paths"].get(route.path_format, {})
                operation = path.get(method.lower())
                if operation is not None:
                    _document_operation(
                        operation,
                        route_problems(route, method),
                        security,
                        is_page=not str(route.path_format).startswith("/v1"),
                    )
        components = document.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        components["securitySchemes"] = dict(security_schemes)
        _drop_unused_validation_schemas(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
