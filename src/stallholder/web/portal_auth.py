"""Portal sign-in by magic link to the buyer's email (``web/magic_sign_in.py``): the
session then holds the buyer's id, which every portal page reads."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import RedirectResponse

from stallholder.web.magic_sign_in import Face, router_for

PORTAL = Face(
    home="/portal",
    audience="buyer",
    session_key="buyer",
    next_key="next",
    sign_in_template="portal_sign_in.html",
    open_link_template="portal_open_link.html",
)
router = router_for(PORTAL)


def signed_in_buyer(request: Request) -> str | None:
    """The buyer this browser is signed in as, if any."""
    return PORTAL.signed_in(request)


def sign_in_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, remembering the portal page the buyer opened."""
    return PORTAL.redirect_to_sign_in(request)
