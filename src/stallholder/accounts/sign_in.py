"""Magic-link sign-in for buyers (the portal) and creators (the dashboard).

A link carries a random token; only its SHA-256 is stored. It works once (redeeming is
one conditional ``UPDATE … WHERE used_at IS NULL AND expires_at > now``, so two clicks
racing sign in once) and expires after ``LINK_TTL``. Requests are limited per address and
per IP over ``RATE_WINDOW``. Every request is recorded, also one for an address nobody
has, so the limits count what was asked and the answer is the same whether or not the
address is known (docs/portal.md).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.accounts.emails import InvalidEmailKey, buyer_key
from stallholder.accounts.models import Buyer, Creator, SignInLink
from stallholder.kit.errors import DomainError, InvalidRequest
from stallholder.kit.ids import new_id

Audience = Literal["buyer", "creator"]

LINK_TTL = timedelta(minutes=15)
RATE_WINDOW = timedelta(minutes=15)
# Links one address may ask for in a window (a few tries at a slow inbox), and requests
# one IP may make (a household or office shares one; a script trying addresses does not
# get far).
MAX_PER_ADDRESS = 3
MAX_PER_IP = 10


class TooManySignInRequests(DomainError):
    status = 429
    slug = "sign-in-rate-limited"
    title = "Too many sign-in links asked for"
    retry_after_seconds: ClassVar[int | None] = int(RATE_WINDOW.total_seconds())


class InvalidSignInEmail(InvalidRequest):
    slug = "invalid-sign-in-email"
    title = "That is not an email address"


class SignInLinkInvalid(DomainError):
    status = 410
    slug = "sign-in-link-invalid"
    title = "This sign-in link no longer works"


@dataclass(frozen=True, slots=True)
class IssuedLink:
    """A link to email: ``token`` is the secret for the URL (shown this once)."""

    token: str
    to: str
    subject_id: str
    creator_id: str | None
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _recent(
    session: AsyncSession, *, since: datetime, email_key: str | None = None, ip: str | None = None
) -> int:
    """Links asked for since ``since`` (a request for an unknown address counts as one;
    a creator with two shops on one address gets two links, and counts two)."""
    query = select(func.count()).select_from(SignInLink).where(SignInLink.created_at > since)
    if email_key is not None:
        query = query.where(SignInLink.email_key == email_key)
    if ip is not None:
        query = query.where(SignInLink.requested_ip == ip)
    return int((await session.execute(query)).scalar_one())


async def _subjects(
    session: AsyncSession, *, audience: Audience, email_key: str
) -> list[tuple[str, str, str | None]]:
    """(subject id, the address to write to, the creator) of everyone with the address:
    one buyer at most; for creators, each creator registered with it (one person may run
    two shops, and gets a link to each)."""
    if audience == "buyer":
        buyer = (
            await session.execute(select(Buyer).where(Buyer.email_key == email_key))
        ).scalar_one_or_none()
        return [] if buyer is None else [(buyer.id, email_key, None)]
    creators = (
        (
            await session.execute(
                select(Creator)
                .where(func.lower(Creator.email) == email_key.lower())
                .order_by(Creator.id)
            )
        )
        .scalars()
        .all()
    )
    return [(creator.id, creator.email, creator.id) for creator in creators]


async def request_link(
    session: AsyncSession,
    *,
    audience: Audience,
    email: str,
    ip_address: str | None,
    now: datetime,
) -> list[IssuedLink]:
    """Record a sign-in request and make a link for each one who has the address (none
    for an unknown address: nothing to send, and the caller answers the same).

    Raises:
        InvalidSignInEmail: not ``local@domain``.
        TooManySignInRequests: the address or the IP asked too often lately.
    """
    try:
        email_key = buyer_key(email)
    except InvalidEmailKey as error:
        raise InvalidSignInEmail(f"{error}; type the address you bought with") from None
    since = now - RATE_WINDOW
    if await _recent(session, since=since, email_key=email_key) >= MAX_PER_ADDRESS:
        raise TooManySignInRequests(
            f"{MAX_PER_ADDRESS} sign-in links were asked for with this address in the last "
            f"{int(RATE_WINDOW.total_seconds() // 60)} minutes; use the newest one, or wait "
            "a few minutes and ask again"
        )
    if ip_address and await _recent(session, since=since, ip=ip_address) >= MAX_PER_IP:
        raise TooManySignInRequests(
            "too many sign-in links were asked for from this network lately; wait a few "
            "minutes and ask again"
        )
    found: list[tuple[str | None, str, str | None]] = list(
        await _subjects(session, audience=audience, email_key=email_key)
    )
    issued: list[IssuedLink] = []
    # An unknown address is recorded too (no subject, never redeemable), for the limits.
    for subject_id, to, creator_id in found or [(None, email_key, None)]:
        token = secrets.token_urlsafe(32)
        session.add(
            SignInLink(
                id=new_id("sil"),
                audience=audience,
                email_key=email_key,
                subject_id=subject_id,
                creator_id=creator_id,
                token_hash=_hash(token),
                requested_ip=ip_address,
                created_at=now,
                expires_at=now + LINK_TTL,
            )
        )
        if subject_id is not None:
            issued.append(
                IssuedLink(
                    token=token,
                    to=to,
                    subject_id=subject_id,
                    creator_id=creator_id,
                    expires_at=now + LINK_TTL,
                )
            )
    await session.flush()
    return issued


async def redeem(session: AsyncSession, *, audience: Audience, token: str, now: datetime) -> str:
    """Use a link: returns who it signs in (a buyer or creator id). Works once.

    Raises:
        SignInLinkInvalid: the link was used already, has expired or never existed.
    """
    token_hash = _hash(token)
    used = (
        await session.execute(
            update(SignInLink)
            .where(
                SignInLink.token_hash == token_hash,
                SignInLink.audience == audience,
                SignInLink.subject_id.is_not(None),
                SignInLink.used_at.is_(None),
                SignInLink.expires_at > now,
            )
            .values(used_at=now)
            .returning(SignInLink.subject_id)
        )
    ).scalar_one_or_none()
    if used is not None:
        return used
    link = (
        await session.execute(
            select(SignInLink).where(
                SignInLink.token_hash == token_hash, SignInLink.audience == audience
            )
        )
    ).scalar_one_or_none()
    if link is not None and link.used_at is not None:
        reason = "it was used already (each link works once)"
    elif link is not None and link.subject_id is not None:
        reason = f"it expired ({int(LINK_TTL.total_seconds() // 60)} minutes after it was sent)"
    else:
        reason = "it is not a link we sent (it may have been copied incompletely)"
    raise SignInLinkInvalid(f"This sign-in link does not work: {reason}. Ask for a new one.")
