"""Portal sign-in by magic link: ask for a link, open it, press Sign in. No JavaScript.

Opening the emailed link shows a page with one button rather than signing in at once:
mail scanners and link previews fetch links, and a GET that used the single-use token
would burn it before the buyer clicks (docs/portal.md). The POST carries the token and
the page's CSRF token; on success the session is renewed (a new CSRF token, no state
carried over from before sign-in) and holds the buyer's id.
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

BUYER_KEY = "buyer"
NEXT_KEY = "next"


def signed_in_buyer(request: Request) -> str | None:
    """The buyer this browser is signed in as, if any."""
    buyer = request.session.get(BUYER_KEY)
    return buyer if isinstance(buyer, str) else None


def sign_in_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, remembering where the buyer was going (a portal page they
    opened; not a form's target, which is no page to land on)."""
    path = request.url.path
    if request.method == "GET" and (path.startswith("/portal/") or path == "/portal"):
        request.session[NEXT_KEY] = path
    return RedirectResponse("/portal/sign-in", status_code=303)


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
        "portal_sign_in.html",
        {
            "email": email,
            "error": error,
            "sent_to": sent_to,
            "minutes": int(sign_in.LINK_TTL.total_seconds() // 60),
            # The embedded default writes emails to files: say where, so a newcomer can
            # sign in to the demo without a mail server.
            "mail_folder": None if settings.smtp_url else str(settings.data_dir / "mail"),
        },
        status_code=status_code,
    )


@router.get("/portal/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request, settings: SettingsDep) -> Response:
    if signed_in_buyer(request) is not None:
        return RedirectResponse("/portal", status_code=303)
    return _sign_in_page(request, settings)


@router.post("/portal/sign-in", response_class=HTMLResponse)
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
            session, audience="buyer", email=typed, ip_address=_client_ip(request), now=now
        )
        for link in links:
            await notifications.queue_sign_in_link(
                session,
                audience="buyer",
                to=link.to,
                url=f"{settings.base_url}/portal/sign-in/{link.token}",
                expires_in=sign_in.LINK_TTL,
                creator_id=None,
                now=now,
            )
    except DomainError as error:
        return _sign_in_page(
            request,
            settings,
            email=typed,
            error=error.detail,
            status_code=error.status,
        )
    return _sign_in_page(request, settings, email=typed, sent_to=typed)


@router.get("/portal/sign-in/{token}", response_class=HTMLResponse)
async def open_link(token: str, request: Request) -> Response:
    """The page behind the emailed link: one button signs in (the POST uses the link)."""
    return templates.TemplateResponse(request, "portal_open_link.html", {"token": token})


@router.post("/portal/sign-in/{token}", response_class=HTMLResponse)
async def use_link(
    token: str, request: Request, session: SessionDep, settings: SettingsDep, now: NowDep
) -> Response:
    try:
        buyer_id = await sign_in.redeem(session, audience="buyer", token=token, now=now)
    except sign_in.SignInLinkInvalid as error:
        return _sign_in_page(request, settings, error=error.detail, status_code=error.status)
    going_to = request.session.get(NEXT_KEY)
    # A new session: nothing from before sign-in is kept (fixation), a new CSRF token.
    request.session.clear()
    request.session[BUYER_KEY] = buyer_id
    target = going_to if isinstance(going_to, str) and going_to.startswith("/portal") else "/portal"
    return RedirectResponse(target, status_code=303)


@router.post("/portal/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/portal/sign-in", status_code=303)
