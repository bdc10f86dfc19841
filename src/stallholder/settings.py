"""Runtime settings, read from ``STALLHOLDER_*`` environment variables."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stallholder.kit.money import CARD_FIXED_FEES, MAX_FIXED_FEE, normalize_currency


def _fixed_fees(value: dict[str, int]) -> dict[str, int]:
    return {normalize_currency(code): amount for code, amount in value.items()}


# Currency → minor units of that currency (STALLHOLDER_PLATFORM_FEE_FIXED='{"usd": 30}').
FixedFees = Annotated[
    dict[str, Annotated[int, Field(ge=0, le=MAX_FIXED_FEE)]], AfterValidator(_fixed_fees)
]


class Settings(BaseSettings):
    """Everything an operator can set. Tests build their own instance instead of patching."""

    model_config = SettingsConfigDict(env_prefix="STALLHOLDER_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = ""
    admin_key: str = ""
    # Signs the pages' session cookies (portal sign-in, CSRF tokens). Empty: generated once
    # and kept in data_dir/session-secret. Changing it signs every browser out.
    session_secret: str = ""
    base_url: str = "http://127.0.0.1:8000"
    payment_gateway: Literal["sandbox", "stripe"] = "sandbox"
    # Stripe (payment_gateway="stripe"): the secret key, the webhook endpoint's signing
    # secret, the processor fee to expect (Stripe's pricing for the platform's country) and,
    # for tests only, another API base.
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    # The platform account's publishable key (pk_…): the hosted checkout page loads
    # Stripe.js with it for the Payment Element and 3-D Secure.
    stripe_publishable_key: str = ""
    stripe_api_base: str = ""
    stripe_fee_bps: int = Field(default=290, ge=0, le=10_000)
    # Fixed parts are per currency, in minor units of that currency (a JSON object such as
    # {"usd": 30, "eur": 25}); a currency left out has no fixed part (ADR 0006).
    stripe_fee_fixed: FixedFees = Field(default_factory=lambda: dict(CARD_FIXED_FEES))

    platform_fee_bps: int = Field(default=500, ge=0, le=10_000)
    platform_fee_fixed: FixedFees = Field(default_factory=dict)

    checkout_session_ttl_seconds: int = Field(default=30 * 60, ge=60, le=24 * 3600)
    # A charge or refund still waiting for the gateway's answer this long after it was
    # recorded (a crash between the call and the outcome) is resolved by the worker, which
    # asks the gateway again with the same idempotency key. Longer than any gateway call.
    payment_resolve_after_seconds: int = Field(default=120, ge=1)
    # How often the worker sweeps for such charges and refunds (ADR 0029).
    settlement_sweep_seconds: float = Field(default=30.0, gt=0, le=3600)
    # How often the worker expires open checkout sessions past their expires_at, giving
    # back the stock they hold (ADR 0029): a session ends at most this late.
    checkout_expiry_sweep_seconds: float = Field(default=5.0, gt=0, le=600)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # Slow clients: a request's head (line and headers) must arrive within
    # header_timeout_seconds of the connection opening or the previous response, and its
    # body within body_timeout_seconds of the head; otherwise a 408 (docs/api.md).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # A request holding an Idempotency-Key longer than this is taken to have died, and a
    # retry with the key takes it over (docs/adr/0004-idempotency-keys.md).
    idempotency_lock_seconds: int = Field(default=60, ge=1, le=3600)
    # How long a server process trusts an API key it has checked before reading it again:
    # a key rolled by another process keeps working here for at most this long (ADR 0015).
    # 0 reads the key on every request.
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    # Rate limits on drop entry (raffle entries, waitlist signups) and on checkout sessions
    # for a drop's prices (docs/inventory.md#rate-limits, ADR 0018): hits per fixed window
    # per client IP and per buyer (normalised email). 0 turns a limit off. Per IP is
    # generous because many buyers share an address (carrier NAT, offices, campuses).
    drop_rate_limit_per_ip: int = Field(default=60, ge=0, le=1_000_000)
    drop_rate_limit_per_buyer: int = Field(default=10, ge=0, le=1_000_000)
    drop_rate_limit_window_seconds: int = Field(default=60, ge=1, le=86_400)
    # Behind a reverse proxy, the header that carries the client's address (such as
    # X-Forwarded-For or X-Real-IP); its last address is taken, the one the proxy added.
    # Empty (the default): the TCP peer's address. Set it only when every request comes
    # through the proxy, or clients can choose their own address.
    trusted_proxy_header: str = ""
    embedded_worker: bool = True
    # The longest an idle worker sleeps. It wakes sooner when work comes due, and at once
    # when work is enqueued (in-process, or LISTEN/NOTIFY on PostgreSQL); this only
    # bounds a missed wake-up. Capped at ``kit.work.WAKE_HORIZON`` (60 s): work due later
    # than that is enqueued without a wake-up.
    worker_poll_seconds: float = Field(default=30.0, gt=0)
    # Each retry waits its backoff plus up to this fraction more, at random (ADR 0008).
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

    # Subscriptions (docs/billing.md). A failed renewal is retried this many days after
    # its first attempt (each entry one retry); after the last, the subscription is
    # canceled or kept as unpaid with its invoice open.
    billing_retry_days: list[Annotated[int, Field(ge=1, le=60)]] = Field(
        default_factory=lambda: [1, 3, 5, 7], max_length=10
    )
    billing_after_last_retry: Literal["cancel", "mark_unpaid"] = "cancel"
    # Where a buyer whose payment failed updates the card. {invoice}, {customer} and
    # {subscription} are filled in. Empty: the buyer portal's payment-update page,
    # <base_url>/portal/subscriptions/{subscription}/payment-method.
    billing_update_payment_url: str = ""
    # A price change must be announced at least this many days ahead (and is refused
    # sooner), as automatic-renewal laws ask.
    billing_price_change_notice_days: int = Field(default=7, ge=0, le=90)
    # How long a worker holds a renewal or charge before another may take it over (it
    # died). Longer than any gateway call; a takeover is safe (ADR 0010), only wasteful.
    billing_work_lease_seconds: float = Field(default=300.0, gt=0)
    # The platform billing day (1 to 28; 0: off). A new monthly subscription without a
    # trial or delivery calendar renews at the start of this day of the month in the
    # buyer's zone, its first period prorated, so a buyer's renewals across creators fall
    # due together and are one consolidated charge (ADR 0020).
    billing_day: int = Field(default=0, ge=0, le=28)

    # Digital delivery (docs/digital-delivery.md). Uploaded files are kept on local disk
    # under files_dir (default <data_dir>/files), or in S3-compatible object storage when
    # file_storage="s3" (AWS S3, MinIO, Cloudflare R2, Ceph, ...).
    file_storage: Literal["local", "s3"] = "local"
    files_dir: Path | None = None
    # The largest upload POST /v1/files takes; larger is a 413.
    file_max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024, le=5 * 1024**3)
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    s3_prefix: str = "files/"
    # Download links are signed with this key (HMAC-SHA256); without one a key is
    # generated once and kept in <data_dir>/download-signing-key. Servers that share a
    # database must share the key.
    download_signing_key: str = ""
    # How long a download link works after it was issued, and how many downloads of each
    # file an order gets.
    download_link_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=366 * 24 * 3600)
    download_limit: int = Field(default=5, ge=1, le=1000)

    # Channels (docs/channels.md). Credentials are encrypted with this Fernet key; without
    # one a key is generated once and kept in <data_dir>/channel-key. Servers that share a
    # database must share it.
    channel_key: str = ""
    # How often changed stock is looked for and pushed to channels (seconds), how often
    # every channel is asked for new orders (Etsy sends no order webhooks, WooCommerce
    # sends them before payment, any webhook can be lost), and how often every channel is
    # reconciled (its quantities and orders read and compared with ours).
    channel_sweep_seconds: float = Field(default=1.0, gt=0, le=60)
    channel_poll_seconds: float = Field(default=15.0, gt=0, le=3600)
    channel_reconcile_seconds: float = Field(default=600.0, gt=0, le=86400)
    # How long the channels' sync log keeps its rows (pruned hourly).
    channel_sync_log_days: int = Field(default=30, ge=1, le=3650)
    # The platform's apps on Shopify and Etsy (for their OAuth install flows). Shopify
    # signs webhooks with the app's client secret; Etsy needs the keystring and shared
    # secret on every request. Tests and the demo point the base URLs at local doubles.
    shopify_client_id: str = ""
    shopify_client_secret: str = ""
    etsy_keystring: str = ""
    etsy_shared_secret: str = ""
    etsy_api_base: str = "https://api.etsy.com"
    etsy_connect_url: str = "https://www.etsy.com/oauth/connect"

    def payment_resolve_after(self) -> timedelta:
        return timedelta(seconds=self.payment_resolve_after_seconds)

    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'stallholder.db'}"
