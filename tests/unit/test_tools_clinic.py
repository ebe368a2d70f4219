"""Clinic rules, phone numbers and tool settings (no I/O)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.tools.clinic import ClinicHours, normalize_phone, parse_date, parse_time, speak_date
from services.tools.framework import InvalidArguments
from services.tools.settings import ToolsSettings

HOURS = ClinicHours.from_settings(ToolsSettings())


@pytest.mark.parametrize("raw, expected", [
    ("+15551230001", "+15551230001"),
    ("+1 (555) 123-0001", "+15551230001"),
    ("555.123.0001", "+15551230001"),
    ("15551230001", "+15551230001"),
    ("0044 20 7946 0958", "+442079460958"),
    ("", None), (None, None), ("anonymous", None), ("client:browser-1", None), ("123", None),
])
def test_normalize_phone(raw: str | None, expected: str | None) -> None:
    assert normalize_phone(raw) == expected


@settings(deadline=None)
@given(st.text(alphabet="0123456789 +-().", max_size=20))
def test_normalize_phone_is_idempotent_and_e164(raw: str) -> None:
    once = normalize_phone(raw)
    if once is not None:
        assert normalize_phone(once) == once
        assert once.startswith("+") and once[1:].isdigit() and 7 <= len(once) - 1 <= 15


def test_default_hours_open_every_day_nine_to_five_hourly() -> None:
    monday = dt.date(2030, 1, 7)
    for offset in range(7):
        slots = HOURS.slots(monday + dt.timedelta(days=offset))
        assert [t.strftime("%H:%M") for t in slots] == [f"{h:02d}:00" for h in range(9, 17)]
    assert HOURS.describe() == "open every day 09:00-17:00, 60-minute appointments"


def test_tomorrow_at_ten_is_bookable_whatever_the_weekday() -> None:
    for offset in range(7):
        now = dt.datetime(2030, 1, 7, 18, 30) + dt.timedelta(days=offset)
        HOURS.check_slot(now.date() + dt.timedelta(days=1), dt.time(10), now)


@pytest.mark.parametrize("day, at, fragment", [
    (dt.date(2030, 1, 6), dt.time(10), "in the past"),
    (dt.date(2030, 6, 1), dt.time(10), "90 days ahead"),
    (dt.date(2030, 1, 8), dt.time(10, 30), "not an appointment time"),
    (dt.date(2030, 1, 8), dt.time(17), "not an appointment time"),
    (dt.date(2030, 1, 7), dt.time(11), "already passed"),
])
def test_unbookable_slots(day: dt.date, at: dt.time, fragment: str) -> None:
    now = dt.datetime(2030, 1, 7, 12, 0)
    with pytest.raises(InvalidArguments, match=fragment):
        HOURS.check_slot(day, at, now)


def test_closed_days_and_custom_grid() -> None:
    weekdays = ClinicHours.from_settings(ToolsSettings(clinic_days="mon,tue,wed,thu,fri", clinic_open="08:30",
                                                       clinic_close="10:00", clinic_slot_minutes=30))
    saturday = dt.date(2030, 1, 12)
    assert weekdays.slots(saturday) == []
    assert weekdays.slots(dt.date(2030, 1, 11)) == [dt.time(8, 30), dt.time(9), dt.time(9, 30)]
    with pytest.raises(InvalidArguments, match="closed on Saturdays"):
        weekdays.check_slot(saturday, dt.time(9), dt.datetime(2030, 1, 10, 9))


def test_parse_and_speak() -> None:
    assert parse_date("2030-01-07") == dt.date(2030, 1, 7)
    assert speak_date(dt.date(2030, 1, 7)) == "Monday, January 7"
    assert parse_time("09:05") == dt.time(9, 5)
    for bad in ("2030-1-7", "20300107", "2030-13-01"):
        with pytest.raises(InvalidArguments):
            parse_date(bad)
    for bad in ("9:05", "24:00", "12:60", "ab:cd", "1200"):
        with pytest.raises(InvalidArguments):
            parse_time(bad)


@pytest.mark.parametrize("field, value", [
    ("clinic_open", "9am"), ("clinic_days", "mon,funday"), ("clinic_timezone", "Mars/Olympus"),
    ("clinic_slot_minutes", 1),
])
def test_settings_reject_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        ToolsSettings(**{field: value})  # type: ignore[arg-type]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_TOOL_MODULES", "a.b, c.d")
    monkeypatch.setenv("SWITCHBOARD_CLINIC_TIMEZONE", "America/New_York")
    monkeypatch.setenv("SWITCHBOARD_TOOLS_SEED", "0")
    s = ToolsSettings()
    assert s.modules == ["a.b", "c.d"]
    assert str(s.tzinfo) == "America/New_York"
    assert s.tools_seed is False
