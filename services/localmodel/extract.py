"""Typed extractors: argument values from the words a caller said, for the dialogue policy (:mod:`.policy`).

Input is the recogniser's lower-case word list (numbers as words: "ten thirty") or typed text ("10:30",
"10 am"). Each extractor returns ``None`` when nothing fits. Conventions (documented, deterministic):

- dates → ISO ``YYYY-MM-DD`` relative to ``today``: "today", "tomorrow", "the day after tomorrow",
  "[on|this] friday" (the next Friday after today), "next friday" (same), "november third"/"the third"
  (this year/month, or the next one when already past), ISO dates as typed;
- times → ``HH:MM`` 24 h: "ten" → 10:00, "ten thirty" → 10:30, "half past three" → 15:30, "quarter to
  ten" → 09:45, "quarter past ten" → 10:15, "10 am" / "ten a m" → 10:00, "two p m" →
  14:00, "noon"/"midday"/"lunchtime" → 12:00; an hour 1–7 without am/pm is taken as afternoon (business hours);
- numbers → int ("forty five" → 45, "12" → 12); phone digits → E.164 for 10 digits (``+1`` prefix),
  else the digits as said ("oh" = 0); names → the capitalised words after "my name is" / "this is" /
  "it's" / "i am"; enum values → the first enum value whose words all occur.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "bare_time",
    "extract_date",
    "extract_enum",
    "extract_name",
    "extract_number",
    "extract_phone",
    "extract_time",
    "loose_time",
    "words_of",
]

UNITS: Final = {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
                "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
TENS: Final = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
               "ninety": 90}
ORDINAL_WORDS: Final = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
                        "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
                        "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17,
                        "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30}
WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS: Final = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
                 "october", "november", "december")
_NAME_STOP: Final = frozenset({"and", "i", "i'd", "i'm", "please", "my", "the", "for", "on", "at", "to", "is", "a",
                               "phone", "number", "yes", "no", "thank", "thanks", "calling", "here"})


def words_of(text: str) -> list[str]:
    """Lower-case tokens of ``text``; "10:30" stays one token, "a.m." becomes "am"."""
    text = text.lower().replace("a.m.", "am").replace("p.m.", "pm")
    return re.findall(r"\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}|[a-z0-9]+(?:'[a-z]+)?", text)


def _number_at(words: Sequence[str], i: int) -> tuple[int, int] | None:
    """(value, words used) of a number starting at ``words[i]`` ("forty five", "12"), else None."""
    if i >= len(words):
        return None
    w = words[i]
    if w.isdigit():
        return int(w), 1
    if w in TENS:
        if i + 1 < len(words) and words[i + 1] in UNITS and 0 < UNITS[words[i + 1]] < 10:
            return TENS[w] + UNITS[words[i + 1]], 2
        return TENS[w], 1
    if w in UNITS:
        return UNITS[w], 1
    return None


def extract_number(words: Sequence[str]) -> int | None:
    """The first number said ("forty five" → 45, "7" → 7), else None."""
    for i in range(len(words)):
        found = _number_at(words, i)
        if found:
            return found[0]
    return None


def _ordinal_at(words: Sequence[str], i: int) -> tuple[int, int] | None:
    w = words[i] if i < len(words) else ""
    m = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", w)
    if m:
        return int(m.group(1)), 1
    if w in TENS and i + 1 < len(words) and words[i + 1] in ORDINAL_WORDS and ORDINAL_WORDS[words[i + 1]] < 10:
        return TENS[w] + ORDINAL_WORDS[words[i + 1]], 2
    if w in ORDINAL_WORDS:
        return ORDINAL_WORDS[w], 1
    return None


def _next_weekday(today: dt.date, weekday: int) -> dt.date:
    ahead = (weekday - today.weekday()) % 7 or 7
    return today + dt.timedelta(days=ahead)


def extract_date(words: Sequence[str], today: dt.date) -> str | None:
    """An ISO ``YYYY-MM-DD`` date from the words, relative to ``today``; None when no date was said."""
    text = " ".join(words)
    iso = re.search(r"\b(\d{4}-\d{2}-\d{2})\b", text)
    if iso:
        try:
            return dt.date.fromisoformat(iso.group(1)).isoformat()
        except ValueError:
            return None
    if "day after tomorrow" in text:
        return (today + dt.timedelta(days=2)).isoformat()
    if "tomorrow" in words:
        return (today + dt.timedelta(days=1)).isoformat()
    if "today" in words:
        return today.isoformat()
    for i, w in enumerate(words):
        if w in MONTHS:
            day = _ordinal_at(words, i + 1) or (_ordinal_at(words, i + 2) if i + 1 < len(words)
                                                 and words[i + 1] == "the" else None)
            if day:
                return _month_day(today, MONTHS.index(w) + 1, day[0])
        if w in WEEKDAYS:
            return _next_weekday(today, WEEKDAYS.index(w)).isoformat()
    for i, w in enumerate(words[:-1]):
        if w == "the":
            day = _ordinal_at(words, i + 1)
            if day and words[i + 1] not in UNITS:
                return _month_day(today, today.month, day[0], roll_month=True)
    return None


def _month_day(today: dt.date, month: int, day: int, *, roll_month: bool = False) -> str | None:
    try:
        candidate = dt.date(today.year, month, day)
    except ValueError:
        return None
    if candidate < today:
        try:
            if roll_month:
                candidate = dt.date(today.year + (month == 12), month % 12 + 1, day)
            else:
                candidate = dt.date(today.year + 1, month, day)
        except ValueError:
            return None
    return candidate.isoformat()


def extract_time(words: Sequence[str]) -> str | None:
    """``HH:MM`` (24 h) from "at ten", "ten thirty", "10 am", "2:30 pm", "noon"; None when no time was said.

    A bare number counts as a time only after "at" or when followed by am/pm/o'clock or minutes, so "two
    people" is not a time; hours 1–7 without am/pm are afternoon.
    """
    if {"noon", "midday", "lunchtime"} & set(words):
        return "12:00"
    for i, w in enumerate(words[:-2]):
        if (w, words[i + 1]) in (("half", "past"), ("quarter", "past"), ("quarter", "to")):
            hour = _number_at(words, i + 2)
            if hour and 1 <= hour[0] <= 12:
                h, minute = hour[0], 30 if w == "half" else 15
                if words[i + 1] == "to":
                    h, minute = (h - 2) % 12 + 1, 45
                return _clock(h, minute, _meridiem(words, i + 2 + hour[1]))
    for i, w in enumerate(words):
        m = re.fullmatch(r"(\d{1,2}):(\d{2})", w)
        if m:
            return _clock(int(m.group(1)), int(m.group(2)), _meridiem(words, i + 1))
    for i in range(len(words)):
        hour = _number_at(words, i)
        if hour is None or not 1 <= hour[0] <= 12:
            continue
        j = i + hour[1]
        minute = 0
        nxt = words[j] if j < len(words) else ""
        if nxt in ("o'clock", "oclock"):
            j += 1
        elif nxt in ("oh", "o") and j + 1 < len(words) and words[j + 1] in UNITS:
            minute, j = UNITS[words[j + 1]], j + 2
        else:
            mins = _number_at(words, j)
            if mins and 10 <= mins[0] < 60:
                minute, j = mins[0], j + mins[1]
        meridiem = _meridiem(words, j)
        anchored = i > 0 and words[i - 1] in ("at", "around", "about", "by")
        if anchored or meridiem or minute or nxt in ("o'clock", "oclock"):
            return _clock(hour[0], minute, meridiem)
    return None


def _meridiem(words: Sequence[str], j: int) -> str | None:
    nxt = words[j] if j < len(words) else ""
    if nxt in ("am", "pm"):
        return nxt
    if nxt in ("a", "p") and j + 1 < len(words) and words[j + 1] == "m":
        return nxt + "m"
    if nxt == "in" and j + 2 < len(words) and words[j + 2] in ("morning", "afternoon", "evening"):
        return "am" if words[j + 2] == "morning" else "pm"
    return None


def _clock(hour: int, minute: int, meridiem: str | None) -> str | None:
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        return None
    if meridiem == "pm" and hour < 12:
        hour += 12
    elif meridiem == "am" and hour == 12:
        hour = 0
    elif meridiem is None and 1 <= hour <= 7:
        hour += 12
    return f"{hour:02d}:{minute:02d}"


def extract_phone(words: Sequence[str]) -> str | None:
    """Phone digits said one by one ("five five five …", "oh" = 0) or typed; 10 digits → ``+1XXXXXXXXXX``,
    11 starting with 1 → ``+1…``, 7–15 others → the digits (``+`` kept if typed); fewer than 7 → None."""
    digits = ""
    best = ""
    for w in words:
        if w.isdigit():
            digits += w
        elif w in UNITS and UNITS[w] < 10:
            digits += str(UNITS[w])
        else:
            best = max(best, digits, key=len)
            digits = ""
    best = max(best, digits, key=len)
    if len(best) == 10:
        return "+1" + best
    if len(best) == 11 and best.startswith("1"):
        return "+" + best
    if 7 <= len(best) <= 15:
        return best
    return None


def extract_name(words: Sequence[str]) -> str | None:
    """The name after "my name is" / "my name's" / "this is" / "it's" / "i am" / "name is" / "put it under"
    (1–3 words, capitalised)."""
    text = " ".join(words)
    m = re.search(r"\b(?:my name is|name is|name's|this is|it's|i am|i'm|call me|put it under)\s+(.+)", text)
    if not m:
        return None
    name: list[str] = []
    for w in m.group(1).split():
        if w in _NAME_STOP or not w.isalpha() or w in UNITS or w in TENS:
            break
        name.append(w.capitalize())
        if len(name) == 3:
            break
    return " ".join(name) or None


def extract_enum(words: Sequence[str], values: Sequence[object]) -> object | None:
    """The first enum value whose words (split on ``_``, ``-`` and spaces) all occur in ``words``."""
    heard = set(words)
    for value in values:
        parts = [p for p in re.split(r"[_\-\s]+", str(value).lower()) if p]
        if parts and all(p in heard for p in parts):
            return value
    return None


TIME_WORDS: Final = frozenset({*UNITS, *TENS, "o'clock", "am", "pm", "a", "m", "p", "in", "the", "morning",
                               "afternoon", "evening", "half", "quarter", "past", "to", "noon", "midday"}) - {"zero"}
"""Words a bare time is made of ("eleven", "ten in the morning", "half past two")."""
LEAD_INS: Final = frozenset({"no", "sorry", "actually", "make", "it", "it's", "i", "said", "meant", "rather", "oh",
                             "how", "about", "let's", "say", "maybe", "please", "should", "be", "instead"})
"""Words around a bare answer or a correction ("no, make it eleven please")."""


def loose_time(words: Sequence[str]) -> str | None:
    """The first run of :data:`TIME_WORDS` in ``words`` that holds an hour, read as a time ("can we do eleven
    instead" → 11:00), else None."""
    run: list[str] = []
    for w in [*words, ""]:
        if w in TIME_WORDS:
            run.append(w)
            continue
        if set(run) & set(UNITS) and (found := extract_time(["at", *_trim(run)])) is not None:
            return found
        run = []
    return None


def _trim(run: list[str]) -> list[str]:
    """``run`` without leading filler words ("the", "a", "in", "to") before its first number or "half"/"quarter"."""
    i = 0
    while i < len(run) and run[i] in ("the", "a", "in", "to", "past"):
        i += 1
    return run[i:]


def bare_time(words: Sequence[str]) -> str | None:
    """The time of ``words`` that say a time and nothing else but :data:`LEAD_INS` ("no, eleven"; at most 5
    time words: a phone number is no time), else None."""
    rest = [w for w in words if w not in LEAD_INS]
    if 0 < len(rest) <= 5 and all(w in TIME_WORDS for w in rest) and set(rest) & set(UNITS):
        return extract_time(["at", *rest])
    return None
