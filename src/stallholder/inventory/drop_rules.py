"""Pure rules of drops: the state a drop is in, and who counts as one buyer."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

DropState = Literal["scheduled", "open", "sold_out", "closed"]

# Providers that deliver ``name+anything@`` to ``name@``; the first two also ignore dots
# in the local part. One buyer cannot pass a per-customer limit by varying those.
_IGNORES_DOTS = frozenset({"gmail.com", "googlemail.com"})
_IGNORES_PLUS_TAGS = _IGNORES_DOTS | frozenset(
    {
        "outlook.com",
        "hotmail.com",
        "live.com",
        "icloud.com",
        "me.com",
        "fastmail.com",
        "proton.me",
        "protonmail.com",
    }
)


def drop_state(
    *, now: datetime, opens_at: datetime, closes_at: datetime, remaining: int
) -> DropState:
    """``scheduled`` before ``opens_at``; ``closed`` from ``closes_at`` on (the window is
    ``[opens_at, closes_at)``); in between ``sold_out`` while nothing remains (units held
    by open checkouts come back when they expire) and ``open`` otherwise."""
    if now < opens_at:
        return "scheduled"
    if now >= closes_at:
        return "closed"
    return "sold_out" if remaining <= 0 else "open"


def buyer_key(email: str) -> str:
    """One key per person for per-customer limits: the address lower-cased, with
    ``+tags`` dropped at providers that ignore them, and dots too at Gmail
    (``Jane.Doe+drop@GoogleMail.com`` is ``janedoe@gmail.com``)."""
    local, _, domain = email.strip().lower().rpartition("@")
    if domain == "googlemail.com":
        domain = "gmail.com"
    if domain in _IGNORES_PLUS_TAGS:
        local = local.split("+", 1)[0]
    if domain in _IGNORES_DOTS:
        local = local.replace(".", "")
    return f"{local}@{domain}"
