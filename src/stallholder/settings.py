"""Runtime settings, read from ``STALLHOLDER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set. Tests build their own instance instead of patching."""

    model_config = SettingsConfigDict(env_prefix="STALLHOLDER_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = ""
    admin_key: str = ""
    base_url: str = "http://127.0.0.1:8000"
    payment_gateway: Literal["sandbox", "stripe"] = "sandbox"
    # Stripe (payment_gateway="stripe"): the secret key, the webhook endpoint's signing
    # secret, the processor fee to expect (Stripe's pricing for the platform's country) and,
    # for tests only, another API base.
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    stripe_api_base: str = ""
    stripe_fee_bps: int = Field(default=290, ge=0, le=10_000)
    stripe_fee_fixed: int = Field(default=30, ge=0)

    platform_fee_bps: int = Field(default=500, ge=0, le=10_000)
    platform_fee_fixed: int = Field(default=0, ge=0)

    checkout_session_ttl_seconds: int = Field(default=30 * 60, ge=60, le=24 * 3600)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    embedded_worker: bool = True
    # The longest an idle worker sleeps. It wakes sooner when work comes due, and at once
    # when work is enqueued (in-process, or LISTEN/NOTIFY on PostgreSQL); this only
    # bounds a missed wake-up.
    worker_poll_seconds: float = Field(default=30.0, gt=0)
    # Each retry waits its backoff plus up to this fraction more, at random (ADR 0007).
    worker_retry_jitter: float = Field(default=0.1, ge=0, le=1)

    # Outgoing webhooks (docs/webhooks.md). Private, loopback and link-local targets are
    # refused unless allowed (tests and local development allow them).
    allow_private_webhook_targets: bool = False
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    webhook_lease_seconds: float = Field(default=60.0, gt=0)
    # Deliveries one worker sends at once, over one pooled HTTP client.
    webhook_concurrency: int = Field(default=16, ge=1, le=1000)
    # An endpoint is disabled once its current run of failures is at least this many
    # attempts long *and* has lasted at least this long (both, so a burst during a short
    # outage does not disable it).
    webhook_disable_after_failures: int = Field(default=20, ge=1)
    webhook_disable_after_seconds: int = Field(default=3 * 24 * 3600, ge=0)

    # Transactional email (docs/email.md). No SMTP URL: emails are written as .eml files
    # under data_dir/mail and logged. smtp://, smtp+starttls:// or smtps://user:pass@host:port
    smtp_url: str = ""
    mail_from: str = "Stallholder <no-reply@localhost>"
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)

    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'stallholder.db'}"
