"""The two file storages: local disk, and S3-compatible object storage through boto3,
checked against moto's S3 server (a local S3-compatible test double speaking the S3 HTTP
API on 127.0.0.1; no network). Then the whole app with ``file_storage="s3"``: upload,
buy, download the exact bytes from the bucket."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from stallholder.app import create_app
from stallholder.digital.config import StorageMisconfigured, storage_from_settings
from stallholder.digital.storage import LocalStorage, S3Storage, Storage, StorageError
from stallholder.kit.clock import FrozenClock
from stallholder.kit.db import Database
from stallholder.settings import Settings
from tests.conftest import Api, bearer

pytestmark = pytest.mark.anyio
# Bigger than a read chunk and than boto3's multipart threshold is not needed: two chunks.
CONTENT = os.urandom(300_000)
CREDENTIALS = {"s3_access_key_id": "test-access-key", "s3_secret_access_key": "test-secret"}


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["s3_access_key_id"],
        aws_secret_access_key=CREDENTIALS["s3_secret_access_key"],
    ).create_bucket(Bucket="stallholder-files")
    yield endpoint
    server.stop()


async def _read_all(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key)])


async def _round_trip(storage: Storage) -> None:
    await storage.put("cr_1/file_1", io.BytesIO(CONTENT), size=len(CONTENT), content_type="a/b")
    assert await _read_all(storage, "cr_1/file_1") == CONTENT
    await storage.delete("cr_1/file_1")
    with pytest.raises(StorageError, match="no stored file 'cr_1/file_1'"):
        await _read_all(storage, "cr_1/file_1")
    with pytest.raises(ValueError, match="unsafe storage key"):
        await storage.put("../escape", io.BytesIO(b"x"), size=1, content_type="a/b")


async def test_local_storage_keeps_exact_bytes(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "files")
    await _round_trip(storage)
    assert sorted(p.name for p in (tmp_path / "files" / "cr_1").iterdir()) == []


async def test_s3_storage_keeps_exact_bytes(s3_endpoint: str) -> None:
    storage = S3Storage(
        bucket="stallholder-files",
        prefix="files/",
        endpoint_url=s3_endpoint,
        access_key_id=CREDENTIALS["s3_access_key_id"],
        secret_access_key=CREDENTIALS["s3_secret_access_key"],
    )
    await _round_trip(storage)


def test_s3_needs_a_bucket(settings: Settings) -> None:
    with pytest.raises(StorageMisconfigured, match="STALLHOLDER_S3_BUCKET"):
        storage_from_settings(settings.model_copy(update={"file_storage": "s3"}))


@pytest.fixture
async def s3_api(
    settings: Settings, database: Database, clock: FrozenClock, s3_endpoint: str
) -> AsyncIterator[Api]:
    s3_settings = settings.model_copy(
        update={
            "file_storage": "s3",
            "s3_bucket": "stallholder-files",
            "s3_endpoint_url": s3_endpoint,
            **CREDENTIALS,
        }
    )
    app = create_app(s3_settings, database=database, clock=clock, run_worker=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield Api(http)


async def test_the_app_delivers_files_from_the_bucket(s3_api: Api, s3_endpoint: str) -> None:
    api = s3_api
    creator = await api.creator()
    sk = creator["secret_key"]
    product = await api.product(sk, kind="digital", name="Sample pack")
    price = await api.price(sk, product=product["id"], unit_amount=700)
    uploaded = await api.http.post(
        "/v1/files",
        headers=bearer(sk),
        files={"file": ("pack.zip", CONTENT, "application/zip")},
    )
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()
    listing = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["s3_access_key_id"],
        aws_secret_access_key=CREDENTIALS["s3_secret_access_key"],
    ).list_objects_v2(Bucket="stallholder-files")
    assert [(o["Key"], o["Size"]) for o in listing["Contents"]] == [
        (f"files/{creator['id']}/{file['id']}", len(CONTENT))
    ]
    await api.http.post(
        f"/v1/products/{product['id']}/files", headers=bearer(sk), json={"file": file["id"]}
    )
    session = await api.session(sk, price=price["id"])
    order_id = (await api.confirm(sk, session["id"])).json()["order"]
    order = (await api.http.get(f"/v1/orders/{order_id}", headers=bearer(sk))).json()
    url = order["downloads"][0]["url"].removeprefix("http://testserver")
    downloaded = await api.http.get(url)
    assert (downloaded.status_code, downloaded.headers["content-type"]) == (
        200,
        "application/zip",
    )
    assert downloaded.content == CONTENT
