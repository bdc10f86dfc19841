"""API input and output of files, attachments, license keys and what an order delivers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from stallholder.digital.delivery import Deliverables
from stallholder.digital.models import File, LicenseKey
from stallholder.kit.schemas import Input, Output


class FileOut(Output):
    object: Literal["file"] = "file"
    id: str
    filename: str
    content_type: str
    size: int
    sha256: str
    created: datetime = Field(validation_alias="created_at")


def file_out(file: File) -> FileOut:
    return FileOut.model_validate(file)


class AttachFile(Input):
    file: str = Field(min_length=1, max_length=40)


class ProductFilesOut(BaseModel):
    object: Literal["list"] = "list"
    product: str
    data: list[FileOut]
    has_more: bool = False


# Printable ASCII, single spaces inside: what a buyer can type or paste back.
LicenseKeyText = Annotated[
    str, Field(min_length=1, max_length=500, pattern=r"^[\x21-\x7e]+( [\x21-\x7e]+)*$")
]


class LicenseKeysIn(Input):
    keys: list[LicenseKeyText] = Field(min_length=1, max_length=1000)


class KeyPoolOut(BaseModel):
    object: Literal["license_key_pool"] = "license_key_pool"
    product: str
    added: int
    available: int
    issued: int


class LicenseKeyOut(BaseModel):
    object: Literal["license_key"] = "license_key"
    id: str
    product: str
    key: str
    status: Literal["available", "issued"]
    order: str | None
    issued_at: datetime | None
    created: datetime


def license_key_out(key: LicenseKey) -> LicenseKeyOut:
    return LicenseKeyOut(
        id=key.id,
        product=key.product_id,
        key=key.key,
        status="available" if key.order_line_id is None else "issued",
        order=key.order_id,
        issued_at=key.issued_at,
        created=key.created_at,
    )


class DownloadOut(BaseModel):
    """A file the order delivers: a link signed when the order was read, valid until
    ``expires_at``, and how often the buyer has downloaded it of ``download_limit``."""

    file: str
    filename: str
    content_type: str
    size: int
    url: str
    expires_at: datetime
    download_count: int
    download_limit: int


class IssuedKeyOut(BaseModel):
    product: str
    key: str
    issued_at: datetime


class DeliverablesOut(BaseModel):
    downloads: list[DownloadOut]
    license_keys: list[IssuedKeyOut]
    # Units of products with a key pool that found the pool empty.
    license_keys_missing: int


def deliverables_out(found: Deliverables) -> DeliverablesOut:
    return DeliverablesOut(
        downloads=[
            DownloadOut(
                file=d.file_id,
                filename=d.filename,
                content_type=d.content_type,
                size=d.size,
                url=d.url,
                expires_at=d.expires_at,
                download_count=d.download_count,
                download_limit=d.download_limit,
            )
            for d in found.downloads
        ],
        license_keys=[
            IssuedKeyOut(product=k.product_id, key=k.key, issued_at=k.issued_at)
            for k in found.license_keys
        ],
        license_keys_missing=found.license_keys_missing,
    )
