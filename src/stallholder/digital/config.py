"""Digital delivery as the settings configure it: the file storage and download links."""

from __future__ import annotations

import os
import secrets
from datetime import timedelta

from stallholder.digital.links import Links
from stallholder.digital.storage import LocalStorage, S3Storage, Storage
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
    path = settings.data_dir / SIGNING_KEY_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name, then linked into place: a process that
        # starts at the same moment (``serve --workers``) reads a complete key or makes
        # its own link fail and reads the first one's.
        partial = path.with_name(f"{SIGNING_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(partial, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            partial.unlink()
    return path.read_text().strip().encode()


def links_from_settings(settings: Settings) -> Links:
    return Links(
        key=signing_key(settings),
        base_url=settings.base_url.rstrip("/"),
        ttl=timedelta(seconds=settings.download_link_ttl_seconds),
        limit=settings.download_limit,
    )
