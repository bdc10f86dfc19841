"""Creators, their API keys, customers, and who a request is."""

from __future__ import annotations

import functools
import hmac
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, cast

from sqlalchemy import Table, bindparam, event, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.dml import ReturningInsert

from stallholder.accounts.emails import buyer_key
from stallholder.accounts.models import ApiKey, Buyer, Creator, Customer, TestClock
from stallholder.accounts.origins import is_origin_allowed
from stallholder.accounts.schemas import slugify
from stallholder.kit.db import (
    UTCDateTime,
    commits_whole_transaction,
    is_unique_violation,
    is_whole_transaction,
)
from stallholder.kit.errors import Conflict, Forbidden, NotFound, Unauthenticated
from stallholder.kit.ids import hash_secret, new_id, new_secret
from stallholder.kit.pagination import Page, paginate

ADMIN_KEY_FILE = "admin-key"
# The time zone of a customer a checkout creates for an email (the buyer's is not known).
NEW_CUSTOMER_ZONE = "UTC"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the platform admin, or a creator through a secret or publishable key."""

    kind: Literal["admin", "secret", "publishable"]
    creator_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"


class KeyCache:
    """The principals of API keys this process has seen lately, each for at most
    ``ttl_seconds`` (ADR 0015): a request with a cached key needs no database read to
    authenticate.

    A key revoked by this process (``roll_keys``) is forgotten when that transaction
    commits; one revoked by another process keeps working here for at most
    ``ttl_seconds``. Only keys that matched a live row are cached, never a failure.
    ``ttl_seconds`` of 0 turns caching off. ``clock`` is monotonic seconds (tests)."""

    _live: weakref.WeakSet[KeyCache] = weakref.WeakSet()

    def __init__(
        self,
        ttl_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        KeyCache._live.add(self)

    def get(self, key_hash: str) -> Principal | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        principal, expires = entry
        if self._clock() >= expires:
            del self._entries[key_hash]
            return None
        return principal

    def put(self, key_hash: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # bounded memory; the next requests read again
        self._entries[key_hash] = (principal, self._clock() + self.ttl)

    def forget_creator(self, creator_id: str) -> None:
        for key_hash, (principal, _) in list(self._entries.items()):
            if principal.creator_id == creator_id:
                del self._entries[key_hash]

    @classmethod
    def forget_creator_everywhere(cls, creator_id: str) -> None:
        for cache in list(cls._live):
            cache.forget_creator(creator_id)


_ROLLED = "stallholder.accounts.rolled_keys"


@event.listens_for(Session, "after_commit")
def _forget_rolled_keys(session: Session) -> None:
    if not commits_whole_transaction(session):
        return  # a savepoint's release: the old keys are still the database's until the commit
    for creator_id in session.info.pop(_ROLLED, ()):
        KeyCache.forget_creator_everywhere(creator_id)


@event.listens_for(Session, "after_transaction_end")
def _drop_rolled_keys_note(session: Session, transaction: SessionTransaction) -> None:
    # The whole transaction's end (after its commit emptied the caches, or its rollback):
    # a roll before a savepoint that was rolled back to must still empty the caches at the
    # commit. (A roll inside it then empties them for nothing, which costs a key lookup.)
    if is_whole_transaction(transaction):
        session.info.pop(_ROLLED, None)


class SlugTaken(Conflict):
    slug = "slug-taken"
    title = "Slug already taken"


class CreatorNotFound(NotFound):
    slug = "creator-not-found"
    title = "No such creator"


class CustomerNotFound(NotFound):
    slug = "customer-not-found"
    title = "No such customer"


class TestClockNotFound(NotFound):
    __test__ = False  # not a pytest class
    slug = "test-clock-not-found"
    title = "No such test clock"


class PublishableKeyNotAllowed(Forbidden):
    slug = "publishable-key-not-allowed"
    title = "A publishable key cannot do this"


def resolve_admin_key(configured: str, data_dir: Path) -> tuple[str, bool]:
    """The platform admin key and whether it was generated just now.

    ``STALLHOLDER_ADMIN_KEY`` wins. Without it a key is generated once and kept in
    ``<data_dir>/admin-key`` (mode 0600), so a self-hosted instance keeps the same key
    across restarts without a configuration step.
    """
    if configured:
        return configured, False
    path = data_dir / ADMIN_KEY_FILE
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = new_secret("admin")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key, True


async def authenticate(
    session: AsyncSession, *, token: str | None, admin_key: str, cache: KeyCache | None = None
) -> Principal:
    """The principal behind a bearer token; from ``cache`` when it has the key.

    Raises:
        Unauthenticated: no token, or one that matches no live key.
    """
    if not token:
        raise Unauthenticated("send your API key as 'Authorization: Bearer <key>'")
    if admin_key and hmac.compare_digest(token.encode(), admin_key.encode()):
        return Principal(kind="admin")
    key_hash = hash_secret(token)
    if cache is not None and (cached := cache.get(key_hash)) is not None:
        return cached
    row = (
        await session.execute(
            select(ApiKey.kind, ApiKey.creator_id).where(
                ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None:
        raise Unauthenticated("this API key is not valid; it may have been rolled")
    kind, creator_id = row
    principal = Principal(
        kind="secret" if kind == "secret" else "publishable", creator_id=creator_id
    )
    if cache is not None:
        cache.put(key_hash, principal)
    return principal


async def _issue_keys(session: AsyncSession, *, creator_id: str, now: datetime) -> tuple[str, str]:
    secret = new_secret("sk")
    publishable = new_secret("pk")
    for kind, key in (("secret", secret), ("publishable", publishable)):
        session.add(
            ApiKey(
                id=new_id("key"),
                creator_id=creator_id,
                kind=kind,
                key_hash=hash_secret(key),
                redacted=f"{key[:3]}…{key[-4:]}",
                created_at=now,
            )
        )
    await session.flush()
    return secret, publishable


async def _free_slug(session: AsyncSession, wanted: str) -> str:
    taken = set(
        (
            await session.execute(select(Creator.slug).where(Creator.slug.like(f"{wanted}%")))
        ).scalars()
    )
    if wanted not in taken:
        return wanted
    n = 2
    while f"{wanted}-{n}" in taken:
        n += 1
    return f"{wanted}-{n}"


async def create_creator(
    session: AsyncSession,
    *,
    display_name: str,
    email: str,
    slug: str | None,
    platform_fee_bps: int | None,
    platform_fee_fixed: Mapping[str, int] | None,
    now: datetime,
    listed: bool = False,
    creator_id: str | None = None,
) -> tuple[Creator, str, str]:
    """A new creator with a fresh secret and publishable key (shown once, stored hashed).

    Raises:
        SlugTaken: an explicit ``slug`` belongs to another creator, or a concurrent request
            took the slug (explicit or derived) before this one could insert it.
    """
    if slug is not None:
        if (await session.execute(select(Creator.id).where(Creator.slug == slug))).first():
            raise SlugTaken(f"the slug {slug!r} is taken; choose another or leave it out")
    else:
        slug = await _free_slug(session, slugify(display_name))
    creator = Creator(
        id=creator_id or new_id("cr"),
        slug=slug,
        display_name=display_name,
        email=email,
        platform_fee_bps=platform_fee_bps,
        platform_fee_fixed_amounts=None if platform_fee_fixed is None else dict(platform_fee_fixed),
        listed=listed,
        created_at=now,
    )
    session.add(creator)
    try:
        await session.flush()
    except IntegrityError as error:
        # Another request took the slug between the check above and this insert.
        if is_unique_violation(error, "uq_creators_slug"):
            raise SlugTaken(
                f"the slug {slug!r} was taken at this moment by another request; "
                "choose another or leave it out",
                slug_requested=slug,
            ) from error
        raise
    secret, publishable = await _issue_keys(session, creator_id=creator.id, now=now)
    return creator, secret, publishable


async def get_creator(session: AsyncSession, creator_id: str) -> Creator:
    creator = await session.get(Creator, creator_id)
    if creator is None:
        raise CreatorNotFound(f"no creator {creator_id!r}")
    return creator


class OriginNotAllowed(Forbidden):
    slug = "origin-not-allowed"
    title = "This site may not use the publishable key"


async def check_browser_origin(
    session: AsyncSession, *, creator_id: str, origin: str | None, own_origin: str
) -> None:
    """A browser call with the publishable key from another site is refused unless the
    creator lists that site in ``allowed_origins`` (a call without ``Origin``, from a
    server, is not a browser's and passes).

    Raises:
        OriginNotAllowed.
    """
    if origin is None:
        return
    creator = await get_creator(session, creator_id)
    if not is_origin_allowed(origin, allowed=creator.allowed_origins, own_origin=own_origin):
        raise OriginNotAllowed(
            f"the page at {origin} may not open checkout sessions for this creator; add it "
            f"to allowed_origins with PATCH /v1/creators/{creator_id}",
            origin=origin,
        )


async def update_creator(
    session: AsyncSession,
    *,
    creator_id: str,
    display_name: str | None = None,
    listed: bool | None = None,
    allowed_origins: list[str] | None = None,
) -> Creator:
    """Change the creator's settings; None leaves a setting as it is: its name, whether
    the store index lists it (``listed``; an unlisted creator's store pages are not
    found), and ``allowed_origins`` (normalised origins), which replaces the sites that
    may embed the creator's checkout.

    Raises:
        CreatorNotFound.
    """
    creator = await get_creator(session, creator_id)
    if allowed_origins is not None:
        creator.allowed_origins = list(allowed_origins)
    if display_name is not None:
        creator.display_name = display_name
    if listed is not None:
        creator.listed = listed
    await session.flush()
    return creator


async def listed_creator(session: AsyncSession, *, slug: str) -> Creator:
    """The creator whose store is at ``slug``, if it chose to be listed.

    Raises:
        CreatorNotFound: no creator has the slug, or it is unlisted.
    """
    creator = (
        await session.execute(select(Creator).where(Creator.slug == slug, Creator.listed))
    ).scalar_one_or_none()
    if creator is None:
        raise CreatorNotFound(f"no store {slug!r}")
    return creator


async def roll_keys(session: AsyncSession, *, creator_id: str, now: datetime) -> tuple[str, str]:
    """Revoke the creator's live keys and issue a new pair. Old keys stop working when
    this commits: at once in this process (its ``KeyCache``s forget the creator's keys),
    within ``STALLHOLDER_API_KEY_CACHE_SECONDS`` in other server processes (ADR 0015)."""
    await get_creator(session, creator_id)
    await session.execute(
        update(ApiKey)
        .where(ApiKey.creator_id == creator_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    session.sync_session.info.setdefault(_ROLLED, set()).add(creator_id)
    return await _issue_keys(session, creator_id=creator_id, now=now)


async def live_keys(session: AsyncSession, *, creator_id: str) -> list[ApiKey]:
    """The creator's keys in use (not revoked), secret first: only their redacted form
    can be shown, as they are stored hashed."""
    rows = await session.execute(
        select(ApiKey)
        .where(ApiKey.creator_id == creator_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.kind.desc(), ApiKey.created_at)
    )
    return list(rows.scalars())


async def buyer_id_for_email(session: AsyncSession, *, email: str, now: datetime) -> str:
    """The id of the buyer with this address (by ``buyer_key``), created when there is
    none, in one statement on both databases: ``INSERT … ON CONFLICT (email_key) DO UPDATE
    … RETURNING id`` (the update changes nothing; unlike ``DO NOTHING`` it returns the
    existing row). Two creators' first sales to one new buyer at the same moment find the
    same buyer, and neither transaction fails.
    """
    upsert = _buyer_upsert(session.get_bind().dialect.name)
    values = {"id": new_id("byr"), "email_key": buyer_key(email), "created_at": now}
    buyer_id: str = (await session.execute(upsert, values)).scalar_one()
    return buyer_id


@functools.cache
def _buyer_upsert(dialect: str) -> ReturningInsert[str]:
    """``buyer_id_for_email``'s statement for the dialect, built once."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    table = cast(Table, Buyer.__table__)
    values = insert(table)
    return values.on_conflict_do_update(
        index_elements=[table.c.email_key], set_={"email_key": values.excluded.email_key}
    ).returning(table.c.id)


async def create_customer(
    session: AsyncSession,
    *,
    creator_id: str,
    email: str,
    name: str | None,
    time_zone: str,
    now: datetime,
    test_clock_id: str | None = None,
    country: str | None = None,
) -> Customer:
    """A new customer of the creator, linked to the buyer with this email (created when
    the platform has none yet).

    Raises TestClockNotFound for a test clock that is neither the creator's nor the
    platform's (made with the admin key)."""
    if test_clock_id is not None:
        clock = await session.get(TestClock, test_clock_id)
        if clock is None or clock.creator_id not in (None, creator_id):
            raise TestClockNotFound(f"no test clock {test_clock_id!r}")
    buyer_id = await buyer_id_for_email(session, email=email, now=now)
    customer = Customer(
        id=new_id("cus"),
        creator_id=creator_id,
        buyer_id=buyer_id,
        email=email,
        name=name,
        time_zone=time_zone,
        country=country,
        test_clock_id=test_clock_id,
        created_at=now,
    )
    session.add(customer)
    await session.flush()
    return customer


async def get_customer(session: AsyncSession, *, creator_id: str, customer_id: str) -> Customer:
    """Raises ``CustomerNotFound`` for another creator's customer too, so ids do not leak."""
    customer = await session.get(Customer, customer_id)
    if customer is None or customer.creator_id != creator_id:
        raise CustomerNotFound(f"no customer {customer_id!r}")
    return customer


_CUSTOMER_FOR_EMAIL = (
    select(Customer)
    .where(Customer.creator_id == bindparam("creator_id"), Customer.email == bindparam("email"))
    .order_by(Customer.created_at, Customer.id)
    .limit(1)
)


async def find_customer_for_email(
    session: AsyncSession, *, creator_id: str, email: str
) -> Customer | None:
    """The creator's oldest customer with this email (the one ``customer_for_email``
    returns), or None."""
    return (
        await session.execute(_CUSTOMER_FOR_EMAIL, {"creator_id": creator_id, "email": email})
    ).scalar_one_or_none()


# ``customer_for_email`` on PostgreSQL in one statement: the creator's oldest customer
# with the email, or else a new one linked to the buyer with this address (upserted as
# ``buyer_id_for_email`` does). Three statements for a new buyer otherwise.
_CUSTOMER_COLUMNS = (
    "id",
    "creator_id",
    "buyer_id",
    "email",
    "name",
    "time_zone",
    "country",
    "test_clock_id",
    "created_at",
)
_FIND_OR_CREATE_CUSTOMER = (
    text(
        """
WITH found AS (
    SELECT id, creator_id, buyer_id, email, name, time_zone, country, test_clock_id,
        created_at
    FROM customers
    WHERE creator_id = :creator_id AND email = :email
    ORDER BY created_at, id
    LIMIT 1
), buyer AS (
    INSERT INTO buyers (id, email_key, created_at)
    SELECT :buyer_id, :email_key, :now WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT (email_key) DO UPDATE SET email_key = excluded.email_key
    RETURNING id
), created AS (
    INSERT INTO customers (id, creator_id, buyer_id, email, name, time_zone, country,
        test_clock_id, created_at)
    SELECT :customer_id, :creator_id, buyer.id, :email, NULL, :time_zone, NULL, NULL, :now
    FROM buyer
    RETURNING id, creator_id, buyer_id, email, name, time_zone, country, test_clock_id,
        created_at
)
SELECT * FROM found
UNION ALL
SELECT * FROM created
"""
    )
    .bindparams(bindparam("now", type_=UTCDateTime()))
    .columns(*(cast(Table, Customer.__table__).c[name] for name in _CUSTOMER_COLUMNS))
)


async def customer_for_email(
    session: AsyncSession, *, creator_id: str, email: str, now: datetime
) -> Customer:
    """The creator's oldest customer with this email, created when there is none."""
    if session.get_bind().dialect.name == "postgresql":
        found = await session.execute(
            select(Customer).from_statement(_FIND_OR_CREATE_CUSTOMER),
            {
                "creator_id": creator_id,
                "email": email,
                "buyer_id": new_id("byr"),
                "email_key": buyer_key(email),
                "customer_id": new_id("cus"),
                "time_zone": NEW_CUSTOMER_ZONE,
                "now": now,
            },
        )
        customer: Customer = found.scalar_one()
        return customer
    existing = await find_customer_for_email(session, creator_id=creator_id, email=email)
    if existing is not None:
        return existing
    return await create_customer(
        session, creator_id=creator_id, email=email, name=None, time_zone=NEW_CUSTOMER_ZONE, now=now
    )


async def list_customers(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[Customer]:
    return await paginate(
        session,
        select(Customer).where(Customer.creator_id == creator_id),
        id_column=Customer.id,
        limit=limit,
        starting_after=starting_after,
    )


async def customers_by_id(
    session: AsyncSession, *, creator_id: str, customer_ids: Sequence[str]
) -> dict[str, Customer]:
    """The creator's customers among ``customer_ids``, by id (another creator's are left
    out)."""
    if not customer_ids:
        return {}
    rows = await session.execute(
        select(Customer).where(
            Customer.creator_id == creator_id, Customer.id.in_(sorted(set(customer_ids)))
        )
    )
    return {customer.id: customer for customer in rows.scalars()}


async def list_creators(
    session: AsyncSession, *, limit: int, starting_after: str | None
) -> Page[Creator]:
    """Every creator on the platform, newest first (the platform admin's view)."""
    return await paginate(
        session,
        select(Creator),
        id_column=Creator.id,
        limit=limit,
        starting_after=starting_after,
    )


async def creators_by_id(
    session: AsyncSession, creator_ids: list[str], *, listed_only: bool = False
) -> dict[str, Creator]:
    """These creators by id; with ``listed_only``, only those that chose to be listed."""
    if not creator_ids:
        return {}
    statement = select(Creator).where(Creator.id.in_(creator_ids))
    if listed_only:
        statement = statement.where(Creator.listed)
    rows = await session.execute(statement)
    return {creator.id: creator for creator in rows.scalars()}


class BuyerNotFound(NotFound):
    slug = "buyer-not-found"
    title = "No such buyer"


async def get_buyer(session: AsyncSession, buyer_id: str) -> Buyer:
    """The platform's buyer (the portal's signed-in person). Raises ``BuyerNotFound``."""
    buyer = await session.get(Buyer, buyer_id)
    if buyer is None:
        raise BuyerNotFound(f"no buyer {buyer_id!r}")
    return buyer


async def customers_of_buyer(session: AsyncSession, *, buyer_id: str) -> list[Customer]:
    """Every creator's customer record of this buyer, oldest first: what the buyer's own
    portal shows across creators (never a creator's view)."""
    return list(
        (
            await session.execute(
                select(Customer)
                .where(Customer.buyer_id == buyer_id)
                .order_by(Customer.created_at, Customer.id)
            )
        ).scalars()
    )


async def note_country(session: AsyncSession, *, customer_id: str, country: str | None) -> None:
    """Record where the customer lives from an address they gave (a shipping address),
    unless it is known already: the creator's own value is never overwritten."""
    if country is None:
        return
    await session.execute(
        update(Customer)
        .where(Customer.id == customer_id, Customer.country.is_(None))
        .values(country=country.upper())
    )
