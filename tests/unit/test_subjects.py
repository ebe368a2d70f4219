"""Subject builders: call-id validation and the exact subject shapes of docs/architecture.md."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import subjects
from shared.subjects import InvalidSubjectTokenError


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "x" * 65, "", "a\tb", "a>b", "ä"])
def test_invalid_call_ids_are_rejected(bad: str) -> None:
    with pytest.raises(InvalidSubjectTokenError):
        subjects.validate_call_id(bad)
    with pytest.raises(InvalidSubjectTokenError):
        subjects.call_started(bad)


def test_valid_call_ids_pass() -> None:
    assert subjects.validate_call_id("x" * 64) == "x" * 64
    assert subjects.validate_call_id("CA_1-2") == "CA_1-2"
    assert subjects.validate_call_id(subjects.new_call_id())


def test_new_call_ids_are_ours_and_sort_by_creation() -> None:
    """``call_`` + ULID: never a carrier's ``CA…`` id; unique; lexical order is creation order (per ms)."""
    from ulid import ULID

    ids = [subjects.new_call_id() for _ in range(200)]
    assert len(set(ids)) == 200
    for cid in ids:
        assert cid.startswith("call_") and not cid.startswith("CA")
        ULID.from_str(cid.removeprefix("call_"))  # raises on anything but a ULID
    stamps = [ULID.from_str(c.removeprefix("call_")).milliseconds for c in ids]
    assert stamps == sorted(stamps)


@given(st.text(min_size=1, max_size=80))
def test_no_call_id_can_inject_tokens(call_id: str) -> None:
    try:
        subject = subjects.call_audio_in(call_id)
    except InvalidSubjectTokenError:
        return
    assert subject.split(".") == ["call", call_id, "audio", "in"]
    assert not any(c in call_id for c in ".*> \t\r\n")


def test_subject_shapes() -> None:
    cid = "c1"
    assert subjects.call_started(cid) == "call.c1.started"
    assert subjects.call_audio_in(cid) == "call.c1.audio.in"
    assert subjects.carrier_mark(cid) == "call.c1.carrier.mark"
    assert subjects.carrier_dtmf(cid) == "call.c1.carrier.dtmf"
    assert subjects.carrier_error(cid) == "call.c1.carrier.error"
    assert subjects.command(cid, "clear") == "call.c1.command.clear"
    assert subjects.session_event(cid, "summary") == "call.c1.session.summary"
    assert subjects.session_disclosure(cid) == "call.c1.session.disclosure"
    assert subjects.call_ended(cid) == "call.c1.ended"
    assert subjects.rt_client(cid, "input_audio_buffer.append") == "rt.c1.client.input_audio_buffer.append"
    assert subjects.rt_server(cid, "response.output_audio.delta") == "rt.c1.server.response.output_audio.delta"
    assert subjects.tool("book_appointment") == "tools.book_appointment"
    with pytest.raises(InvalidSubjectTokenError):
        subjects.command(cid, "explode")
    with pytest.raises(InvalidSubjectTokenError):
        subjects.rt_server(cid, "response.*")


def test_parse_round_trip() -> None:
    parsed = subjects.parse(subjects.rt_server("c9", "response.done"))
    assert (parsed.kind, parsed.call_id, parsed.direction, parsed.rest) == ("rt", "c9", "server", "response.done")
    parsed = subjects.parse(subjects.carrier_mark("c9"))
    assert (parsed.kind, parsed.call_id, parsed.rest) == ("call", "c9", "carrier.mark")
    with pytest.raises(InvalidSubjectTokenError):
        subjects.parse("foo.bar")


def test_calls_stream_does_not_capture_audio() -> None:
    from nats.js.api import StreamConfig  # noqa: F401  (the server enforces; here: the patterns)

    def matches(pattern: str, subject: str) -> bool:
        p, s = pattern.split("."), subject.split(".")
        for i, tok in enumerate(p):
            if tok == ">":
                return len(s) > i
            if i >= len(s) or (tok != "*" and tok != s[i]):
                return False
        return len(p) == len(s)

    audio = subjects.call_audio_in("c1")
    assert not any(matches(p, audio) for p in subjects.CALLS_STREAM.subjects)
    for subject in (subjects.call_started("c1"), subjects.carrier_mark("c1"), subjects.command("c1", "hangup"),
                    subjects.session_event("c1", "summary"), subjects.call_ended("c1")):
        assert any(matches(p, subject) for p in subjects.CALLS_STREAM.subjects), subject
