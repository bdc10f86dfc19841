"""The buyer portal (``/portal``): one person's subscriptions, orders and receipts across
every creator they buy from. Server-rendered, no JavaScript; every form carries the
session's CSRF token. Sign-in is in ``portal_auth.py``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from stallholder.accounts import service as accounts
from stallholder.kit.http import SessionDep
from stallholder.web.portal_auth import sign_in_redirect, signed_in_buyer
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])


@router.get("/portal", response_class=HTMLResponse)
async def home(request: Request, session: SessionDep) -> Response:
    buyer_id = signed_in_buyer(request)
    if buyer_id is None:
        return sign_in_redirect(request)
    buyer = await accounts.get_buyer(session, buyer_id)
    return templates.TemplateResponse(request, "portal.html", {"email": buyer.email_key})
