"""Due work of the checkout domain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.checkout import service


async def expire_sessions(session: AsyncSession, now: datetime) -> int:
    """Sweep: open sessions past ``expires_at`` become ``expired``."""
    return await service.expire_due_sessions(session, now=now)
