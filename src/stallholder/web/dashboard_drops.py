"""The dashboard's drops page (``/dashboard/drops``): the creator's drops with their state,
and a form that creates one as ``POST /v1/drops`` does (the same schema, ``DropCreate``,
and the same service, ``inventory.drops.create_drop``). A mistake shows the form again
with what was typed and what to fix, and creates nothing. Each drop has an edit page
(``/dashboard/drops/{id}/edit``) that changes it as ``POST /v1/drops/{id}`` does
(``DropUpdate``, ``inventory.drops.update_drop``): its name, window, limit, hold and the
quantity of each price; a refusal changes nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from stallholder.accounts.models import Creator
from stallholder.catalog import service as catalog
from stallholder.inventory import drops
from stallholder.inventory.schemas import DropCreate, DropUpdate
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep, SessionDep, SettingsDep
from stallholder.web.dashboard import PAGE_SIZE, current_creator, render_page
from stallholder.web.dashboard_auth import sign_in_redirect
from stallholder.web.security import CsrfProtected
from stallholder.web.templating import format_money

router = APIRouter(include_in_schema=False, dependencies=[CsrfProtected])

# Item rows the form offers; a drop may hold up to 20 prices through the API.
ITEM_ROWS = 4
MODES = (("first_come", "first come, first served"), ("raffle", "raffle"))
_FIELD_NAMES = {
    "name": "name",
    "opens_at": "opens at",
    "closes_at": "closes at",
    "mode": "mode",
    "per_customer_limit": "limit per buyer",
    "reservation_minutes": "hold during checkout",
    "items": "items",
}
_ITEM_FIELDS = ("price", "quantity")
_ITEM_POSITION = re.compile(r"items\[(\d+)\]")


async def _drops_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    creator: Creator,
    *,
    now: datetime,
    form: dict[str, Any] | None = None,
    errors: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    views = await drops.list_drops(session, creator_id=creator.id, limit=PAGE_SIZE)
    rows = [{"view": view, "state": view.state(now)} for view in views]
    products = await catalog.list_products(
        session, creator_id=creator.id, status=None, limit=PAGE_SIZE, starting_after=None
    )
    names = {product.id: product.name for product in products.data}
    prices = await catalog.list_prices(
        session, creator_id=creator.id, product_id=None, limit=PAGE_SIZE * 2, starting_after=None
    )
    # What a drop can sell: active one-time prices (the service says so of any other).
    choices = [
        {
            "id": price.id,
            "label": f"{names.get(price.product_id, price.product_id)} — "
            f"{format_money(price.unit_amount, price.currency)}",
        }
        for price in prices.data
        if price.is_active and price.recurring_interval is None and price.unit_amount is not None
    ]
    typed = form or {"mode": "first_come", "reservation_minutes": "10"}
    items = list(typed.get("items", []))
    items += [{"price": "", "quantity": ""}] * (ITEM_ROWS - len(items))
    return await render_page(
        request,
        settings,
        creator,
        "dashboard_drops.html",
        {
            "rows": rows,
            "choices": choices,
            "modes": MODES,
            "form": typed,
            "items": items,
            "errors": errors or [],
            "created": request.query_params.get("created"),
            "updated": request.query_params.get("updated"),
        },
        status_code=status_code,
    )


@router.get("/dashboard/drops", response_class=HTMLResponse)
async def drops_page(
    request: Request, session: SessionDep, settings: SettingsDep, now: NowDep
) -> Response:
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    return await _drops_page(request, session, settings, creator, now=now)


def _as_time(typed: str) -> datetime | str:
    """A time typed in the form (``2026-12-01T18:00`` from a date-time field, in UTC, or
    with an offset); what was typed when it is not one (the schema then refuses it)."""
    try:
        parsed = datetime.fromisoformat(typed.strip())
    except ValueError:
        return typed
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _as_count(typed: str) -> int | str | None:
    text = typed.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:  # "+-5", "²", "ten": the schema refuses what was typed
        return text


def _messages(error: ValidationError, *, typed: dict[str, Any]) -> list[str]:
    """What to fix, in the form's words: ``item 2 quantity: …`` for ``items.1.quantity``."""
    messages = []
    for problem in error.errors():
        if problem["type"] == "none_required":
            continue  # the "left out" branch of an optional field of DropUpdate
        # Without a union's branch names ("str", "list[DropItemIn]"): fields and positions.
        location = [
            str(part)
            for part in problem["loc"]
            if str(part) in _FIELD_NAMES or str(part) in _ITEM_FIELDS or str(part).isdigit()
        ]
        field = location[0] if location else ""
        text = str(problem["msg"]).removeprefix("Value error, ")
        if field in ("opens_at", "closes_at"):
            text = (
                f"{typed[field]!r} is not a date and time; use the picker or type "
                "2026-12-01T18:00 (UTC)"
            )
        if location == ["items"] and problem["type"] == "too_short":
            text = "fill in at least one row: a price and how many units"
        if field == "items" and len(location) >= 2 and location[1].isdigit():
            name = f"item {int(location[1]) + 1} {' '.join(location[2:])}".strip()
        else:
            name = _FIELD_NAMES.get(field, field)
        messages.append(f"{name}: {text}" if name else text)
    return messages


@router.post("/dashboard/drops", response_class=HTMLResponse)
async def create_drop(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    # Generous bounds here; the schema says what is too long, on the form.
    name: Annotated[str, Form(max_length=1_000)] = "",
    opens_at: Annotated[str, Form(max_length=100)] = "",
    closes_at: Annotated[str, Form(max_length=100)] = "",
    mode: Annotated[str, Form(max_length=100)] = "first_come",
    per_customer_limit: Annotated[str, Form(max_length=100)] = "",
    reservation_minutes: Annotated[str, Form(max_length=100)] = "",
    price: Annotated[list[str] | None, Form()] = None,
    quantity: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """A drop, as ``POST /v1/drops`` creates one. Item rows left empty are skipped; at
    least one is needed. Times are UTC unless typed with an offset."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    prices, quantities = (price or [])[:20], (quantity or [])[:20]
    quantities += [""] * (len(prices) - len(quantities))
    rows = [
        {"price": p.strip()[:100], "quantity": q.strip()[:100]}
        for p, q in zip(prices, quantities, strict=False)
        if p.strip() or q.strip()
    ]
    typed: dict[str, Any] = {
        "name": name,
        "opens_at": opens_at,
        "closes_at": closes_at,
        "mode": mode,
        "per_customer_limit": per_customer_limit,
        "reservation_minutes": reservation_minutes,
        "items": rows,
    }
    payload: dict[str, Any] = {
        "name": name.strip(),
        "opens_at": _as_time(opens_at),
        "closes_at": _as_time(closes_at),
        "mode": mode,
        "per_customer_limit": _as_count(per_customer_limit),
        "items": [{"price": row["price"], "quantity": _as_count(row["quantity"])} for row in rows],
    }
    if (minutes := _as_count(reservation_minutes)) is not None:
        payload["reservation_minutes"] = minutes
    try:
        body = DropCreate.model_validate(payload)
    except ValidationError as error:
        return await _drops_page(
            request,
            session,
            settings,
            creator,
            now=now,
            form=typed,
            errors=_messages(error, typed=typed),
            status_code=422,
        )
    try:
        # A savepoint: a price found in another drop fails the flush, and nothing of
        # this drop may stay in the request's unit of work (which commits the page).
        async with session.begin_nested():
            view = await drops.create_drop(
                session,
                creator_id=creator.id,
                name=body.name,
                mode=body.mode,
                opens_at=body.opens_at,
                closes_at=body.closes_at,
                per_customer_limit=body.per_customer_limit,
                reservation_minutes=body.reservation_minutes,
                claim_minutes=body.claim_minutes,
                waitlist_hold_minutes=body.waitlist_hold_minutes,
                items=[
                    drops.ItemSpec(price_id=item.price, quantity=item.quantity)
                    for item in body.items
                ],
                now=now,
            )
    except DomainError as error:  # closes before it opens, an unknown or unfit price
        message = _ITEM_POSITION.sub(lambda found: f"item {int(found[1]) + 1}", error.detail)
        return await _drops_page(
            request,
            session,
            settings,
            creator,
            now=now,
            form=typed,
            errors=[message],
            status_code=error.status,
        )
    return RedirectResponse(f"/dashboard/drops?created={view.drop.id}", status_code=303)


def _local(moment: datetime) -> str:
    """A time for a date-time field (UTC, to the minute)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


async def _edit_page(
    request: Request,
    settings: SettingsDep,
    creator: Creator,
    view: drops.DropView,
    *,
    now: datetime,
    form: dict[str, Any],
    errors: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    return await render_page(
        request,
        settings,
        creator,
        "dashboard_drop_edit.html",
        {
            "view": view,
            "state": view.state(now),
            "opened": now >= view.drop.opens_at,
            "closed": now >= view.drop.closes_at or view.drop.drawn_at is not None,
            "form": form,
            "errors": errors or [],
        },
        status_code=status_code,
    )


@router.get("/dashboard/drops/{drop_id}/edit", response_class=HTMLResponse)
async def edit_page(
    drop_id: str, request: Request, session: SessionDep, settings: SettingsDep, now: NowDep
) -> Response:
    """The drop's fields in a form; what can no longer change is shown, not offered.
    Another creator's drop is a 404 page."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    view = await drops.get_drop(session, creator_id=creator.id, drop_id=drop_id)
    drop = view.drop
    form = {
        "name": drop.name,
        "opens_at": _local(drop.opens_at),
        "closes_at": _local(drop.closes_at),
        "per_customer_limit": ""
        if drop.per_customer_limit is None
        else str(drop.per_customer_limit),
        "reservation_minutes": str(drop.reservation_minutes),
        "quantities": [str(item.quantity) for item in view.items],
    }
    return await _edit_page(request, settings, creator, view, now=now, form=form)


@router.post("/dashboard/drops/{drop_id}/edit", response_class=HTMLResponse)
async def edit_drop(
    drop_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    now: NowDep,
    name: Annotated[str, Form(max_length=1_000)] = "",
    opens_at: Annotated[str, Form(max_length=100)] = "",
    closes_at: Annotated[str, Form(max_length=100)] = "",
    per_customer_limit: Annotated[str, Form(max_length=100)] = "",
    reservation_minutes: Annotated[str, Form(max_length=100)] = "",
    quantity: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Change the drop as ``POST /v1/drops/{id}``: the fields the form shows are sent,
    and only what differs changes (a time left as it was is not a change, so an open
    drop's form does not trip over its opening). An empty limit removes it."""
    creator = await current_creator(request, session)
    if creator is None:
        return sign_in_redirect(request)
    view = await drops.get_drop(session, creator_id=creator.id, drop_id=drop_id)
    quantities = [q.strip()[:100] for q in (quantity or [])[: len(view.items)]]
    quantities += [""] * (len(view.items) - len(quantities))
    typed: dict[str, Any] = {
        "name": name,
        "opens_at": opens_at,
        "closes_at": closes_at,
        "per_customer_limit": per_customer_limit,
        "reservation_minutes": reservation_minutes,
        "quantities": quantities,
    }
    payload: dict[str, Any] = {
        "name": name.strip(),
        "per_customer_limit": _as_count(per_customer_limit),
        "items": [
            {"price": item.price_id, "quantity": _as_count(q)}
            for item, q in zip(view.items, quantities, strict=True)
        ],
    }
    for field, text in (("opens_at", opens_at), ("closes_at", closes_at)):
        moment = _as_time(text)
        shown = getattr(view.drop, field)
        # Unchanged to the minute the field shows: not sent (the past stays as it was).
        if not (isinstance(moment, datetime) and _local(moment) == _local(shown)):
            payload[field] = moment
    if (minutes := _as_count(reservation_minutes)) is not None:
        payload["reservation_minutes"] = minutes
    try:
        body = DropUpdate.model_validate(payload)
    except ValidationError as error:
        return await _edit_page(
            request,
            settings,
            creator,
            view,
            now=now,
            form=typed,
            errors=_messages(error, typed=typed),
            status_code=422,
        )
    changes = body.model_dump(exclude_unset=True)
    changes["items"] = [
        drops.ItemSpec(price_id=item.price, quantity=item.quantity) for item in body.items or []
    ]
    try:
        # A savepoint: a refusal part-way (an item below what is taken) changes nothing.
        async with session.begin_nested():
            await drops.update_drop(
                session, creator_id=creator.id, drop_id=drop_id, changes=changes, now=now
            )
    except DomainError as error:
        message = _ITEM_POSITION.sub(lambda found: f"item {int(found[1]) + 1}", error.detail)
        view = await drops.get_drop(session, creator_id=creator.id, drop_id=drop_id)
        return await _edit_page(
            request,
            settings,
            creator,
            view,
            now=now,
            form=typed,
            errors=[message],
            status_code=error.status,
        )
    return RedirectResponse(f"/dashboard/drops?updated={drop_id}", status_code=303)
