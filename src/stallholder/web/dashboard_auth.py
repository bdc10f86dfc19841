"""Dashboard sign-in by magic link to the creator's email, as the portal's
(``portal_auth.py``): ask for a link, open it, press Sign in. The emailed link shows a
page with one button (mail scanners fetch links; a GET must not use the single-use
token); the POST renews the session (a new CSRF token) and holds the creator's id. One
address that runs two shops gets a link to each.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from stallholder.accounts import sign_in
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.notifications import service as notifications
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

CREATOR_KEY = "creator"
NEXT_KEY = "dashboard_next"


def signed_in_creator(request: Request) -> str | None:
    """The creator this browser is signed in to the dashboard as, if any."""
    creator = request.session.get(CREATOR_KEY)
    return creator if isinstance(creator, str) else None


def sign_in_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, remembering where the creator was going (a dashboard page)."""
    if request.method == "GET" and request.url.path.startswith("/dashboard"):
        request.session[NEXT_KEY] = request.url.path
    return RedirectResponse("/dashboard/sign-in", status_code=303)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _sign_in_page(
    request: Request,
    settings: SettingsDep,
    *,
    email: str = "",
    error: str | None = None,
    sent_to: str | None = None,
    status_code: int = 200,
) -> Response:
    return templates.TemplateResponse(
        request,
        "dashboard_sign_in.html",
        {
            "email": email,
            "error": error,
            "sent_to": sent_to,
            "minutes": int(sign_in.LINK_TTL.total_seconds() // 60),
            # Without SMTP the embedded default writes emails to files: say where.
            "mail_folder": None if settings.smtp_url else str(settings.data_dir / "mail"),
        },
        status_code=status_code,
    )


@router.get("/dashboard/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, settings: SettingsDep) -> Response:
    if signed_in_creator(request) is not None:
        return RedirectResponse("/dashboard", status_code=303)
    return _sign_in_page(request, settings)


@router.post("/dashboard/sign-in", response_class=HTMLResponse)
async def ask_for_link(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    email: Annotated[str, Form(max_length=320)] = "",
) -> Response:
    """Email a sign-in link. The page says the same whether or not the address is known."""
    typed = email.strip()
    try:
        links = await sign_in.request_link(
            session, audience="creator", email=typed, ip_address=_client_ip(request), now=now
        )
        for link in links:
            await notifications.queue_sign_in_link(
                session,
                audience="creator",
                to=link.to,
                url=f"{settings.base_url}/dashboard/sign-in/{link.token}",
                expires_in=sign_in.LINK_TTL,
                creator_id=link.creator_id,
                now=now,
            )
    except DomainError as error:
        return _sign_in_page(
            request, settings, email=typed, error=error.detail, status_code=error.status
        )
    return _sign_in_page(request, settings, email=typed, sent_to=typed)


@router.get("/dashboard/sign-in/{token}", response_class=HTMLResponse)
async def open_link(token: str, request: Request) -> Response:
    """The page behind the emailed link: one button signs in (the POST uses the link)."""
    return templates.TemplateResponse(request, "dashboard_open_link.html", {"token": token})


@router.post("/dashboard/sign-in/{token}", response_class=HTMLResponse)
async def use_link(
    token: str, request: Request, session: SessionDep, settings: SettingsDep, now: NowDep
) -> Response:
    try:
        creator_id = await sign_in.redeem(session, audience="creator", token=token, now=now)
    except sign_in.SignInLinkInvalid as error:
        return _sign_in_page(request, settings, error=error.detail, status_code=error.status)
    going_to = request.session.get(NEXT_KEY)
    # A new session: nothing from before sign-in is kept (fixation), a new CSRF token.
    request.session.clear()
    request.session[CREATOR_KEY] = creator_id
    target = (
        going_to
        if isinstance(going_to, str) and going_to.startswith("/dashboard")
        else "/dashboard"
    )
    return RedirectResponse(target, status_code=303)


@router.post("/dashboard/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/dashboard/sign-in", status_code=303)
