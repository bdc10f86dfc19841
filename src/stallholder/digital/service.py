"""Files and license-key pools, and attaching them to products (docs/digital-delivery.md).

A file's bytes go to the storage first, with no transaction open; its row is recorded
after, in the caller's unit of work. A row is never there without its bytes; bytes whose
row never committed (a crash between the two) are orphans the storage may keep.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.catalog import service as catalog
from stallholder.digital.models import File, LicenseKey, ProductFile
from stallholder.digital.storage import CHUNK, Storage
from stallholder.kit.errors import Conflict, InvalidRequest, NotFound
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate

MAX_KEYS_PER_REQUEST = 1000
MAX_FILES_PER_PRODUCT = 20


class FileNotFound(NotFound):
    slug = "file-not-found"
    title = "No such file"


class FileNotAttached(NotFound):
    slug = "file-not-attached"
    title = "The file is not attached to the product"


class TooManyFiles(Conflict):
    slug = "too-many-files"
    title = "The product has as many files as it may"


class DuplicateLicenseKey(InvalidRequest):
    slug = "duplicate-license-key"
    title = "A key appears twice in the request"


class EmptyFile(InvalidRequest):
    slug = "empty-file"
    title = "The file is empty"


@dataclass(frozen=True, slots=True)
class Received:
    """An upload as it arrived: its bytes are in ``source`` (a spooled temporary file)."""

    source: BinaryIO
    filename: str
    content_type: str


def _safe_filename(name: str) -> str:
    """The name a download is saved as: the last path part, no control characters."""
    base = re.split(r"[\\/]", name)[-1]
    cleaned = "".join(ch for ch in base if ch.isprintable() and ch not in '"').strip()
    return cleaned[:255] or "download"


def _measure(source: BinaryIO) -> tuple[int, str]:
    source.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


async def store_upload(storage: Storage, *, creator_id: str, upload: Received) -> File:
    """Put an upload's bytes in the storage and return its (unsaved) row; call
    ``record_file`` with it in a unit of work. No transaction may be open.

    Raises:
        EmptyFile.
    """
    size, sha256 = _measure(upload.source)
    if size == 0:
        raise EmptyFile("the uploaded file has no bytes; send the file in the 'file' field")
    file_id = new_id("file")
    key = f"{creator_id}/{file_id}"
    await storage.put(key, upload.source, size=size, content_type=upload.content_type)
    return File(
        id=file_id,
        creator_id=creator_id,
        filename=_safe_filename(upload.filename),
        content_type=upload.content_type,
        size=size,
        sha256=sha256,
        storage_key=key,
    )


async def record_file(session: AsyncSession, file: File, *, now: datetime) -> File:
    file.created_at = now
    session.add(file)
    await session.flush()
    return file


async def get_file(session: AsyncSession, *, creator_id: str, file_id: str) -> File:
    """Raises FileNotFound, for another creator's file too."""
    file = await session.get(File, file_id)
    if file is None or file.creator_id != creator_id:
        raise FileNotFound(f"no file {file_id!r}")
    return file


async def list_files(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[File]:
    return await paginate(
        session,
        select(File).where(File.creator_id == creator_id),
        id_column=File.id,
        limit=limit,
        starting_after=starting_after,
    )


def insert_for(session: AsyncSession):  # type: ignore[no-untyped-def]
    """The dialect's INSERT, for ``ON CONFLICT`` clauses on both databases."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


async def attach_file(
    session: AsyncSession, *, creator_id: str, product_id: str, file_id: str, now: datetime
) -> list[File]:
    """Attach a file to a product (again: nothing changes); returns the product's files.

    Raises:
        ProductNotFound, FileNotFound, TooManyFiles.
    """
    await catalog.get_product(session, creator_id=creator_id, product_id=product_id)
    await get_file(session, creator_id=creator_id, file_id=file_id)
    attached = await product_files(session, product_id=product_id)
    if file_id not in {f.id for f in attached} and len(attached) >= MAX_FILES_PER_PRODUCT:
        raise TooManyFiles(f"a product delivers at most {MAX_FILES_PER_PRODUCT} files")
    await session.execute(
        insert_for(session)(ProductFile)
        .values(product_id=product_id, file_id=file_id, creator_id=creator_id, created_at=now)
        .on_conflict_do_nothing(index_elements=[ProductFile.product_id, ProductFile.file_id])
    )
    return await product_files(session, product_id=product_id)


async def detach_file(
    session: AsyncSession, *, creator_id: str, product_id: str, file_id: str
) -> None:
    """Stop delivering a file with a product. Orders paid before keep their links.

    Raises:
        ProductNotFound, FileNotAttached.
    """
    await catalog.get_product(session, creator_id=creator_id, product_id=product_id)
    removed = await session.execute(
        delete(ProductFile).where(
            ProductFile.product_id == product_id, ProductFile.file_id == file_id
        )
    )
    if removed.rowcount == 0:  # type: ignore[attr-defined]
        raise FileNotAttached(f"file {file_id!r} is not attached to product {product_id}")


async def product_files(session: AsyncSession, *, product_id: str) -> list[File]:
    """The files a product delivers, in the order they were attached."""
    return list(
        (
            await session.execute(
                select(File)
                .join(ProductFile, ProductFile.file_id == File.id)
                .where(ProductFile.product_id == product_id)
                .order_by(ProductFile.created_at, File.id)
            )
        ).scalars()
    )


async def has_key_pool(session: AsyncSession, *, product_id: str) -> bool:
    """Whether the product delivers license keys (it has a pool, empty or not)."""
    found = await session.execute(
        select(LicenseKey.id).where(LicenseKey.product_id == product_id).limit(1)
    )
    return found.first() is not None


@dataclass(frozen=True, slots=True)
class KeyPool:
    product_id: str
    added: int
    available: int
    issued: int


async def key_pool(session: AsyncSession, *, product_id: str, added: int = 0) -> KeyPool:
    rows = dict(
        (
            await session.execute(
                select(LicenseKey.order_line_id.is_(None), func.count())
                .where(LicenseKey.product_id == product_id)
                .group_by(LicenseKey.order_line_id.is_(None))
            )
        ).all()
    )
    return KeyPool(
        product_id=product_id,
        added=added,
        available=int(rows.get(True, 0)),
        issued=int(rows.get(False, 0)),
    )


async def add_license_keys(
    session: AsyncSession,
    *,
    creator_id: str,
    product_id: str,
    keys: Sequence[str],
    now: datetime,
) -> KeyPool:
    """Add keys to a product's pool; a key the pool has already is skipped. Each buyer of
    the product gets one key per unit, each key once (``digital.delivery``).

    Raises:
        ProductNotFound, DuplicateLicenseKey.
    """
    await catalog.get_product(session, creator_id=creator_id, product_id=product_id)
    if len(set(keys)) != len(keys):
        raise DuplicateLicenseKey("a key appears twice in keys; send each key once")
    inserted = await session.execute(
        insert_for(session)(LicenseKey)
        .values(
            [
                {
                    "id": new_id("lk"),
                    "creator_id": creator_id,
                    "product_id": product_id,
                    "key": key,
                    "created_at": now,
                }
                for key in keys
            ]
        )
        .on_conflict_do_nothing(index_elements=[LicenseKey.product_id, LicenseKey.key])
        .returning(LicenseKey.id)
    )
    return await key_pool(session, product_id=product_id, added=len(inserted.all()))


async def list_license_keys(
    session: AsyncSession,
    *,
    creator_id: str,
    product_id: str,
    limit: int,
    starting_after: str | None,
) -> Page[LicenseKey]:
    """The product's keys, newest first, issued or not. Raises ProductNotFound."""
    await catalog.get_product(session, creator_id=creator_id, product_id=product_id)
    return await paginate(
        session,
        select(LicenseKey).where(LicenseKey.product_id == product_id),
        id_column=LicenseKey.id,
        limit=limit,
        starting_after=starting_after,
    )
