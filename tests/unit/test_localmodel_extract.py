"""Typed extractors of the local model's dialogue policy."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from services.localmodel import extract as ex

TODAY = dt.date(2026, 11, 22)  # a Sunday


def w(text: str) -> list[str]:
    return ex.words_of(text)


def test_dates() -> None:
    assert ex.extract_date(w("book for tomorrow at ten"), TODAY) == "2026-11-23"
    assert ex.extract_date(w("today please"), TODAY) == "2026-11-22"
    assert ex.extract_date(w("the day after tomorrow"), TODAY) == "2026-11-24"
    assert ex.extract_date(w("on Friday"), TODAY) == "2026-11-27"
    assert ex.extract_date(w("next sunday"), TODAY) == "2026-11-29"
    assert ex.extract_date(w("on december third"), TODAY) == "2026-12-03"
    assert ex.extract_date(w("on january the first"), TODAY) == "2027-01-01"
    assert ex.extract_date(w("on the twenty fifth"), TODAY) == "2026-11-25"
    assert ex.extract_date(w("2026-12-01"), TODAY) == "2026-12-01"
    assert ex.extract_date(w("at ten"), TODAY) is None


def test_times() -> None:
    assert ex.extract_time(w("tomorrow at ten")) == "10:00"
    assert ex.extract_time(w("at ten thirty")) == "10:30"
    assert ex.extract_time(w("10 am")) == "10:00"
    assert ex.extract_time(w("ten a m")) == "10:00"
    assert ex.extract_time(w("at two p m")) == "14:00"
    assert ex.extract_time(w("at two")) == "14:00"
    assert ex.extract_time(w("2:30 pm")) == "14:30"
    assert ex.extract_time(w("noon")) == "12:00"
    assert ex.extract_time(w("at nine o five")) == "09:05"
    assert ex.extract_time(w("two people")) is None
    assert ex.extract_time(w("yes please")) is None


@given(st.integers(min_value=8, max_value=19), st.sampled_from([0, 15, 30, 45]))
def test_typed_times_round_trip(hour: int, minute: int) -> None:
    assert ex.extract_time(w(f"at {hour}:{minute:02d}")) == f"{hour:02d}:{minute:02d}"


def test_numbers_phone_name_enum() -> None:
    assert ex.extract_number(w("forty five people")) == 45
    assert ex.extract_number(w("table for 4")) == 4
    assert ex.extract_phone(w("my number is five five five one two three oh oh oh one")) == "+15551230001"
    assert ex.extract_phone(w("one two three")) is None
    assert ex.extract_name(w("My name is John Smith")) == "John Smith"
    assert ex.extract_name(w("hi this is mary and i need help")) == "Mary"
    assert ex.extract_name(w("book an appointment")) is None
    assert ex.extract_enum(w("a large pizza"), ["small", "large"]) == "large"
    assert ex.extract_enum(w("window seat"), ["aisle_seat", "window_seat"]) == "window_seat"


def test_half_and_quarter_times() -> None:
    from services.localmodel.extract import extract_time, words_of

    assert extract_time(words_of("at half past three")) == "15:30"
    assert extract_time(words_of("half past nine in the morning")) == "09:30"
    assert extract_time(words_of("quarter past ten")) == "10:15"
    assert extract_time(words_of("quarter to four")) == "15:45"
    assert extract_time(words_of("at quarter to twelve")) == "11:45"
    assert extract_time(words_of("quarter to one")) == "12:45"
