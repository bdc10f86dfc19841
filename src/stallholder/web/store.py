"""Public store pages: the index of every creator's published offers. No JavaScript needed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from stallholder.accounts import service as accounts
from stallholder.catalog import service as catalog
from stallholder.kit.http import SessionDep, SettingsDep
from stallholder.kit.money import Money
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False)


def _price_label(price: Any) -> str:
    if price.type == "pay_what_you_want":
        return f"from {Money(price.minimum_amount, price.currency).format()}"
    label = Money(price.unit_amount, price.currency).format()
    if price.type == "recurring":
        every = (
            price.recurring_interval
            if price.recurring_interval_count == 1
            else (f"{price.recurring_interval_count} {price.recurring_interval}s")
        )
        return f"{label} / {every}"
    return label


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    offers = await catalog.published_offers(session)
    creators = await accounts.creators_by_id(session, sorted({o.creator_id for o in offers}))
    grouped: dict[str, dict[str, Any]] = {}
    for offer in offers:
        creator = creators[offer.creator_id]
        entry = grouped.setdefault(
            creator.id, {"display_name": creator.display_name, "slug": creator.slug, "offers": []}
        )
        entry["offers"].append(
            {
                "name": offer.name,
                "kind": offer.kind,
                "price_label": _price_label(offer.price),
                "buy_url": f"/buy/{offer.price.id}",
                "subscribes": offer.price.type == "recurring",
            }
        )
    return templates.TemplateResponse(
        request, "index.html", {"creators": list(grouped.values()), "base_url": settings.base_url}
    )
