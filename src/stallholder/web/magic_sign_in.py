"""Sign-in by magic link, the one flow behind the buyer portal's and the creator
dashboard's sign-in pages: ask for a link, open it, press Sign in. No JavaScript.

Opening the emailed link shows a page with one button rather than signing in at once:
mail scanners and link previews fetch links, and a GET that used the single-use token
would burn it before its owner clicks (docs/portal.md). The POST carries the token and
the page's CSRF token; on success the session is renewed (a new CSRF token, nothing
carried over from before sign-in: no fixation) and holds the signed-in id. A face
(``Face``) says where its pages live, which audience its links are for, and which session
key holds who signed in; ``router_for`` builds its five routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from stallholder.accounts import sign_in
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.notifications import service as notifications
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import templates


@dataclass(frozen=True, slots=True)
class Face:
    """One signed-in face of the site: the portal (buyers) or the dashboard (creators)."""

    # Where its pages live (``/portal``); sign-in is at ``<home>/sign-in``.
    home: str
    audience: sign_in.Audience
    # The session key that holds the signed-in buyer's or creator's id, and the one that
    # remembers the page asked for before signing in.
    session_key: str
    next_key: str
    # Templates of the sign-in form and of the emailed link's page.
    sign_in_template: str
    open_link_template: str

    def signed_in(self, request: Request) -> str | None:
        """Who this browser is signed in as on this face, if anyone."""
        value = request.session.get(self.session_key)
        return value if isinstance(value, str) else None

    def redirect_to_sign_in(self, request: Request) -> RedirectResponse:
        """To the sign-in page, remembering where the visitor was going (a page of this
        face they opened; not a form's target, which is no page to land on)."""
        path = request.url.path
        if request.method == "GET" and (path == self.home or path.startswith(self.home + "/")):
            request.session[self.next_key] = path
        return RedirectResponse(f"{self.home}/sign-in", status_code=303)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def router_for(face: Face) -> APIRouter:
    """The face's sign-in form, the link request, the emailed link's page, its Sign in
    button and Sign out; every form carries the CSRF token."""
    router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

    def page(
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
            face.sign_in_template,
            {
                "email": email,
                "error": error,
                "sent_to": sent_to,
                "minutes": int(sign_in.LINK_TTL.total_seconds() // 60),
                # The embedded default writes emails to files: say where, so a newcomer
                # can sign in to the demo without a mail server.
                "mail_folder": None if settings.smtp_url else str(settings.data_dir / "mail"),
            },
            status_code=status_code,
        )

    @router.get(f"{face.home}/sign-in", response_class=HTMLResponse)
    async def sign_in_form(request: Request, settings: SettingsDep) -> Response:
        if face.signed_in(request) is not None:
            return RedirectResponse(face.home, status_code=303)
        return page(request, settings)

    @router.post(f"{face.home}/sign-in", response_class=HTMLResponse)
    async def ask_for_link(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        now: NowDep,
        email: Annotated[str, Form(max_length=320)] = "",
    ) -> Response:
        """Email a sign-in link (one per shop for a creator's address that runs two). The
        page says the same whether or not the address is known."""
        typed = email.strip()
        try:
            links = await sign_in.request_link(
                session,
                audience=face.audience,
                email=typed,
                ip_address=_client_ip(request),
                now=now,
            )
            for link in links:
                await notifications.queue_sign_in_link(
                    session,
                    audience=face.audience,
                    to=link.to,
                    url=f"{settings.base_url}{face.home}/sign-in/{link.token}",
                    expires_in=sign_in.LINK_TTL,
                    creator_id=link.creator_id,
                    now=now,
                )
        except DomainError as error:
            return page(
                request, settings, email=typed, error=error.detail, status_code=error.status
            )
        return page(request, settings, email=typed, sent_to=typed)

    @router.get(f"{face.home}/sign-in/{{token}}", response_class=HTMLResponse)
    async def open_link(token: str, request: Request) -> Response:
        """The page behind the emailed link: one button signs in (the POST uses it)."""
        return templates.TemplateResponse(request, face.open_link_template, {"token": token})

    @router.post(f"{face.home}/sign-in/{{token}}", response_class=HTMLResponse)
    async def use_link(
        token: str, request: Request, session: SessionDep, settings: SettingsDep, now: NowDep
    ) -> Response:
        try:
            signed_in = await sign_in.redeem(session, audience=face.audience, token=token, now=now)
        except sign_in.SignInLinkInvalid as error:
            return page(request, settings, error=error.detail, status_code=error.status)
        going_to = request.session.get(face.next_key)
        # A new session: nothing from before sign-in is kept (fixation), a new CSRF token.
        request.session.clear()
        request.session[face.session_key] = signed_in
        target = (
            going_to if isinstance(going_to, str) and going_to.startswith(face.home) else face.home
        )
        return RedirectResponse(target, status_code=303)

    @router.post(f"{face.home}/sign-out", response_class=HTMLResponse)
    async def sign_out(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse(f"{face.home}/sign-in", status_code=303)

    return router
