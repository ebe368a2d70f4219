"""The demo clinic's rules, free of I/O: opening hours, slots, dates, times and phone numbers.

Rules (configurable, see :class:`~services.tools.settings.ToolsSettings`; documented in docs/tools.md):
open every day 09:00–17:00 clinic time, one-hour slots starting on the hour (09:00 … 16:00), bookable from
now up to 90 days ahead, one appointment per slot. Open every day by default so that the demo's "tomorrow at
10:00" is bookable whatever weekday tomorrow is.

Every failure is :class:`~services.tools.framework.InvalidArguments` with a sentence safe to speak.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from services.tools.framework import InvalidArguments
from services.tools.settings import DAY_NAMES, ToolsSettings

__all__ = [
    "ClinicHours",
    "normalize_phone",
    "parse_date",
    "parse_time",
    "speak_date",
    "speak_time",
]

_FULL_DAY = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def parse_date(value: str) -> dt.date:
    """``YYYY-MM-DD`` → date.

    Raises:
        InvalidArguments: not an ISO calendar date.
    """
    try:
        if len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArguments(f"The date {value} is not a valid date; use year-month-day.") from None


def parse_time(value: str) -> dt.time:
    """``HH:MM`` (24 h) → time.

    Raises:
        InvalidArguments: not a 24-hour ``HH:MM`` time.
    """
    hours, sep, minutes = value.partition(":")
    if not (sep and len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
            and int(hours) < 24 and int(minutes) < 60):
        raise InvalidArguments(f"The time {value} is not valid; use hours and minutes, like 14:30.")
    return dt.time(int(hours), int(minutes))


def speak_date(day: dt.date) -> str:
    """``Monday, November 23`` (English, for the agent to read out)."""
    return f"{_FULL_DAY[day.weekday()]}, {day.strftime('%B')} {day.day}"


def speak_time(t: dt.time) -> str:
    """``HH:MM``."""
    return t.strftime("%H:%M")


_PHONE_CHARS = re.compile(r"[\s().\-/]")


def normalize_phone(raw: str | None) -> str | None:
    """A phone number in E.164 (``+15551230001``), or None when ``raw`` is empty or not a phone number.

    Spaces, dots, dashes, slashes and parentheses are dropped; ``00`` becomes ``+``; a bare 10-digit number is
    taken as North American (``+1``), an 11-digit one starting with 1 likewise. Non-phone caller IDs (a
    browser call's ``client:…``, ``anonymous``) give None.
    """
    if raw is None:
        return None
    text = _PHONE_CHARS.sub("", raw.strip())
    if text.startswith("00"):
        text = "+" + text[2:]
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits.isdigit() or not 7 <= len(digits) <= 15:
        return None
    if plus:
        return "+" + digits
    if len(digits) == 10:
        return "+1" + digits
    if len(digits) == 11 and digits.startswith("1"):
        return "+" + digits
    return "+" + digits


@dataclass(frozen=True)
class ClinicHours:
    """Opening hours and the slot grid, in clinic-local dates and times."""

    open: dt.time
    close: dt.time
    slot_minutes: int
    weekdays: frozenset[int]
    horizon_days: int

    @classmethod
    def from_settings(cls, settings: ToolsSettings) -> ClinicHours:
        """The hours configured in ``settings``."""
        return cls(settings.open_time, settings.close_time, settings.clinic_slot_minutes,
                   settings.open_weekdays, settings.booking_horizon_days)

    def is_open_on(self, day: dt.date) -> bool:
        """True when the clinic opens on ``day``'s weekday."""
        return day.weekday() in self.weekdays

    def slots(self, day: dt.date) -> list[dt.time]:
        """Slot start times on ``day`` (empty on closed days)."""
        if not self.is_open_on(day):
            return []
        start = dt.datetime.combine(day, self.open)
        end = dt.datetime.combine(day, self.close)
        step = dt.timedelta(minutes=self.slot_minutes)
        out: list[dt.time] = []
        while start + step <= end:
            out.append(start.time())
            start += step
        return out

    def check_date(self, day: dt.date, today: dt.date) -> None:
        """A date the clinic books: not past and within the horizon.

        Raises:
            InvalidArguments: in the past or too far ahead.
        """
        if day < today:
            raise InvalidArguments(f"{speak_date(day)} is in the past. Which day would you like?")
        if day > today + dt.timedelta(days=self.horizon_days):
            raise InvalidArguments(f"We only book up to {self.horizon_days} days ahead.")

    def check_slot(self, day: dt.date, t: dt.time, now: dt.datetime) -> None:
        """A bookable slot: valid date, open day, on the slot grid, in the future.

        Raises:
            InvalidArguments: which rule failed, and what would work.
        """
        self.check_date(day, now.date())
        if not self.is_open_on(day):
            open_days = ", ".join(_FULL_DAY[i] for i in sorted(self.weekdays))
            raise InvalidArguments(f"We are closed on {_FULL_DAY[day.weekday()]}s. We are open {open_days}.")
        slots = self.slots(day)
        if t not in slots:
            raise InvalidArguments(
                f"{speak_time(t)} is not an appointment time. Appointments start every {self.slot_minutes} "
                f"minutes from {speak_time(self.open)}; the last one starts at {speak_time(slots[-1])}."
                if slots else "We have no appointment times that day.")
        if dt.datetime.combine(day, t) <= now.replace(tzinfo=None):
            raise InvalidArguments(f"{speak_time(t)} today has already passed.")

    def describe(self) -> str:
        """``open every day 09:00–17:00, 60-minute slots`` (for tool descriptions)."""
        days = "every day" if len(self.weekdays) == 7 else ", ".join(DAY_NAMES[i] for i in sorted(self.weekdays))
        return (f"open {days} {speak_time(self.open)}-{speak_time(self.close)}, "
                f"{self.slot_minutes}-minute appointments")
