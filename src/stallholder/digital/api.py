"""HTTP routes for files, product attachments and license-key pools."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from stallholder.accounts.auth import SecretCreatorDep
from stallholder.catalog import service as catalog
from stallholder.catalog.service import ProductNotFound
from stallholder.digital import delivery, service
from stallholder.digital.links import Links
from stallholder.digital.schemas import (
    AttachFile,
    FileOut,
    KeyPoolOut,
    LicenseKeysIn,
    ProductFilesOut,
    file_out,
    license_key_out,
)
from stallholder.digital.storage import Storage
from stallholder.kit.errors import InvalidRequest
from stallholder.kit.http import NowDep, SessionDep
from stallholder.kit.openapi import documents
from stallholder.kit.pagination import DEFAULT_LIMIT, MAX_LIMIT
from stallholder.kit.schemas import ListOut

router = APIRouter(prefix="/v1", tags=["digital delivery"])
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.file_storage
    return storage


async def get_links(request: Request) -> Links:
    """How the app signs download links (``digital.config.links_from_settings``)."""
    links: Links = request.app.state.download_links
    return links


StorageDep = Annotated[Storage, Depends(get_storage)]
LinksDep = Annotated[Links, Depends(get_links)]


class MissingFile(InvalidRequest):
    slug = "file-required"
    title = "No file was uploaded"


@documents(service.EmptyFile, MissingFile)
async def uploads_a_file() -> None:
    """Documents the problems of an upload."""


@documents(ProductNotFound, service.FileNotFound, service.TooManyFiles)
async def attaches_a_file() -> None:
    """Documents the problems of attaching a file."""


@documents(ProductNotFound, service.FileNotAttached)
async def detaches_a_file() -> None:
    """Documents the problems of detaching a file."""


@documents(ProductNotFound)
async def names_a_product() -> None:
    """Documents the problem of a product that is not there."""


@router.post(
    "/files",
    status_code=201,
    response_model=FileOut,
    dependencies=[Depends(uploads_a_file)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_file(
    request: Request,
    creator_id: SecretCreatorDep,
    storage: StorageDep,
    now: NowDep,
) -> FileOut:
    """Upload a file to deliver with products (multipart/form-data, field ``file``; at
    most ``STALLHOLDER_FILE_MAX_BYTES``, 25 MiB by default: a larger body is a 413). The
    file's name and content type are recorded as sent, with its size and SHA-256."""
    async with request.form(max_files=1, max_fields=5) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise MissingFile("send the file as multipart/form-data in a field named 'file'")
        # The bytes are stored with no transaction open; the row is recorded after.
        stored = await service.store_upload(
            storage,
            creator_id=creator_id,
            upload=service.Received(
                source=upload.file,
                filename=upload.filename or "download",
                content_type=(upload.content_type or "application/octet-stream")[:255],
            ),
        )
    async with request.app.state.database.unit_of_work() as session:
        file = await service.record_file(session, stored, now=now)
        return file_out(file)


@router.get("/files/{file_id}", response_model=FileOut)
async def get_file(file_id: str, creator_id: SecretCreatorDep, session: SessionDep) -> FileOut:
    return file_out(await service.get_file(session, creator_id=creator_id, file_id=file_id))


@router.get("/files", response_model=ListOut)
async def list_files(
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """Your uploaded files, newest first."""
    page = await service.list_files(
        session, creator_id=creator_id, limit=limit, starting_after=starting_after
    )
    return ListOut(data=[file_out(f) for f in page.data], has_more=page.has_more)


@router.post(
    "/products/{product_id}/files",
    response_model=ProductFilesOut,
    dependencies=[Depends(attaches_a_file)],
)
async def attach_file(
    product_id: str,
    body: AttachFile,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> ProductFilesOut:
    """Deliver a file with a product: every order paid for it from now on gets a signed
    download link (attaching it again changes nothing). At most 20 files a product."""
    files = await service.attach_file(
        session, creator_id=creator_id, product_id=product_id, file_id=body.file, now=now
    )
    return ProductFilesOut(product=product_id, data=[file_out(f) for f in files])


@router.get(
    "/products/{product_id}/files",
    response_model=ProductFilesOut,
    dependencies=[Depends(names_a_product)],
)
async def list_product_files(
    product_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> ProductFilesOut:
    """The files a product delivers, in the order they were attached."""
    await catalog.get_product(session, creator_id=creator_id, product_id=product_id)
    files = await service.product_files(session, product_id=product_id)
    return ProductFilesOut(product=product_id, data=[file_out(f) for f in files])


@router.delete(
    "/products/{product_id}/files/{file_id}",
    status_code=204,
    dependencies=[Depends(detaches_a_file)],
)
async def detach_file(
    product_id: str, file_id: str, creator_id: SecretCreatorDep, session: SessionDep
) -> Response:
    """Stop delivering a file with a product; orders paid before keep their links."""
    await service.detach_file(
        session, creator_id=creator_id, product_id=product_id, file_id=file_id
    )
    return Response(status_code=204)


@documents(ProductNotFound, service.DuplicateLicenseKey)
async def adds_license_keys() -> None:
    """Documents the problems of adding keys."""


@router.post(
    "/products/{product_id}/license_keys",
    response_model=KeyPoolOut,
    dependencies=[Depends(adds_license_keys)],
)
async def add_license_keys(
    product_id: str,
    body: LicenseKeysIn,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    now: NowDep,
) -> KeyPoolOut:
    """Add keys to the product's pool (at most 1,000 a request; a key already in the pool
    is skipped). Each unit sold gets one key, each key is issued once. Order lines paid
    while the pool was empty get theirs from these first, oldest first."""
    added = await service.add_license_keys(
        session, creator_id=creator_id, product_id=product_id, keys=body.keys, now=now
    )
    await delivery.give_owed_keys(session, creator_id=creator_id, product_id=product_id, now=now)
    pool = await service.key_pool(session, product_id=product_id, added=added.added)
    return KeyPoolOut(
        product=product_id, added=pool.added, available=pool.available, issued=pool.issued
    )


@router.get(
    "/products/{product_id}/license_keys",
    response_model=ListOut,
    dependencies=[Depends(names_a_product)],
)
async def list_license_keys(
    product_id: str,
    creator_id: SecretCreatorDep,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    starting_after: str | None = None,
) -> ListOut:
    """The product's keys, newest first: each ``available`` or ``issued`` (to which order)."""
    page = await service.list_license_keys(
        session,
        creator_id=creator_id,
        product_id=product_id,
        limit=limit,
        starting_after=starting_after,
    )
    return ListOut(data=[license_key_out(k) for k in page.data], has_more=page.has_more)
