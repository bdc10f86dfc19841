"""Download links: the signed, expiring URLs a paid order's buyer gets in the receipt, on
the success page, in the portal and through the API (docs/digital-delivery.md).

The signature is checked before anything is read; the download is counted in a short
unit of work; the bytes are streamed from the storage after it committed, with no
transaction open. A tampered link is a 403 page, an expired one, a refunded order's or
one past the download limit a 410 page."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse

from stallholder.digital import delivery
from stallholder.digital import links as signing
from stallholder.digital.models import File
from stallholder.digital.service import FileNotFound
from stallholder.kit.errors import DomainError
from stallholder.kit.http import NowDep
from stallholder.orders import service as orders
from stallholder.web.templating import templates

router = APIRouter(include_in_schema=False)


def _refusal(request: Request, *, status: int, title: str, detail: str) -> Response:
    return templates.TemplateResponse(
        request,
        "download_error.html",
        {"title": title, "detail": detail},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


def _disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name (RFC 6266, 5987)."""
    fallback = filename.encode("ascii", "replace").decode().replace("?", "_").replace("\\", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


@router.get("/d/{order_id}/{file_id}")
async def download(
    order_id: str,
    file_id: str,
    request: Request,
    now: NowDep,
    expires: Annotated[str, Query(max_length=20)] = "",
    signature: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    links: signing.Links = request.app.state.download_links
    verdict = signing.verify(
        links.key, order_id=order_id, file_id=file_id, expires=expires, given=signature, now=now
    )
    if verdict == "tampered":
        return _refusal(
            request,
            status=403,
            title="This download link is not valid",
            detail="The link was changed or cut short. Use the link exactly as it was sent "
            "to you, or ask the seller for a new one.",
        )
    if verdict == "expired":
        return _refusal(
            request,
            status=410,
            title="This download link has expired",
            detail="Download links work for a limited time. Your receipt's order number "
            "lets the seller send you a fresh link, and your account page shows one.",
        )
    try:
        async with request.app.state.database.unit_of_work() as session:
            stored = await session.get(File, file_id)
            if stored is None:
                raise FileNotFound(f"no file {file_id!r}")
            order = await orders.get_order(session, creator_id=stored.creator_id, order_id=order_id)
            if order.status == "refunded":
                return _refusal(
                    request,
                    status=410,
                    title="This order was refunded",
                    detail="Downloads stop when an order is refunded in full.",
                )
            file = await delivery.count_download(
                session, order_id=order_id, file_id=file_id, limit=links.limit, now=now
            )
            filename, content_type, size, key = (
                file.filename,
                file.content_type,
                file.size,
                file.storage_key,
            )
    except DomainError as error:
        return _refusal(
            request,
            status=410 if error.status == 410 else 404,
            title=error.title,
            detail=error.detail,
        )
    storage = request.app.state.file_storage
    return StreamingResponse(
        storage.read(key),
        # As uploaded, exactly (a media_type would get a charset appended to text types).
        headers={
            "Content-Type": content_type,
            "Content-Length": str(size),
            "Content-Disposition": _disposition(filename),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
