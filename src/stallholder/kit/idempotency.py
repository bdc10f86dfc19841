"""``Idempotency-Key`` on POST: the same key and body replay the first response.

Stored in the database so it holds across processes and restarts. The key is scoped to
the caller (a hash of its ``Authorization`` header). Another body under the same key is a
409; a second request while the first is still running is a 409 too, so two concurrent
requests with one key never both execute. A first request that ended in a 5xx leaves no
record, so the client may retry it; one that crashed mid-way is taken over once its lock
is older than ``LOCK_SECONDS``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import String, Text, UniqueConstraint, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stallholder.kit.clock import Clock
from stallholder.kit.db import Base, Database, SerialPK
from stallholder.kit.errors import PROBLEM_MEDIA_TYPE, Conflict, DomainError, InvalidRequest
from stallholder.kit.work import Claimed, Context, Kind

LOCK_SECONDS = 60
MAX_KEY_LENGTH = 255
# How long a key replays its first response; Stripe keeps keys for 24 hours as well. After
# that the same key starts a new request.
RETENTION = timedelta(hours=24)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("scope", "key"),)

    id: Mapped[SerialPK]
    scope: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    request_hash: Mapped[str] = mapped_column(String(64))
    is_complete: Mapped[bool] = mapped_column(default=False)
    response_status: Mapped[int | None] = mapped_column(default=None)
    response_content_type: Mapped[str | None] = mapped_column(String(100), default=None)
    response_body: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(index=True)
    locked_at: Mapped[datetime]


class IdempotencyKeyReused(Conflict):
    slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class IdempotencyKeyInUse(Conflict):
    slug = "idempotency-key-in-use"
    title = "A request with this idempotency key is still in progress"


class InvalidIdempotencyKey(InvalidRequest):
    slug = "invalid-idempotency-key"
    title = "Invalid Idempotency-Key header"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


async def _send_problem(
    send: Send, error: DomainError, extra_headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps(error.problem()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class IdempotencyMiddleware:
    """ASGI middleware that records and replays POST responses by ``Idempotency-Key``."""

    def __init__(
        self, app: ASGIApp, *, database: Callable[[], Database], clock: Callable[[], Clock]
    ) -> None:
        self.app = app
        self._database = database
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"idempotency-key")
        authorization = _header(scope, b"authorization")
        if key is None or authorization is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH:
            await _send_problem(
                send,
                InvalidIdempotencyKey(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters"),
                [],
            )
            return

        body = await _read_body(receive)
        caller = _hash(authorization.encode())
        request_hash = _hash(scope["path"].encode(), scope.get("query_string", b""), body)
        database = self._database()
        now = self._clock().now()

        stored = await self._claim(database, caller, key, request_hash, now)
        if isinstance(stored, DomainError):
            await _send_problem(send, stored, [])
            return
        if stored is not None:
            status, content_type, text = stored
            payload = text.encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", content_type.encode()),
                        (b"content-length", str(len(payload)).encode()),
                        (b"idempotent-replayed", b"true"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return

        captured = _CapturedResponse()
        try:
            await self.app(scope, _replay(body), captured.send)
        except BaseException:
            await self._release(database, caller, key)
            raise
        if captured.status >= 500:
            await self._release(database, caller, key)
        else:
            await self._complete(database, caller, key, captured)
        await captured.flush(send)

    async def _claim(
        self, database: Database, caller: str, key: str, request_hash: str, now: datetime
    ) -> tuple[int, str, str] | DomainError | None:
        """Claim the key for this request, or say what the client gets instead."""
        try:
            async with database.unit_of_work() as session:
                session.add(
                    IdempotencyKey(
                        scope=caller,
                        key=key,
                        request_hash=request_hash,
                        created_at=now,
                        locked_at=now,
                    )
                )
            return None
        except IntegrityError:
            pass
        async with database.unit_of_work() as session:
            row = (
                await session.execute(
                    select(IdempotencyKey).where(
                        IdempotencyKey.scope == caller, IdempotencyKey.key == key
                    )
                )
            ).scalar_one_or_none()
            if row is None:  # released between our insert and this read: the client may retry
                return IdempotencyKeyInUse(
                    "a request with this key just finished failing; retry it"
                )
            if row.request_hash != request_hash:
                return IdempotencyKeyReused(
                    "this Idempotency-Key was used with a different request body or path; "
                    "use a new key for a new request"
                )
            if row.is_complete:
                assert row.response_status is not None
                return (
                    row.response_status,
                    row.response_content_type or "application/json",
                    row.response_body or "",
                )
            stale = now - timedelta(seconds=LOCK_SECONDS)
            taken = await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.id == row.id,
                    IdempotencyKey.is_complete.is_(False),
                    IdempotencyKey.locked_at < stale,
                )
                .values(locked_at=now)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return None
        return IdempotencyKeyInUse(
            "another request with this Idempotency-Key is in progress; retry after it finishes"
        )

    async def _complete(
        self, database: Database, caller: str, key: str, captured: _CapturedResponse
    ) -> None:
        async with database.unit_of_work() as session:
            await session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.scope == caller, IdempotencyKey.key == key)
                .values(
                    is_complete=True,
                    response_status=captured.status,
                    response_content_type=captured.content_type,
                    response_body=captured.body.decode("utf-8", "replace"),
                )
            )

    async def _release(self, database: Database, caller: str, key: str) -> None:
        async with database.unit_of_work() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.scope == caller,
                    IdempotencyKey.key == key,
                    IdempotencyKey.is_complete.is_(False),
                )
            )


async def prune_expired_keys(session: AsyncSession, now: datetime, *, batch: int = 1000) -> int:
    """Forget up to ``batch`` keys older than ``RETENTION``. Returns how many were removed.

    A key still locked by a live request is younger than ``LOCK_SECONDS``, so it is never
    removed from under that request."""
    cutoff = now - RETENTION
    expired = (
        select(IdempotencyKey.id)
        .where(IdempotencyKey.created_at < cutoff, IdempotencyKey.locked_at < cutoff)
        .order_by(IdempotencyKey.id)
        .limit(batch)
    )
    ids = list((await session.execute(expired)).scalars())
    if ids:
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids)))
    return len(ids)


async def _prune(context: Context[object], item: Claimed) -> None:
    """The periodic ``kit.prune_idempotency_keys``: prune in batches, each in its own
    short transaction, until none are left."""
    while True:
        async with context.database.unit_of_work() as session:
            if await prune_expired_keys(session, context.clock.now()) == 0:
                return


PRUNE_KEYS: Kind[object] = Kind(
    name="kit.prune_idempotency_keys", handler=_prune, every=timedelta(hours=1)
)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


class _CapturedResponse:
    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.decode("latin-1")
        return "application/json"

    async def flush(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
