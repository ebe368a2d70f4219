"""Demo seed data for the receptionist (idempotent; run by the worker at start unless
``SWITCHBOARD_TOOLS_SEED=0``, or by hand: ``python -m services.tools seed``).

Customers (:data:`CUSTOMERS`): John Smith ``+15551230001`` (the demo caller), Mary Jones ``+15551230002``,
Ahmed Khan ``+15551230003``, Li Wei ``+15551230004``. John always has one upcoming appointment for the cancel
scenario: when he has none, one is booked **tomorrow at 15:00** (or the next free slot after it), clinic
time — so it never collides with the booking scenario's "tomorrow at 10:00".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from services.tools.clinic import ClinicHours
from services.tools.db import Database
from services.tools.models import BOOKED, Appointment, Customer
from services.tools.settings import ToolsSettings

__all__ = ["CANCEL_CUSTOMER", "CUSTOMERS", "SeedReport", "seed"]

CUSTOMERS: tuple[tuple[str, str], ...] = (
    ("John Smith", "+15551230001"),
    ("Mary Jones", "+15551230002"),
    ("Ahmed Khan", "+15551230003"),
    ("Li Wei", "+15551230004"),
)
CANCEL_CUSTOMER = "+15551230001"
"""The customer who always has an upcoming appointment to cancel."""
CANCEL_TIME = dt.time(15, 0)


@dataclass(frozen=True)
class SeedReport:
    """What :func:`seed` did and found."""

    customers_added: int
    customers_total: int
    appointment: Appointment | None
    """John's upcoming appointment (existing or created); None when no slot was free."""
    appointment_created: bool


def _candidates(hours: ClinicHours, tomorrow: dt.date) -> list[tuple[dt.date, dt.time]]:
    out: list[tuple[dt.date, dt.time]] = []
    for offset in range(min(hours.horizon_days, 14)):
        day = tomorrow + dt.timedelta(days=offset)
        slots = hours.slots(day)
        out.extend((day, t) for t in slots if offset > 0 or t >= CANCEL_TIME)
    return out


async def seed(database: Database, settings: ToolsSettings | None = None) -> SeedReport:
    """Insert missing demo customers and make sure John Smith has an upcoming appointment.

    Safe to run concurrently from several workers (unique phone and slot constraints decide).
    """
    settings = settings or ToolsSettings()
    hours = ClinicHours.from_settings(settings)
    today = dt.datetime.now(settings.tzinfo).date()
    added = 0
    for name, phone in CUSTOMERS:
        try:
            async with database.sessions() as session, session.begin():
                exists = (await session.execute(select(Customer.id).where(Customer.phone == phone))).first()
                if exists is None:
                    session.add(Customer(name=name, phone=phone))
                    added += 1
        except IntegrityError:  # another worker seeded it first
            added -= 1
    async with database.sessions() as session, session.begin():
        total = (await session.execute(select(func.count()).select_from(Customer))).scalar_one()
        john = (await session.execute(select(Customer).where(Customer.phone == CANCEL_CUSTOMER))).scalar_one()
    for day, at in _candidates(hours, today + dt.timedelta(days=1)):
        for _attempt in range(3):  # an IntegrityError means another worker just booked: look again
            try:
                async with database.sessions() as session, session.begin():
                    upcoming = (await session.execute(
                        select(Appointment).where(Appointment.customer_id == john.id, Appointment.status == BOOKED,
                                                  Appointment.slot_date > today)
                        .order_by(Appointment.slot_date, Appointment.slot_time))).scalars().first()
                    if upcoming is not None:
                        return SeedReport(added, total, upcoming, False)
                    taken = (await session.execute(select(Appointment.id).where(
                        Appointment.slot_date == day, Appointment.slot_time == at,
                        Appointment.status == BOOKED))).first()
                    if taken is not None:
                        break
                    appointment = Appointment(customer_id=john.id, name=john.name, slot_date=day, slot_time=at,
                                              status=BOOKED)
                    session.add(appointment)
                return SeedReport(added, total, appointment, True)
            except IntegrityError:
                continue
    return SeedReport(added, total, None, False)
