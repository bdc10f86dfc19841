"""Runtime settings, read from ``STALLHOLDER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set. Tests build their own instance instead of patching."""

    model_config = SettingsConfigDict(env_prefix="STALLHOLDER_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = ""
    admin_key: str = ""
    base_url: str = "http://127.0.0.1:8000"
    payment_gateway: str = "sandbox"

    platform_fee_bps: int = Field(default=500, ge=0, le=10_000)
    platform_fee_fixed: int = Field(default=0, ge=0)

    checkout_session_ttl_seconds: int = Field(default=30 * 60, ge=60, le=24 * 3600)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    embedded_worker: bool = True
    worker_poll_seconds: float = Field(default=1.0, gt=0)

    def resolved_database_url(self) -> str:
        """The configured database URL, or the embedded SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'stallholder.db'}"
