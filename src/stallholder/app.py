"""The ASGI application: routers, problem+json error handling, the embedded worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stallholder import __version__
from stallholder.accounts.api import router as accounts_router
from stallholder.accounts.auth import SECURITY_SCHEMES, authenticate_header
from stallholder.accounts.service import KeyCache, Principal, resolve_admin_key
from stallholder.billing import checkout as billing_checkout
from stallholder.billing.api import router as billing_router
from stallholder.billing.fees_api import router as fees_router
from stallholder.billing.retention_api import router as retention_router
from stallholder.billing.tasks import policy_from
from stallholder.catalog.api import router as catalog_router
from stallholder.channels.api import hooks_router as channel_hooks_router
from stallholder.channels.api import router as channels_router
from stallholder.channels.registry import engine_from_settings
from stallholder.checkout import api as checkout_api
from stallholder.checkout.api import public_router as checkout_public_router
from stallholder.checkout.api import router as checkout_router
from stallholder.digital.api import router as digital_router
from stallholder.digital.config import links_from_settings, storage_from_settings
from stallholder.events.api import router as events_router
from stallholder.fulfilment.api import router as shipping_router
from stallholder.inventory.api import router as inventory_router
from stallholder.jobs.worker import Worker
from stallholder.kit import openapi
from stallholder.kit.clock import Clock, SystemClock
from stallholder.kit.db import Database
from stallholder.kit.errors import PROBLEM_MEDIA_TYPE, DomainError, problem_type
from stallholder.kit.idempotency import IdempotencyMiddleware
from stallholder.kit.rate_limits import rate_limiter
from stallholder.ledger.api import router as ledger_router
from stallholder.orders.api import router as orders_router
from stallholder.payments.api import router as payments_router
from stallholder.payments.config import gateway_from_settings
from stallholder.payments.gateway import Gateway
from stallholder.settings import Settings
from stallholder.wallets.api import router as wallets_router
from stallholder.web.checkout_pages import router as checkout_pages_router
from stallholder.web.dashboard import router as dashboard_router
from stallholder.web.dashboard_auth import router as dashboard_auth_router
from stallholder.web.dashboard_drops import router as dashboard_drops_router
from stallholder.web.dashboard_webhooks import router as dashboard_webhooks_router
from stallholder.web.downloads import router as downloads_router
from stallholder.web.embed import BrowserCheckoutCors
from stallholder.web.embed import router as embed_router
from stallholder.web.error_pages import error_page, is_page_request
from stallholder.web.portal import router as portal_router
from stallholder.web.portal_auth import router as portal_auth_router
from stallholder.web.security import PageHeaders, SessionMiddleware, resolve_session_secret
from stallholder.web.store import router as store_router
from stallholder.web.templating import STATIC_DIR

log = logging.getLogger("stallholder")


def _problem(status: int, slug: str, title: str, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"type": problem_type(slug), "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
    )


async def _domain_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, DomainError)
    # RFC 6750: a 401 names the scheme the client should use.
    headers = error.headers()
    if is_page_request(request):
        return error_page(
            request, status=error.status, title=error.title, detail=error.detail, headers=headers
        )
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="stallholder"'
    return JSONResponse(
        error.problem(instance=request.url.path),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if part != "body"] or ["body"]
    return ".".join(parts)


async def _validation_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    errors = list(error.errors())
    if is_page_request(request):
        fields = "; ".join(
            f"{_location(tuple(item.get('loc', ())))}: "
            + str(item.get("msg", "")).removeprefix("Value error, ")
            for item in errors[:5]
        )
        return error_page(
            request,
            status=422,
            title="Some of what was sent is not valid",
            detail=f"{fields}. Go back, correct the form and send it again.",
        )
    if any(item.get("type") == "json_invalid" for item in errors):
        return _problem(
            400,
            "malformed-json",
            "The body is not valid JSON",
            "send a JSON object with 'Content-Type: application/json'",
        )
    details = [
        {
            "loc": _location(tuple(item.get("loc", ()))),
            "msg": str(item.get("msg", "")).removeprefix("Value error, "),
            "type": item.get("type"),
        }
        for item in errors
    ]
    summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in details[:5])
    return _problem(
        422,
        "validation-error",
        "The request body or parameters are invalid",
        summary,
        errors=details,
    )


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    slugs = {
        404: ("not-found", "Not found"),
        405: ("method-not-allowed", "Method not allowed"),
        413: ("payload-too-large", "Request body too large"),
    }
    slug, title = slugs.get(error.status_code, ("http-error", "HTTP error"))
    detail = error.detail if isinstance(error.detail, str) else title
    if error.status_code == 404 and detail == "Not Found":
        detail = f"no route {request.method} {request.url.path}"
        if is_page_request(request):
            detail = f"there is no page at {request.url.path}"
    if is_page_request(request):
        return error_page(request, status=error.status_code, title=title, detail=detail)
    return _problem(error.status_code, slug, title, detail)


async def _unexpected_error(request: Request, error: Exception) -> Response:
    if isinstance(error, PoolTimeout):
        # Every database connection stayed busy for the pool's whole timeout: the server is
        # overloaded (a drop storm), not broken. The step that waited wrote nothing; an
        # earlier step's work (a charge begun) is finished by the worker or by a retry with
        # the same Idempotency-Key.
        log.warning("database pool exhausted on %s %s", request.method, request.url.path)
        busy: Response = (
            error_page(
                request,
                status=503,
                title="Service busy",
                detail="the shop is very busy right now; wait a moment and try again",
            )
            if is_page_request(request)
            else _problem(
                503,
                "service-busy",
                "Service busy",
                "every database connection stayed busy; retry shortly with the same "
                "Idempotency-Key",
            )
        )
        busy.headers["Retry-After"] = "1"
        return busy
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    if is_page_request(request):
        return error_page(
            request,
            status=500,
            title="Something went wrong",
            detail="something went wrong on our side; it has been logged. Try again shortly.",
        )
    return _problem(
        500,
        "internal-error",
        "Internal error",
        "something went wrong on our side; it has been logged",
    )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with a 413 problem before anything parses them,
    bodies that do not arrive within ``timeout_seconds`` with a 408, and URLs with a NUL
    character with a 400.

    The deadline covers the whole body, not each chunk, so a client that announces
    ``Content-Length: 100`` and sends nothing, or drips a byte at a time, holds a
    connection for at most ``timeout_seconds``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        timeout_seconds: float,
        upload_paths: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        # POSTs to these paths are uploads and may be as large as their limit.
        self.upload_paths = dict(upload_paths or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            # No id or filter holds a NUL, and PostgreSQL cannot even compare one.
            await self._refuse(
                send,
                _problem(
                    400,
                    "invalid-characters",
                    "NUL character in the URL",
                    "the path or query contains a NUL (%00) character; remove it",
                ),
            )
            return
        max_bytes = self.max_bytes
        if scope["method"] == "POST" and scope["path"] in self.upload_paths:
            max_bytes = self.upload_paths[scope["path"]]
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
                await self._too_large(send, max_bytes)
                return
        received = 0
        chunks: list[Message] = []
        try:
            async with asyncio.timeout(self.timeout_seconds):
                while True:
                    message = await receive()
                    chunks.append(message)
                    if message["type"] != "http.request":
                        break
                    received += len(message.get("body", b""))
                    if received > max_bytes:
                        await self._too_large(send, max_bytes)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._refuse(
                send,
                _problem(
                    408,
                    "request-timeout",
                    "The request body did not arrive in time",
                    f"the body was not complete within {self.timeout_seconds:g} seconds; "
                    "send it with the request",
                ),
                # The rest of the body may still come; the connection cannot be reused.
                close=True,
            )
            return

        async def replay() -> Message:
            if chunks:
                return chunks.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, max_bytes: int) -> None:
        await self._refuse(
            send,
            _problem(
                413,
                "payload-too-large",
                "Request body too large",
                f"the body exceeds {max_bytes} bytes",
            ),
        )

    async def _refuse(self, send: Send, response: JSONResponse, *, close: bool = False) -> None:
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(response.body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": bytes(response.body)})


def create_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    clock: Clock | None = None,
    gateway: Gateway | None = None,
    run_worker: bool | None = None,
) -> FastAPI:
    """The application. Tests pass their own database, clock and gateway.

    Raises:
        GatewayMisconfigured: the settings choose Stripe without its keys.
    """
    settings = settings or Settings()
    owns_gateway = gateway is None
    database = database or Database(settings.resolved_database_url())
    payments: Gateway = (
        gateway if gateway is not None else gateway_from_settings(settings, database=database)
    )
    clock = clock or SystemClock()
    admin_key, generated = resolve_admin_key(settings.admin_key, settings.data_dir)
    if generated:
        log.warning(
            "generated a platform admin key (kept in %s): %s",
            settings.data_dir / "admin-key",
            admin_key,
        )
    embedded_worker = settings.embedded_worker if run_worker is None else run_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = None
        worker = Worker(database, clock, settings=settings, gateway=payments)
        if embedded_worker:
            task = asyncio.create_task(worker.run())
        try:
            yield
        finally:
            worker.stop()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if owns_gateway:
                await payments.aclose()
            await app.state.rate_limiter.aclose()
            await database.dispose()

    # Swagger UI (/docs) and ReDoc (/redoc) load their scripts from the app itself
    # (/docs-assets), so the docs work without internet access.
    app = FastAPIOffline(
        title="Stallholder API",
        version=__version__,
        lifespan=lifespan,
        description="Commerce infrastructure for creators who sell directly. Every error is "
        "application/problem+json (RFC 9457); money is integer minor units. Authorize with "
        "the key each operation names (admin, secret or publishable), then try it out.",
        static_url="/docs-assets",
        # No badge from the public validator service: the page makes no outside request.
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
    )
    app.state.settings = settings
    app.state.database = database
    app.state.clock = clock
    app.state.gateway = payments
    app.state.admin_key = admin_key
    app.state.key_cache = KeyCache(settings.api_key_cache_seconds)
    app.state.rate_limiter = rate_limiter(
        database, window_seconds=settings.drop_rate_limit_window_seconds
    )
    # The checkout API confirms subscription-mode sessions through this port (billing sits
    # above checkout; docs/architecture.md, "Subscription checkout").
    app.state.subscription_confirmer = billing_checkout.confirmer(policy_from(settings))
    # ... and learns from this one where the platform billing day puts a subscription's
    # first charges, for the session's renewal terms (ADR 0020; None when it is off).
    app.state.subscription_quoter = billing_checkout.quoter(settings.billing_day)
    # Digital delivery (docs/digital-delivery.md): where files live, how links are signed.
    app.state.file_storage = storage_from_settings(settings)
    app.state.download_links = links_from_settings(settings)
    # Channels (docs/channels.md): connectors by kind, and the key credentials are sealed with.
    app.state.channel_engine = engine_from_settings(settings)

    for router in (
        accounts_router,
        catalog_router,
        checkout_router,
        checkout_public_router,
        orders_router,
        inventory_router,
        ledger_router,
        events_router,
        payments_router,
        shipping_router,
        billing_router,
        fees_router,
        retention_router,
        wallets_router,
        digital_router,
        channels_router,
        channel_hooks_router,
    ):
        app.include_router(router)
    app.include_router(store_router)
    app.include_router(checkout_pages_router)
    app.include_router(portal_auth_router)
    app.include_router(portal_router)
    app.include_router(embed_router)
    app.include_router(dashboard_auth_router)
    app.include_router(dashboard_router)
    app.include_router(dashboard_drops_router)
    app.include_router(dashboard_webhooks_router)
    app.include_router(downloads_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    openapi.install(app, security_schemes=SECURITY_SCHEMES)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    async def authenticate(session: AsyncSession, authorization: str) -> Principal:
        return await authenticate_header(
            session,
            authorization=authorization,
            admin_key=app.state.admin_key,
            cache=app.state.key_cache,
        )

    app.add_middleware(
        IdempotencyMiddleware,
        database=lambda: app.state.database,
        clock=lambda: app.state.clock,
        authenticate=authenticate,
        lock_seconds=settings.idempotency_lock_seconds,
        # Routes whose effect is keyed by what they act on claim their Idempotency-Key at
        # the commit: one transaction fewer per request (ADR 0028).
        claim_at_commit=checkout_api.CLAIMS_KEY_AT_COMMIT,
    )
    # Pages keep their session (sign-in, CSRF token) in a signed cookie (web/security.py).
    app.add_middleware(
        SessionMiddleware,
        secret=resolve_session_secret(settings.session_secret, settings.data_dir),
        is_secure=settings.base_url.startswith("https://"),
        clock=lambda: app.state.clock,
    )
    # Every HTML answer: CSP (scripts from the app and Stripe.js only), nosniff.
    app.add_middleware(PageHeaders)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_seconds=settings.body_timeout_seconds,
        # Multipart overhead (boundaries, part headers) on top of the file itself.
        upload_paths={"/v1/files": settings.file_max_bytes + 16 * 1024},
    )
    # Outermost: a preflight is answered before anything reads a body or a key.
    app.add_middleware(BrowserCheckoutCors)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
