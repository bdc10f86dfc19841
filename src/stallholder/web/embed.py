"""The embeddable checkout: ``/embed.js`` and the CORS that lets it open sessions from any
site with the publishable key (docs/checkout-pages.md).

CORS here answers for the browser-facing checkout routes only. The preflight cannot know
the creator (it carries no key), so it allows any origin; the request itself is checked
against the creator's ``allowed_origins`` by the route (``origin-not-allowed``). No cookie
is ever sent or accepted cross-origin: the key travels in ``Authorization``.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stallholder.web.templating import STATIC_DIR, templates

router = APIRouter(include_in_schema=False)

EMBED_SCRIPT = (STATIC_DIR / "embed.js").read_bytes()
BROWSER_ROUTES = re.compile(r"^/v1/checkout/sessions(/[^/]+(/confirm)?)?$")
ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key"


@router.get("/embed.js")
async def embed_script() -> Response:
    """The embed script, a few KB with no dependencies; any site may load it."""
    return Response(
        EMBED_SCRIPT,
        media_type="text/javascript; charset=utf-8",
        headers={
            "Cache-Control": "public, max-age=300",
            "Access-Control-Allow-Origin": "*",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/demo/embed", response_class=HTMLResponse)
async def embed_demo(request: Request) -> Response:
    """A page that sells with embed.js, as a creator's own site would (the demo)."""
    return templates.TemplateResponse(
        request,
        "embed_demo.html",
        context={
            "publishable_key": request.query_params.get("key", ""),
            "price": request.query_params.get("price", ""),
        },
    )


class BrowserCheckoutCors:
    """CORS for the checkout routes a browser calls with the publishable key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not BROWSER_ROUTES.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        origin = Headers(scope=scope).get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        request_method = Headers(scope=scope).get("access-control-request-method")
        if scope["method"] == "OPTIONS" and request_method is not None:
            preflight = Response(
                status_code=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "GET, POST",
                    "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
            await preflight(scope, receive, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Access-Control-Allow-Origin"] = origin
                headers["Access-Control-Expose-Headers"] = "Idempotent-Replayed, Retry-After"
                headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, with_cors)
