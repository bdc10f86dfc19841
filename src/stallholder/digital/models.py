from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from stallholder.kit.db import Base


class File(Base):
    """An uploaded file, its bytes kept by the storage (``digital.storage``) under
    ``storage_key``; ``sha256`` and ``size`` say what was received."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class ProductFile(Base):
    """A file a product delivers to every buyer."""

    __tablename__ = "product_files"

    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    created_at: Mapped[datetime]


class LicenseKey(Base):
    """One key of a product's pool. Issued at most once: ``order_line_id`` is set by a
    conditional update that only matches an unissued key (``digital.delivery``)."""

    __tablename__ = "license_keys"
    __table_args__ = (
        UniqueConstraint("product_id", "key"),
        Index("ix_license_keys_product_unissued", "product_id", "order_line_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"))
    key: Mapped[str] = mapped_column(String(500))
    order_id: Mapped[str | None] = mapped_column(ForeignKey("orders.id"), index=True, default=None)
    order_line_id: Mapped[int | None] = mapped_column(
        ForeignKey("order_line_items.id"), default=None
    )
    issued_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime]


class Download(Base):
    """How often an order's buyer has downloaded one file; ``count`` grows only by a
    conditional update that stops at the limit."""

    __tablename__ = "downloads"
    __table_args__ = (CheckConstraint("count >= 0", name="count"),)

    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), primary_key=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id"), primary_key=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    count: Mapped[int] = mapped_column(default=0)
    last_downloaded_at: Mapped[datetime | None] = mapped_column(default=None)


class OwedLicenseKeys(Base):
    """Keys an order line paid for that its product's pool did not have; given from the
    pool as keys are added, oldest first (``digital.service.add_license_keys``)."""

    __tablename__ = "license_keys_owed"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity"),)

    order_line_id: Mapped[int] = mapped_column(ForeignKey("order_line_items.id"), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.id"), index=True)
    creator_id: Mapped[str] = mapped_column(ForeignKey("creators.id"), index=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.id"), index=True)
    quantity: Mapped[int]
    created_at: Mapped[datetime]
