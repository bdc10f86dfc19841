"""``kit.flush.fill_defaults``: a new row reads as its insert will write it, before it is
flushed (a renewal's invoice shown in its event), or nothing changes when a default only
the database knows is missing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from stallholder.kit.flush import fill_defaults


class _Base(DeclarativeBase):
    pass


class _Thing(_Base):
    __tablename__ = "things"

    id: Mapped[int] = mapped_column(primary_key=True)  # the database makes it
    name: Mapped[str] = mapped_column(String(20), default="unnamed")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    note: Mapped[str | None] = mapped_column(String(20))


class _Stamped(_Base):
    __tablename__ = "stamped"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    at: Mapped[datetime] = mapped_column(server_default=func.now())


def test_a_new_row_gets_its_scalar_and_function_defaults_and_nulls() -> None:
    thing = _Thing(note="kept")
    assert fill_defaults([thing])
    assert "id" not in thing.__dict__  # the database's to make
    assert (thing.name, thing.tags, thing.note) == ("unnamed", [], "kept")
    other = _Thing()
    assert fill_defaults([other])
    assert other.note is None
    assert other.tags == []
    assert other.tags is not thing.tags  # a fresh list each, as the insert's would be


def test_a_default_only_the_database_knows_changes_nothing() -> None:
    thing = _Thing()
    assert not fill_defaults([thing, _Stamped(id="s1")])
    assert "name" not in thing.__dict__  # left for the flush
