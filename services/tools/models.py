"""Tables of the tool workers (SQLAlchemy 2 declarative): ``customers``, ``appointments``, ``tool_results``.

- ``appointments`` has a partial unique index on the slot (``slot_date, slot_time``) over booked rows, so two
  workers racing for one slot produce exactly one booking (the loser's INSERT fails); a cancelled slot can be
  booked again.
- ``tool_results`` holds the reply of every successful request of an idempotent, writing tool, keyed by
  ``(tool, tool_call_id)`` (unique), written in the same transaction as the tool's own writes.

Migrations live in ``services/tools/migrations`` (Alembic; version table ``alembic_version_tools``); the
recorder shares the database and keeps its own tables and version table.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Time,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["BOOKED", "CANCELLED", "Appointment", "Base", "Customer", "StoredResult", "utcnow"]

BOOKED = "booked"
CANCELLED = "cancelled"


def utcnow() -> dt.datetime:
    """Now, aware, UTC."""
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    """Declarative base with a naming convention (stable constraint names for migrations)."""

    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Customer(Base):
    """A clinic customer; ``phone`` (E.164) is unique when present."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(32), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    appointments: Mapped[list[Appointment]] = relationship(back_populates="customer")


class Appointment(Base):
    """One booked (or cancelled) slot; ``slot_date``/``slot_time`` are clinic-local."""

    __tablename__ = "appointments"
    __table_args__ = (
        Index("uq_appointments_booked_slot", "slot_date", "slot_time", unique=True,
              sqlite_where=text("status = 'booked'"), postgresql_where=text("status = 'booked'")),
        Index("ix_appointments_customer_id", "customer_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    name: Mapped[str] = mapped_column(String(200))
    """Who the appointment is for (as said by the caller)."""
    slot_date: Mapped[dt.date] = mapped_column(Date)
    slot_time: Mapped[dt.time] = mapped_column(Time)
    status: Mapped[str] = mapped_column(String(16), default=BOOKED)
    call_id: Mapped[str | None] = mapped_column(String(64))
    """The Switchboard call that booked it."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    customer: Mapped[Customer] = relationship(back_populates="appointments")


class StoredResult(Base):
    """The first successful reply to ``(tool, tool_call_id)`` (JSON text of ``{"output":…, "control":…}``)."""

    __tablename__ = "tool_results"
    __table_args__ = (UniqueConstraint("tool", "tool_call_id", name="uq_tool_results_tool_call"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tool: Mapped[str] = mapped_column(String(64))
    tool_call_id: Mapped[str] = mapped_column(String(128))
    call_id: Mapped[str | None] = mapped_column(String(64))
    reply: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
