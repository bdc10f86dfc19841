"""Errors seen in a browser are pages: a title, what happened and a way on, never raw
problem JSON. The HTTP API (``/v1``, the OpenAPI document, the docs) keeps problem+json."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from stallholder.web.templating import templates

# Paths that answer machines: their errors stay application/problem+json.
API_PATHS = ("/v1/", "/openapi.json", "/docs", "/redoc", "/healthz")


def is_page_request(request: Request) -> bool:
    path = request.url.path
    return not (path == "/v1" or path.startswith(API_PATHS))


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
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "title": title, "detail": detail},
        status_code=status,
        headers=headers,
    )
