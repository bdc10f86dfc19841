from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from stallholder.kit.db import Base, SerialPK


class JournalTransaction(Base):
    """One business event in the journal; its lines sum to zero per currency."""

    __tablename__ = "journal_transactions"
    __table_args__ = (Index("ix_journal_transactions_creator_created", "creator_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    creator_id: Mapped[str | None] = mapped_column(ForeignKey("creators.id"), default=None)
    # payment | refund | processor_fee_adjustment | dispute | dispute_reversal
    kind: Mapped[str] = mapped_column(String(32))
    reference_id: Mapped[str] = mapped_column(String(40), index=True)
    description: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[datetime]

    lines: Mapped[list[JournalLine]] = relationship(
        order_by="JournalLine.id", lazy="selectin", back_populates="transaction"
    )


class JournalLine(Base):
    __tablename__ = "journal_lines"
    __table_args__ = (Index("ix_journal_lines_account_currency", "account", "currency"),)

    id: Mapped[SerialPK]
    # The transaction's creator (None for the platform's own transactions, as there).
    creator_id: Mapped[str | None] = mapped_column(ForeignKey("creators.id"), default=None)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("journal_transactions.id"), index=True)
    account: Mapped[str] = mapped_column(String(80))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int]

    transaction: Mapped[JournalTransaction] = relationship(back_populates="lines")


class Balance(Base):
    """The running sum of an account's lines; changed only by atomic increments."""

    __tablename__ = "balances"

    account: Mapped[str] = mapped_column(String(80), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    amount: Mapped[int] = mapped_column(default=0)
