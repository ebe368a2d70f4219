"""Twilio Media Streams message models: every inbound and outbound shape, TwiML, and a hypothesis fuzz
of the parser (only :class:`TwilioProtocolError` may escape;
https://www.twilio.com/docs/voice/media-streams/websocket-messages)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway.twilio import mark_echo_name
from shared.carriers import twilio as tw

# Examples in the shapes of Twilio's documentation (https://www.twilio.com/docs/voice/media-streams/websocket-messages).
CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
START = json.dumps({"event": "start", "sequenceNumber": "1", "start": {
    "accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}}, "streamSid": "MZ1"})
MEDIA = ('{"event":"media","sequenceNumber":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
         '"payload":"no+JhoaJjpw="},"streamSid":"MZ1"}')
DTMF = '{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}'
MARK = '{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"my label"}}'
STOP = '{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}'


def test_every_inbound_shape() -> None:
    assert isinstance(tw.parse_inbound(CONNECTED), tw.Connected)
    start = tw.parse_inbound(START)
    assert isinstance(start, tw.Start)
    assert start.stream_sid == "MZ1" and start.start.call_sid == "CA1" and start.start.account_sid == "AC1"
    assert start.start.media_format == tw.MediaFormat(encoding="audio/x-mulaw", sampleRate=8000, channels=1)
    assert start.start.custom_parameters["RemoteParty"] == "Bob"
    media = tw.parse_inbound(MEDIA)
    assert isinstance(media, tw.Media)
    assert (media.media.chunk, media.media.timestamp, media.media.track) == ("2", "5", "inbound")
    assert tw.decode_payload(media.media.payload) == bytes.fromhex("9e8f89868689 8e9c".replace(" ", ""))
    dtmf = tw.parse_inbound(DTMF)
    assert isinstance(dtmf, tw.Dtmf) and dtmf.dtmf.digit == "1" and dtmf.dtmf.track == "inbound_track"
    mark = tw.parse_inbound(MARK)
    assert isinstance(mark, tw.Mark) and mark.mark.name == "my label" and mark.sequence_number == "4"
    stop = tw.parse_inbound(STOP)
    assert isinstance(stop, tw.Stop) and stop.stop.call_sid == "CA1"


def test_every_outbound_shape_round_trips() -> None:
    media = tw.OutboundMedia(stream_sid="MZ1", media=tw.OutboundMediaPayload(payload=tw.encode_payload(b"\xff" * 160)))
    mark = tw.Mark(stream_sid="MZ1", mark=tw.MarkPayload(name="resp_1:item_a1:42"))
    clear = tw.Clear(stream_sid="MZ1")
    assert json.loads(tw.dump(media)) == {"event": "media", "streamSid": "MZ1",
                                          "media": {"payload": tw.encode_payload(b"\xff" * 160)}}
    assert json.loads(tw.dump(mark)) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "resp_1:item_a1:42"}}
    assert json.loads(tw.dump(clear)) == {"event": "clear", "streamSid": "MZ1"}
    for message in (media, mark, clear):
        assert tw.parse_outbound(tw.dump(message)) == message


def test_inbound_builders_round_trip() -> None:
    start = tw.parse_inbound(START)
    assert tw.parse_inbound(tw.dump(start)) == start
    for frame in (MEDIA, DTMF, MARK, STOP, CONNECTED):
        message = tw.parse_inbound(frame)
        assert tw.parse_inbound(tw.dump(message)) == message


@pytest.mark.parametrize(("frame", "reason"), [
    ("{oops", "malformed JSON"),
    ("[]", "message is not a JSON object"),
    ('{"event":"hello"}', "unknown event 'hello'"),
    ('{"no":"event"}', "unknown event 'None'"),
    ('{"event":"media"}', "invalid media: media: Field required"),
    ('{"event":"start","start":{"callSid":"CA"},"streamSid":"MZ"}', "invalid start: start.streamSid"),
    ('{"event":"dtmf","dtmf":{"digit":"12"}}', "invalid dtmf digit"),
    ('{"event":"mark","mark":{}}', "invalid mark: mark.name"),
    ('{"event":"connected","x":"' + "y" * 70_000 + '"}', "message over 64 KiB"),
])
def test_bad_frames_name_the_problem(frame: str, reason: str) -> None:
    with pytest.raises(tw.TwilioProtocolError) as err:
        tw.parse_inbound(frame)
    assert err.value.reason.startswith(reason)
    assert len(err.value.reason.encode()) <= 123  # fits a WebSocket close frame


@pytest.mark.parametrize("payload", ["!!!", "abc", "YQ", "YQ==\n"])
def test_invalid_base64(payload: str) -> None:
    with pytest.raises(tw.TwilioProtocolError, match="invalid base64"):
        tw.decode_payload(payload)


def test_twiml_build_and_parse() -> None:
    doc = tw.build_twiml("wss://example.com/twilio/media", {"agent": "receptionist", "caller": "+1&<2>"}, name="sb")
    assert doc.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream')
    assert tw.parse_twiml(doc) == ("wss://example.com/twilio/media", {"agent": "receptionist", "caller": "+1&<2>"})
    with pytest.raises(ValueError, match="query string"):
        tw.build_twiml("wss://example.com/media?x=1", {})
    with pytest.raises(ValueError, match="ws"):
        tw.build_twiml("https://example.com/media", {})
    with pytest.raises(ValueError):
        tw.parse_twiml("<Response><Say>hi</Say></Response>")
    with pytest.raises(ValueError):
        tw.parse_twiml("not xml")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "clear", "", "MEDIA"])


@st.composite
def twilio_like(draw: st.DrawFn) -> str:
    message: dict[str, Any] = draw(st.dictionaries(
        st.sampled_from(["start", "media", "dtmf", "mark", "stop", "streamSid", "sequenceNumber", "x"]),
        json_values, max_size=5))
    message["event"] = draw(events)
    return json.dumps(message)


@settings(max_examples=400, deadline=None)
@given(st.one_of(twilio_like(), st.text(max_size=200), json_values.map(json.dumps)))
def test_fuzz_parser_only_raises_protocol_errors(frame: str) -> None:
    try:
        message = tw.parse_inbound(frame)
    except tw.TwilioProtocolError as exc:
        assert exc.reason
        return
    if isinstance(message, tw.Media):
        with contextlib.suppress(tw.TwilioProtocolError):
            tw.decode_payload(message.media.payload)


@settings(max_examples=400, deadline=None)
@given(st.one_of(twilio_like(), st.builds(lambda name, seq, sid: {"event": "mark", "mark": {"name": name},
                                                                  "sequenceNumber": seq, "streamSid": sid},
                                          json_values, json_values, json_values)))
def test_the_gateways_mark_fast_path_agrees_with_full_validation(message: Any) -> None:
    raw = json.loads(message) if isinstance(message, str) else message
    fast = mark_echo_name(raw)
    try:
        full = tw.validate_inbound(raw)
    except tw.TwilioProtocolError:
        assert fast is None  # bad input takes the full path and its precise error
        return
    if fast is not None:
        assert isinstance(full, tw.Mark) and full.mark.name == fast
    else:  # anything the fast path declines still parses (e.g. a null sequenceNumber)
        assert not isinstance(full, tw.Mark) or raw.get("sequenceNumber", "") is None
