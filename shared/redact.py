"""Redaction of personal data in text: card numbers, phone numbers, e-mail addresses and configured patterns.

Used where text leaves a process: the session's Realtime event log (transcripts, tool arguments and outputs;
:func:`redact_event`) and log lines (:class:`RedactingFilter`). docs/compliance.md, "Redaction".

What is replaced, in this order (each match by a marker, so a reader sees that something was there):

- card numbers → ``[CARD]``: 13–19 digits, optionally grouped by single spaces or dashes, that pass the Luhn
  checksum (ISO/IEC 7812-1 annex B) — an order number of 16 digits that fails it is left alone;
- e-mail addresses → ``[EMAIL]`` (``local@domain.tld``, the common subset of RFC 5322 addresses);
- phone numbers → ``[PHONE]``: what Google's libphonenumber (the ``phonenumbers`` package,
  https://github.com/daviddrysdale/python-phonenumbers) finds in the text at leniency ``POSSIBLE`` (a plausible
  length for the country, international or national in ``region``, default US) — fictional 555 numbers included:
  over-redaction is the safe side;
- every configured regular expression → ``[REDACTED]``.

Spoken numbers ("four one one one") are not recognised; speech-to-text usually writes digits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import phonenumbers

from shared.bus import encode_payload

__all__ = ["REDACTED_MARKERS", "SKIP_TYPES", "RedactingFilter", "Redactor", "install_log_redaction", "loggable",
           "luhn_valid", "redact_event"]

REDACTED_MARKERS = ("[CARD]", "[EMAIL]", "[PHONE]", "[REDACTED]")

_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` (0-9 only, at least two) passes the Luhn checksum."""
    if len(digits) < 2 or not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    """Replaces personal data in text (see the module docstring).

    Args:
        patterns: extra regular expressions (Python syntax); each match becomes ``[REDACTED]``.
        region: ISO 3166 region for phone numbers written without a country code.
        cards / emails / phones: which built-in detectors run.

    Raises:
        ValueError: a pattern does not compile, or matches the empty string.
    """

    def __init__(self, patterns: Iterable[str] = (), *, region: str = "US", cards: bool = True,
                 emails: bool = True, phones: bool = True) -> None:
        self.patterns: list[re.Pattern[str]] = []
        for p in patterns:
            try:
                compiled = re.compile(p)
            except re.error as exc:
                raise ValueError(f"redaction pattern {p!r} does not compile: {exc}") from None
            if compiled.fullmatch(""):
                raise ValueError(f"redaction pattern {p!r} matches the empty string")
            self.patterns.append(compiled)
        self.region = region.upper()
        self.cards, self.emails, self.phones = cards, emails, phones

    def text(self, value: str) -> str:
        """``value`` with every detected item replaced by its marker."""
        if not value:
            return value
        out = value
        if self.cards:
            out = _CARD.sub(_card, out)
        if self.emails:
            out = _EMAIL.sub("[EMAIL]", out)
        if self.phones and any(c.isdigit() for c in out):
            out = self._phones(out)
        for pattern in self.patterns:
            out = pattern.sub("[REDACTED]", out)
        return out

    def _phones(self, value: str) -> str:
        matcher = phonenumbers.PhoneNumberMatcher(value, self.region, leniency=phonenumbers.Leniency.POSSIBLE)
        spans = [(m.start, m.end) for m in matcher]
        for start, end in reversed(spans):
            value = value[:start] + "[PHONE]" + value[end:]
        return value


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


_TEXT_KEYS = frozenset({"transcript", "text", "arguments", "output"})
"""Keys of Realtime event objects (at any depth) whose string values are text a person said or a tool saw."""
_TEXT_DELTAS = frozenset({"response.output_audio_transcript.delta", "response.output_text.delta",
                          "response.function_call_arguments.delta",
                          "conversation.item.input_audio_transcription.delta"})
"""Events whose ``delta`` is a fragment of text: a number split across fragments cannot be recognised, so their
``delta`` is emptied (the matching ``.done``/``.completed`` event carries the whole text, redacted)."""
SKIP_TYPES = frozenset({"response.output_audio.delta", "input_audio_buffer.append"})
"""The audio events (most of the log): never text, never touched."""


def redact_event(event: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A copy of a Realtime event (GA shapes, protocols.md §1) with its text redacted: every string under the
    keys ``transcript``, ``text``, ``arguments`` and ``output`` at any depth, and the ``delta`` of text deltas
    (emptied). Audio and every other field are kept as they are."""
    etype = event.get("type")
    if etype in SKIP_TYPES:
        return event
    out = _walk(event, redactor)
    assert isinstance(out, dict)
    if etype in _TEXT_DELTAS and isinstance(out.get("delta"), str):
        out["delta"] = ""
    return out


def _walk(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, dict):
        return {k: (redactor.text(v) if k in _TEXT_KEYS and isinstance(v, str) else _walk(v, redactor))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, redactor) for v in value]
    return value


def loggable(redactor: Redactor | None, event: Any, raw: bytes) -> bytes:
    """What an event log stores for a Realtime frame: ``raw`` unchanged without a redactor or when nothing needed
    redacting; else the event with its text redacted (:func:`redact_event`), re-encoded. A frame that did not
    parse (``event`` not an object) is redacted as text."""
    if redactor is None:
        return raw
    if not isinstance(event, dict):
        return redactor.text(raw.decode("utf-8", "replace")).encode()
    redacted = redact_event(event, redactor)
    return raw if redacted is event or redacted == event else encode_payload(redacted)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (and drops its arguments), so a log line
    never carries what the redactor would replace. Install on handlers: ``handler.addFilter(...)``."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace ``record.msg`` by the redacted message; always keeps the record."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the record as it is for the formatter to report
            return True
        record.msg, record.args = self.redactor.text(message), None
        return True


def install_log_redaction(redactor: Redactor, handlers: Sequence[logging.Handler] | None = None) -> None:
    """Add a :class:`RedactingFilter` to ``handlers`` (default: the root logger's)."""
    for handler in handlers if handlers is not None else logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redactor))
