"""Digital delivery as the settings configure it: the file storage and download links."""

from __future__ import annotations

import secrets
from datetime import timedelta

from stallholder.digital.links import Links
from stallholder.digital.storage import LocalStorage, S3Storage, Storage
from stallholder.kit.key_files import key_in
from stallholder.settings import Settings

SIGNING_KEY_FILE = "download-signing-key"


class StorageMisconfigured(ValueError):
    """``file_storage="s3"`` without a bucket: the app refuses to start."""


def storage_from_settings(settings: Settings) -> Storage:
    if settings.file_storage == "s3":
        if not settings.s3_bucket:
            raise StorageMisconfigured("STALLHOLDER_FILE_STORAGE=s3 needs STALLHOLDER_S3_BUCKET")
        return S3Storage(
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id or None,
            secret_access_key=settings.s3_secret_access_key or None,
        )
    return LocalStorage(settings.files_dir or settings.data_dir / "files")


def signing_key(settings: Settings) -> bytes:
    """``STALLHOLDER_DOWNLOAD_SIGNING_KEY``, or one generated once and kept in
    ``<data_dir>/download-signing-key`` (mode 0600), as the admin key is."""
    if settings.download_signing_key:
        return settings.download_signing_key.encode()
    return key_in(
        settings.data_dir, SIGNING_KEY_FILE, make=lambda: secrets.token_urlsafe(32)
    ).encode()


def links_from_settings(settings: Settings) -> Links:
    return Links(
        key=signing_key(settings),
        base_url=settings.base_url.rstrip("/"),
        ttl=timedelta(seconds=settings.download_link_ttl_seconds),
        limit=settings.download_limit,
    )
