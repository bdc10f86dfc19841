"""Dashboard sign-in by magic link to the creator's email (``web/magic_sign_in.py``): the
session then holds the creator's id. One address that runs two shops gets a link to each.
The dashboard and the portal share the one session cookie, so signing in to one signs
the browser out of the other."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import RedirectResponse

from stallholder.web.magic_sign_in import Face, router_for

DASHBOARD = Face(
    home="/dashboard",
    audience="creator",
    session_key="creator",
    next_key="dashboard_next",
    sign_in_template="dashboard_sign_in.html",
    open_link_template="dashboard_open_link.html",
)
router = router_for(DASHBOARD)


def signed_in_creator(request: Request) -> str | None:
    """The creator this browser is signed in to the dashboard as, if any."""
    return DASHBOARD.signed_in(request)


def sign_in_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, remembering the dashboard page the creator opened."""
    return DASHBOARD.redirect_to_sign_in(request)
