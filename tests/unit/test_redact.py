"""The redactor (shared/redact.py): card numbers (Luhn-checked), phone numbers (libphonenumber), e-mail addresses
and configured patterns, in free text, in Realtime events and in log lines. Property tests with hypothesis."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.session.agent import AgentSpec
from services.session.options import CallOptions
from shared.redact import RedactingFilter, Redactor, loggable, luhn_valid, redact_event

R = Redactor(["MRN-[0-9]{6}"])
WORDS = st.text(alphabet="abcdefghij klmnop,.", max_size=30)


def luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = draw(st.text(alphabet="0123456789", min_size=12, max_size=18).filter(lambda b: b[0] != "0"))
    number = luhn_complete(body)
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(number[i:i + 4] for i in range(0, len(number), 4))


@given(cards(), WORDS, WORDS)
def test_card_numbers_are_replaced_wherever_they_stand(card: str, before: str, after: str) -> None:
    out = R.text(f"{before} {card} {after}")
    assert "[CARD]" in out
    digits = card.replace(" ", "").replace("-", "")
    assert digits not in out.replace(" ", "").replace("-", "")


@given(st.text(alphabet="0123456789", min_size=12, max_size=18).filter(lambda b: b[0] != "0"))
def test_numbers_failing_luhn_are_not_cards(body: str) -> None:
    wrong = next(body + d for d in "0123456789" if not luhn_valid(body + d))
    assert "[CARD]" not in Redactor(phones=False).text(f"order {wrong}")


@given(st.from_regex(r"[a-z][a-z0-9._+-]{0,15}", fullmatch=True),
       st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3),
       st.sampled_from(["com", "org", "co.uk", "io", "de"]), WORDS)
def test_email_addresses_are_replaced(local: str, labels: list[str], tld: str, words: str) -> None:
    address = f"{local}@{'.'.join(labels)}.{tld}"
    out = R.text(f"{words} write to {address}, thanks")
    assert address not in out and "[EMAIL]" in out


@given(st.integers(200, 999), st.integers(200, 999), st.integers(0, 9999),
       st.sampled_from(["+1 {a} {b} {c:04d}", "({a}) {b}-{c:04d}", "{a}-{b}-{c:04d}", "+1{a}{b}{c:04d}"]), WORDS)
@settings(max_examples=60)
def test_us_phone_numbers_in_any_common_format_are_replaced(a: int, b: int, c: int, fmt: str, words: str) -> None:
    number = fmt.format(a=a, b=b, c=c)
    out = R.text(f"{words} call me on {number} please")
    assert number not in out and "[PHONE]" in out


@pytest.mark.parametrize("number", ["+44 20 7946 0958", "+33 1 42 68 53 00", "+49 30 901820"])
def test_international_numbers_are_replaced(number: str) -> None:
    assert R.text(f"ring {number}") == "ring [PHONE]"


@pytest.mark.parametrize("text", ["book for 2026-12-08 at 10:00", "appointment id 7", "zip 94103",
                                  "it costs 1500 dollars", '{"date": "2026-12-08", "time": "10:00"}'])
def test_dates_times_and_small_numbers_are_left_alone(text: str) -> None:
    assert R.text(text) == text


def test_configured_patterns_and_bad_ones() -> None:
    assert R.text("record MRN-123456 updated") == "record [REDACTED] updated"
    with pytest.raises(ValueError, match="does not compile"):
        Redactor(["(unclosed"])
    with pytest.raises(ValueError, match="empty string"):
        Redactor(["x*"])


def test_events_keep_their_shape_audio_and_valid_json() -> None:
    audio = {"type": "response.output_audio.delta", "delta": "AAAA4111111111111111", "item_id": "i"}
    assert redact_event(audio, R) is audio
    args = {"type": "response.function_call_arguments.done", "call_id": "c",
            "arguments": json.dumps({"phone": "+14155552671", "name": "x"})}
    assert json.loads(redact_event(args, R)["arguments"]) == {"phone": "[PHONE]", "name": "x"}
    done: dict[str, Any] = {"type": "response.done", "response": {"output": [{"type": "message", "content": [
        {"type": "output_audio", "transcript": "mail jane@example.com"}]}]}}
    assert "jane" not in json.dumps(redact_event(done, R))
    assert "jane" in json.dumps(done)  # the original is not modified
    delta = {"type": "conversation.item.input_audio_transcription.delta", "item_id": "i", "delta": "4111 11"}
    assert redact_event(delta, R)["delta"] == ""
    item = {"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c",
                                                          "output": '{"card": "4111-1111-1111-1111"}'}}
    assert json.loads(redact_event(item, R)["item"]["output"]) == {"card": "[CARD]"}


def test_log_lines_are_redacted() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "caller %s said %s", ("+14155552671", "a@b.io"), None)
    assert RedactingFilter(R).filter(record)
    assert record.getMessage() == "caller [PHONE] said [EMAIL]"


def test_agent_spec_and_settings_decide() -> None:
    base = {"name": "a", "instructions": "x"}
    assert CallOptions().redactor(None) is None
    assert CallOptions(redaction=True).redactor(None) is not None
    off = AgentSpec.model_validate({**base, "redaction": {"enabled": False}})
    assert CallOptions(redaction=True).redactor(off.redaction) is None
    on = AgentSpec.model_validate({**base, "redaction": {"patterns": ["MRN-[0-9]+"]}})
    redactor = CallOptions(redaction_patterns=("SECRET-[0-9]+",)).redactor(on.redaction)
    assert redactor is not None and redactor.text("MRN-1 SECRET-2") == "[REDACTED] [REDACTED]"
    with pytest.raises(ValueError, match="does not compile"):
        AgentSpec.model_validate({**base, "redaction": {"patterns": ["("]}})


def test_the_log_gets_raw_bytes_unless_something_was_redacted() -> None:
    raw = b'{"type":"response.output_audio_transcript.done","transcript":"See you at ten"}'
    event = json.loads(raw)
    assert loggable(R, event, raw) is raw and loggable(None, event, raw) is raw
    secret = b'{"type": "response.output_audio_transcript.done", "transcript": "call +14155552671"}'
    assert json.loads(loggable(R, json.loads(secret), secret))["transcript"] == "call [PHONE]"
    assert loggable(R, None, b"not json jane@example.com") == b"not json [EMAIL]"
