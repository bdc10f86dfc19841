"""Where uploaded files' bytes live: a small interface with two adapters.

``LocalStorage`` keeps them under a folder (the embedded default, ``./var/files``);
``S3Storage`` in an S3-compatible bucket through boto3, the AWS SDK, which speaks to AWS
S3 and to S3-compatible stores (MinIO, R2, Ceph) given an endpoint URL. Both are blocking
libraries, so every call runs in a worker thread and never holds up the event loop; no
database transaction is open during a storage call (``digital.service``).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import anyio
from anyio import to_thread

CHUNK = 256 * 1024
_KEY = re.compile(r"^[A-Za-z0-9_\-/.]+$")


class StorageError(RuntimeError):
    """The storage could not keep or give back a file's bytes."""


def _check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key or key.startswith("/"):
        raise ValueError(f"unsafe storage key {key!r}")
    return key


class Storage(Protocol):
    """What digital delivery needs from a store of bytes."""

    async def put(self, key: str, source: BinaryIO, *, size: int, content_type: str) -> None:
        """Keep ``size`` bytes read from ``source`` (at its start) under ``key``."""

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The bytes under ``key``, in chunks. Raises StorageError when there are none."""

    async def delete(self, key: str) -> None: ...


class LocalStorage:
    """Files under ``root``, written to a temporary name and renamed into place, so a
    reader never sees half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    async def put(self, key: str, source: BinaryIO, *, size: int, content_type: str) -> None:
        target = self._path(key)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            source.seek(0)
            with partial.open("wb") as handle:
                while chunk := source.read(CHUNK):
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            partial.replace(target)

        await to_thread.run_sync(write)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await anyio.open_file(path, "rb")
        except FileNotFoundError as error:
            raise StorageError(f"no stored file {key!r}") from error
        async with handle:
            while chunk := await handle.read(CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        await to_thread.run_sync(lambda: self._path(key).unlink(missing_ok=True))


class S3Storage:
    """Files in an S3-compatible bucket under ``prefix``, through boto3."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _key(self, key: str) -> str:
        return self.prefix + _check_key(key)

    async def put(self, key: str, source: BinaryIO, *, size: int, content_type: str) -> None:
        def upload() -> None:
            source.seek(0)
            # upload_fileobj switches to a multipart upload for large files by itself.
            self._client.upload_fileobj(
                source, self.bucket, self._key(key), ExtraArgs={"ContentType": content_type}
            )

        await to_thread.run_sync(upload)

    async def read(self, key: str) -> AsyncIterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            response = await to_thread.run_sync(
                lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            )
        except ClientError as error:
            raise StorageError(f"no stored file {key!r}: {error}") from error
        body = response["Body"]
        try:
            while chunk := await to_thread.run_sync(body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await to_thread.run_sync(
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        )
