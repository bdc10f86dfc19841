"""Errors seen in a browser are pages: a title, what happened and a way on, never raw
problem JSON. The HTTP API (``/v1``, the OpenAPI document, the docs) keeps problem+json."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from stallholder.web.security import page_policy
from stallholder.web.templating import templates

# Paths that answer machines: their errors stay application/problem+json.
API_PATHS = ("/v1/", "/openapi.json", "/docs", "/redoc", "/healthz")


def is_page_request(request: Request) -> bool:
    """Whether an error should be a page: always on the pages (routes left out of the
    OpenAPI document), never on the API (``/v1``, the docs); elsewhere (a checkout link,
    an unknown path) when the client asks for HTML, as a browser does."""
    path = request.url.path
    if path == "/v1" or path.startswith(API_PATHS):
        return False
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and not route.include_in_schema:
        return True
    return "text/html" in request.headers.get("accept", "")


def error_page(
    request: Request,
    *,
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The error page: ``title`` and ``detail`` for the reader, links back to where they
    can go on (the previous page, the portal, the store)."""
    # The page's own security headers: a 500 page is made outside the middleware that
    # adds them to every other page (Starlette's error middleware is outermost).
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "detail": detail},
        status_code=status,
        headers={
            "Content-Security-Policy": page_policy(request.url.path, None),
            "X-Content-Type-Options": "nosniff",
            **(headers or {}),
        },
    )
