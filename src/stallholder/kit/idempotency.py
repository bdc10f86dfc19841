"""``Idempotency-Key`` on POST: the same key and body replay the first response.

Stored in the database so it holds across processes and restarts. The key is scoped to
the caller (a hash of its ``Authorization`` header), and the caller is authenticated
before anything is written. Another body under the same key is a 409; a second request
while the first is still running is a 409 too, so two concurrent requests with one key
never both execute.

The stored response commits in the same transaction as the effect it describes: the
middleware opens the request's unit of work itself (``kit.http.OuterUnitOfWork``), lets the
endpoint work in it, writes the response into the key's row and commits once. A crash at
any point either loses both (the retry runs the request) or keeps both (the retry replays).
A first request that ended in a 5xx, or in an answer with ``Retry-After`` ("not yet", such
as ``payment-in-progress``), leaves no record, so the client may retry it; one that
died mid-way is taken over once its lock is older than the lock time. Each claim carries a
fresh ``lock_token`` and only the holder of the current token can complete the key, so a
request that was taken over rolls back instead of acting a second time (ADR 0004).

Routes the app lists in ``claim_at_commit`` (their effect is keyed by what they act on)
write nothing before the endpoint: the key's row is inserted, complete, with the effect,
and a request that finds the key taken at that insert rolls back and replays (ADR 0028).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stallholder.kit.clock import Clock
from stallholder.kit.db import Base, Database, SerialPK, is_unique_violation, run_final_steps
from stallholder.kit.errors import PROBLEM_MEDIA_TYPE, Conflict, DomainError, InvalidRequest
from stallholder.kit.flush import flush_together
from stallholder.kit.http import (
    PRINCIPAL_SCOPE_KEY,
    REQUEST_KEY_SCOPE_KEY,
    UNIT_OF_WORK_SCOPE_KEY,
    OuterUnitOfWork,
)
from stallholder.kit.work import Claimed, Context, Kind

# A claim older than this is taken to belong to a request that died; the next request with
# the key takes it over. ``STALLHOLDER_IDEMPOTENCY_LOCK_SECONDS`` overrides it.
LOCK_SECONDS = 60
MAX_KEY_LENGTH = 255
# How long a key replays its first response; Stripe keeps keys for 24 hours as well. After
# that the same key starts a new request.
RETENTION = timedelta(hours=24)
KEY_CONSTRAINT = "uq_idempotency_keys_scope_key"

# Says who is behind an ``Authorization`` header, reading with the session it is given;
# raises a ``DomainError`` (a 401) when no one is. The app passes the accounts service's.
Authenticate = Callable[[AsyncSession, str], Awaitable[object]]


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
    # Who holds the claim: a fresh random value per claim and per takeover. Only the holder
    # of the current token may complete or release the key.
    lock_token: Mapped[str | None] = mapped_column(String(32), default=None)


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


async def _send_problem(send: Send, error: DomainError, *, instance: str | None = None) -> None:
    body = json.dumps(error.problem(instance)).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if error.status == 401:  # RFC 6750: a 401 names the scheme the client should use
        headers.append((b"www-authenticate", b'Bearer realm="stallholder"'))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class _Stored:
    """A completed key's response, replayed as it was."""

    status: int
    content_type: str
    body: str

    async def send(self, send: Send) -> None:
        payload = self.body.encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", self.content_type.encode()),
                    (b"content-length", str(len(payload)).encode()),
                    (b"idempotent-replayed", b"true"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@dataclass(frozen=True)
class _Claim:
    caller: str
    key: str
    token: str
    # Claimed at the commit (``claim_at_commit``): no row yet; the key's row is inserted,
    # complete, with the request's effect.
    at_commit: bool = False
    request_hash: str = ""
    at: datetime | None = None


# The statements that record a response, built once (construction costs more CPU than
# the cached compilation); each use binds its values.
_KEYS = cast(Table, IdempotencyKey.__table__)
_COMPLETE = (
    update(_KEYS)
    .where(
        _KEYS.c.scope == bindparam("b_scope"),
        _KEYS.c.key == bindparam("b_key"),
        _KEYS.c.lock_token == bindparam("b_token"),
        _KEYS.c.is_complete.is_(False),
    )
    .values(is_complete=True)
)


class IdempotencyMiddleware:
    """ASGI middleware that records and replays POST responses by ``Idempotency-Key``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        database: Callable[[], Database],
        clock: Callable[[], Clock],
        authenticate: Authenticate,
        lock_seconds: float = LOCK_SECONDS,
        claim_at_commit: Sequence[re.Pattern[str]] = (),
    ) -> None:
        self.app = app
        self._database = database
        self._clock = clock
        self._authenticate = authenticate
        self._lock = timedelta(seconds=lock_seconds)
        self._claim_at_commit = tuple(claim_at_commit)

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
            )
            return

        database = self._database()
        body = await _read_body(receive)
        caller = _hash(authorization.encode())
        request_hash = _hash(scope["path"].encode(), scope.get("query_string", b""), body)
        now = self._clock().now()

        # Authenticate before anything is written, in the claim's own transaction (one
        # round trip to the pool and one BEGIN/COMMIT fewer than a read of its own): a
        # caller no key identifies gets its 401 and the claim rolls back, leaving no row.
        # The endpoint reuses the principal.
        claimed: _Claim | _Stored | DomainError
        try:
            if any(path.fullmatch(scope["path"]) for path in self._claim_at_commit):
                principal, claimed = await self._claim_later(
                    database, authorization, caller, key, request_hash, now
                )
            else:
                principal, claimed = await self._claim(
                    database, authorization, caller, key, request_hash, now
                )
        except DomainError as error:
            await _send_problem(send, error, instance=scope["path"])
            return
        if isinstance(claimed, DomainError):
            await _send_problem(send, claimed)
            return
        if isinstance(claimed, _Stored):
            await claimed.send(send)
            return

        async with database.sessionmaker() as session:
            unit = OuterUnitOfWork(session)
            inner = {
                **scope,
                PRINCIPAL_SCOPE_KEY: principal,
                UNIT_OF_WORK_SCOPE_KEY: unit,
                REQUEST_KEY_SCOPE_KEY: _hash(caller.encode(), key.encode()),
            }
            captured = _CapturedResponse()
            try:
                await self.app(inner, _replay(body), captured.capture)
            except BaseException:
                await session.rollback()
                await self._release(database, claimed)
                raise
            response = await self._finish(database, unit, captured, claimed, instance=scope["path"])
        await response.send(send)

    async def _finish(
        self,
        database: Database,
        unit: OuterUnitOfWork,
        captured: _CapturedResponse,
        claim: _Claim,
        *,
        instance: str,
    ) -> _CapturedResponse | _Stored | _Problem:
        """Commit the request's work together with its stored response, or roll back.

        A 2xx, or a 4xx the endpoint returned (a declined payment: its attempt is kept), is
        stored in the request's own transaction and commits with it, after the steps the
        request deferred to its commit (``kit.db.defer_until_commit``). A 4xx the endpoint
        raised, or that a deferred step raised, rolled its work back; its response is
        stored alone. A 5xx rolls back and releases the key so the client may retry it."""
        session = unit.session
        # A 5xx, or an answer with Retry-After ("not yet", such as payment-in-progress), is
        # not the request's outcome: nothing is kept and the client's retry runs it again.
        is_not_an_outcome = captured.status >= 500 or captured.says_retry_later
        if unit.has_failed or is_not_an_outcome:
            await session.rollback()
            if is_not_an_outcome:
                await self._release(database, claim)
                return captured
        try:
            try:
                is_ours = await self._record(session, claim, captured)
            except IntegrityError as error:
                if not (claim.at_commit and is_unique_violation(error, KEY_CONSTRAINT)):
                    raise
                # Another request with the key committed first (a concurrent duplicate,
                # or a retry of a request that completed): this one's work does not count.
                await session.rollback()
                return await self._taken_meanwhile(database, claim)
            if is_ours:
                try:
                    await run_final_steps(session)
                except DomainError as error:
                    # A step deferred to the commit refused (the drop sold out while the
                    # request ran): that is the request's answer, stored alone.
                    await session.rollback()
                    captured = _CapturedResponse.of_problem(error, instance=instance)
                    is_ours = await self._record(session, claim, captured)
            if is_ours:
                await self._commit(session)
        except Exception:
            # Whether or not the commit reached the database, releasing is safe: it only
            # removes a key that is still incomplete, so the client retries either into a
            # replay or into a fresh run. The error itself becomes the app's logged 500.
            await session.rollback()
            await self._release(database, claim)
            raise
        if not is_ours:
            # Our claim went stale and another request took the key over: this one's work
            # must not count too.
            await session.rollback()
            return await self._after_takeover(database, claim)
        return captured

    async def _commit(self, session: AsyncSession) -> None:
        """The one commit of a keyed request: its effect and its stored response."""
        await session.commit()

    async def _claim_later(
        self,
        database: Database,
        authorization: str,
        caller: str,
        key: str,
        request_hash: str,
        now: datetime,
    ) -> tuple[object, _Claim]:
        """Authenticate the caller for a route that claims its key at the commit: nothing
        is written now (ADR 0028). The read session opens no transaction when the key
        cache knows the caller.

        Raises:
            DomainError: the caller is not authenticated.
        """
        async with database.read() as session:
            principal = await self._authenticate(session, authorization)
        claim = _Claim(
            caller,
            key,
            secrets.token_hex(16),
            at_commit=True,
            request_hash=request_hash,
            at=now,
        )
        return principal, claim

    async def _taken_meanwhile(self, database: Database, claim: _Claim) -> _Stored | _Problem:
        """What a request that claims at the commit answers when the key was taken while it
        ran: the first request's stored response, or why not."""
        async with database.read() as session:
            row = await _find(session, claim.caller, claim.key)
        if row is not None and row.request_hash != claim.request_hash:
            return _Problem(_reused())
        if row is not None and row.is_complete:
            return _stored(row)
        return _Problem(_in_use())

    async def _claim(
        self,
        database: Database,
        authorization: str,
        caller: str,
        key: str,
        request_hash: str,
        now: datetime,
    ) -> tuple[object, _Claim | _Stored | DomainError]:
        """Authenticate the caller and claim the key for this request, or say what the
        client gets instead. Returns the principal with the outcome.

        Raises:
            DomainError: the caller is not authenticated (nothing was written).
        """
        token = secrets.token_hex(16)
        try:
            async with database.unit_of_work() as session:
                principal = await self._authenticate(session, authorization)
                session.add(
                    IdempotencyKey(
                        scope=caller,
                        key=key,
                        request_hash=request_hash,
                        created_at=now,
                        locked_at=now,
                        lock_token=token,
                    )
                )
            return principal, _Claim(caller, key, token)
        except IntegrityError as error:
            if not is_unique_violation(error, KEY_CONSTRAINT):
                raise
        return principal, await self._claimed_already(database, caller, key, request_hash, now)

    async def _claimed_already(
        self, database: Database, caller: str, key: str, request_hash: str, now: datetime
    ) -> _Claim | _Stored | DomainError:
        """The key exists: replay it, refuse, or take over a claim whose request died."""
        token = secrets.token_hex(16)
        async with database.unit_of_work() as session:
            row = await _find(session, caller, key)
            if row is None:  # released between our insert and this read: the client may retry
                return IdempotencyKeyInUse(
                    "a request with this key just finished failing; retry it"
                )
            if row.request_hash != request_hash:
                return _reused()
            if row.is_complete:
                return _stored(row)
            taken = await session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.id == row.id,
                    IdempotencyKey.is_complete.is_(False),
                    IdempotencyKey.locked_at < now - self._lock,
                )
                .values(locked_at=now, lock_token=token)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return _Claim(caller, key, token)
        return _in_use()

    async def _record(
        self, session: AsyncSession, claim: _Claim, captured: _CapturedResponse
    ) -> bool:
        """Write the response into the key's row in the request's transaction, if the claim
        is still ours. A claim at the commit inserts the row, complete (raises the unique
        violation when the key was taken meanwhile)."""
        response = {
            "response_status": captured.status,
            "response_content_type": captured.content_type,
            "response_body": captured.body.decode("utf-8", "replace"),
        }
        if claim.at_commit:
            assert claim.at is not None
            # With whatever the request left to its commit, in one statement on
            # PostgreSQL where that is plain (``kit.flush``, ADR 0030).
            await flush_together(
                session,
                also=[
                    (
                        _KEYS,
                        {
                            "scope": claim.caller,
                            "key": claim.key,
                            "request_hash": claim.request_hash,
                            "is_complete": True,
                            "created_at": claim.at,
                            "locked_at": claim.at,
                            "lock_token": claim.token,
                            **response,
                        },
                    )
                ],
            )
            return True
        result = await session.execute(
            _COMPLETE,
            {"b_scope": claim.caller, "b_key": claim.key, "b_token": claim.token, **response},
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def _after_takeover(self, database: Database, claim: _Claim) -> _Stored | _Problem:
        async with database.read() as session:
            row = await _find(session, claim.caller, claim.key)
            if row is not None and row.is_complete:
                return _stored(row)
        return _Problem(_in_use())

    async def _release(self, database: Database, claim: _Claim) -> None:
        if claim.at_commit:  # nothing was written
            return
        async with database.unit_of_work() as session:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.scope == claim.caller,
                    IdempotencyKey.key == claim.key,
                    IdempotencyKey.lock_token == claim.token,
                    IdempotencyKey.is_complete.is_(False),
                )
            )


async def _find(session: AsyncSession, caller: str, key: str) -> IdempotencyKey | None:
    return (
        await session.execute(
            select(IdempotencyKey).where(IdempotencyKey.scope == caller, IdempotencyKey.key == key)
        )
    ).scalar_one_or_none()


def _stored(row: IdempotencyKey) -> _Stored:
    assert row.response_status is not None
    return _Stored(
        row.response_status,
        row.response_content_type or "application/json",
        row.response_body or "",
    )


def _reused() -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        "this Idempotency-Key was used with a different request body or path; "
        "use a new key for a new request"
    )


def _in_use() -> IdempotencyKeyInUse:
    return IdempotencyKeyInUse(
        "another request with this Idempotency-Key is in progress; retry after it finishes"
    )


@dataclass(frozen=True)
class _Problem:
    error: DomainError

    async def send(self, send: Send) -> None:
        await _send_problem(send, self.error)


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

    @classmethod
    def of_problem(cls, error: DomainError, *, instance: str) -> _CapturedResponse:
        """The problem+json response the app's error handler gives ``error``."""
        body = json.dumps(
            error.problem(instance), ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()
        captured = cls()
        captured.status = error.status
        captured.headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in error.headers().items()),
        ]
        captured.chunks = [body]
        return captured

    async def capture(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def says_retry_later(self) -> bool:
        """A ``Retry-After`` answer (``payment-in-progress``) is "not yet", not an outcome."""
        return any(name.lower() == b"retry-after" for name, _ in self.headers)

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.decode("latin-1")
        return "application/json"

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
