"""The receptionist tools of the demo agent: customers and appointments of a small clinic.

Tools: ``lookup_customer``, ``check_availability``, ``book_appointment``, ``cancel_appointment`` (database,
see :mod:`services.tools.models`) and the call-control tools ``end_call`` (reply ``control: {"verb":
"hangup"}``) and ``transfer_to_human`` (``control: {"verb": "transfer", "to": <SWITCHBOARD_TRANSFER_NUMBER>}``).

A missing phone number defaults to the caller ID (``call.from``), so ``phone`` is never required. Dates are
ISO ``YYYY-MM-DD`` and times ``HH:MM`` (24 h), clinic-local; the hours are :class:`~.clinic.ClinicHours`.
Outputs are small JSON objects with a ``message`` the agent can read out. Errors: 400 (invalid or unbookable
arguments), 404 (no such customer/appointment), 409 (slot taken, already cancelled, ambiguous).

==================== ================================== =====================================================
tool                 arguments                          output (besides ``message``) · errors
==================== ================================== =====================================================
lookup_customer      phone?                             status found, customer_id, name, phone,
                                                        upcoming_appointments[] · 404
check_availability   date                               date, available_times[], closed
book_appointment     name, date, time, phone?           status booked, appointment_id, date, time, name,
                                                        phone (``already_booked`` when the caller holds it)
                                                        · 409 taken (the message lists free times)
cancel_appointment   appointment_id? or phone?          status cancelled, appointment_id, date, time, name
                     (+ date?, time?)                   · 404 · 409 (already cancelled, or several match)
end_call             reason?                            status ending_call, control hangup
transfer_to_human    reason?                            status transferring, to, control transfer
==================== ================================== =====================================================

Cancelling by id requires the caller's phone to match when both are known; by phone it cancels the caller's
single upcoming appointment, narrowed by ``date``/``time``, and answers 409 listing them when several match.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.tools.clinic import ClinicHours, normalize_phone, parse_date, parse_time, speak_date, speak_time
from services.tools.framework import Conflict, InvalidArguments, NotFound, ToolContext, ToolResult, tool
from services.tools.models import BOOKED, CANCELLED, Appointment, Customer, utcnow

__all__ = [
    "book_appointment",
    "cancel_appointment",
    "check_availability",
    "end_call",
    "lookup_customer",
    "transfer_to_human",
]

DATE: dict[str, Any] = {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$",
                        "description": "A date as YYYY-MM-DD"}
TIME: dict[str, Any] = {"type": "string", "pattern": r"^([01]\d|2[0-3]):[0-5]\d$",
                        "description": "A 24-hour time as HH:MM"}
PHONE: dict[str, Any] = {"type": "string", "pattern": r"^\+?[0-9 ().\-]{7,24}$",
                         "description": "A phone number; leave out to use the caller's own number"}
NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 200,
                        "description": "The full name of the person the appointment is for"}
REASON: dict[str, Any] = {"type": "string", "maxLength": 500, "description": "Why, in a few words"}


def _phone(ctx: ToolContext, given: str | None) -> str | None:
    """The E.164 phone to use: the argument, else the caller ID; None when neither is a phone number."""
    if given is not None:
        phone = normalize_phone(given)
        if phone is None:
            raise InvalidArguments(f"The phone number {given} does not look right.")
        return phone
    return normalize_phone(ctx.call.caller)


def _spoken_phone(phone: str) -> str:
    return " ".join(phone.lstrip("+"))


def _appointment_json(a: Appointment) -> dict[str, Any]:
    return {"appointment_id": a.id, "date": a.slot_date.isoformat(), "time": speak_time(a.slot_time),
            "name": a.name}


async def _customer_by_phone(session: AsyncSession, phone: str) -> Customer | None:
    return (await session.execute(select(Customer).where(Customer.phone == phone))).scalar_one_or_none()


async def _upcoming(session: AsyncSession, customer_id: int, today: dt.date) -> list[Appointment]:
    rows = await session.execute(
        select(Appointment)
        .where(Appointment.customer_id == customer_id, Appointment.status == BOOKED, Appointment.slot_date >= today)
        .order_by(Appointment.slot_date, Appointment.slot_time))
    return list(rows.scalars())


async def _free_slots(session: AsyncSession, hours: ClinicHours, day: dt.date, now: dt.datetime) -> list[dt.time]:
    taken = set((await session.execute(
        select(Appointment.slot_time).where(Appointment.slot_date == day, Appointment.status == BOOKED))).scalars())
    naive_now = now.replace(tzinfo=None)
    return [t for t in hours.slots(day) if t not in taken and dt.datetime.combine(day, t) > naive_now]


@tool(read_only=True, parameters={"type": "object", "properties": {"phone": PHONE}})
async def lookup_customer(ctx: ToolContext, phone: str | None = None) -> dict[str, Any]:
    """Find a customer by phone number (default: the caller's number) and list their upcoming appointments."""
    number = _phone(ctx, phone)
    if number is None:
        raise InvalidArguments("I need a phone number to look you up.")
    customer = await _customer_by_phone(ctx.session, number)
    if customer is None:
        raise NotFound(f"I could not find a customer with the number {_spoken_phone(number)}.")
    upcoming = await _upcoming(ctx.session, customer.id, ctx.now().date())
    listed = "; ".join(f"{speak_date(a.slot_date)} at {speak_time(a.slot_time)}" for a in upcoming)
    return {"status": "found", "customer_id": customer.id, "name": customer.name, "phone": customer.phone,
            "upcoming_appointments": [_appointment_json(a) for a in upcoming],
            "message": f"{customer.name}, " + (f"upcoming appointments: {listed}." if upcoming
                                               else "no upcoming appointments.")}


@tool(read_only=True, parameters={"type": "object", "properties": {"date": DATE}, "required": ["date"]})
async def check_availability(ctx: ToolContext, date: str) -> dict[str, Any]:
    """List the free appointment times on a date."""
    day = parse_date(date)
    now = ctx.now()
    hours = ClinicHours.from_settings(ctx.settings)
    hours.check_date(day, now.date())
    if not hours.is_open_on(day):
        return {"date": day.isoformat(), "available_times": [], "closed": True,
                "message": f"We are closed on {speak_date(day)}."}
    free = [speak_time(t) for t in await _free_slots(ctx.session, hours, day, now)]
    message = (f"On {speak_date(day)} we have {', '.join(free)}." if free
               else f"{speak_date(day)} is fully booked.")
    return {"date": day.isoformat(), "available_times": free, "closed": False, "message": message}


async def _customer_for_booking(session: AsyncSession, name: str, phone: str | None) -> Customer:
    if phone is not None:
        customer = await _customer_by_phone(session, phone)
    else:
        customer = (await session.execute(
            select(Customer).where(Customer.phone.is_(None), Customer.name == name))).scalars().first()
    if customer is None:
        customer = Customer(name=name, phone=phone)
        session.add(customer)
        try:
            await session.flush()
        except IntegrityError:  # the same new customer booked concurrently by another worker
            raise Conflict("I could not save that just now; please ask me again.") from None
    return customer


@tool(parameters={"type": "object", "properties": {"name": NAME, "date": DATE, "time": TIME, "phone": PHONE},
                  "required": ["name", "date", "time"]})
async def book_appointment(ctx: ToolContext, name: str, date: str, time: str,
                           phone: str | None = None) -> dict[str, Any]:
    """Book an appointment for a person at a date and time (phone defaults to the caller's number)."""
    name = " ".join(name.split())
    if not name:
        raise InvalidArguments("I still need the name.")
    day, at = parse_date(date), parse_time(time)
    now = ctx.now()
    hours = ClinicHours.from_settings(ctx.settings)
    hours.check_slot(day, at, now)
    number = _phone(ctx, phone)
    session = ctx.session
    holder = (await session.execute(select(Appointment).where(
        Appointment.slot_date == day, Appointment.slot_time == at, Appointment.status == BOOKED))).scalar_one_or_none()
    when = f"{speak_date(day)} at {speak_time(at)}"
    if holder is not None:
        owner = await session.get(Customer, holder.customer_id)
        same_person = holder.name.casefold() == name.casefold() and (
            number is None or owner is None or owner.phone in (None, number))
        if same_person:  # asking again for what they already have: not a second booking
            return {"status": "booked", **_appointment_json(holder), "already_booked": True,
                    "message": f"{holder.name} is already booked for {when}."}
        free = [speak_time(t) for t in await _free_slots(session, hours, day, now)][:3]
        alternatives = f" Free times that day: {', '.join(free)}." if free else " That day is fully booked."
        raise Conflict(f"Sorry, {when} is already taken.{alternatives}")
    customer = await _customer_for_booking(session, name, number)
    appointment = Appointment(customer_id=customer.id, name=name, slot_date=day, slot_time=at, status=BOOKED,
                              call_id=ctx.call.call_id)
    session.add(appointment)
    try:
        await session.flush()
    except IntegrityError:  # another worker booked the slot between our check and our insert
        raise Conflict(f"Sorry, {when} was just taken.") from None
    return {"status": "booked", **_appointment_json(appointment), "phone": number,
            "message": f"Booked {name} for {when}. The appointment number is {appointment.id}."}


async def _appointment_to_cancel(ctx: ToolContext, appointment_id: int | None, phone: str | None,
                                 date: str | None, time: str | None) -> Appointment:
    session = ctx.session
    today = ctx.now().date()
    number = _phone(ctx, phone)
    if appointment_id is not None:
        found = await session.get(Appointment, appointment_id)
        owner = await session.get(Customer, found.customer_id) if found is not None else None
        if found is None or (number is not None and owner is not None and owner.phone not in (None, number)):
            raise NotFound(f"I could not find appointment number {appointment_id} under your number.")
        if found.status == CANCELLED:
            raise Conflict(f"Appointment number {appointment_id} was already cancelled.")
        if found.slot_date < today:
            raise Conflict(f"Appointment number {appointment_id} has already passed.")
        return found
    if number is None:
        raise InvalidArguments("I need the appointment number or your phone number.")
    customer = await _customer_by_phone(session, number)
    if customer is None:
        raise NotFound(f"I could not find any appointments for {_spoken_phone(number)}.")
    day = parse_date(date) if date is not None else None
    at = parse_time(time) if time is not None else None
    matches = [a for a in await _upcoming(session, customer.id, today)
               if (day is None or a.slot_date == day) and (at is None or a.slot_time == at)]
    on = f" on {speak_date(day)}" if day is not None else ""
    if not matches:
        raise NotFound(f"I could not find an upcoming appointment{on} for {customer.name}.")
    if len(matches) > 1:
        listed = " and ".join(f"{speak_date(a.slot_date)} at {speak_time(a.slot_time)}" for a in matches)
        raise Conflict(f"{customer.name} has {len(matches)} appointments{on}: {listed}. Which one should I cancel?")
    return matches[0]


@tool(parameters={"type": "object", "properties": {
    "appointment_id": {"type": "integer", "minimum": 1, "description": "The appointment number, if known"},
    "phone": PHONE, "date": DATE, "time": TIME}})
async def cancel_appointment(ctx: ToolContext, appointment_id: int | None = None, phone: str | None = None,
                             date: str | None = None, time: str | None = None) -> dict[str, Any]:
    """Cancel an appointment, by its number or by phone (default: the caller's number) and date."""
    appointment = await _appointment_to_cancel(ctx, appointment_id, phone, date, time)
    appointment.status = CANCELLED
    appointment.cancelled_at = utcnow()
    await ctx.session.flush()
    when = f"{speak_date(appointment.slot_date)} at {speak_time(appointment.slot_time)}"
    return {"status": "cancelled", **_appointment_json(appointment),
            "message": f"I have cancelled the appointment for {appointment.name} on {when}."}


@tool(read_only=True, control=True, timeout_ms=2000,
      parameters={"type": "object", "properties": {"reason": REASON}})
async def end_call(ctx: ToolContext, reason: str | None = None) -> ToolResult:
    """End the call after saying goodbye, when the caller has nothing else."""
    why = reason or "caller_done"
    return ToolResult({"status": "ending_call", "reason": why}, {"verb": "hangup", "reason": why})


@tool(read_only=True, control=True, timeout_ms=2000,
      parameters={"type": "object", "properties": {"reason": REASON}})
async def transfer_to_human(ctx: ToolContext, reason: str | None = None) -> ToolResult:
    """Transfer the caller to a member of staff, when asked for a person or when you cannot help."""
    to = ctx.settings.transfer_number
    why = reason or "caller_request"
    return ToolResult({"status": "transferring", "to": to, "reason": why,
                       "message": "I am transferring you to a member of our team now."},
                      {"verb": "transfer", "to": to, "reason": why})
